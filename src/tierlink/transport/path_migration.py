"""Path migration on asyncio: noticing a dead path, and what a connection shows of it.

:class:`PathWatch` drives the sans-IO :class:`~tierlink.protocol.path_restart.
DeadPathDetector` for one QUIC pump: one loop timer, armed only while ack-eliciting packets
are outstanding (an idle connection holds none), firing ``on_suspect("unanswered")`` once
they stayed unanswered for the detector's bound.

:class:`Migration` is what a :class:`~tierlink.transport.connection.Connection` exposes of
its path changes: the restart negotiation (:class:`~tierlink.protocol.path_restart.
RestartNegotiation`, run by the node's restart signaling), counters, listeners and an async
iterator of path-change events. The node's signaling sets :attr:`Migration.on_suspect`;
without it (raw connections, a connection made without a node) a suspect path is only
counted and the liveness watchdog decides, as before.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from tierlink.protocol.path_restart import DeadPathDetector, RestartNegotiation
from tierlink.transport.aioquic_adapter import PinnedQuicConnection, bytes_in_flight, probe_timeout

#: Called with each path event (a dict, see :meth:`Migration.changed`).
PathEventListener = Callable[[dict[str, Any]], None]
#: Most path events kept for an :meth:`Migration.events` iterator that lags behind.
EVENT_BACKLOG = 64


class PathEvents(AsyncIterator[dict[str, Any]]):
    """An async iterator of a connection's path-change events (see :meth:`Migration.events`)."""

    def __init__(self, queues: list[asyncio.Queue[dict[str, Any]]]) -> None:
        self._queues = queues
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(EVENT_BACKLOG)
        queues.append(self._queue)

    async def __anext__(self) -> dict[str, Any]:
        if self._queue not in self._queues:
            raise StopAsyncIteration
        return await self._queue.get()

    async def aclose(self) -> None:
        """Stop receiving events."""
        if self._queue in self._queues:
            self._queues.remove(self._queue)


class PathWatch:
    """The dead-path detector of one pump, on one timer armed only while data is out."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._detector = DeadPathDetector()
        #: Called with ``"unanswered"`` each time the open path looks dead.
        self.on_suspect: Callable[[str], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pto = 0.0
        self.active = False

    @property
    def timer_armed(self) -> bool:
        """True while the detector's timer is set (only with packets outstanding)."""
        return self._timer is not None

    def sent(self, quic: PinnedQuicConnection, now: float) -> None:
        """After a flush: start the deadline if ack-eliciting packets went out."""
        if self.active:
            self._update(quic, now, acked=False)

    def received(self, quic: PinnedQuicConnection, now: float, in_flight_before: int) -> None:
        """After an authenticated packet: an acknowledgement moves the deadline."""
        if self.active:
            self._update(quic, now, acked=bytes_in_flight(quic) < in_flight_before)

    def _update(self, quic: PinnedQuicConnection, now: float, acked: bool) -> None:
        self._pto = probe_timeout(quic)
        deadline = self._detector.update(now, bytes_in_flight(quic) > 0, acked, self._pto)
        if deadline is None:
            self._cancel()
        elif self._timer is None:
            self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        deadline = self._detector.deadline
        if deadline is None or not self.active:
            return
        if not self._detector.expired(now):  # moved later by an acknowledgement
            self._timer = self._loop.call_at(deadline, self._fire)
            return
        self._detector.declared(now, self._pto)
        self._timer = self._loop.call_at(self._detector.deadline or now, self._fire)
        if self.on_suspect is not None:
            self.on_suspect("unanswered")

    def reset(self) -> None:
        """A new path: nothing outstanding on it yet."""
        self._detector.deadline = None
        self._cancel()

    def stop(self) -> None:
        """Stop watching for good (the connection closed)."""
        self.active = False
        self.on_suspect = None
        self.reset()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Migration:
    """A connection's path changes: the restart state, counters, listeners and events."""

    def __init__(self, is_dialer: bool) -> None:
        self.negotiation = RestartNegotiation(is_dialer=is_dialer)
        #: Set by the node's restart signaling: called with the reason (``unanswered``,
        #: ``address``) when the path looks dead.
        self.on_suspect: Callable[[str], None] | None = None
        #: Times the path looked dead, by reason.
        self.suspects: Counter[str] = Counter({"unanswered": 0, "address": 0})
        self.changes = 0
        """Path changes: a new ICE pair took over the connection."""
        self.last_suspect_at: float | None = None
        """When (loop time) the path was last declared dead."""
        self.peer_restarted = False
        """True once the node's restart signaling closed this connection because the peer
        started again without the session (its restart could never be answered)."""
        self.listeners: list[PathEventListener] = []
        self._queues: list[asyncio.Queue[dict[str, Any]]] = []

    def suspect(self, reason: str) -> None:
        """The path looks dead (``reason``): count it and tell the restart signaling."""
        self.suspects[reason] += 1
        self.last_suspect_at = asyncio.get_running_loop().time()
        if self.on_suspect is not None:
            self.on_suspect(reason)

    def changed(self, event: dict[str, Any]) -> None:
        """A new pair took over: count it and hand ``event`` to every listener and
        iterator (``{"event": "path", "change": True, "old_pair", "selected_pair", ...}``)."""
        self.changes += 1
        for listener in list(self.listeners):
            listener(event)
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()  # a lagging reader loses the oldest event
            queue.put_nowait(event)

    def events(self) -> PathEvents:
        """Every path-change event from this call on, as it happens (the newest
        ``EVENT_BACKLOG`` kept for a reader that lags); ``aclose()`` stops it."""
        return PathEvents(self._queues)

    def stats(self) -> dict[str, Any]:
        """Counters, JSON-ready: ``path_changes``, ``path_suspects`` by reason, the restarts
        (``started``, ``answered``, ``succeeded``, ``failed``, ``yielded``), the restart
        messages refused by reason and whether the peer restarted (``peer_restarted``)."""
        return {
            "path_changes": self.changes,
            "peer_restarted": self.peer_restarted,
            "path_suspects": dict(self.suspects),
            "restarts": dict(self.negotiation.counts),
            "restarts_refused": dict(self.negotiation.refused),
        }
