"""The parent side of the worker processes: start a dialer and a callee, relay their
signals, run commands in them with a time bound each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass
from typing import IO, Any

from tierlink.bench.base import JsonDict

READY_TIMEOUT = 60.0
#: Fewest rounds a figure may rest on: one round of a bimodal figure means little.
MIN_ROUNDS = 3


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
    #: Reliable sends kept pending at once where send awaits the peer's ack (tierlink); the
    #: channel itself bounds the bytes in flight and queues the rest in call order. 8-64 gave
    #: the best 1 KiB rate here; >= 1024 pending sends cut it to a third.
    send_window: int = 64
    #: Interleaved rounds of every measurement; each figure is the median of the rounds,
    #: reported with its min-max spread.
    rounds: int = 3
    idle_s: float = 60.0  # the issue asks for "seconds of CPU per minute"
    #: Idle connections per process pair in the many-connection idle phase, and its length
    #: (split into ``rounds`` consecutive windows; at least 5 minutes in a full run).
    idle_connections: int = 20
    idle_many_s: float = 300.0
    #: Whether the many-connection idle phase runs: an ``--mtu`` run skips it (idle
    #: connections send keep-alives, not full packets; the loopback run measures it).
    idle_many: bool = True
    mem_connections: int = 100
    #: Latency probes per mode and their spacing (s); see :mod:`tierlink.bench.latency`.
    latency_probes: int = 200
    latency_interval_s: float = 0.01

    def __post_init__(self) -> None:
        if self.rounds < MIN_ROUNDS:
            raise ValueError(f"rounds must be at least {MIN_ROUNDS}, not {self.rounds}")

    @classmethod
    def quick(cls) -> Plan:
        """Small counts for a smoke run (a few seconds per system and round)."""
        return cls(
            connects=5,
            reliable_1k_count=1_000,
            reliable_64k_count=20,
            reliable_limit_s=10.0,
            dg_trial_s=0.25,
            dg_bisect_steps=1,
            dg_attempts=3,  # a receiver descheduled for ~2 ms fails a trial (shared cores)
            idle_s=2.0,
            idle_connections=5,
            idle_many_s=6.0,
            mem_connections=10,
            latency_probes=50,
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
