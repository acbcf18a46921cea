"""``run_bench``: every system, side by side, into results.json and BENCHMARKS.md."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from tierlink.bench.base import JsonDict
from tierlink.bench.dhtproc import DhtNodeError, dhtnode_proxy
from tierlink.bench.harness import Plan, bench_system
from tierlink.bench.report import SYSTEMS, load_json, render_markdown, write_json

#: Wall-clock bound of one system's whole run (process start to stop).
SYSTEM_LIMIT_S = {False: 600.0, True: 120.0}
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
        "versions": versions,
    }


def _missing(system: str) -> str | None:
    module = REQUIRES[system]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"{module} is not importable"


async def _one(system: str, plan: Plan, quick: bool, logs: Path) -> JsonDict:
    missing = _missing(system)
    if missing is not None:
        return {"error": missing}
    log = logs / f"{system}.log"
    try:
        if system == "tierlink":
            async with dhtnode_proxy(logs / "dhtnode.log") as url:
                coro = bench_system(system, plan, log, {"dht_proxy": url})
                return await asyncio.wait_for(coro, SYSTEM_LIMIT_S[quick])
        return await asyncio.wait_for(bench_system(system, plan, log), SYSTEM_LIMIT_S[quick])
    except TimeoutError:
        return {"error": f"run exceeded {SYSTEM_LIMIT_S[quick]:.0f} s (see {log})"}
    except (DhtNodeError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


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
    results["machine"] = machine
    results["quick"] = quick
    plan = Plan.quick() if quick else Plan()
    for system in chosen:
        load = [round(x, 2) for x in os.getloadavg()]
        started = time.monotonic()
        entry = await _one(system, plan, quick, logs)
        entry["machine"] = machine
        entry["quick"] = quick
        entry["loadavg_at_start"] = load
        entry["run_seconds"] = round(time.monotonic() - started, 1)
        results[system] = entry
    ordered: JsonDict = {"machine": results.pop("machine"), "quick": results.pop("quick")}
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
