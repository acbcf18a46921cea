"""``run_bench``: every system, side by side, into results.json and BENCHMARKS.md."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from tierlink.bench.base import JsonDict
from tierlink.bench.harness import Plan
from tierlink.bench.report import SYSTEMS, load_json, render_markdown, write_json
from tierlink.bench.session import SystemRun, run_interleaved
from tierlink.dht.launcher import start_nodes, stop_nodes
from tierlink.errors import TierlinkError

#: Wall-clock bound of a run, per system measured (process start to stop).
RUN_LIMIT_S = {False: 600.0, True: 120.0}
#: What each system needs importable before its workers are started.
REQUIRES = {"aioice_raw": "aioice", "aiortc_datachannel": "aiortc", "tierlink": "tierlink.node"}


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
        "versions": versions,
    }


def _missing(system: str) -> str | None:
    module = REQUIRES[system]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"{module} is not importable"


async def _measure(
    runs: list[SystemRun], plan: Plan, quick: bool, logs: Path, stack: contextlib.AsyncExitStack
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
    limit = RUN_LIMIT_S[quick] * max(1, len(runs))
    try:
        await asyncio.wait_for(run_interleaved(runs, plan, logs, setups), limit)
    except TimeoutError:
        for run in runs:
            run.errors.setdefault("aborted", f"the whole run exceeded {limit:.0f} s")


async def run_bench_async(
    systems: Sequence[str] | None, quick: bool, out_dir: Path, *, markdown_path: Path | None = None
) -> JsonDict:
    """Async form of :func:`run_bench`."""
    chosen = list(systems) if systems else list(SYSTEMS)
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / "logs"
    logs.mkdir(exist_ok=True)
    json_path = out_dir / "results.json"
    results = load_json(json_path)
    machine = machine_info()
    entries: dict[str, JsonDict] = {}
    runs: list[SystemRun] = []
    for system in dict.fromkeys(chosen):
        missing = _missing(system)
        if missing is not None:
            entries[system] = {"error": missing}
        else:
            runs.append(SystemRun(system))
    all_runs = list(runs)
    plan = Plan.quick() if quick else Plan()
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        await _measure(runs, plan, quick, logs, stack)
    for run in all_runs:
        entries[run.system] = run.entry()
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    for system, entry in entries.items():
        entry.update(machine=machine, quick=quick, run_seconds=round(time.monotonic() - started))
        results[system] = entry
    ordered: JsonDict = {"machine": machine, "quick": quick, "plan": dataclasses.asdict(plan)}
    ordered.update({s: results[s] for s in SYSTEMS if s in results})
    write_json(json_path, ordered)
    if markdown_path is None:
        markdown_path = default_markdown_path(out_dir)
    markdown_path.write_text(render_markdown(ordered))
    return ordered


def default_markdown_path(out_dir: Path) -> Path:
    """``<repo>/BENCHMARKS.md`` for the usual ``<repo>/bench`` out_dir, else inside out_dir."""
    out = out_dir.resolve()
    return out.parent / "BENCHMARKS.md" if out.name == "bench" else out / "BENCHMARKS.md"


def run_bench(
    systems: list[str] | None, quick: bool, out_dir: Path, *, markdown_path: Path | None = None
) -> JsonDict:
    """Measure ``systems`` (default: all three) on loopback, side by side, in worker processes.

    Writes ``out_dir/results.json`` (merged with the systems of earlier runs) and the table
    in BENCHMARKS.md (see :func:`default_markdown_path`); returns the results. ``quick`` uses
    small counts (seconds per system) for smoke tests. A system that cannot run is recorded
    as ``{"error": ...}``; the others still run.
    """
    return asyncio.run(run_bench_async(systems, quick, out_dir, markdown_path=markdown_path))
