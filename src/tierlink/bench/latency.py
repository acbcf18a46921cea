"""Message latency, alone and under load: the dialer hands small timestamped probes over at
a steady pace (:meth:`~tierlink.bench.base.BenchConn.send_now`: queued at once, never
waiting for flow control) while (optionally) a bulk stream of 64 KiB messages runs on the same
connection or on a second one; the callee takes each probe's delivery time minus its send
time (both CLOCK_MONOTONIC of one machine) and reports p50/p99.

Worker side: :func:`send_probes` and :func:`receive_probes`; parent side:
:func:`measure_latency` (one round of every mode).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import struct
from collections.abc import Awaitable, Callable

from tierlink.bench.base import BenchConn, JsonDict, now
from tierlink.bench.harness import BenchStepError, Pair, Plan

PROBE = struct.Struct("!cd")  # kind, send time
PROBE_SIZE = 100
BULK_SIZE = 65536
BULK_BATCH = 8
#: Kinds of message on the wire: a probe, bulk data, the end of the bulk stream.
P, B, E = b"P", b"B", b"E"
#: Load modes: no bulk, bulk on the probes' connection, bulk on another connection.
MODES = ("idle", "same", "other")
MB = 1_000_000


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


async def send_probes(
    probe_conn: BenchConn, bulk_conn: BenchConn | None, count: int, interval: float,
    window: int,
) -> JsonDict:
    """Dialer: ``count`` probes every ``interval`` s on ``probe_conn`` while 64 KiB bulk
    messages stream on ``bulk_conn`` (None: no bulk); then an end mark on each."""
    stop = asyncio.Event()
    bulk_sent = 0
    bulk = bytes(BULK_SIZE - 1)

    async def stream(conn: BenchConn) -> None:
        nonlocal bulk_sent
        payload = B + bulk
        while not stop.is_set():
            bulk_sent += await conn.send_many(payload, BULK_BATCH, now() + 30.0, window)

    task = asyncio.create_task(stream(bulk_conn)) if bulk_conn is not None else None
    if task is not None:
        await asyncio.sleep(0.2)  # the stream is under way before the first probe
    pad = bytes(PROBE_SIZE - PROBE.size)
    t0 = now()
    for i in range(count):
        await asyncio.sleep(max(0.0, t0 + i * interval - now()))
        probe_conn.send_now(PROBE.pack(P, now()) + pad)
    stop.set()
    if task is not None:
        await task
        assert bulk_conn is not None
        await bulk_conn.send(E)
    if bulk_conn is not probe_conn:
        await probe_conn.send(E)
    return {"probes": count, "bulk_sent": bulk_sent}


async def receive_probes(probe_conn: BenchConn, bulk_conn: BenchConn | None,
                         limit: float) -> JsonDict:
    """Callee: every probe's one-way latency, and the bulk bytes delivered meanwhile, until
    each connection's end mark (or ``limit`` seconds)."""
    latencies: list[float] = []
    bulk_bytes = 0
    first = last = 0.0
    deadline = now() + limit

    async def drain(conn: BenchConn) -> None:
        nonlocal bulk_bytes, first, last
        while (left := deadline - now()) > 0:
            data = await conn.recv(left)
            t = now()
            kind = data[:1]
            if kind == E:
                return
            if kind == P:
                latencies.append((t - PROBE.unpack_from(data)[1]) * 1000.0)
            else:
                bulk_bytes += len(data)
                first = first or t
                last = t

    conns = [probe_conn] if bulk_conn in (None, probe_conn) else [probe_conn, bulk_conn]
    try:
        await asyncio.gather(*(drain(c) for c in conns))
    except TimeoutError:
        raise BenchStepError(f"latency: no end mark within {limit:.0f} s") from None
    rate = bulk_bytes / (last - first) / MB if last > first else 0.0
    return {"latency_ms": latencies, "bulk_mb_per_s": rate}


async def measure_latency_mode(pair: Pair, plan: Plan, mode: str) -> JsonDict:
    """One mode's probes: p50/p99 (ms) and the bulk rate meanwhile."""
    limit = plan.latency_probes * plan.latency_interval_s + 60.0
    d, c = await pair.both("latency", limit + 30.0, mode=mode, count=plan.latency_probes,
                           interval=plan.latency_interval_s, window=plan.send_window,
                           limit=limit)
    ms = [float(x) for x in c["latency_ms"]]
    if len(ms) != int(d["probes"]):
        raise BenchStepError(f"latency ({mode}): {len(ms)} of {d['probes']} probes arrived")
    out: JsonDict = {
        f"latency_{mode}_p50_ms": round(statistics.median(ms), 3),
        f"latency_{mode}_p99_ms": round(percentile(ms, 99.0), 3),
    }
    if mode != "idle":
        out[f"latency_{mode}_bulk_mb_per_s"] = round(float(c["bulk_mb_per_s"]), 3)
    return out


def latency_step(mode: str) -> Callable[[Pair, Plan], Awaitable[JsonDict]]:
    """The round step measuring ``mode``."""

    async def step(pair: Pair, plan: Plan) -> JsonDict:
        return await measure_latency_mode(pair, plan, mode)

    return step
