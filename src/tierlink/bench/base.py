"""What every benchmarked system provides to the worker: a side that dials or accepts, and a
connection with a reliable mode and a datagram mode.

A worker process holds exactly one side (dialer or callee); the two sides of a measurement
never share a process or an event loop. ``Signal`` carries small JSON messages (offers,
answers, timestamps) between the two workers through the parent process's pipes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import Any, BinaryIO

JsonDict = dict[str, Any]

#: Every benchmark timestamp: CLOCK_MONOTONIC, shared by all processes of the machine, so a
#: dialer's start time and a callee's delivery time can be subtracted.
now = time.monotonic


class Signal:
    """Side channel between the two workers, relayed by the parent (one queue per kind)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._queues: dict[str, asyncio.Queue[JsonDict]] = {}

    def _queue(self, kind: str) -> asyncio.Queue[JsonDict]:
        q = self._queues.get(kind)
        if q is None:
            q = self._queues[kind] = asyncio.Queue()
        return q

    def write(self, msg: JsonDict) -> None:
        """Write one protocol line to the parent (signals and command replies)."""
        self._out.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        self._out.flush()

    def send(self, kind: str, data: JsonDict) -> None:
        """Send ``data`` to the other worker's ``kind`` queue."""
        self.write({"type": "sig", "kind": kind, "data": data})

    def deliver(self, kind: str, data: JsonDict) -> None:
        """Called by the worker's stdin reader for every relayed signal."""
        self._queue(kind).put_nowait(data)

    async def recv(self, kind: str, timeout: float) -> JsonDict:
        """The next ``kind`` message from the other worker (TimeoutError after ``timeout``)."""
        return await asyncio.wait_for(self._queue(kind).get(), timeout)


class BenchConn(ABC):
    """One established connection as the benchmark drives it."""

    @abstractmethod
    async def send(self, data: bytes) -> None:
        """Send one message in the system's reliable mode (best effort for raw aioice)."""

    def send_now(self, data: bytes) -> None:
        """Hand one reliable message over without waiting for flow control (it queues behind
        what is already queued): how a latency probe is sent, so a bulk sender waiting for
        room cannot starve it."""
        raise NotImplementedError("this system has no reliable send without waiting")

    def receive_queue_drops(self) -> int | None:
        """Datagrams the receiving side's own bounded queue dropped (None: no such queue)."""
        return None

    async def send_many(self, payload: bytes, count: int, deadline: float, window: int) -> int:
        """Send ``payload`` ``count`` times as fast as flow control allows; stop at deadline.

        ``window``: sends kept pending at once, for systems whose send awaits the peer.
        """
        sent = 0
        while sent < count and now() < deadline:
            await self.send(payload)
            sent += 1
        return sent

    @abstractmethod
    async def recv(self, timeout: float) -> bytes:
        """The next reliable-mode message."""

    @abstractmethod
    def send_datagram(self, data: bytes) -> None:
        """Send one unreliable datagram without waiting."""

    @abstractmethod
    async def recv_datagram(self, timeout: float) -> bytes:
        """The next datagram."""

    def start_datagram_pump(self, handler: Callable[[bytes], None]) -> Callable[[], None]:
        """Feed every datagram to ``handler`` from a task looping on :meth:`recv_datagram`
        (as an application would receive); returns the function that stops it.
        """

        async def pump() -> None:
            while True:
                try:
                    data = await self.recv_datagram(3600.0)
                except TimeoutError:
                    continue
                handler(data)

        task = asyncio.get_running_loop().create_task(pump())

        def stop() -> None:
            task.cancel()

        return stop

    def start_native_datagram_sink(
        self, handler: Callable[[bytes], None]
    ) -> Callable[[], None] | None:
        """Feed datagrams to ``handler`` from the library's own receive callback, without a
        queue or a task (the transport's ceiling); None if the system has no such hook.
        """
        return None

    def path_type(self) -> str | None:
        """The kind of path the connection runs on (``host``, ``relay``, ...), if known."""
        return None

    def limit_packet_size(self, size: int | None) -> bool:
        """Cap the sender's packet size (None: lift the cap); False if the system has no
        such knob (only tierlink probes the path MTU, so only it has one)."""
        return False

    def datagram_backlog(self) -> int:
        """Bytes of datagrams queued in this process, not yet on the wire (0 if unknown).

        A datagram API that queues without limit (aiortc's unreliable channel) would
        otherwise hide loss behind a growing queue; the pacer drops instead (see worker).
        """
        return 0

    @abstractmethod
    async def close(self) -> None:
        """Close the connection and free its sockets."""


class BenchSide(ABC):
    """One side of a system in one worker process."""

    #: True if the system has no reliable mode (raw aioice): the harness then reports the
    #: paced-datagram ceiling as its reliable 1 KiB figure and skips the reliable runs.
    reliable_is_datagram = False

    def __init__(self, role: str, signal: Signal) -> None:
        self.role = role
        self.signal = signal

    async def setup(self, params: JsonDict) -> JsonDict:
        """Prepare the side (start a node, ...); the result goes back to the parent."""
        return {}

    @abstractmethod
    async def dial(self) -> BenchConn:
        """Open a new connection to the callee (dialer role)."""

    @abstractmethod
    async def accept(self) -> BenchConn:
        """Accept the next connection from the dialer (callee role)."""

    async def incoming(self) -> AsyncIterator[BenchConn]:
        """Accepted connections as they come (callee role), without a timeout per accept."""
        while True:
            yield await self.accept()

    def stats(self) -> JsonDict:
        """The system's own counters (refusals, queues), for the report; {} if none."""
        return {}

    async def shutdown(self) -> None:  # noqa: B027 - optional hook, nothing to release
        """Release everything ``setup`` created."""


async def recv_from_queue(queue: asyncio.Queue[bytes], timeout: float) -> bytes:
    """``queue.get()`` bounded by ``timeout`` seconds.

    The fast path skips ``wait_for`` (a Task and a timer per call in 3.11) when an item is
    already waiting, so the baselines are not slowed down by the harness itself.
    """
    if not queue.empty():
        return queue.get_nowait()
    return await asyncio.wait_for(queue.get(), timeout)


def stdout_for_protocol() -> BinaryIO:
    """Take file descriptor 1 for the protocol and point ``sys.stdout`` at stderr.

    Libraries that print would otherwise corrupt the JSON line stream to the parent.
    """
    import os

    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto
