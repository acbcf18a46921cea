"""The one place tierlink touches aioquic's internals.

aioquic has no public API for what a fingerprint-pinned, mutually authenticated channel
needs:

* asking the client for a certificate (``tls.Context._request_client_certificate``, marked
  "for test purposes only");
* checking the peer's certificate *during* the handshake, so a wrong certificate aborts it
  with a TLS alert on both sides (we wrap ``tls.Context._set_peer_certificate``);
* the TLS exporter (RFC 8446 §7.5) that binds the channel to the dial: aioquic has none,
  so the exporter master secret is derived (``tls.Context.key_schedule``,
  ``tls.KeySchedule.derive_secret``) at the one moment its transcript is the one RFC 8446
  §7.1 names, ClientHello..server Finished: when ``tls.Context._setup_traffic_protection``
  derives the server's application traffic secret, on both sides;
* installing all three on the TLS context, which is created inside
  ``QuicConnection._initialize``;
* offering only the X25519 key exchange (``tls.Context._supported_groups``): aioquic's
  client otherwise generates four key shares (P-256, P-384, X25519, X448) per handshake,
  ~0.5 ms of CPU, and a P-256 exchange follows. Peers that offer more groups still match
  (a server picks the first key share it supports).
* seeing a CONNECTION_CLOSE as soon as it arrives (``QuicConnection._close_event``; the
  public ``ConnectionTerminated`` event only comes after the 3-PTO draining period);
* bounding the unsent DATAGRAM frames (``QuicConnection._datagrams_pending`` grows without
  limit otherwise);
* raising the packet size once path MTU probing (:mod:`tierlink.protocol.pmtu`) found a
  larger one: aioquic fixes it at construction (``QuicConnection._max_datagram_size``,
  copied into the congestion controller ``_loss._cc`` and the pacer ``_loss._pacer``) and
  has no PMTUD;
* keeping a flight sent in the signaling out of the RTT estimate (``_loss``'s sent packets,
  ``_time_of_last_sent_ack_eliciting_packet``, ``_rtt_initialized``);
* moving the connection to a new ICE path (:func:`reset_path`): the packets in flight
  declared lost (``_loss._on_packets_lost``), a new congestion controller and pacer, the
  RTT estimate and PTO backoff forgotten; and, to notice a dead path, the bytes in flight
  and the probe timeout (``_loss.bytes_in_flight``, ``_loss.get_probe_timeout``);
* reading a client's first Initial packet (``aioquic.quic.packet.pull_quic_header`` on an
  ``aioquic.buffer.Buffer``) to create the server for it, as aioquic's own asyncio server does.

Fail-closed design: if aioquic renames the certificate hook, :attr:`PinnedQuicConnection.
peer_certificate_sha256` stays None and the channel refuses the handshake.

Every aioquic name used here that is not aioquic's documented API (QuicConfiguration,
QuicConnection's public methods, the events) is listed in :data:`PRIVATE_NAMES`;
``tests/test_aioquic_adapter.py`` resolves each one on the installed aioquic (pinned exactly,
1.7.2), checks the installed version is the pinned one, and checks the behaviour relied on.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer, BufferReadError  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from aioquic.quic.recovery import QuicPacketPacer
from cryptography.hazmat.primitives import hashes

#: aioquic names this module relies on that are not its documented API; a trailing ``(...)``
#: lists the parameters a called or overridden function must still take.
PRIVATE_NAMES: tuple[str, ...] = (
    # PinnedQuicConnection: the TLS context, created in the overridden _initialize
    "aioquic.quic.connection.QuicConnection._initialize(peer_cid)",
    "aioquic.quic.connection.QuicConnection.tls",
    "aioquic.tls.Context._request_client_certificate",
    "aioquic.tls.Context._supported_groups",
    "aioquic.tls.Context._set_peer_certificate(certificate)",
    "aioquic.tls.Certificate.certificates",
    "aioquic.tls.AlertBadCertificate",
    "aioquic.tls.Group.X25519",
    # the exporter master secret and the TLS exporter
    "aioquic.tls.Context._setup_traffic_protection(direction, epoch, label)",
    "aioquic.tls.Context.key_schedule",
    "aioquic.tls.KeySchedule.derive_secret(label)",
    "aioquic.tls.KeySchedule.algorithm",
    "aioquic.tls.hkdf_expand_label(algorithm, secret, label, hash_value, length)",
    # close_event(), pending_datagrams(), max_datagram_size()
    "aioquic.quic.connection.QuicConnection._close_event",
    "aioquic.quic.connection.QuicConnection._datagrams_pending",
    "aioquic.quic.connection.QuicConnection._max_datagram_size",
    # set_max_datagram_size(): every copy of the packet size
    "aioquic.quic.connection.QuicConnection._loss",
    "aioquic.quic.recovery.QuicPacketRecovery._pacer",
    "aioquic.quic.recovery.QuicPacketPacer._max_datagram_size",
    "aioquic.quic.recovery.QuicPacketRecovery._cc",
    "aioquic.quic.congestion.reno.RenoCongestionControl._max_datagram_size",
    "aioquic.quic.congestion.cubic.CubicCongestionControl._max_datagram_size",
    "aioquic.quic.congestion.base.QuicCongestionControl.congestion_window",
    # restamp_in_flight(), forget_rtt_sample(), smoothed_rtt(), release()
    "aioquic.quic.recovery.QuicPacketRecovery.spaces",
    "aioquic.quic.recovery.QuicPacketSpace.sent_packets",
    "aioquic.quic.packet_builder.QuicSentPacket.sent_time",
    "aioquic.quic.recovery.QuicPacketRecovery._time_of_last_sent_ack_eliciting_packet",
    "aioquic.quic.recovery.QuicPacketRecovery._rtt_initialized",
    "aioquic.quic.recovery.QuicPacketRecovery._rtt_smoothed",
    # initial_destination_cid()
    "aioquic.buffer.Buffer",
    "aioquic.buffer.BufferReadError",
    "aioquic.quic.packet.pull_quic_header(buf, host_cid_length)",
    "aioquic.quic.packet.QuicHeader.packet_type",
    "aioquic.quic.packet.QuicHeader.destination_cid",
    "aioquic.quic.packet.QuicPacketType.INITIAL",
    # idle_deadline(): re-armed by every packet that decrypts (RFC 9000 section 10.1)
    "aioquic.quic.connection.QuicConnection._close_at",
    # bytes_in_flight(), probe_timeout(), reset_path(): path migration
    "aioquic.quic.recovery.QuicPacketRecovery.bytes_in_flight",
    "aioquic.quic.recovery.QuicPacketRecovery.get_probe_timeout(include_max_ack_delay)",
    "aioquic.quic.recovery.QuicPacketRecovery._on_packets_lost("
    "congestion_event, now, packets, persistent_congestion, space)",
    "aioquic.quic.recovery.QuicPacketRecovery._pto_count",
    "aioquic.quic.recovery.QuicPacketRecovery._rtt_latest",
    "aioquic.quic.recovery.QuicPacketRecovery._rtt_min",
    "aioquic.quic.recovery.QuicPacketRecovery._rtt_variance",
    "aioquic.quic.recovery.QuicPacketPacer(max_datagram_size)",
    "aioquic.quic.congestion.cubic.CubicCongestionControl(max_datagram_size)",
    "aioquic.quic.congestion.reno.RenoCongestionControl(max_datagram_size)",
)

#: The largest packet aioquic can build: it writes STREAM and CRYPTO frame lengths as 2-byte
#: varints (at most 16 383), so a larger packet would hold a frame it cannot encode.
MAX_PACKET_SIZE = 16_383
#: QUIC's smallest allowed packet size (RFC 9000 section 14).
MIN_PACKET_SIZE = 1200

#: The only TLS key-exchange group offered and accepted (fast, and every TLS 1.3 stack has it).
KEY_EXCHANGE_GROUPS = [tls.Group.X25519]

#: The label under which TLS 1.3 derives the exporter master secret (RFC 8446 §7.1).
EXPORTER_MASTER_LABEL = b"exp master"
#: The label of the server's application traffic secret, derived from the same transcript.
_SERVER_APPLICATION_LABEL = b"s ap traffic"

#: Reason sent in the TLS alert when a certificate does not match its pin.
PIN_MISMATCH_REASON = (
    "certificate rejected by the other side: its SHA-256 does not match the pinned fingerprint"
)


class PinnedQuicConnection(QuicConnection):
    """A QuicConnection that demands the peer's certificate and pins its SHA-256.

    The server requests a client certificate; both sides compare SHA-256(DER) of the
    peer's leaf certificate with ``expected_peer_sha256`` as soon as it arrives and abort
    with a ``bad_certificate`` alert on mismatch. ``peer_certificate_sha256`` is set only
    once a matching certificate was seen; ``pin_error`` explains a local rejection.
    ``exporter_secret`` is the TLS exporter master secret once the 1-RTT keys exist (see
    :func:`tls_exporter`).
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        expected_peer_sha256: bytes,
        original_destination_connection_id: bytes | None = None,
    ) -> None:
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
        )
        self.expected_peer_sha256 = expected_peer_sha256
        self.peer_certificate_sha256: bytes | None = None
        self.pin_error: str | None = None
        self.exporter_secret: ExporterSecret | None = None
        #: Datagrams handed out ahead of the path, in the signaling (see PreparedChannel).
        self.early_datagrams: tuple[bytes, ...] = ()
        #: Client: the server's reply to those arrived the same way.
        self.early_reply = False

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        context = self.tls
        context._request_client_certificate = True
        context._supported_groups = list(KEY_EXCHANGE_GROUPS)
        original = context._set_peer_certificate

        def checked(certificate: Any) -> None:
            original(certificate)
            digest = hashlib.sha256(certificate.certificates[0][0]).digest()
            if not hmac.compare_digest(digest, self.expected_peer_sha256):
                self.pin_error = (
                    f"peer certificate SHA-256 {digest.hex()} does not match the expected "
                    f"{self.expected_peer_sha256.hex()}"
                )
                raise tls.AlertBadCertificate(PIN_MISMATCH_REASON)
            self.peer_certificate_sha256 = digest

        context._set_peer_certificate = checked  # type: ignore[method-assign]
        protect = context._setup_traffic_protection

        def keyed(direction: Any, epoch: Any, label: bytes) -> None:
            if label == _SERVER_APPLICATION_LABEL and self.exporter_secret is None:
                schedule = context.key_schedule
                assert schedule is not None
                self.exporter_secret = ExporterSecret(
                    schedule.algorithm, schedule.derive_secret(EXPORTER_MASTER_LABEL)
                )
            protect(direction, epoch, label)

        context._setup_traffic_protection = keyed  # type: ignore[method-assign]


@dataclass(frozen=True)
class ExporterSecret:
    """A TLS 1.3 exporter master secret and the hash of the cipher suite it came from."""

    algorithm: hashes.HashAlgorithm
    secret: bytes = field(repr=False)

    def export(self, label: bytes, context: bytes, length: int) -> bytes:
        """TLS-Exporter(label, context, length) of RFC 8446 §7.5 (HKDF-Expand-Label of
        Derive-Secret(secret, label, ""), "exporter", Hash(context))."""
        algorithm = self.algorithm
        empty, ctx = hashes.Hash(algorithm), hashes.Hash(algorithm)
        ctx.update(context)
        derived = tls.hkdf_expand_label(
            algorithm, self.secret, label, empty.finalize(), algorithm.digest_size
        )
        return tls.hkdf_expand_label(algorithm, derived, b"exporter", ctx.finalize(), length)


def tls_exporter(quic: PinnedQuicConnection, label: bytes, context: bytes, length: int) -> bytes:
    """TLS-Exporter(label, context, length) of ``quic``, whose 1-RTT keys must exist
    (:attr:`PinnedQuicConnection.exporter_secret` set); both ends of one connection get
    the same bytes, no other connection does."""
    exporter = quic.exporter_secret
    if exporter is None:
        raise RuntimeError("the connection has no exporter secret before its 1-RTT keys")
    return exporter.export(label, context, length)


def initial_destination_cid(datagram: bytes, cid_length: int) -> bytes | None:
    """The destination connection id of a QUIC Initial packet (the one a server created for
    it must echo), or None if ``datagram`` is not one. ``cid_length``: our own ids' length."""
    try:
        header = pull_quic_header(Buffer(data=datagram), host_cid_length=cid_length)
    except (ValueError, BufferReadError):
        return None
    if header.packet_type != QuicPacketType.INITIAL:
        return None
    return header.destination_cid


def close_event(quic: QuicConnection) -> ConnectionTerminated | None:
    """The pending ConnectionTerminated as soon as the connection started closing, or None."""
    event: ConnectionTerminated | None = quic._close_event
    return event


def idle_deadline(quic: QuicConnection) -> float | None:
    """When the connection would time out idle. ``receive_datagram`` moves it only for a
    packet that decrypted (and for a server's first datagram), so a change across that call
    means the peer was heard: garbage and forged packets leave it as it was."""
    deadline: float | None = quic._close_at
    return deadline


def pending_datagrams(quic: QuicConnection) -> deque[bytes]:
    """The queue of DATAGRAM payloads not yet packed into packets (mutable)."""
    pending: deque[bytes] = quic._datagrams_pending
    return pending


def max_datagram_size(quic: QuicConnection) -> int:
    """The largest datagram the connection builds now."""
    size: int = quic._max_datagram_size
    return size


def set_max_datagram_size(quic: QuicConnection, size: int) -> None:
    """Build packets of up to ``size`` bytes from now on (a probed path MTU).

    The congestion window stays in bytes; it is raised to at least RFC 9002's initial window
    for the new size (min(10 * size, max(14 720, 2 * size))), as section 7.2 asks when the
    datagram size changes.
    """
    if not MIN_PACKET_SIZE <= size <= MAX_PACKET_SIZE:
        raise ValueError(f"packet size must be within {MIN_PACKET_SIZE}-{MAX_PACKET_SIZE}")
    quic._max_datagram_size = size
    loss = quic._loss
    loss._pacer._max_datagram_size = size
    cc: Any = loss._cc  # NewReno and CUBIC keep their own copy of the size
    cc._max_datagram_size = size
    cc.congestion_window = max(cc.congestion_window, min(10 * size, max(14_720, 2 * size)))


def restamp_in_flight(quic: QuicConnection, now: float) -> None:
    """Count every packet still in flight as sent at ``now``.

    A flight carried in the signaling (see tierlink.transport.channel.PreparedChannel) left long
    before the path existed; acknowledged with its real send time, it would make the first RTT
    sample the signaling's delay (tens of ms on loopback), and pacing and loss timers would
    follow that estimate for a while. Touches ``QuicPacketSpace.sent_packets`` (public) and
    ``QuicPacketRecovery._time_of_last_sent_ack_eliciting_packet``.
    """
    loss = quic._loss
    for space in loss.spaces:
        for packet in space.sent_packets.values():
            packet.sent_time = now
    if loss._time_of_last_sent_ack_eliciting_packet:
        loss._time_of_last_sent_ack_eliciting_packet = now


def forget_rtt_sample(quic: QuicConnection) -> None:
    """Let the next RTT sample initialize the estimate again (RFC 9002 section 5.3), as
    if none had been taken: the samples so far measured the signaling, not the path."""
    quic._loss._rtt_initialized = False


def release(quic: QuicConnection) -> None:
    """Break the reference cycles of a connection that is done with.

    aioquic's connection refers to itself through bound methods (frame handlers, loss
    recovery callbacks, streams), so a closed one is freed only by CPython's cyclic garbage
    collector, whose full passes (~20 ms with a node's ~50k objects) show up as dial-time
    outliers. Emptying its attribute dictionary lets reference counting free it at once.
    Call only when nothing will touch ``quic`` again.
    """
    loss = quic.__dict__.get("_loss")
    for space in getattr(loss, "spaces", ()):  # a sent packet's ack callback names its space
        space.sent_packets.clear()
    for part in ("tls", "_loss"):  # hold callbacks into the connection
        inner = quic.__dict__.get(part)
        if inner is not None:
            vars(inner).clear()
    vars(quic).clear()


def smoothed_rtt(quic: QuicConnection) -> float:
    """The connection's smoothed round-trip time estimate in seconds (0.0 before any
    sample), read from ``QuicConnection._loss._rtt_smoothed``."""
    rtt: float = quic._loss._rtt_smoothed
    return rtt


def bytes_in_flight(quic: QuicConnection) -> int:
    """Bytes of sent packets that count as in flight (ack-eliciting or padded) and were
    neither acknowledged nor declared lost; 0 when nothing is outstanding."""
    sent: int = quic._loss.bytes_in_flight
    return sent


def probe_timeout(quic: QuicConnection) -> float:
    """The connection's probe timeout (RFC 9002 section 6.2.1), seconds."""
    pto: float = quic._loss.get_probe_timeout(include_max_ack_delay=True)
    return pto


def reset_path(quic: QuicConnection, now: float, size: int) -> int:
    """Start over on a new path (RFC 9000 section 9.4): every packet in flight on the old
    one is declared lost without a congestion event (its data is retransmitted by the next
    ``datagrams_to_send``), the congestion controller and pacer are new ones for packets of
    ``size`` bytes, the RTT estimate and the PTO backoff are forgotten. Returns how many
    packets were in flight."""
    loss = quic._loss
    lost = 0
    for space in loss.spaces:
        packets = list(space.sent_packets.values())
        if packets:
            lost += len(packets)
            loss._on_packets_lost(congestion_event=False, now=now, packets=packets, space=space)
    quic._max_datagram_size = size
    loss._cc = type(loss._cc)(max_datagram_size=size)
    loss._pacer = QuicPacketPacer(max_datagram_size=size)
    loss._pto_count = 0
    loss._rtt_initialized = False
    loss._rtt_latest = loss._rtt_smoothed = loss._rtt_variance = 0.0
    loss._rtt_min = math.inf
    return lost
