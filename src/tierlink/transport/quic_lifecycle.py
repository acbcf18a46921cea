"""The edges of a pump's QUIC connection: what runs once per connection, never per packet.

:func:`take_over` gives the pump (:mod:`tierlink.transport.quic`) the connection it starts
with and puts an unused first flight on the path; :class:`HandshakeDeadline` is the pump's
wait for the channel to open; :func:`send_farewell` sends what aioquic queued as the pump
closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aioquic.quic.configuration import QuicConfiguration

from tierlink.errors import HandshakeFailed
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.aioquic_adapter import PinnedQuicConnection, restamp_in_flight
from tierlink.transport.quic_clock import quic_clock
from tierlink.transport.quic_setup import start_client


def take_over(
    started: PinnedQuicConnection | None, *, config: QuicConfiguration,
    peer_cert_sha256: bytes, ice: IceConnection,
) -> PinnedQuicConnection | None:
    """The connection a pump starts with: ``started`` ahead of the path (see
    :class:`~tierlink.transport.channel.PreparedChannel`: a client with its first flight
    built, or a server that processed that flight), else a new client, else None (a server
    waits for the client's first datagram)."""
    is_client = bool(config.is_client)
    quic = started
    if is_client and quic is None:
        quic = start_client(config, quic_clock())
    if quic is None:
        return None
    quic.expected_peer_sha256 = peer_cert_sha256
    if quic.early_datagrams:  # what went out in the signaling leaves "now"
        restamp_in_flight(quic, quic_clock())
    if is_client and not quic.early_reply:
        # The first flight went out in the offer but the answer had no reply to it:
        # the callee could not use it, so it goes on the path (no retransmission
        # timeout to wait for).
        with contextlib.suppress(ConnectionError):
            for datagram in quic.early_datagrams:
                ice.send_nowait(datagram)
    return quic


class HandshakeDeadline:
    """The wait for an open channel: a future, and a timer that gives up on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: Done once the channel opened (or, with HandshakeFailed, once it cannot).
        self.ready: asyncio.Future[None] = loop.create_future()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def timer_armed(self) -> int:
        """1 while the timer is on the event loop, else 0."""
        return int(self._timer is not None)

    def arm(self, timeout: float, expire: Callable[[str], None]) -> None:
        """Call ``expire(reason)`` unless the channel opens within ``timeout`` s."""
        self._timer = self._loop.call_later(timeout, self._expired, timeout, expire)

    def _expired(self, timeout: float, expire: Callable[[str], None]) -> None:
        self._timer = None
        if not self.ready.done():
            expire(f"no secure handshake with the peer within {timeout:g} s")

    def met(self) -> bool:
        """The channel opened: stop the timer, wake the waiter; False (and nothing done) if
        the wait was already over."""
        if self.ready.done():
            return False
        self._stop_timer()
        self.ready.set_result(None)
        return True

    def fail(self, reason: str) -> None:
        """Stop the timer; a waiter still waiting gets HandshakeFailed(``reason``)."""
        self._stop_timer()
        if not self.ready.done():
            self.ready.set_exception(HandshakeFailed(reason))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def send_farewell(quic: PinnedQuicConnection, ice: IceConnection, now: float) -> None:
    """Send what aioquic has queued (our CONNECTION_CLOSE, or one it queued itself, e.g. a
    TLS alert); best effort: the path may be gone."""
    try:
        for data, _addr in quic.datagrams_to_send(now=now):
            ice.send_nowait(data)
    except Exception:
        pass
