"""The measurements, each driving one dialer/callee pair through worker commands.

Every measurement is bounded in count (``Plan``) and time (each command's timeout).
"""

from __future__ import annotations

import math
import statistics

from tierlink.bench.base import JsonDict
from tierlink.bench.harness import BenchStepError, Pair, Plan

MB = 1_000_000
#: A datagram trial passes with less loss than this ...
MAX_LOSS_PERCENT = 1.0
#: ... and if the receiver kept up: delivered rate at least this share of the paced rate
#: (otherwise an unbounded receive queue would pass any rate for a short trial).
KEEP_UP = 0.85
DATAGRAM_SIZE = 1024
#: Trials with fewer datagrams than this give no CPU-per-datagram figure (the quiet wait's
#: idle wake-ups would weigh in).
CPU_FIGURE_MIN_DATAGRAMS = 1000


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


async def measure_connect(pair: Pair, plan: Plan) -> JsonDict:
    d, _ = await pair.both("connect_series", 30.0 * plan.connects + 30.0, n=plan.connects)
    times = [float(x) for x in d["connect_ms"]]
    opened = [float(x) for x in d["open_ms"]]
    return {
        "connect_ms_median": round(statistics.median(times), 2),
        "connect_ms_p95": round(p95(times), 2),
        "connect_n": len(times),
        # dial() returned on the dialer (before the first message was sent)
        "connect_open_ms_median": round(statistics.median(opened), 2),
    }


async def measure_reliable(pair: Pair, plan: Plan, size: int, count: int) -> JsonDict:
    """Reliable throughput: dialer's start -> callee's last delivery, both monotonic."""
    timeout = plan.reliable_limit_s + 40.0
    d, c = await pair.both(
        "reliable",
        timeout,
        size=size,
        count=count,
        limit=plan.reliable_limit_s,
        window=plan.send_window,
    )
    elapsed = float(c["t_last"]) - float(d["t0"])
    received = int(c["received"])
    if received == 0 or elapsed <= 0:
        raise BenchStepError(f"reliable {size} B: nothing received")
    if received < int(d["sent"]):
        raise BenchStepError(
            f"reliable {size} B: only {received} of {d['sent']} messages arrived "
            "(the mode under test lost messages, so it is not reliable)"
        )
    return {
        "msgs_per_s": received / elapsed,
        "mb_per_s": int(c["bytes"]) / elapsed / MB,
        "received": received,
        "sent": int(d["sent"]),
        "seconds": elapsed,
    }


async def datagram_trial(pair: Pair, plan: Plan, trial: int, rate: float) -> JsonDict:
    """Pace ``rate`` datagrams/s for ``dg_trial_s``; what arrived and how fast."""
    count = max(50, int(rate * plan.dg_trial_s))
    d = await pair.dialer.call(
        "dg_send",
        plan.dg_trial_s * 20 + 30.0,
        trial=trial,
        rate=rate,
        count=count,
        size=DATAGRAM_SIZE,
    )
    c = await pair.callee.call("dg_collect", 30.0, trial=trial, quiet=0.3)
    sent, received = int(d["sent"]), int(c["received"])
    t0, t_end = float(d["t0"]), float(d["t_end"])
    span = max(t_end, float(c["t_last"])) - t0
    send_rate = sent / max(t_end - t0, 1e-9)
    delivered_rate = received / max(span, 1e-9)
    loss = 100.0 * (1.0 - received / sent)
    cpu = c.get("cpu_s")
    return {
        "rate": round(rate, 1),
        "sent": sent,
        "dropped_by_sender": int(d.get("dropped_by_sender", 0)),
        # cumulative: datagrams the receiver's own bounded queue dropped (drop-oldest)
        "receive_queue_drops_total": c.get("queue_drops"),
        "received": received,
        "send_rate": round(send_rate, 1),
        "delivered_rate": round(delivered_rate, 1),
        "loss_percent": round(loss, 3),
        # the receiving process's CPU per datagram (user + system), from its first arrival
        "receiver_cpu_us_per_msg": (round(1e6 * float(cpu) / received, 2)
                                    if cpu is not None and received else None),
        "ok": loss < MAX_LOSS_PERCENT and delivered_rate >= KEEP_UP * send_rate,
    }


async def measure_datagrams(
    pair: Pair, plan: Plan, sink: str = "recv", prefix: str = "datagram"
) -> JsonDict:
    """Highest paced rate that passes (< 1 % loss, receiver keeps up): double, then bisect.

    ``sink``: how the callee counts (see the worker's ``dg_listen``); ``prefix`` names the
    result fields.
    """
    await pair.callee.call("dg_listen", 10.0, sink=sink)
    trials: list[JsonDict] = []
    rate = plan.dg_start_rate
    good: float | None = None
    bad: float | None = None

    async def run(r: float) -> JsonDict:
        """One trial; a failed one is retried (the machine is shared and noisy)."""
        for _ in range(plan.dg_attempts):
            t = await datagram_trial(pair, plan, len(trials) + 1, r)
            trials.append(t)
            if t["ok"]:
                break
        return t

    while rate <= plan.dg_max_rate:
        t = await run(rate)
        if not t["ok"]:
            bad = rate
            break
        good = rate
        if t["send_rate"] < 0.8 * rate:  # the sender cannot go faster: that is the ceiling
            break
        rate *= 2
    if bad is not None:
        lo, hi = (good if good is not None else bad / 8), bad
        for _ in range(plan.dg_bisect_steps):
            mid = math.sqrt(lo * hi)
            if (await run(mid))["ok"]:
                lo = mid
            else:
                hi = mid
    result: JsonDict = {"datagram_size": DATAGRAM_SIZE, f"{prefix}_trials": trials}
    passing = [t for t in trials if t["ok"]]
    if not passing:
        tried = ", ".join(f"{t['rate']:.0f}/s: {t['loss_percent']:.1f} %" for t in trials)
        raise BenchStepError(f"no paced rate passed (< 1 % loss, receiver keeping up): {tried}")
    best = max(passing, key=lambda t: float(t["delivered_rate"]))
    result[f"{prefix}_msgs_per_s"] = round(best["delivered_rate"], 1)
    result[f"{prefix}_mb_per_s"] = round(best["delivered_rate"] * DATAGRAM_SIZE / MB, 3)
    result[f"{prefix}_loss_percent"] = round(best["loss_percent"], 3)
    result[f"{prefix}_paced_rate"] = round(best["rate"], 1)
    costs = [float(t["receiver_cpu_us_per_msg"]) for t in trials
             if t.get("receiver_cpu_us_per_msg") is not None
             and int(t["received"]) >= CPU_FIGURE_MIN_DATAGRAMS]
    if costs:
        # the least of the search: a receiver that never sleeps between datagrams pays the
        # bare per-datagram cost; other processes and wake-ups only add to it
        result[f"{prefix}_receiver_cpu_us"] = min(costs)
    return result


async def measure_datagrams_native(pair: Pair, plan: Plan) -> JsonDict:
    """The same search, counted in the library's own receive callback (transport ceiling)."""
    return await measure_datagrams(pair, plan, sink="native", prefix="datagram_native")


async def measure_datagrams_native_mmap(pair: Pair, plan: Plan) -> JsonDict:
    """The callback ceiling again with the callee's allocator in its ``mmap`` state (every
    256 KiB read buffer mmapped and unmapped: :mod:`tierlink.bench.allocator`), then back in
    the run's own: the other mode of a bimodal figure, reported beside it."""
    reply = await pair.callee.call("malloc", 10.0, mode="mmap")
    try:
        result = await measure_datagrams(pair, plan, sink="native", prefix="datagram_native_mmap")
    finally:
        await pair.callee.call("malloc", 10.0, mode=None)
    result["datagram_native_mmap_pinned"] = bool(reply["pinned"])
    return result


async def measure_idle(pair: Pair, plan: Plan) -> JsonDict:
    """CPU of each process while its side of an idle connection is blocked in recv."""
    d, c = await pair.both("idle", plan.idle_s + 30.0, seconds=plan.idle_s)
    await pair.both("wake", 30.0)
    pct = max(float(d["percent"]), float(c["percent"]))
    return {
        "idle_cpu_percent": round(pct, 4),
        "idle_cpu_ms": {
            "dialer": round(float(d["cpu_s"]) * 1000, 2),
            "callee": round(float(c["cpu_s"]) * 1000, 2),
        },
        "idle_seconds": round(float(d["wall_s"]), 2),
    }


async def measure_memory(pair: Pair, plan: Plan) -> JsonDict:
    """RSS delta of each process for ``mem_connections`` more idle connections, / count.

    The connections stay open (:func:`close_memory_connections` closes them after the last
    round), so each round adds to the ones before instead of reusing their freed memory.
    """
    n = plan.mem_connections
    d0, c0 = await pair.both("rss", 30.0, settle=0.5)
    await pair.both("mem_open", 30.0 * n + 30.0, n=n)
    d1, c1 = await pair.both("rss", 30.0, settle=1.0)
    per = {
        "dialer": (int(d1["rss_kb"]) - int(d0["rss_kb"])) / n,
        "callee": (int(c1["rss_kb"]) - int(c0["rss_kb"])) / n,
    }
    return {
        "rss_kb_per_connection": round(max(per.values()), 1),
        "rss_kb_per_connection_sides": {k: round(v, 1) for k, v in per.items()},
        "mem_connections": n,
    }


async def close_memory_connections(pair: Pair, plan: Plan) -> JsonDict:
    """Close every connection the memory rounds opened."""
    await pair.both("mem_close", 10.0 * plan.mem_connections * plan.rounds + 30.0)
    return {}


async def measure_reliable_1k(pair: Pair, plan: Plan) -> JsonDict:
    """1 KiB reliable messages: msg/s and MB/s."""
    r = await measure_reliable(pair, plan, 1024, plan.reliable_1k_count)
    return {
        "reliable_1k_msgs_per_s": round(r["msgs_per_s"], 1),
        "reliable_1k_mb_per_s": round(r["mb_per_s"], 3),
        "reliable_1k_detail": {k: round(v, 3) for k, v in r.items()},
    }


async def measure_reliable_64k(pair: Pair, plan: Plan) -> JsonDict:
    """64 KiB reliable messages: MB/s."""
    r = await measure_reliable(pair, plan, 65536, plan.reliable_64k_count)
    return {
        "reliable_64k_mb_per_s": round(r["mb_per_s"], 3),
        "reliable_64k_detail": {k: round(v, 3) for k, v in r.items()},
    }


#: The packet size QUIC starts with and keeps on relayed paths.
BASE_PACKET_SIZE = 1200


async def measure_reliable_1k_base_packets(pair: Pair, plan: Plan) -> JsonDict:
    """1 KiB reliable messages with the sender's packets capped at 1200 bytes: what a path
    that cannot carry larger packets (TURN, tunnels, some NATs) gets; tierlink only."""
    await pair.both("packet_cap", 10.0, size=BASE_PACKET_SIZE)
    try:
        r = await measure_reliable(pair, plan, 1024, plan.reliable_1k_count)
    finally:
        await pair.both("packet_cap", 10.0, size=None)
    return {
        "reliable_1k_base_packets_msgs_per_s": round(r["msgs_per_s"], 1),
        "reliable_1k_base_packets_detail": {k: round(v, 3) for k, v in r.items()},
    }
