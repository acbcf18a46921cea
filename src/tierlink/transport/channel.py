"""Opening a secure channel: at once over a connected ICE path, or prepared ahead of it.

:func:`open_channel` runs a mutually authenticated QUIC handshake over the nominated ICE
pair (dialer = QUIC client, callee = server) and returns a :class:`SecureChannel` once both
certificates matched their pinned SHA-256 and the peer's HELLO proved the dial's
:class:`~tierlink.wire.channel_frames.ChannelBinding` (session, both fingerprints, this
TLS connection): a peer that relays one dial's signaling into another cannot connect its
two victims.
:class:`PreparedChannel` builds a side's first handshake flight before the path exists, so
the flights can travel in the signaling.

The parts: the channel protocol, sans-IO (:mod:`tierlink.protocol.channel`; wire format in
:mod:`tierlink.wire.channel_frames`), the QUIC pump (:mod:`tierlink.transport.quic`) and
the asyncio channel that owns both (:mod:`tierlink.transport.secure_channel`).
"""

from __future__ import annotations

import asyncio
import logging

from tierlink.errors import HandshakeFailed
from tierlink.protocol.channel import DATAGRAM_MAX_PAYLOAD, ChannelProtocol
from tierlink.protocol.channel_events import KeysReady, WriteStream
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.aioquic_adapter import (
    PinnedQuicConnection,
    forget_rtt_sample,
    restamp_in_flight,
)
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel_settings import DEFAULT_WINDOW, ChannelSettings
from tierlink.transport.quic import DATAGRAM_SEND_BACKLOG
from tierlink.transport.quic_clock import quic_clock
from tierlink.transport.quic_setup import (
    QUIC_ADDR,
    binding_exporter,
    hand_out_first_flight,
    quic_configuration,
    start_client,
    start_server,
)
from tierlink.transport.secure_channel import SecureChannel
from tierlink.wire.channel_frames import ChannelBinding

__all__ = [
    "DATAGRAM_MAX_PAYLOAD",
    "DATAGRAM_SEND_BACKLOG",
    "DEFAULT_SETTINGS",
    "DEFAULT_WINDOW",
    "ChannelSettings",
    "PreparedChannel",
    "SecureChannel",
    "open_channel",
]

log = logging.getLogger(__name__)

DEFAULT_SETTINGS = ChannelSettings()


def new_core(
    is_client: bool, settings: ChannelSettings, binding: ChannelBinding,
    peer_limits: tuple[int, int] | None,
) -> ChannelProtocol:
    """The channel protocol of one side with ``settings``, bound to ``binding``."""
    return ChannelProtocol(
        is_client=is_client, binding=binding, max_message_size=settings.max_message_size,
        window=settings.window, queue_capacity=settings.queue_capacity, peer_limits=peer_limits,
    )


class PreparedChannel:
    """One side of a channel prepared before its ICE path exists.

    The QUIC handshake's first two flights travel in the signaling, ahead of the path.
    Dialer (``is_client``): a node keeps one draft ready (building the client and its
    ClientHello is ~1 ms of CPU), so a dial only packetizes :meth:`first_flight` into its
    offer, and feeds the callee's reply from the answer to :meth:`receive_reply` while its
    ICE checks run. Callee: :meth:`receive_first_flight` processes the offer's ClientHello
    and :meth:`reply` gives the flight for the answer, with the callee's HELLO (and its
    binding proof) as 0.5-RTT data. Once the path works the dialer, having checked that
    proof, sends its Finished at once (with its HELLO and first message): the handshake
    costs no round trip on the path. One draft opens one channel; a dialer's draft older
    than the settings' ``liveness_timeout`` and not yet handed out is rebuilt at open.
    Create it on the loop that will open it.
    """

    def __init__(
        self,
        *,
        certificate: LocalCertificate,
        settings: ChannelSettings = DEFAULT_SETTINGS,
        is_client: bool = True,
    ) -> None:
        self.is_client = is_client
        self.settings = settings
        self._certificate = certificate
        self._loop = asyncio.get_running_loop()
        self._created = self._loop.time()
        self._config = quic_configuration(
            is_client=is_client,
            certificate=certificate,
            liveness_timeout=settings.liveness_timeout,
            window=settings.window,
        )
        self._quic: PinnedQuicConnection | None = (
            start_client(self._config, quic_clock()) if is_client else None
        )
        self._used = False
        self._greeted: ChannelProtocol | None = None  # callee: the core whose HELLO left

    @property
    def fresh(self) -> bool:
        """Not used and young enough to open a channel as it is."""
        age = self._loop.time() - self._created
        return not self._used and age <= self.settings.liveness_timeout

    def first_flight(self) -> tuple[bytes, ...]:
        """Dialer: the datagrams of the first flight, to carry in the offer (built once;
        their send time, which starts QUIC's loss and RTT clocks, is now)."""
        quic = self._quic
        if not self.is_client or quic is None:
            raise RuntimeError("only an unused dialer's draft has a first flight")
        return hand_out_first_flight(quic, quic_clock())

    def receive_reply(self, datagrams: tuple[bytes, ...], peer_cert_sha256: bytes) -> None:
        """Dialer: process the callee's reply (from its answer) to our first flight; its
        certificate must match ``peer_cert_sha256`` (the answer's)."""
        quic = self._quic
        if not self.is_client or quic is None or not quic.early_datagrams:
            raise RuntimeError("only a dialer's draft whose first flight went out gets a reply")
        quic.expected_peer_sha256 = peer_cert_sha256
        now = quic_clock()
        restamp_in_flight(quic, now)  # the reply's ACK says nothing of the path's RTT...
        try:
            for datagram in datagrams:
                quic.receive_datagram(datagram, QUIC_ADDR, now=now)
        except Exception as exc:  # garbage from the sealed answer must not escape
            log.info("ignoring an unusable early QUIC reply: %r", exc)
            return
        forget_rtt_sample(quic)
        quic.early_reply = True

    def receive_first_flight(
        self, datagrams: tuple[bytes, ...], peer_cert_sha256: bytes, binding: ChannelBinding,
        peer_limits: tuple[int, int] | None = None,
    ) -> bool:
        """Callee: process the dialer's first flight from its offer and queue our HELLO,
        bound to ``binding``, behind our reply; False if unusable (the dialer then sends it
        on the path, where it is handled as usual)."""
        if self.is_client or self._quic is not None:
            raise RuntimeError("only a fresh callee's draft receives a first flight")
        try:
            quic = start_server(self._config, datagrams, peer_cert_sha256, quic_clock())
        except Exception as exc:  # garbage from a signed peer must not escape
            log.info("ignoring an unusable early QUIC flight: %r", exc)
            return False
        if quic is None or quic.exporter_secret is None:
            return False
        core = new_core(False, self.settings, binding, peer_limits)
        core.handle_event(KeysReady(binding_exporter(quic)))
        for command in core.pop_commands():
            assert isinstance(command, WriteStream)  # the greeting is all it has to say
            quic.send_stream_data(command.stream_id, command.data, command.end_stream)
        self._quic, self._greeted = quic, core
        return True

    def reply(self) -> tuple[bytes, ...]:
        """Callee: the flight answering the dialer's, to carry in the answer."""
        quic = self._quic
        if self.is_client or quic is None:
            raise RuntimeError("only a callee's draft that received a first flight replies")
        return hand_out_first_flight(quic, quic_clock())

    async def open(
        self,
        ice: IceConnection,
        peer_cert_sha256: bytes,
        binding: ChannelBinding,
        peer_limits: tuple[int, int] | None = None,
    ) -> SecureChannel:
        """:func:`open_channel` with what was prepared (a callee's greeted core keeps the
        binding and limits it was given)."""
        if self._used:
            raise RuntimeError("a PreparedChannel opens one channel")
        fresh = self.fresh
        self._used = True
        quic, self._quic = self._quic, None
        if not fresh and quic is not None and self.is_client and not quic.early_datagrams:
            quic = None  # stale and not handed out: open_channel starts afresh
        return await open_channel(
            ice,
            is_client=self.is_client,
            certificate=self._certificate,
            peer_cert_sha256=peer_cert_sha256,
            binding=binding,
            settings=self.settings,
            started=quic,
            peer_limits=peer_limits,
            greeted=self._greeted if quic is not None else None,
        )


async def open_channel(
    ice: IceConnection,
    *,
    is_client: bool,
    certificate: LocalCertificate,
    peer_cert_sha256: bytes,
    binding: ChannelBinding,
    settings: ChannelSettings = DEFAULT_SETTINGS,
    started: PinnedQuicConnection | None = None,
    peer_limits: tuple[int, int] | None = None,
    greeted: ChannelProtocol | None = None,
) -> SecureChannel:
    """Run the pinned, mutually authenticated QUIC handshake over a connected ICE path.

    ``is_client`` is True for the dialer. Raises HandshakeFailed (with the reason) if the
    peer's certificate SHA-256 differs from ``peer_cert_sha256``, the peer rejects ours,
    the peer's HELLO does not prove ``binding`` (the dial's session and fingerprints) for
    this connection, or nothing completes within ``settings.handshake_timeout`` seconds
    (the settings: :class:`ChannelSettings`). The caller keeps owning ``ice``: closing the
    channel does not close it. ``peer_limits``: the peer's (max_message_size, window) if it
    told them through an authenticated channel (its signed offer or sealed answer): its
    HELLO must repeat them. (``started`` and ``greeted``: internal, see :class:`PreparedChannel`.)
    """
    if len(peer_cert_sha256) != 32:
        raise ValueError("peer_cert_sha256 must be the 32-byte SHA-256 of the DER certificate")
    if ice.selected_pair() is None:
        raise HandshakeFailed("the ICE connection has no selected pair (connect it first)")
    channel = SecureChannel(
        ice,
        is_client=is_client,
        certificate=certificate,
        peer_cert_sha256=bytes(peer_cert_sha256),
        settings=settings,
        core=greeted or new_core(is_client, settings, binding, peer_limits),
        started=started,
    )
    await channel.complete_handshake(settings.handshake_timeout)
    return channel

