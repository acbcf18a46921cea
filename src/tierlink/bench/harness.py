"""The parent side: start a dialer and a callee worker process, relay their signals, and
drive the measurements. Every step has a count and a time bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tierlink.bench.base import JsonDict

MB = 1_000_000
#: A datagram trial passes with less loss than this ...
MAX_LOSS_PERCENT = 1.0
#: ... and if the receiver kept up: delivered rate at least this share of the paced rate
#: (otherwise an unbounded receive queue would pass any rate for a short trial).
KEEP_UP = 0.85
DATAGRAM_SIZE = 1024
READY_TIMEOUT = 60.0


class BenchStepError(Exception):
    """A worker reported an error or died."""


class BenchTimeout(BenchStepError):
    """A step ran out of time: the workers are out of step, so the system run stops."""


@dataclass(frozen=True)
class Plan:
    """Counts and time bounds of one run."""

    connects: int = 20
    reliable_1k_count: int = 20_000
    reliable_64k_count: int = 400
    reliable_limit_s: float = 20.0
    dg_trial_s: float = 1.0
    dg_start_rate: float = 2_000.0
    dg_max_rate: float = 200_000.0
    dg_bisect_steps: int = 3
    #: Attempts per datagram rate: a rate fails only if every attempt fails. A receiver
    #: descheduled for ~10 ms by another process overflows the default socket buffer.
    dg_attempts: int = 3
    idle_s: float = 15.0
    mem_connections: int = 100

    @classmethod
    def quick(cls) -> Plan:
        """Small counts for a smoke run (a few seconds per system)."""
        return cls(
            connects=5,
            reliable_1k_count=1_000,
            reliable_64k_count=20,
            reliable_limit_s=10.0,
            dg_trial_s=0.25,
            dg_bisect_steps=1,
            dg_attempts=2,
            idle_s=2.0,
            mem_connections=10,
        )


class WorkerProc:
    """One worker process; replies land in a queue, signals go to the peer worker."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.peer: WorkerProc | None = None
        self.replies: asyncio.Queue[JsonDict] = asyncio.Queue()
        self.dead = False
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                self.dead = True
                self.replies.put_nowait({"error": f"{self.name} worker exited"})
                return
            msg = json.loads(line)
            if msg.get("type") == "sig":
                peer = self.peer
                if peer is not None and peer.proc.stdin is not None:
                    peer.proc.stdin.write(line)
            else:
                self.replies.put_nowait(msg)

    async def call(self, cmd: str, timeout: float, **params: Any) -> JsonDict:
        """Run ``cmd`` in the worker; BenchStepError on error or timeout."""
        assert self.proc.stdin is not None
        if self.dead and self.replies.empty():
            raise BenchStepError(f"{self.name}: worker is gone (see the log)")
        self.proc.stdin.write(json.dumps({"type": "cmd", "cmd": cmd, **params}).encode() + b"\n")
        try:
            reply = await asyncio.wait_for(self.replies.get(), timeout)
        except TimeoutError:
            raise BenchTimeout(f"{self.name}: {cmd} timed out after {timeout:.0f} s") from None
        if "error" in reply:
            raise BenchStepError(f"{self.name}: {cmd}: {reply['error']}")
        return reply

    async def stop(self) -> None:
        """Shut the worker down politely, then kill it if it lingers."""
        if self.proc.returncode is None:
            with contextlib.suppress(BenchStepError, BrokenPipeError, ConnectionResetError):
                await self.call("shutdown", 15.0)
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.reader.cancel()


class Pair:
    """A dialer and a callee worker of one system."""

    def __init__(self, dialer: WorkerProc, callee: WorkerProc) -> None:
        self.dialer = dialer
        self.callee = callee
        dialer.peer, callee.peer = callee, dialer

    @classmethod
    async def start(cls, system: str, log: IO[bytes]) -> Pair:
        """Spawn both workers (fresh interpreters) and wait until they are ready."""
        procs: list[WorkerProc] = []
        try:
            for role in ("callee", "dialer"):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tierlink.bench.worker",
                    system,
                    role,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    limit=1 << 22,
                )
                procs.append(WorkerProc(proc, f"{system}/{role}"))
            for w in procs:
                reply = await asyncio.wait_for(w.replies.get(), READY_TIMEOUT)
                if "error" in reply:
                    raise BenchStepError(str(reply["error"]))
        except BaseException:
            for w in procs:
                await w.stop()
            raise
        return cls(procs[1], procs[0])

    async def both(self, cmd: str, timeout: float, **params: Any) -> tuple[JsonDict, JsonDict]:
        """Run ``cmd`` in both workers at once: (dialer reply, callee reply)."""
        return await gather_calls(
            self.dialer.call(cmd, timeout, **params), self.callee.call(cmd, timeout, **params)
        )

    async def stop(self) -> None:
        await asyncio.gather(self.dialer.stop(), self.callee.stop())


async def gather_calls(dialer: Any, callee: Any) -> tuple[JsonDict, JsonDict]:
    """Await two calls to the end (so no reply is left behind), then raise the first error."""
    results: list[Any] = list(await asyncio.gather(dialer, callee, return_exceptions=True))
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results[0], results[1]


# -- measurements ---------------------------------------------------------------------------
def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


async def measure_connect(pair: Pair, plan: Plan) -> JsonDict:
    d, _ = await pair.both("connect_series", 30.0 * plan.connects + 30.0, n=plan.connects)
    times = [float(x) for x in d["connect_ms"]]
    return {
        "connect_ms_median": round(statistics.median(times), 2),
        "connect_ms_p95": round(p95(times), 2),
        "connect_n": len(times),
    }


async def measure_reliable(pair: Pair, plan: Plan, size: int, count: int) -> JsonDict:
    """Reliable throughput: dialer's start -> callee's last delivery, both monotonic."""
    timeout = plan.reliable_limit_s + 40.0
    d, c = await pair.both("reliable", timeout, size=size, count=count, limit=plan.reliable_limit_s)
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
    return {
        "rate": round(rate, 1),
        "sent": sent,
        "dropped_by_sender": int(d.get("dropped_by_sender", 0)),
        "received": received,
        "send_rate": round(send_rate, 1),
        "delivered_rate": round(delivered_rate, 1),
        "loss_percent": round(loss, 3),
        "ok": loss < MAX_LOSS_PERCENT and delivered_rate >= KEEP_UP * send_rate,
    }


async def measure_datagrams(pair: Pair, plan: Plan) -> JsonDict:
    """Highest paced rate that passes (< 1 % loss, receiver keeps up): double, then bisect."""
    await pair.callee.call("dg_listen", 10.0)
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
    result: JsonDict = {"datagram_size": DATAGRAM_SIZE, "datagram_trials": trials}
    passing = [t for t in trials if t["ok"]]
    if not passing:
        result["datagram_error"] = "no paced rate had < 1 % loss with the receiver keeping up"
        return result
    best = max(passing, key=lambda t: float(t["delivered_rate"]))
    result.update(
        datagram_msgs_per_s=round(best["delivered_rate"], 1),
        datagram_mb_per_s=round(best["delivered_rate"] * DATAGRAM_SIZE / MB, 3),
        datagram_loss_percent=round(best["loss_percent"], 3),
        datagram_paced_rate=round(best["rate"], 1),
    )
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
    """RSS delta of each process for ``mem_connections`` more idle connections, / count."""
    n = plan.mem_connections
    d0, c0 = await pair.both("rss", 30.0, settle=0.5)
    await pair.both("mem_open", 30.0 * n + 30.0, n=n)
    d1, c1 = await pair.both("rss", 30.0, settle=1.0)
    await pair.both("mem_close", 10.0 * n + 30.0)
    per = {
        "dialer": (int(d1["rss_kb"]) - int(d0["rss_kb"])) / n,
        "callee": (int(c1["rss_kb"]) - int(c0["rss_kb"])) / n,
    }
    return {
        "rss_kb_per_connection": round(max(per.values()), 1),
        "rss_kb_per_connection_sides": {k: round(v, 1) for k, v in per.items()},
        "mem_connections": n,
    }


async def _step(result: JsonDict, errors: dict[str, str], name: str, coro: Any) -> None:
    """Run one measurement; its error is recorded, a timeout aborts the system."""
    try:
        result.update(await coro)
    except BenchTimeout:
        raise
    except BenchStepError as exc:
        errors[name] = str(exc)


async def bench_system(
    system: str, plan: Plan, log_path: Path, setup: JsonDict | None = None
) -> JsonDict:
    """Every measurement of one system; a failed step is recorded and the rest still run."""
    result: JsonDict = {}
    errors: dict[str, str] = {}
    with open(log_path, "ab") as log:
        pair = await Pair.start(system, log)
        try:
            c = await pair.callee.call("setup", 120.0, **(setup or {}))
            await pair.dialer.call("setup", 120.0, peer=c.get("fingerprint", ""), **(setup or {}))
            await _step(result, errors, "connect", measure_connect(pair, plan))
            await pair.both("open_main", 60.0)
            await _step(result, errors, "throughput", _throughput(system, pair, plan, errors))
            await _step(result, errors, "idle", measure_idle(pair, plan))
            await _step(result, errors, "memory", measure_memory(pair, plan))
        except BenchStepError as exc:
            errors["aborted"] = str(exc)
        finally:
            await pair.stop()
    if errors:
        result["errors"] = errors
    return result


async def _throughput(system: str, pair: Pair, plan: Plan, errors: dict[str, str]) -> JsonDict:
    out: JsonDict = {}
    reliable_is_datagram = system == "aioice_raw"
    if not reliable_is_datagram:
        for size, count, key in (
            (1024, plan.reliable_1k_count, "1k"),
            (65536, plan.reliable_64k_count, "64k"),
        ):
            try:
                r = await measure_reliable(pair, plan, size, count)
            except BenchStepError as exc:
                errors[f"reliable_{key}"] = str(exc)
                continue
            if key == "1k":
                out["reliable_1k_msgs_per_s"] = round(r["msgs_per_s"], 1)
            out[f"reliable_{key}_mb_per_s"] = round(r["mb_per_s"], 3)
            out[f"reliable_{key}_detail"] = {k: round(v, 3) for k, v in r.items()}
    try:
        out.update(await measure_datagrams(pair, plan))
    except BenchStepError as exc:
        errors["datagram"] = str(exc)
    if reliable_is_datagram and "datagram_msgs_per_s" in out:
        out["reliable_1k_msgs_per_s"] = out["datagram_msgs_per_s"]
        out["reliable_1k_mb_per_s"] = out["datagram_mb_per_s"]
        out["reliable_note"] = (
            "raw aioice has no reliable mode: reliable_1k_* is the paced 1 KiB datagram "
            "ceiling (< 1 % loss), an upper bound for anything reliable built on it"
        )
    return out
