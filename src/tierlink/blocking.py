"""A thread-safe blocking face over the asyncio core, for threaded callers.

One event loop runs in a background thread; every method hands a coroutine to it and waits.
Several threads may wait on one connection while another closes it: the close wakes them all
with :class:`ConnectionClosed`. ``recv_timeout(ms)`` takes milliseconds:
0 = non-blocking, N = wait up to N ms, -1 = wait forever; the message, or None on timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from tierlink.errors import ConnectionClosed, TierlinkError, require_bytes
from tierlink.node import Node, NodeConfig
from tierlink.transport.connection import Connection
from tierlink.wire.records import PeerRecord

T = TypeVar("T")

__all__ = ["BlockingConnection", "BlockingNode"]


class _LoopThread:
    """An event loop in a daemon thread, and a way to run coroutines on it and wait."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._stopped = False
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(ready,), name="tierlink-loop", daemon=True
        )
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        with self._lock:
            if self._stopped:
                coro.close()
                raise ConnectionClosed("the node is closed")
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._pending.add(fut)
        try:
            return fut.result(timeout)
        except concurrent.futures.CancelledError:
            raise ConnectionClosed("the node was closed while waiting") from None
        finally:
            with self._lock:
                self._pending.discard(fut)

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            pending = list(self._pending)
        for fut in pending:
            fut.cancel()
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(10)


def _seconds(timeout_ms: int) -> float | None:
    """Milliseconds (-1 forever) as asyncio seconds (None forever)."""
    if timeout_ms < -1:
        raise ValueError("timeout_ms must be -1 (forever), 0 or a positive number of ms")
    return None if timeout_ms == -1 else timeout_ms / 1000


class BlockingConnection:
    """The blocking face of a :class:`~tierlink.transport.connection.Connection`."""

    def __init__(self, conn: Connection, runner: _LoopThread) -> None:
        self._conn = conn
        self._runner = runner

    @property
    def remote_fingerprint(self) -> str:
        """The peer's fingerprint."""
        return self._conn.remote_fingerprint

    @property
    def selected_pair(self) -> dict[str, dict[str, Any]]:
        """The ICE-selected candidate pair."""
        return self._conn.selected_pair

    @property
    def dropped(self) -> int:
        """Messages dropped by the full receive queue."""
        return self._conn.dropped

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._conn.closed

    def stats(self) -> dict[str, Any]:
        """Counters, JSON-ready."""
        return self._conn.stats()

    def send(self, data: bytes) -> int:
        """Send one message (secure: returns its id once the peer queued it)."""
        require_bytes(data, "send")
        return self._runner.run(self._conn.send(data))

    def send_datagram(self, data: bytes) -> None:
        """Send one unreliable datagram."""
        require_bytes(data, "send_datagram")
        self._runner.run(self._send_datagram(data))

    async def _send_datagram(self, data: bytes) -> None:
        self._conn.send_datagram(data)

    def recv_datagram_timeout(self, timeout_ms: int) -> bytes | None:
        """Next datagram; 0 = non-blocking, N = up to N ms, -1 = forever."""
        return self._runner.run(self._conn.recv_datagram(_seconds(timeout_ms)))

    def recv_timeout(self, timeout_ms: int) -> bytes | None:
        """0 = non-blocking, N = up to N ms, -1 = forever; None on timeout."""
        return self._runner.run(self._conn.recv(_seconds(timeout_ms)))

    def recv(self, timeout: float | None = None) -> bytes | None:
        """Like the async ``recv``: seconds, None = forever."""
        return self._runner.run(self._conn.recv(timeout))

    def close(self) -> None:
        """Close; wakes every thread blocked in ``recv``."""
        with contextlib.suppress(ConnectionClosed):
            self._runner.run(self._conn.close())


class BlockingNode:
    """The blocking face of :class:`~tierlink.node.Node`; use as a context manager."""

    def __init__(self, config: NodeConfig) -> None:
        self._runner = _LoopThread()
        self._node: Node | None = None
        try:
            self._node = self._runner.run(self._start(config))
        except BaseException:
            self._runner.stop()
            raise

    @staticmethod
    async def _start(config: NodeConfig) -> Node:
        node = Node(config)
        await node.start()
        return node

    @property
    def node(self) -> Node:
        """The underlying async node (for use on its loop only)."""
        if self._node is None:
            raise TierlinkError("node is not running")
        return self._node

    @property
    def fingerprint(self) -> str:
        """This node's fingerprint."""
        return self.node.fingerprint

    def __enter__(self) -> BlockingNode:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self, fingerprint: str, timeout: float | None = None) -> BlockingConnection:
        """Dial by fingerprint (see :meth:`Node.connect`)."""
        return BlockingConnection(self._runner.run(self.node.connect(fingerprint, timeout)),
                                  self._runner)

    def accept(self, timeout: float | None = None) -> BlockingConnection | None:
        """The next incoming connection, or None after ``timeout`` seconds."""
        conn = self._runner.run(self.node.accept(timeout))
        return None if conn is None else BlockingConnection(conn, self._runner)

    def lookup(self, fingerprint: str) -> PeerRecord:
        """The verified record of a fingerprint."""
        return self._runner.run(self.node.lookup(fingerprint))

    def close(self) -> None:
        """Close the node (every connection, the embedded DHT) and stop the loop thread."""
        if self._node is not None:
            node, self._node = self._node, None
            try:
                self._runner.run(node.close(), timeout=30)
            finally:
                self._runner.stop()
