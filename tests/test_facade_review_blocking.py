"""The blocking facade under misuse and shutdown: bad timeouts are refused before anything is
read, two threads closing a node both return once it is closed, a loop thread that dies
wakes every waiting thread and refuses later calls, and a blocking call made on the loop
thread itself fails at once instead of waiting for itself forever."""

from __future__ import annotations

import asyncio
import math
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.nodes import config_for
from tests.waiting import eventually
from tierlink.blocking import MAX_TIMEOUT_MS, BlockingConnection, BlockingNode
from tierlink.dht import DhtNodeProcess
from tierlink.errors import BadTimeout, ConnectionClosed, TierlinkError

#: How long a test lets a thread run before calling it stuck (a bound, never a pass condition).
STUCK_S = 30.0


def in_thread(call: Callable[[], object], what: str) -> tuple[str, object]:
    """Run ``call`` in a daemon thread: ("ok", result) or ("raised", exception); fails if the
    call is still blocked after STUCK_S (the daemon thread is then left behind)."""
    box: list[tuple[str, object]] = []
    thread = start(call, box)
    thread.join(STUCK_S)
    if thread.is_alive():
        raise AssertionError(f"{what}: still blocked after {STUCK_S:g} s")
    return box[0]


def start(call: Callable[[], object], box: list[tuple[str, object]]) -> threading.Thread:
    """``call`` in a new daemon thread, its outcome appended to ``box``."""
    def run() -> None:
        try:
            box.append(("ok", call()))
        except BaseException as exc:  # the outcome is what the test looks at
            box.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_for(predicate: Callable[[], object], what: str) -> None:
    """Block until ``predicate()`` is true, with the tests' one wait helper."""
    asyncio.run(eventually(predicate, what=what))


@pytest.fixture
def nodes(dht_cluster_sync: list[DhtNodeProcess]) -> Iterator[tuple[BlockingNode, BlockingNode]]:
    """(dialer, callee): two blocking nodes, closed after the test."""
    a_dht, b_dht = dht_cluster_sync
    b = BlockingNode(config_for(b_dht, liveness_timeout=120.0))
    a = BlockingNode(config_for(a_dht, liveness_timeout=120.0))
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def connected(a: BlockingNode, b: BlockingNode) -> tuple[BlockingConnection, BlockingConnection]:
    ca = a.connect(b.fingerprint)
    cb = b.accept(timeout=10)
    assert cb is not None
    return ca, cb


BAD_VALUES: list[Any] = [-2, -1.5, -0.5, -(10**400), math.nan, math.inf, -math.inf,
                         MAX_TIMEOUT_MS + 1, 10**400, 1e300]
BAD_TYPES: list[Any] = [True, False, "5", None, b"1", [1]]


def test_bad_timeouts_are_refused_before_anything_is_read(
    nodes: tuple[BlockingNode, BlockingNode],
) -> None:
    ca, cb = connected(*nodes)
    ca.send(b"waiting")  # a queued message: a call that accepted its timeout would take it
    ca.send_datagram(b"datagram")
    wait_for(lambda: cb.stats()["received"] == 2, "the message and the datagram")
    for call in (cb.recv_timeout, cb.recv_datagram_timeout):
        for value in BAD_VALUES:
            with pytest.raises(BadTimeout, match="timeout_ms must be -1"):
                call(value)
        for value in BAD_TYPES:
            with pytest.raises(TypeError, match="timeout_ms takes milliseconds"):
                call(value)
    for value in (math.nan, -math.nan):
        with pytest.raises(BadTimeout, match="NaN"):
            cb.recv(value)
    with pytest.raises(TypeError, match="timeout takes seconds"):
        cb.recv(True)  # type: ignore[arg-type]
    assert isinstance(BadTimeout("x"), TierlinkError)
    assert cb.recv_timeout(MAX_TIMEOUT_MS) == b"waiting"  # nothing was taken by a refused call
    assert cb.recv_datagram_timeout(-1.0) == b"datagram"
    assert cb.recv_timeout(0.5) is None and cb.recv_datagram_timeout(0) is None


def test_two_threads_closing_a_node_both_return_once_it_is_closed(
    nodes: tuple[BlockingNode, BlockingNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = nodes
    node = a.node
    real_close = node.close
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    async def held_close() -> None:  # the node's close, held open until the test releases it
        entered.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        await real_close()
        finished.set()

    monkeypatch.setattr(node, "close", held_close)
    first: list[tuple[str, object]] = []
    first_thread = start(a.close, first)
    assert entered.wait(STUCK_S)
    second: list[tuple[str, object]] = []
    second_thread = start(lambda: (a.close(), finished.is_set())[1], second)
    # Gives a second close that does not wait for the first the chance to return early;
    # a correct one cannot return before ``finished``, whenever the release comes.
    second_thread.join(1.0)
    release.set()
    for thread in (first_thread, second_thread):
        thread.join(STUCK_S)
        assert not thread.is_alive()
    assert first == [("ok", None)]
    assert second == [("ok", True)], "the second close returned before the node was closed"
    assert a.calls_in_progress == 0
    a.close()  # a third time: nothing left to do


def test_a_dying_loop_thread_wakes_every_waiting_thread_and_refuses_later_calls(
    nodes: tuple[BlockingNode, BlockingNode],
) -> None:
    a, b = nodes
    ca, cb = connected(a, b)
    waiting: list[tuple[str, object]] = []
    waiters = [start(lambda: ca.recv_timeout(-1), waiting) for _ in range(3)]
    wait_for(lambda: a.calls_in_progress == 3, "three threads in recv_timeout(-1)")

    def fatal(event: dict[str, Any]) -> None:  # a callback on the loop ends its thread
        raise SystemExit("a path listener exited")

    a.node.watch_paths(fatal)
    kind, exc = in_thread(lambda: a.connect(b.fingerprint), "a dial whose loop died")
    assert kind == "raised" and isinstance(exc, ConnectionClosed), (kind, exc)
    for thread in waiters:
        thread.join(STUCK_S)
        assert not thread.is_alive()
    assert [k for k, _ in waiting] == ["raised"] * 3
    assert all(isinstance(e, ConnectionClosed) for _, e in waiting), waiting
    assert "event loop stopped" in str(waiting[0][1])
    for call in (lambda: ca.send(b"after"), lambda: ca.recv_timeout(0),
                 lambda: a.accept(timeout=0)):
        kind, exc = in_thread(call, "a call after the loop died")
        assert kind == "raised" and isinstance(exc, ConnectionClosed), (kind, exc)
    assert a.calls_in_progress == 0
    a.close()  # returns: the loop's teardown closed the node...
    kind, exc = in_thread(lambda: cb.recv_timeout(STUCK_S * 1000 / 2), "the peer's recv")
    assert kind == "raised" and isinstance(exc, ConnectionClosed), (kind, exc)  # ...and its
    # connections (the peer's liveness timeout is far longer: its close came from ``a``)


def test_a_blocking_call_on_the_loop_thread_fails_at_once(
    nodes: tuple[BlockingNode, BlockingNode],
) -> None:
    a, b = nodes
    seen: list[BaseException] = []

    def listener(event: dict[str, Any]) -> None:  # runs on the loop thread
        try:
            a.lookup(b.fingerprint)
        except TierlinkError as exc:
            seen.append(exc)

    a.node.watch_paths(listener)
    kind, conn = in_thread(lambda: a.connect(b.fingerprint), "a dial whose listener blocks")
    assert kind == "ok" and isinstance(conn, BlockingConnection), (kind, conn)
    assert len(seen) == 1 and "own event loop thread" in str(seen[0])
    conn.send(b"still usable")
    cb = b.accept(timeout=10)
    assert cb is not None and cb.recv_timeout(5000) == b"still usable"


class Interrupted(Exception):
    """What the test's signal handler raises in the main thread (as Ctrl-C would)."""


def test_an_interrupted_recv_does_not_take_the_next_message(
    nodes: tuple[BlockingNode, BlockingNode],
) -> None:
    a, b = nodes
    ca, cb = connected(a, b)
    assert threading.current_thread() is threading.main_thread()  # signals land here

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    def kick() -> None:
        wait_for(lambda: b.calls_in_progress == 1, "the main thread in recv_timeout(-1)")
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        kicker = threading.Thread(target=kick, daemon=True)
        kicker.start()
        with pytest.raises(Interrupted):
            cb.recv_timeout(-1)
        kicker.join(STUCK_S)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    ca.send(b"next")
    assert cb.recv_timeout(STUCK_S * 1000) == b"next"  # not taken by the abandoned call
    assert b.calls_in_progress == 0


def test_stats_are_gathered_on_the_loop_and_still_read_after_close(
    nodes: tuple[BlockingNode, BlockingNode], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection's counters change on the loop thread; stats() copies them there (a dict
    copied from another thread can change size under it), and still answers once the
    connection and its node are closed."""
    a, b = nodes
    ca, _ = connected(a, b)
    threads: list[threading.Thread] = []
    inner = ca.connection.stats

    def recording() -> dict[str, Any]:
        threads.append(threading.current_thread())
        return inner()

    monkeypatch.setattr(ca.connection, "stats", recording)
    assert ca.stats()["remote"] == b.fingerprint
    assert [t.name for t in threads] == ["tierlink-loop"]
    a.close()
    assert ca.stats()["closed"] is True
