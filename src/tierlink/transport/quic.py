"""The QUIC pump under the secure channel: aioquic (sans-IO) driven over an ICE pair.

:class:`QuicPump` owns one :class:`~tierlink.transport.aioquic_adapter.PinnedQuicConnection`
and moves datagrams between it and the nominated ICE pair: every received ICE datagram goes
into ``receive_datagram``, everything ``datagrams_to_send`` produces goes out through
``IceConnection.send_nowait``, and aioquic's timer is one asyncio TimerHandle (no polling,
no second socket). The flush runs once per event-loop pass (``call_soon``), so a batch of
datagrams read in one pass (see :mod:`tierlink.transport.aioice_adapter`) costs one
``datagrams_to_send`` and one ack packet. Once open it keeps the peer alive and watched
(:mod:`tierlink.transport.liveness`, on one timer shared by every connection of the loop;
it replaces ICE's consent checks) and probes the path MTU of a direct pair
(:mod:`tierlink.transport.path_mtu`).

aioquic's events reach its :class:`PumpListener` as tierlink's own transport events
(:mod:`.quic_events`); the listener calls :meth:`QuicPump.mark_ready` once its own greeting
completed. A dead path is noticed (:mod:`.path_migration`) and replaced under the same
QUIC connection by :meth:`QuicPump.switch_path`. Its start and end: :mod:`.quic_lifecycle`.
"""

from __future__ import annotations

import asyncio

from aioquic.quic.configuration import QuicConfiguration

from tierlink.protocol.channel_events import (
    ERROR_HANDSHAKE,
    ERROR_LIVENESS,
    ERROR_NONE,
    ERROR_PROTOCOL,
    ConnectionTerminated,
    KeysReady,
    TransportEvent,
)
from tierlink.protocol.pmtu import is_probe_traffic
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.aioice_consent import stop_consent_checks
from tierlink.transport.aioquic_adapter import (
    PinnedQuicConnection,
    bytes_in_flight,
    close_event,
    idle_deadline,
    max_datagram_size,
    pending_datagrams,
    release,
    reset_path,
    set_max_datagram_size,
    smoothed_rtt,
)
from tierlink.transport.liveness import Liveness
from tierlink.transport.path_migration import PathWatch
from tierlink.transport.path_mtu import PathMtu
from tierlink.transport.pump_listener import DETACHED, PumpListener
from tierlink.transport.quic_clock import quic_clock
from tierlink.transport.quic_events import termination_reason, translate
from tierlink.transport.quic_lifecycle import HandshakeDeadline, send_farewell, take_over
from tierlink.transport.quic_setup import (
    MAX_DATAGRAM_SIZE,
    QUIC_ADDR,
    binding_exporter,
    new_server,
)

#: Unsent datagrams kept in aioquic when the congestion window is full (oldest dropped).
DATAGRAM_SEND_BACKLOG = 256


class QuicPump:
    """Pump, timers, liveness and teardown of one pinned QUIC connection over ICE."""

    def __init__(
        self, ice: IceConnection, listener: PumpListener, *, config: QuicConfiguration,
        peer_cert_sha256: bytes, liveness_timeout: float,
        started: PinnedQuicConnection | None = None, probe_path_mtu: bool = True,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._ice = ice
        self._listener = listener
        self._config = config
        self.is_client = bool(config.is_client)
        self.peer_cert_sha256 = peer_cert_sha256
        self._liveness = Liveness(
            liveness_timeout, is_client=self.is_client, ping=self._ping,
            expire=lambda reason: self.close(reason, error_code=ERROR_LIVENESS),
        )
        # A connection started ahead of the path (see PreparedChannel): a client with its
        # first flight built, or a server that processed that flight.
        self._started = started
        self._quic: PinnedQuicConnection | None = None
        self._handshake = HandshakeDeadline(self._loop)
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()
        self.closed = False
        self.close_reason: str | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._quic_timer: asyncio.TimerHandle | None = None
        self._quic_timer_at = 0.0  # its deadline (uvloop's call_at may return a plain Handle)
        self._probe_path_mtu = probe_path_mtu
        self._probe_due = False
        self._mtu = PathMtu(ice, MAX_DATAGRAM_SIZE)
        self._last_packet_size = MAX_DATAGRAM_SIZE  # what max_packet_size says once closed
        self._last_rtt = 0.0
        self._keys_announced = False
        #: Notices a dead path once open (set its ``on_suspect``: :mod:`.path_migration`).
        self.path_watch = PathWatch()

    # -- state ------------------------------------------------------------------------------
    @property
    def max_packet_size(self) -> int:
        """The largest QUIC packet sent on this path now (1200 until probing found more)."""
        return max_datagram_size(self._quic) if self._quic is not None else self._last_packet_size

    @property
    def smoothed_rtt(self) -> float:
        """QUIC's smoothed round-trip time estimate, seconds (the last one once closed)."""
        return smoothed_rtt(self._quic) if self._quic is not None else self._last_rtt

    @property
    def unsent_datagrams(self) -> int:
        """DATAGRAM frames queued and not yet sent (the congestion window was full)."""
        return len(pending_datagrams(self._quic)) if self._quic is not None else 0

    @property
    def path_probing(self) -> bool:
        """True once path MTU probing started (direct pair, don't-fragment set)."""
        return self._mtu.probing

    @property
    def armed_timers(self) -> int:
        """Timers and scheduled callbacks the pump holds on the event loop (0 once closed)."""
        own = (self._flush_handle is not None) + (self._quic_timer is not None)
        return (own + self._handshake.timer_armed + self._liveness.armed_timers
                + self._mtu.timer_armed + self.path_watch.timer_armed)

    @property
    def keepalives_sent(self) -> int:
        """Keep-alive PINGs sent because the path was quiet."""
        return self._liveness.keepalives_sent

    def limit_packet_size(self, size: int | None) -> None:
        """Send packets of at most ``size`` bytes (at least 1200); None: as large as the
        probed path carries. For paths that lose large packets without telling."""
        self._mtu.limit(size)
        self._apply_packet_size()

    def _apply_packet_size(self) -> None:
        size = self._mtu.packet_size
        if self._quic is not None and size != max_datagram_size(self._quic):
            set_max_datagram_size(self._quic, size)

    async def wait_closed(self) -> None:
        """Wait until the connection is closed, for whatever reason."""
        await asyncio.shield(self._closed_fut)

    # -- what the listener asks for -----------------------------------------------------------
    def write_stream(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue stream data; it leaves with the next flush (this loop pass)."""
        if self._quic is not None and not self.closed:
            self._quic.send_stream_data(stream_id, data, end_stream)
            self.kick()

    def send_datagram(self, data: bytes) -> int:
        """Queue one DATAGRAM frame; return how many older unsent ones were dropped to keep
        at most DATAGRAM_SEND_BACKLOG."""
        if self._quic is None or self.closed:
            return 0
        self._quic.send_datagram_frame(data)
        pending = pending_datagrams(self._quic)
        dropped = 0
        while len(pending) > DATAGRAM_SEND_BACKLOG:
            pending.popleft()
            dropped += 1
        self.kick()
        return dropped

    def mark_ready(self) -> None:
        """The channel is open: stop the handshake timer, start keep-alive and watchdog,
        which take over from ICE's consent checks (see :mod:`.aioice_consent`)."""
        if not self._handshake.met():
            return
        self._liveness.start()
        self.path_watch.active = True
        stop_consent_checks(self._ice)
        # Probe once what opened the channel (e.g. our HELLO) is on the wire (see _flush).
        self._probe_due = self._probe_path_mtu
        self.kick()

    # -- handshake ----------------------------------------------------------------------------
    async def start(self, timeout: float) -> None:
        """Start the pump and wait until :meth:`mark_ready` (or raise HandshakeFailed)."""
        self._handshake.arm(timeout, lambda reason: self.close(reason, error_code=ERROR_HANDSHAKE))
        started, self._started = self._started, None
        self._quic = take_over(started, config=self._config,
                               peer_cert_sha256=self.peer_cert_sha256, ice=self._ice)
        # Datagrams that arrived before the channel existed (the server's flight can
        # beat the dialer's open) are handed over now, to a connection that exists.
        self._ice.set_datagram_handler(self._on_datagram, keep_reading=self._listener.keep_reading)
        if self._quic is not None and not self.closed:
            # Flushed once this loop pass ends: a dialer whose handshake completed in the
            # signaling gets its channel first, so its first message leaves in the same
            # datagram as its TLS Finished.
            self._process(flush=False)
        try:
            await self._handshake.ready
        except asyncio.CancelledError:
            self.close("handshake cancelled", error_code=ERROR_HANDSHAKE)
            raise

    def _pin_matches(self) -> bool:
        """After HandshakeCompleted: True if the pinned certificate was seen, else close."""
        quic = self._quic
        if quic is None or quic.peer_certificate_sha256 != self.peer_cert_sha256:
            # Fail closed: no client certificate, or the pin hook did not run.
            self.close("peer presented no certificate matching the pinned SHA-256",
                       error_code=ERROR_HANDSHAKE)
            return False
        return True

    # -- pump ---------------------------------------------------------------------------------
    def _on_datagram(self, data: bytes) -> None:
        """ICE callback: one received UDP payload."""
        if self.closed:
            return
        if is_probe_traffic(data):  # path MTU probing, not QUIC (see tierlink.protocol.pmtu)
            if self._mtu.on_traffic(data):
                self._apply_packet_size()
            return
        now = quic_clock()
        try:
            if self._quic is None:
                if self.is_client:
                    return
                self._quic = new_server(self._config, data, self.peer_cert_sha256)
                if self._quic is None:
                    return
            idle, in_flight = idle_deadline(self._quic), bytes_in_flight(self._quic)
            self._quic.receive_datagram(data, QUIC_ADDR, now=now)
            if idle_deadline(self._quic) != idle:  # a packet decrypted: the peer is alive
                heard = self._loop.time()  # liveness and path watch run on loop timers
                self._liveness.heard(heard)
                self.path_watch.received(self._quic, heard, in_flight)
            self._process(flush=False)
        except Exception as exc:  # a bug must close the channel, not vanish inside aioice
            self.close(f"internal error: {exc!r}", error_code=ERROR_PROTOCOL)

    def _on_quic_timer(self) -> None:
        self._quic_timer = None
        if self._quic is None or self.closed:
            return
        try:
            self._quic.handle_timer(now=quic_clock())
            self._process()
        except Exception as exc:
            self.close(f"internal error: {exc!r}", error_code=ERROR_PROTOCOL)

    def _process(self, *, flush: bool = True) -> None:
        """Hand aioquic's events to the listener, then close or flush (now, or once this
        loop pass ends: every datagram read in one pass then shares one
        ``datagrams_to_send``)."""
        quic = self._quic
        assert quic is not None
        batch: list[TransportEvent] = []  # handed over in one call: one pass of the channel
        if not self._keys_announced and quic.exporter_secret is not None:
            self._keys_announced = True  # first: before any 1-RTT data it protects
            batch.append(KeysReady(binding_exporter(quic)))
        terminated = translate(quic, batch, self._pin_matches)
        if batch:
            self._listener.transport_events(batch)
        if terminated is not None and not self.closed:
            self.close(termination_reason(terminated), notify=False)
        if self.closed:
            return
        if quic.pin_error is not None:
            self.close(quic.pin_error, error_code=ERROR_HANDSHAKE)
            return
        ended = close_event(quic)
        if ended is not None:  # CONNECTION_CLOSE seen: don't wait for the draining period
            self.close(termination_reason(ended), notify=False)
            return
        if flush:
            self._flush()
        else:
            self.kick()

    def _flush(self) -> None:
        """Send every datagram aioquic has ready and re-arm its timer."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        quic = self._quic
        if quic is None or self.closed:
            return
        self._listener.before_flush()
        now = quic_clock()
        try:
            for data, _addr in quic.datagrams_to_send(now=now):
                self._ice.send_nowait(data)
        except ConnectionError as exc:
            self.close(f"ICE path lost: {exc}", notify=False)
            return
        self.path_watch.sent(quic, self._loop.time())
        when = quic.get_timer()
        timer = self._quic_timer
        if timer is not None and (when is None or self._quic_timer_at != when):
            timer.cancel()
            self._quic_timer = timer = None
        if when is not None and timer is None:  # in quic_clock time, not the loop's
            self._quic_timer = self._loop.call_later(when - quic_clock(), self._on_quic_timer)
            self._quic_timer_at = when
        if self._probe_due:
            self._probe_due = False
            self._mtu.start()

    def kick(self) -> None:
        """Flush soon: coalesces everything queued in this loop iteration."""
        if self._flush_handle is None and not self.closed:
            self._flush_handle = self._loop.call_soon(self._flush)

    # -- path migration -----------------------------------------------------------------------
    def switch_path(self, ice: IceConnection) -> int:
        """Carry the connection over ``ice`` (connected) from now on (the caller closes the
        old agent). What depends on the path starts over (1200-byte packets until probed,
        congestion window, RTT); what was in flight is sent again on the new path, with a
        PING for an acknowledgement at once. Returns how many packets were in flight."""
        if self.closed or self._quic is None:
            return 0
        self._ice.set_datagram_handler(None)
        self._ice = ice
        self._mtu.stop()
        self._mtu = self._mtu.renewed(ice)
        stop_consent_checks(ice)
        lost = reset_path(self._quic, quic_clock(), self._mtu.packet_size)
        self.path_watch.reset()
        ice.set_datagram_handler(self._on_datagram, keep_reading=self._listener.keep_reading)
        self._quic.send_ping(0)
        self._probe_due = self._probe_path_mtu
        self.kick()
        return lost

    def _ping(self, uid: int) -> None:
        if self._quic is not None and not self.closed:
            self._quic.send_ping(uid)
            self.kick()

    # -- teardown -----------------------------------------------------------------------------
    def close(self, reason: str, *, error_code: int = ERROR_NONE, notify: bool = True,
              peer_reason: str | None = None) -> None:
        """Close once: tell the peer ``peer_reason`` (default: ``reason``) with
        ``error_code`` unless ``notify`` is False (best effort; a graceful close first sends
        what is queued), report the end to the listener, drop every timer."""
        if self.closed:
            return
        quic = self._quic
        if quic is not None:
            if notify and error_code == ERROR_NONE:
                self._flush()  # a graceful close first sends what is queued (e.g. our last ACK)
                if self.closed:  # the flush found the ICE path gone and closed already
                    return
            if notify:
                quic.close(error_code=error_code, reason_phrase=peer_reason or reason[:200])
            send_farewell(quic, self._ice, quic_clock())
        self.closed = True
        self.close_reason = reason
        self._ice.set_datagram_handler(None)
        for handle in (self._flush_handle, self._quic_timer):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._quic_timer = None
        self._liveness.release()
        self._mtu.stop()
        self.path_watch.stop()
        self._handshake.fail(reason)
        listener, self._listener = self._listener, DETACHED
        listener.transport_event(ConnectionTerminated(reason))
        self._quic = None  # release aioquic's buffers
        if quic is not None:
            self._last_packet_size = max_datagram_size(quic)
            self._last_rtt = smoothed_rtt(quic)
            release(quic)
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
