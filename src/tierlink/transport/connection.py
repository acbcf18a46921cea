"""A connection to one peer over its ICE-selected path.

By default a connection carries the secure channel (:mod:`tierlink.transport.channel`: QUIC over the
ICE path, pinned to the certificate the peer's identity signed): ``send`` is reliable, ordered
and acknowledged, ``send_datagram`` is unreliable. With ``secure=False`` it carries raw ICE
datagrams (:mod:`tierlink.transport.raw_datagrams`): ``send`` and ``send_datagram`` are then
the same, 1 byte up to :attr:`Connection.max_payload` (65,507 on a direct IPv4 path, 4 less
through TURN).

Only the nominated pair's remote address delivers datagrams (others are counted in
``foreign_datagrams``). The receive side: bounded queues (capacity 16 by default),
drop-oldest for datagrams with a counter, ``recv(timeout)`` without polling, and ``close()``
that wakes every waiter and releases every socket, task and timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from tierlink.errors import ConnectionClosed, MessageTooLarge, require_bytes
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.channel import DATAGRAM_MAX_PAYLOAD, SecureChannel
from tierlink.transport.ice import describe_pair, path_of, tier_of
from tierlink.transport.path_migration import Migration, PathEvents
from tierlink.transport.raw_datagrams import RawDatagrams
from tierlink.transport.recv_queue import DEFAULT_CAPACITY, check_timeout

log = logging.getLogger(__name__)

#: Longest a closing connection waits for replaced ICE agents still closing (seconds).
RETIRE_WAIT_S = 2.0


class Transport(Protocol):
    """What a connection needs from its transport (SecureChannel or RawDatagrams)."""

    @property
    def closed(self) -> bool: ...
    @property
    def max_message_size(self) -> int: ...
    @property
    def stats(self) -> dict[str, int]: ...
    async def send(self, data: bytes) -> int: ...
    def submit(self, data: bytes) -> asyncio.Future[int]: ...
    def send_datagram(self, data: bytes) -> None: ...
    async def recv(self, timeout: float | None = None) -> bytes | None: ...
    async def recv_datagram(self, timeout: float | None = None) -> bytes | None: ...
    async def close(self, reason: str | None = None) -> None: ...
    async def wait_closed(self) -> None: ...


class Connection:
    """An established connection; created by :meth:`Node.connect` or :meth:`Node.incoming`."""

    def __init__(
        self,
        ice: IceConnection,
        remote_fingerprint: str,
        *,
        initiator: bool,
        session_id: bytes,
        connect_ms: float,
        channel: SecureChannel | None = None,
        queue_capacity: int = DEFAULT_CAPACITY,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self.remote_fingerprint = remote_fingerprint
        self.initiator = initiator
        self.session_id = session_id
        self.connect_ms = connect_ms
        self.selected_pair: dict[str, dict[str, Any]] = describe_pair(ice)
        self.secure = channel is not None
        self._ice = ice
        self._transport: Transport = (
            channel if channel is not None else RawDatagrams(ice, queue_capacity)
        )
        self._on_close = on_close
        self._closing: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Future[None]] = set()
        #: Path changes of this connection: counters, listeners, events (secure only: a
        #: raw connection has no QUIC layer to carry over to a new path).
        self.migration = Migration(is_dialer=initiator)
        if channel is not None:
            channel.watch_path(self.migration.suspect)
        self._watchers = [
            asyncio.create_task(self._watch_ice(), name="tierlink-ice-watch"),
            asyncio.create_task(self._watch_transport(), name="tierlink-transport-watch"),
        ]

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Connection {self.remote_fingerprint[:16]}… {state} {self.path_type}>"

    # -- state ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once closed by either side or by a failure."""
        return self._closing is not None or self._transport.closed

    @property
    def max_payload(self) -> int:
        """Largest message ``send`` accepts (16 MiB secure; the path's datagram limit raw)."""
        return self._transport.max_message_size

    @property
    def max_datagram_payload(self) -> int:
        """Largest datagram ``send_datagram`` accepts."""
        return DATAGRAM_MAX_PAYLOAD if self.secure else self._transport.max_message_size

    @property
    def sent(self) -> int:
        """Messages sent (secure: acknowledged) plus datagrams sent."""
        s = self._transport.stats
        return s.get("messages_sent", 0) + s.get("datagrams_sent", 0)

    @property
    def received(self) -> int:
        """Messages plus datagrams received (including datagrams later dropped)."""
        s = self._transport.stats
        return s.get("messages_received", 0) + s.get("datagrams_received", 0)

    @property
    def dropped(self) -> int:
        """Datagrams dropped because the receive queue was full (oldest first)."""
        return self._transport.stats.get("datagrams_dropped", 0)

    @property
    def path_type(self) -> str:
        """The selected pair's path, named by its least direct end (``host``, ``srflx``,
        ``prflx`` or ``relay``; ``none`` before a pair is selected)."""
        pair = self.selected_pair
        return path_of(side["type"] for side in pair.values()) if pair else "none"

    @property
    def tier(self) -> str:
        """The delivery tier this connection's path belongs to: ``relay`` or ``direct``."""
        return tier_of(self.path_type)

    @property
    def direct_ms(self) -> float | None:
        """When the final, direct pair carried the connection (ms, like ``connect_ms``);
        None on the relay. Nomination never moves a connection from the relay to a direct
        pair (regular nomination: see :mod:`tierlink.protocol.nomination`), so on a direct
        path it is ``connect_ms``; a path change (:attr:`migration`) starts a new path."""
        return self.connect_ms if self.tier == "direct" else None

    def path_report(self) -> dict[str, Any]:
        """The path and how ICE chose it, JSON-ready: ``path``, ``tier``, ``selected_pair``,
        ``connect_ms`` (first usable pair, the dial included), ``direct_ms`` and ``ice``
        (the agent's check report: first success, nomination time, relay wait, checks)."""
        return {
            "path": self.path_type,
            "tier": self.tier,
            "selected_pair": self.selected_pair,
            "connect_ms": round(self.connect_ms, 2),
            "direct_ms": None if self.direct_ms is None else round(self.direct_ms, 2),
            "ice": self._ice.check_report(),
            **self.migration.stats(),
        }

    def stats(self) -> dict[str, Any]:
        """Counters and path facts, JSON-ready."""
        return {
            "remote": self.remote_fingerprint,
            "secure": self.secure,
            **self.path_report(),
            "sent": self.sent,
            "received": self.received,
            "dropped": self.dropped,
            "closed": self.closed,
            "foreign_datagrams": self._ice.foreign_datagrams,
            **self._transport.stats,
        }

    # -- data ----------------------------------------------------------------------------
    def _check(self, data: bytes, call: str) -> None:
        require_bytes(data, call)
        if self.closed:
            raise ConnectionClosed("connection is closed")
        if not data:
            raise ValueError("cannot send an empty message")

    async def send(self, data: bytes) -> int:
        """Send one message. Secure: reliable, returns its id once the peer queued it
        (waits while the peer's queue is full). Raw: one datagram, returns a counter."""
        self._check(data, "send")
        return await self._transport.send(data)

    def submit(self, data: bytes) -> asyncio.Future[int]:
        """Queue one message now; the future resolves as :meth:`send` would return.

        For pipelining many messages without a task each: keep the number of unfinished
        futures bounded (they wait in memory while the peer's queue is full).
        """
        self._check(data, "submit")
        return self._transport.submit(data)

    def limit_packet_size(self, size: int | None) -> None:
        """Secure channel: send QUIC packets of at most ``size`` bytes (>= 1200); None: as
        large as path MTU probing found. A raw connection sends each message as one
        datagram and ignores this."""
        limit = getattr(self._transport, "limit_packet_size", None)
        if limit is not None:
            limit(size)

    def send_datagram(self, data: bytes) -> None:
        """Send one unreliable datagram (1 byte up to :attr:`max_datagram_payload`)."""
        self._check(data, "send_datagram")
        if len(data) > self.max_datagram_payload:
            raise MessageTooLarge(
                f"datagram of {len(data)} bytes exceeds the limit of "
                f"{self.max_datagram_payload} bytes"
            )
        self._transport.send_datagram(data)

    async def recv(self, timeout: float | None = None) -> bytes | None:
        """Next message: ``timeout=0`` at once, ``t`` up to t seconds, None forever.

        Returns None on timeout; raises :class:`ConnectionClosed` once closed and drained,
        TypeError or BadTimeout for a timeout that is not a number (a bool, NaN).
        """
        return await self._transport.recv(check_timeout(timeout))

    async def recv_datagram(self, timeout: float | None = None) -> bytes | None:
        """Next datagram, with the same timeout rules as :meth:`recv`."""
        return await self._transport.recv_datagram(check_timeout(timeout))

    # -- path changes --------------------------------------------------------------------
    def path_events(self) -> PathEvents:
        """Every path change from this call on (see :meth:`switch_path`), as it happens;
        ``aclose()`` the iterator when done."""
        return self.migration.events()

    @property
    def path_local_address(self) -> str | None:
        """The local address the selected pair sends from (None on a relayed pair, whose
        TURN client socket is not bound to one address, or before a pair is selected)."""
        sock = self._ice.nominated_socket()
        return None if sock is None else str(sock.getsockname()[0])

    async def switch_path(self, ice: IceConnection, **facts: Any) -> dict[str, Any]:
        """Continue this connection over ``ice`` (connected, same peer: an ICE restart's
        agent) and close the old agent; the QUIC connection, the channel and its message
        ids go on. Tells :attr:`migration`'s listeners ``{"event": "path", "change": True,
        "peer", "old_pair", "selected_pair", "old_tier", "path", "tier", "in_flight"
        (packets sent again on the new path), **facts}``."""
        if not isinstance(self._transport, SecureChannel) or self.closed:
            await ice.close()
            raise ConnectionClosed("connection is closed" if self.closed
                                   else "a raw connection cannot change its path")
        old, old_pair, old_tier = self._ice, self.selected_pair, self.tier
        in_flight = self._transport.switch_path(ice)
        self._ice, self.selected_pair = ice, describe_pair(ice)
        self._watchers[0].cancel()
        self._watchers[0] = asyncio.create_task(self._watch_ice(), name="tierlink-ice-watch")
        old.set_datagram_handler(None)
        self._retire(old)
        event = {"event": "path", "change": True, "peer": self.remote_fingerprint,
                 "old_pair": old_pair, "selected_pair": self.selected_pair, "old_tier": old_tier,
                 "path": self.path_type, "tier": self.tier, "in_flight": in_flight, **facts}
        self.migration.changed(event)
        return event

    def _retire(self, old: IceConnection) -> None:
        """Close a replaced agent in the background: its sockets can belong to an address
        that is gone, and releasing its TURN allocation then waits for retransmission
        timeouts that must not hold up the new path or the restart's end."""
        task = asyncio.ensure_future(old.close())
        self._retiring.add(task)
        task.add_done_callback(self._retired)

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("closing a replaced ICE agent failed: %r", task.exception())

    # -- life ----------------------------------------------------------------------------
    async def _watch_ice(self) -> None:
        """Close when aioice reports the connection closed (consent freshness expired)."""
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                event = await self._ice.get_event()
                if event is None or type(event).__name__ == "ConnectionClosed":
                    break
            if isinstance(self._transport, RawDatagrams):
                self._transport.fail("peer unreachable (ICE consent expired)")
            self._start_close()

    async def _watch_transport(self) -> None:
        """Release the ICE agent when the channel closes (peer closed, liveness failed)."""
        with contextlib.suppress(asyncio.CancelledError):
            await self._transport.wait_closed()
            self._start_close()

    def _start_close(self, reason: str | None = None) -> asyncio.Task[None]:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._release(reason))
        return self._closing

    async def _release(self, reason: str | None) -> None:
        current = asyncio.current_task()
        await self._transport.close(reason)
        for task in self._watchers:
            if task is not current and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._ice.set_datagram_handler(None)
        await self._ice.close()
        if self._retiring:  # replaced agents still closing: a bounded wait, no cancel
            await asyncio.wait(set(self._retiring), timeout=RETIRE_WAIT_S)
        if self._on_close is not None:
            self._on_close(self)

    async def close(self, reason: str | None = None) -> None:
        """Close: every waiting receiver wakes with ConnectionClosed (saying ``reason``, if
        given); sockets are released."""
        await asyncio.shield(self._start_close(reason))
