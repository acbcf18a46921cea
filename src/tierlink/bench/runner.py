"""``run_bench``: every system, side by side, round after round, into a results file per
path MTU (``results.json`` on plain loopback, ``results-mtu1500.json`` for ``--mtu 1500``)
and BENCHMARKS.md, which shows every results file of the directory.

``python -m tierlink.bench.runner PARAMS_JSON`` is the run inside an ``--mtu`` namespace
(see :mod:`tierlink.bench.netns`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tierlink.bench import allocator, loops
from tierlink.bench.base import JsonDict
from tierlink.bench.crowd import CrowdPlan, measure_crowd
from tierlink.bench.dht_lab import AccessLink
from tierlink.bench.dht_many import ManyPlan, run_dht_many
from tierlink.bench.harness import BenchStepError, Plan
from tierlink.bench.netns import NETNS_ENV, BenchError, loopback_mtu, run_in_namespace
from tierlink.bench.packet_cost import RESULTS_FILE as PACKET_COST_FILE
from tierlink.bench.relay import measure_relay
from tierlink.bench.report import SYSTEMS, load_json, render_markdown, write_json
from tierlink.bench.session import SystemRun, progress, run_interleaved
from tierlink.dht.launcher import start_nodes, stop_nodes
from tierlink.errors import TierlinkError

#: Wall-clock bound of a run, per system measured (process start to stop).
RUN_LIMIT_S = {False: 900.0, True: 180.0}
#: Wall-clock bound of tierlink's relay and many-connection phases.
PHASES_LIMIT_S = {False: 900.0, True: 240.0}
#: What each system needs importable before its workers are started.
REQUIRES = {"aioice_raw": "aioice", "aiortc_datachannel": "aiortc", "tierlink": "tierlink.node"}
INSTALL_HINT = "run `make bench`, or install the bench extra: pip install -e '.[bench]'"
#: Path MTUs ``--mtu`` accepts: QUIC and ICE need 1200-byte datagrams (IPv6 minimum 1280).
MTU_RANGE = (1280, 65536)
OTHER_RESULTS_GLOB = "results-*.json"
#: The key of ``--dht-many``'s results in results.json.
DHT_MANY = "dht_many"


def machine_info() -> JsonDict:
    """Cores, Python, date and library versions of this run."""
    versions: dict[str, str] = {}
    for dist in ("tierlink", "aioice", "aioquic", "aiortc"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "interleaved": True,
        "loop": loops.chosen_loop(),
        # the allocator state every worker is pinned in (see tierlink.bench.allocator)
        "malloc": allocator.chosen_mode(),
        "versions": versions,
    }


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def check_installed(systems: Sequence[str]) -> None:
    """BenchError naming every chosen system whose library is not installed."""
    missing = [f"{REQUIRES[s]} (for {s})" for s in systems if not _importable(REQUIRES[s])]
    if missing:
        raise BenchError(
            f"not installed: {', '.join(missing)}; {INSTALL_HINT}; "
            "or measure only installed systems with --system NAME"
        )


def results_name(mtu: int | None, loop: str = "asyncio") -> str:
    """The results file of a plain loopback run (None) or of an ``--mtu`` run, on asyncio's
    loop or (``-uvloop``) on uvloop."""
    tail = "" if loop == "asyncio" else f"-{loop}"
    return f"results{tail}.json" if mtu is None else f"results-mtu{mtu}{tail}.json"


async def _tierlink_phases(run: SystemRun, plan: Plan, quick: bool, logs: Path,
                           proxy: str) -> None:
    """tierlink's phases on processes of their own: through a TURN relay, and many
    connections to one node; a failure is recorded, the figures kept."""
    progress("relay: tierlink through a local coturn")
    run.extra.update(await measure_relay(plan, proxy, logs))
    cplan = CrowdPlan.quick() if quick else CrowdPlan()
    progress(f"crowd: {cplan.connections} connections to one node")
    try:
        run.extra.update(await measure_crowd(cplan, logs / "crowd.log"))
    except (BenchStepError, TierlinkError, OSError) as exc:
        run.errors["crowd"] = f"{type(exc).__name__}: {exc}"


async def _measure(
    runs: list[SystemRun], plan: Plan, quick: bool, logs: Path, stack: contextlib.AsyncExitStack,
    phases: bool = False,
) -> None:
    """Start the dhtnode if tierlink runs, then every measurement, bounded in total time."""
    setups: dict[str, JsonDict] = {}
    for run in list(runs):
        if run.system == "tierlink":
            try:  # a lone node without rate limits (all of loopback is one source IP)
                nodes = await start_nodes(1)
            except (TierlinkError, OSError) as exc:
                run.errors["setup"] = f"dhtnode: {exc}"
                runs.remove(run)
                continue
            stack.push_async_callback(stop_nodes, nodes)
            setups["tierlink"] = {"dht_proxy": nodes[0].proxy_url}
            run.helper_pids = tuple(pid for node in nodes if (pid := node.pid) is not None)
    limit = RUN_LIMIT_S[quick] * max(1, len(runs))
    try:
        await asyncio.wait_for(run_interleaved(runs, plan, logs, setups), limit)
        for run in runs:
            if run.system == "tierlink" and phases:
                proxy = str(setups["tierlink"]["dht_proxy"])
                await asyncio.wait_for(
                    _tierlink_phases(run, plan, quick, logs, proxy), PHASES_LIMIT_S[quick]
                )
    except TimeoutError:
        for run in runs:
            run.errors.setdefault("aborted", f"the run exceeded its time bound ({limit:.0f} s "
                                  f"+ {PHASES_LIMIT_S[quick]:.0f} s for relay and crowd)")


async def run_bench_async(
    systems: Sequence[str], plan: Plan, quick: bool, out_dir: Path, mtu: int | None
) -> JsonDict:
    """Measure ``systems`` in this network namespace; ``mtu``: the loopback MTU expected."""
    path_mtu = loopback_mtu()
    if mtu is not None and path_mtu != mtu:
        raise BenchError(f"loopback MTU is {path_mtu} here, not the {mtu} asked for")
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / "logs" if mtu is None else out_dir / "logs" / f"mtu{mtu}"
    logs.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / results_name(mtu, loops.chosen_loop())
    results = load_json(json_path)
    machine = machine_info()
    if mtu is not None:  # per-connection idle cost does not depend on the path MTU
        plan = dataclasses.replace(plan, idle_many=False)
    runs = [SystemRun(system) for system in dict.fromkeys(systems)]
    all_runs = list(runs)
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        # relay and crowd once, on plain loopback: a relayed path keeps 1200-byte packets
        # whatever the MTU, and the crowd's figures are per connection, not per packet
        await _measure(runs, plan, quick, logs, stack, phases=mtu is None)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    for run in all_runs:
        entry = run.entry()
        entry.update(machine=machine, quick=quick, run_seconds=round(time.monotonic() - started))
        results[run.system] = entry
    ordered: JsonDict = {
        "machine": machine,
        "quick": quick,
        "mtu": path_mtu,
        "netns": os.environ.get(NETNS_ENV),
        "plan": dataclasses.asdict(plan),
    }
    ordered.update({s: results[s] for s in SYSTEMS if s in results})
    if DHT_MANY in results:
        ordered[DHT_MANY] = results[DHT_MANY]
    write_json(json_path, ordered)
    write_markdown(out_dir)
    return ordered


def default_markdown_path(out_dir: Path) -> Path:
    """``<repo>/BENCHMARKS.md`` for the usual ``<repo>/bench`` out_dir, else inside out_dir."""
    out = out_dir.resolve()
    return out.parent / "BENCHMARKS.md" if out.name == "bench" else out / "BENCHMARKS.md"


def write_markdown(out_dir: Path) -> Path:
    """BENCHMARKS.md from the results files in ``out_dir``: loopback's, then each MTU's."""
    files = [out_dir / results_name(None)]
    files += sorted(out_dir.glob(OTHER_RESULTS_GLOB), key=lambda p: ("uvloop" in p.name, p.name))
    path = default_markdown_path(out_dir)
    cost = load_json(out_dir / PACKET_COST_FILE)
    path.write_text(render_markdown([r for r in map(load_json, files) if r], cost or None))
    return path


def make_plan(quick: bool, rounds: int | None) -> Plan:
    """The counts of a full or ``quick`` run, with ``rounds`` if given (ValueError if < 3)."""
    plan = Plan.quick() if quick else Plan()
    return plan if rounds is None else dataclasses.replace(plan, rounds=rounds)


def run_bench(
    systems: Sequence[str] | None,
    quick: bool,
    out_dir: Path,
    *,
    rounds: int | None = None,
    mtu: int | None = None,
) -> JsonDict:
    """Measure ``systems`` (default: all three) side by side, in worker processes.

    ``mtu`` None: on this namespace's loopback, into ``out_dir/results.json``; else inside a
    fresh network namespace whose loopback has that MTU (root), into
    ``results-mtu<N>.json``. Each run replaces the systems it measured in its file and keeps
    the others; BENCHMARKS.md (see :func:`default_markdown_path`) shows every file. ``quick``
    uses small counts (seconds per system and round) for smoke tests. A chosen system whose
    library is not installed is refused (BenchError), not skipped.
    """
    chosen = list(dict.fromkeys(systems)) if systems else list(SYSTEMS)
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
    if mtu is not None and not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
        raise ValueError(f"--mtu must be within {MTU_RANGE[0]}..{MTU_RANGE[1]}, not {mtu}")
    check_installed(chosen)
    loop = loops.chosen_loop()
    allocator.chosen_mode()  # an unknown allocator state is refused before anything starts
    plan = make_plan(quick, rounds)
    if mtu is not None and os.environ.get(NETNS_ENV) is None:
        params = {
            "systems": chosen,
            "quick": quick,
            "out_dir": str(out_dir.resolve()),
            "rounds": plan.rounds,
            "mtu": mtu,
        }
        return run_in_namespace(mtu, params, out_dir / results_name(mtu, loop))
    return asyncio.run(run_bench_async(chosen, plan, quick, out_dir, mtu))


def run_dht_many_bench(nodes: int, quick: bool, out_dir: Path,
                       access: AccessLink | None = None) -> JsonDict:
    """``--dht-many N``: dial by fingerprint on an N-node lab DHT without and with churn
    (root; see :mod:`tierlink.bench.dht_many`), stored as results.json's ``dht_many`` (the
    other entries kept) and shown in BENCHMARKS.md; returns the whole results.json. With
    ``access`` (the peers on a link profile) the run goes to ``dht_many.profiles.<name>``
    beside the plain-link one."""
    plan = ManyPlan.quick(nodes) if quick else ManyPlan(nodes=nodes)
    result = run_dht_many(dataclasses.replace(plan, access=access))
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / results_name(None)
    results = load_json(json_path)
    stamped = result | {"quick": quick, "date": machine_info()["date"]}
    if access is None:
        results[DHT_MANY] = stamped | {"profiles": results.get(DHT_MANY, {}).get("profiles", {})}
    else:
        results.setdefault(DHT_MANY, {}).setdefault("profiles", {})[access.name] = stamped
    write_json(json_path, results)
    write_markdown(out_dir)
    return results


def main(argv: Sequence[str]) -> int:
    """The run inside an ``--mtu`` namespace: ``run_bench`` with the parent's parameters."""
    p = json.loads(argv[0])
    try:
        run_bench(p["systems"], bool(p["quick"]), Path(p["out_dir"]),
                  rounds=int(p["rounds"]), mtu=int(p["mtu"]))
    except (TierlinkError, OSError, ValueError) as exc:
        print(f"tierlink bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the parent removes the namespace and says so
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
