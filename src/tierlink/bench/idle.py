"""Idle cost over many connections: every system's process pair holds ``idle_connections``
idle connections, each with a task blocked in recv, for ``idle_many_s`` seconds (in
``rounds`` consecutive windows, all systems at once). Per window: CPU seconds of both worker
processes and of the system's helper processes (tierlink's dhtnode), and the event loop's
wake-ups (passes through its selector) in both workers, each per second and per connection.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tierlink.bench.base import JsonDict
from tierlink.bench.harness import BenchStepError, Pair, Plan


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) that process ``pid`` used so far; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def open_idle_connections(pair: Pair, plan: Plan) -> JsonDict:
    """Open the idle connections (the main one is one of them) and block a recv on each."""
    n = plan.idle_connections
    d, c = await pair.both("idle_open", 30.0 * n + 60.0, n=n)
    if int(d["connections"]) != n or int(c["connections"]) != n:
        raise BenchStepError(f"opened {d['connections']}/{c['connections']} of {n} connections")
    return {}


async def close_idle_connections(pair: Pair, plan: Plan) -> JsonDict:
    """Stop the idle receivers and close every idle connection but the main one."""
    await pair.both("idle_close", 10.0 * plan.idle_connections + 30.0)
    return {}


async def measure_idle_window(pair: Pair, plan: Plan, helpers: Sequence[int] = ()) -> JsonDict:
    """One window of the idle phase: CPU and wake-ups per connection."""
    seconds = plan.idle_many_s / plan.rounds
    before = [process_cpu_s(pid) for pid in helpers]
    d, c = await pair.both("idle_window", seconds + 30.0, seconds=seconds)
    after = [process_cpu_s(pid) for pid in helpers]
    helper_s = 0.0
    for t0, t1 in zip(before, after, strict=True):
        if t0 is None or t1 is None:
            raise BenchStepError("a helper process exited during the idle window")
        helper_s += t1 - t0
    n = min(int(d["connections"]), int(c["connections"]))
    wall = max(float(d["wall_s"]), float(c["wall_s"]))
    cpu = float(d["cpu_s"]) + float(c["cpu_s"]) + helper_s
    out: JsonDict = {
        "idle_conn_cpu_percent": round(100.0 * cpu / wall / n, 5),
        "idle_conn_connections": n,
        "idle_conn_seconds": round(wall, 1),
        "idle_conn_cpu_ms": {
            "dialer": round(float(d["cpu_s"]) * 1000, 1),
            "callee": round(float(c["cpu_s"]) * 1000, 1),
            "helpers": round(helper_s * 1000, 1),
        },
    }
    if helpers:
        out["idle_conn_helper_cpu_percent"] = round(100.0 * helper_s / wall, 4)
    if d.get("wakeups") is not None and c.get("wakeups") is not None:
        wakeups = int(d["wakeups"]) + int(c["wakeups"])
        out["idle_conn_wakeups_per_s"] = round(wakeups / wall / n, 4)
        out["idle_conn_wakeups"] = {"dialer": int(d["wakeups"]), "callee": int(c["wakeups"])}
    return out
