"""Datagram trials, worker side: the dialer sends ``count`` datagrams paced at a rate, the
callee counts what arrives per trial (the parent side: :mod:`tierlink.bench.measure`).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

from tierlink.bench.base import BenchConn, JsonDict, now
from tierlink.bench.process_usage import cpu_s

DATAGRAM_HEADER = struct.Struct("!II")  # trial id, sequence number
#: A datagram offered while more than this many bytes of datagrams wait in the sender's own
#: queue is dropped by the pacer and counted as lost (a socket with a full buffer does the
#: same); without it aiortc's unbounded SCTP queue turns loss into ever-growing delay.
DATAGRAM_BACKLOG_LIMIT = 64 * 1024


async def send_paced(conn: BenchConn, trial: int, rate: float, count: int,
                     size: int) -> JsonDict:
    """Send ``count`` datagrams of ``size`` bytes paced at ``rate``/s (catching up when
    late), then wait (at most 5 s) for the sender's queue to drain."""
    pad = bytes(size - DATAGRAM_HEADER.size)
    send = conn.send_datagram
    backlog = conn.datagram_backlog
    pack = DATAGRAM_HEADER.pack
    t0 = now()
    offered = dropped = 0
    while offered < count:
        due = min(count, int((now() - t0) * rate) + 1)
        while offered < due:
            if backlog() > DATAGRAM_BACKLOG_LIMIT:
                dropped += 1
            else:
                send(pack(trial, offered) + pad)
            offered += 1
        await asyncio.sleep(0)
    t_end = now()
    while backlog() > 0 and now() - t_end < 5.0:  # let the queue drain: trials must not overlap
        await asyncio.sleep(0.002)
    return {"t0": t0, "t_end": t_end, "sent": offered, "dropped_by_sender": dropped}


class DatagramCounter:
    """Counts arriving datagrams per trial, with the first and last arrival times and this
    process's CPU time from the first arrival on (what receiving the trial cost: unlike the
    loss-bounded rate, hardly moved by other processes taking the cores)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.cpu_first: dict[int, float] = {}
        self._stop: Callable[[], None] | None = None

    def listen(self, conn: BenchConn, sink: str) -> None:
        """Count afresh from ``conn``: ``sink`` "recv" (a recv_datagram loop, as an
        application receives) or "native" (the library's own callback)."""
        self.stop()
        self.counts.clear()
        self.first.clear()
        self.last.clear()
        self.cpu_first.clear()
        if sink == "native":
            self._stop = conn.start_native_datagram_sink(self._count)
            if self._stop is None:
                raise NotImplementedError("this system has no native datagram callback")
        else:
            self._stop = conn.start_datagram_pump(self._count)

    def stop(self) -> None:
        """Stop receiving datagrams (if listening)."""
        if self._stop is not None:
            self._stop()
            self._stop = None

    async def collect(self, conn: BenchConn, trial: int, quiet: float) -> JsonDict:
        """Wait until the trial's datagrams stop arriving (none for ``quiet`` s, at most
        5 s), then report what arrived and the CPU seconds spent since the first arrival
        (the quiet wait adds a few idle wake-ups)."""
        start = now()
        while now() - start < 5.0:
            last = self.last.get(trial, start)
            if now() - last > quiet:
                break
            await asyncio.sleep(quiet / 4)
        cpu_first = self.cpu_first.get(trial)
        return {
            "cpu_s": None if cpu_first is None else cpu_s() - cpu_first,
            "queue_drops": conn.receive_queue_drops(),
            "received": self.counts.get(trial, 0),
            "t_first": self.first.get(trial, 0.0),
            "t_last": self.last.get(trial, 0.0),
        }

    def _count(self, data: bytes) -> None:
        t = now()
        trial = DATAGRAM_HEADER.unpack_from(data)[0]
        n = self.counts.get(trial, 0)
        if n == 0:
            self.first[trial] = t
            self.cpu_first[trial] = cpu_s()
        self.counts[trial] = n + 1
        self.last[trial] = t
