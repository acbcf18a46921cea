"""Many connections to one node: one callee Node (one fingerprint) holds ``n`` concurrent
connections dialed from several dialer processes that share a few local dhtnode proxies.

Reported (tierlink only, one round: the phase takes minutes): connections opened of those
asked, dial rate, the callee's RSS, fds and tasks per connection, its idle CPU per
connection (dhtnodes counted), an echo on every connection at once (no mixing), and the
time from the dialers' close to the callee having seen every connection closed, with the
callee's fds and tasks then back near where they started.

The limits that bite first and how this phase sets them: the callee raises its own
RLIMIT_NOFILE (one UDP socket per connection); concurrent dials across all dialers stay
within the callee's ``AdmissionLimits.max_sessions`` (answering sessions in flight; more
are refused ``busy`` and time out on the dialer), and within each dialer's
``dht_connections`` pool (two HTTP connections per dial in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tierlink.bench.base import JsonDict
from tierlink.bench.harness import READY_TIMEOUT, BenchStepError, WorkerProc
from tierlink.bench.idle import process_cpu_s
from tierlink.dht.launcher import start_nodes, stop_nodes

#: Seconds allowed per connection for the dials and the closes (on a loaded 2-core box).
PER_CONNECTION_S = 0.5


@dataclass(frozen=True)
class CrowdPlan:
    """Size of the many-connection phase."""

    connections: int = 1000
    dialers: int = 4
    #: Dials in flight per dialer: half the callee's per-dialer burst
    #: (``AdmissionLimits.dialer_burst``), whose tokens come back only once the callee's
    #: side of a dial has finished, a little after the dialer's.
    concurrency: int = 4
    dht_nodes: int = 2
    #: The callee's answering sessions in flight (``AdmissionLimits.max_sessions``): a
    #: dialer's dial returns before the callee's session ends, so a node dialed this hard
    #: needs more than the dials in flight (the default, 16, refuses ``busy`` past it).
    callee_sessions: int = 64
    idle_s: float = 20.0

    @classmethod
    def quick(cls) -> CrowdPlan:
        return cls(connections=40, dialers=2, concurrency=4, idle_s=3.0)


async def spawn_worker(role: str, log: IO[bytes]) -> WorkerProc:
    """A crowd worker process in ``role``, ready for commands."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tierlink.bench.crowd_worker", role,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
        limit=1 << 22,
    )
    worker = WorkerProc(proc, f"crowd/{role}")
    try:
        reply = await asyncio.wait_for(worker.replies.get(), READY_TIMEOUT)
    except BaseException:
        await worker.stop()
        raise
    if "error" in reply:
        await worker.stop()
        raise BenchStepError(str(reply["error"]))
    return worker


def _per(delta: float, n: int) -> float | None:
    return round(delta / n, 2) if n else None


async def _run(plan: CrowdPlan, log: IO[bytes], stack: contextlib.AsyncExitStack) -> JsonDict:
    n, k = plan.connections, plan.dialers
    nodes = await start_nodes(plan.dht_nodes)
    stack.push_async_callback(stop_nodes, nodes)
    proxies = [node.proxy_url for node in nodes]
    callee = await spawn_worker("callee", log)
    stack.push_async_callback(callee.stop)
    limits = await callee.call("crowd_limits", 10.0, connections=n)
    setup = await callee.call("setup", 120.0, dht_proxy=proxies[0],
                              admission={"max_sessions": plan.callee_sessions})
    dialers: list[WorkerProc] = []
    for i in range(k):
        d = await spawn_worker("dialer", log)
        stack.push_async_callback(d.stop)
        await d.call("setup", 120.0, dht_proxy=proxies[(i + 1) % len(proxies)],
                     peer=setup["fingerprint"])
        dialers.append(d)
    base = await callee.call("crowd_stats", 30.0, settle=1.0)

    shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
    limit = PER_CONNECTION_S * n + 120.0
    await callee.call("crowd_accept", 30.0, n=n)
    dials = await asyncio.gather(*(
        d.call("crowd_dial", limit, n=share, concurrency=plan.concurrency)
        for d, share in zip(dialers, shares, strict=True)
    ))
    opened = sum(int(r["opened"]) for r in dials)
    dial_span = max(float(r["t_end"]) for r in dials) - min(float(r["t_start"]) for r in dials)
    accepted = await callee.call("crowd_accepted", limit, wait_s=30.0 if opened < n else limit)
    if opened < n or int(accepted["accepted"]) < opened:
        stats = await callee.call("crowd_stats", 30.0)
        raise BenchStepError(
            f"crowd: {opened} of {n} dials succeeded ({[r['failures'] for r in dials]}), "
            f"{accepted['accepted']} accepted; callee: {stats['node']}")
    held = await callee.call("crowd_stats", 30.0, settle=2.0)
    echo = await asyncio.gather(*(d.call("crowd_echo", 120.0, tag=f"d{i}")
                                  for i, d in enumerate(dialers)))

    helpers = [pid for node in nodes if (pid := node.pid) is not None]
    h0 = [process_cpu_s(pid) or 0.0 for pid in helpers]
    idle0 = await callee.call("crowd_stats", 30.0, settle=1.0)
    idle1 = await callee.call("crowd_stats", plan.idle_s + 30.0, settle=plan.idle_s)
    h1 = [process_cpu_s(pid) or 0.0 for pid in helpers]
    wall = float(idle1["t"]) - float(idle0["t"])
    idle_cpu = float(idle1["cpu_s"]) - float(idle0["cpu_s"])
    helper_cpu = sum(h1) - sum(h0)

    closes = await asyncio.gather(*(d.call("crowd_close", limit) for d in dialers))
    gone = await callee.call("crowd_wait_closed", limit, wait_s=limit - 10)
    after = await callee.call("crowd_stats", 30.0, settle=2.0)
    close_start = min(float(r["t_start"]) for r in closes)
    held_n = int(accepted["accepted"])
    return {
        "connections_asked": n,
        "connections_opened": opened,
        "crowd_accepted": held_n,
        "crowd_dialers": k,
        "crowd_dials_in_flight": k * plan.concurrency,
        "crowd_dht_nodes": plan.dht_nodes,
        "crowd_dial_per_s": round(opened / dial_span, 1),
        "crowd_dial_ms": [r["dial_ms"] for r in dials],
        "crowd_dial_failures": [r["failures"] for r in dials],
        "rss_kb_per_connection_at_1000": _per(int(held["rss_kb"]) - int(base["rss_kb"]), held_n),
        "crowd_fds_per_connection": _per(int(held["fds"]) - int(base["fds"]), held_n),
        "crowd_tasks_per_connection": _per(int(held["tasks"]) - int(base["tasks"]), held_n),
        "crowd_callee": {"base": base, "held": held, "after_close": after},
        "crowd_nofile": limits,
        "crowd_echo_mixed": sum(int(r["mixed"]) for r in echo),
        "crowd_echo_lost": sum(int(r["lost"]) for r in echo),
        "crowd_echo_rtt_ms": [r["rtt_ms"] for r in echo],
        "crowd_idle_cpu_percent_per_connection": round(100.0 * idle_cpu / wall / held_n, 5),
        "crowd_idle_dht_cpu_percent": round(100.0 * helper_cpu / wall, 3),
        "crowd_idle_seconds": round(wall, 1),
        "crowd_close_all_s": round(float(gone["t_all_closed"]) - close_start, 2),
        "crowd_closed_by_peer": int(gone["closed_by_peer"]),
        "crowd_fds_left_after_close": int(after["fds"]) - int(base["fds"]),
        "crowd_tasks_left_after_close": int(after["tasks"]) - int(base["tasks"]),
    }


async def measure_crowd(plan: CrowdPlan, log_path: Path) -> JsonDict:
    """Run the phase; every process it started is stopped, also on failure."""
    with open(log_path, "ab") as log:
        async with contextlib.AsyncExitStack() as stack:
            return await _run(plan, log, stack)
