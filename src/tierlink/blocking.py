"""A thread-safe blocking face over the asyncio core, for threaded callers.

One event loop runs in a background thread; every method hands a coroutine to it and waits.
Several threads may wait on one connection while another closes it: the close wakes them all
with :class:`ConnectionClosed`. ``recv_timeout(ms)`` takes milliseconds:
0 = non-blocking, N = wait up to N ms (at most :data:`MAX_TIMEOUT_MS`), -1 = wait forever; the
message, or None on timeout; any other value is refused (BadTimeout, or TypeError for a bool or
a non-number). A call whose caller is interrupted (Ctrl-C) is cancelled on the loop too. If the
loop ends (the node closed, or ``SystemExit`` raised by a callback) every waiting and later
call raises ConnectionClosed; a blocking call made on the loop thread itself raises at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from tierlink.errors import BadTimeout, ConnectionClosed, TierlinkError, require_bytes
from tierlink.node import Node, NodeConfig
from tierlink.transport.connection import Connection
from tierlink.wire.records import PeerRecord

T = TypeVar("T")

__all__ = ["BlockingConnection", "BlockingNode"]

log = logging.getLogger(__name__)


#: Longest the loop thread's teardown waits for the node's close and for cancelled tasks (s).
TEARDOWN_S = 10.0

#: Longest ``BlockingNode.close`` waits for the node to close (s).
CLOSE_S = 30.0

#: Largest ``timeout_ms`` (about 24.8 days, poll(2)'s int); beyond it a unit is mistaken.
MAX_TIMEOUT_MS = 2**31 - 1


class _LoopThread:
    """An event loop in a daemon thread, and a way to run coroutines on it and wait.

    However the loop ends (:meth:`stop`, or an exception such as ``SystemExit`` escaping a
    callback), every caller still waiting and every later call gets ConnectionClosed, and the
    loop's teardown runs ``at_exit`` (closing the node) and cancels what is left.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.at_exit: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self._stopped: str | None = None  # why calls are refused, once they are
        self._ending = False  # set on the loop thread once run_forever has returned
        ready = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(ready,), name="tierlink-loop", daemon=True
        )
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        try:
            self.loop.run_forever()
        except BaseException as exc:  # SystemExit from a callback: the thread ends here
            log.warning("the node's event loop ended by %r", exc)
        finally:
            self._ending = True  # a stop() still queued must not end the teardown
            self._refuse("the node's event loop stopped")
            try:
                self.loop.run_until_complete(self._teardown())
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            finally:
                self.loop.close()

    async def _teardown(self) -> None:
        """Close the node if it is still open, then cancel and await every task left."""
        if self.at_exit is not None:
            try:
                await asyncio.wait_for(self.at_exit(), TEARDOWN_S)
            except (Exception, asyncio.CancelledError) as exc:  # logged: the loop is ending
                log.warning("closing the node as its event loop ended failed: %r", exc)
        current = asyncio.current_task()
        for _ in range(3):  # a cancelled task may start another while it unwinds
            tasks = {t for t in asyncio.all_tasks() if t is not current}
            if not tasks:
                return
            for task in tasks:
                task.cancel()
            done, _ = await asyncio.wait(tasks, timeout=TEARDOWN_S)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.info("a task ended with an error as the loop stopped: %r",
                             task.exception())

    @property
    def in_progress(self) -> int:
        """Calls submitted to the loop and not returned yet."""
        with self._lock:
            return len(self._pending)

    @property
    def on_loop_thread(self) -> bool:
        """True when the caller runs on the loop thread (where it must not block)."""
        return threading.current_thread() is self.thread

    def _refuse(self, reason: str) -> None:
        """From now on refuse calls with ConnectionClosed(reason); wake every waiting one."""
        with self._lock:
            if self._stopped is None:
                self._stopped = reason
            pending = list(self._pending)
        for fut in pending:
            fut.cancel()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (ConnectionClosed once stopped)."""
        if self.on_loop_thread:
            coro.close()
            raise TierlinkError(
                "a blocking tierlink call on the node's own event loop thread would wait for "
                "itself forever: use the async API there (BlockingNode.node, Connection)"
            )
        with self._lock:
            if self._stopped is not None:
                coro.close()
                raise ConnectionClosed(self._stopped)
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._pending.add(fut)
        try:
            return fut.result(timeout)
        except concurrent.futures.CancelledError:
            raise ConnectionClosed(self._stopped or "the node was closed while waiting") from None
        except BaseException:  # the caller gave up (Ctrl-C, timeout): so does the call, or a
            fut.cancel()  # recv left waiting would take the next message for nobody
            raise
        finally:
            with self._lock:
                self._pending.discard(fut)

    def read(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the loop, where the state it reads changes (a dict copied from
        another thread may change size under it); run here once the loop has ended."""
        if self.on_loop_thread or not self.thread.is_alive():
            return fn()

        async def on_loop() -> T:
            return fn()

        try:
            return self.run(on_loop())
        except ConnectionClosed:  # the loop is ending: nothing changes the state any more
            return fn()

    def _end_main(self) -> None:
        """On the loop: end ``run_forever`` (not the teardown that follows it)."""
        if not self._ending:
            self.loop.stop()

    def stop(self) -> None:
        """Refuse further calls, wake the waiting ones, end the loop and wait for its teardown
        (not when called on the loop thread itself, which cannot wait for itself)."""
        self._refuse("the node is closed")
        with contextlib.suppress(RuntimeError):  # the loop has already ended and closed
            self.loop.call_soon_threadsafe(self._end_main)
        if not self.on_loop_thread:
            self.thread.join(CLOSE_S)


def _seconds(timeout_ms: float) -> float | None:
    """Milliseconds (-1 forever) as asyncio seconds (None forever); TypeError for a bool or
    a non-number, BadTimeout for NaN, infinities, other negatives and above MAX_TIMEOUT_MS."""
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float):
        raise TypeError(f"timeout_ms takes milliseconds (a number), not "
                        f"{type(timeout_ms).__name__}")
    if timeout_ms == -1:
        return None
    if not 0 <= timeout_ms <= MAX_TIMEOUT_MS:  # NaN fails every comparison
        raise BadTimeout(f"timeout_ms must be -1 (forever), 0 (at once) or up to "
                         f"{MAX_TIMEOUT_MS} ms, not {timeout_ms!r:.40}")
    return timeout_ms / 1000


class BlockingConnection:
    """The blocking face of a :class:`~tierlink.transport.connection.Connection`."""

    def __init__(self, conn: Connection, runner: _LoopThread) -> None:
        self._conn = conn
        self._runner = runner

    @property
    def connection(self) -> Connection:
        """The underlying async connection (for use on its loop only)."""
        return self._conn

    @property
    def remote_fingerprint(self) -> str:
        """The peer's fingerprint."""
        return self._conn.remote_fingerprint

    @property
    def selected_pair(self) -> dict[str, dict[str, Any]]:
        """The ICE-selected candidate pair (read on the loop: a path change replaces it)."""
        return self._runner.read(lambda: self._conn.selected_pair)

    @property
    def dropped(self) -> int:
        """Messages dropped by the full receive queue."""
        return self._conn.dropped

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._conn.closed

    def stats(self) -> dict[str, Any]:
        """Counters, JSON-ready (gathered on the loop, where they change)."""
        return self._runner.read(self._conn.stats)

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

    def recv_datagram_timeout(self, timeout_ms: float) -> bytes | None:
        """Next datagram; 0 = non-blocking, N = up to N ms, -1 = forever."""
        return self._runner.run(self._conn.recv_datagram(_seconds(timeout_ms)))

    def recv_timeout(self, timeout_ms: float) -> bytes | None:
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
        self._close_lock = threading.Lock()
        try:
            self._node = self._runner.run(self._start(config))
        except BaseException:
            self._runner.stop()
            raise
        self._runner.at_exit = self._node.close

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

    @property
    def calls_in_progress(self) -> int:
        """Blocking calls (of this node and its connections) that have not returned yet."""
        return self._runner.in_progress

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
        """Close the node (every connection, the embedded DHT) and stop the loop thread.

        Every thread blocked in a call wakes with ConnectionClosed. Safe to call again and
        from several threads at once: each call returns once the node is closed. Called on
        the loop thread (from a callback), it ends the loop, whose teardown closes the node.
        """
        if self._runner.on_loop_thread:
            self._node = None
            self._runner.stop()
            return
        with self._close_lock:
            node, self._node = self._node, None
            if node is None:  # closed already, or ending from the loop thread: wait for that
                self._runner.stop()
                return
            try:
                self._runner.run(node.close(), timeout=CLOSE_S)
            except TimeoutError:
                raise TierlinkError(f"the node did not close within {CLOSE_S:g} s; "
                                    "its remaining tasks were cancelled") from None
            except ConnectionClosed:
                pass  # the loop had already ended: its teardown closed the node
            finally:
                self._runner.stop()
