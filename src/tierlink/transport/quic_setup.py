"""Setting up one pinned QUIC connection: aioquic's configuration, a client with its
first flight, a server from a client's first Initial packet, and the flights carried in the
signaling ahead of the path (see :class:`tierlink.transport.channel.PreparedChannel`).

The pump that drives a connection once the path exists is :mod:`tierlink.transport.quic`.
"""

from __future__ import annotations

import ssl

from aioquic.quic.configuration import QuicConfiguration

from tierlink.transport.aioquic_adapter import (
    PinnedQuicConnection,
    initial_destination_cid,
    tls_exporter,
)
from tierlink.transport.certs import LocalCertificate
from tierlink.wire.channel_frames import EXPORTER_LABEL, EXPORTER_SIZE

ALPN = "tierlink/1"
#: The constant pseudo-address given to aioquic: the ICE pair is the only path.
QUIC_ADDR = ("0.0.0.0", 0)
#: QUIC packet size until path MTU probing found more; leaves room for TURN overhead on any
#: path with a 1280+ byte MTU (relayed pairs keep it).
MAX_DATAGRAM_SIZE = 1200
CONNECTION_ID_LENGTH = 8


#: Smallest QUIC flow-control window per stream (bytes), whatever the channel's window.
MIN_FLOW_WINDOW = 1024 * 1024


def quic_configuration(
    *, is_client: bool, certificate: LocalCertificate, liveness_timeout: float, window: int
) -> QuicConfiguration:
    """aioquic's configuration of one channel side whose channel window is ``window``."""
    flow_window = max(window, MIN_FLOW_WINDOW)
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        certificate=certificate.certificate,
        private_key=certificate.private_key,
        verify_mode=ssl.CERT_NONE,  # authentication is the SHA-256 pin, not a CA
        max_datagram_size=MAX_DATAGRAM_SIZE,
        max_datagram_frame_size=65536,
        idle_timeout=liveness_timeout * 2,  # backstop; our own watchdog comes first
        connection_id_length=CONNECTION_ID_LENGTH,
        max_data=2 * flow_window,
        max_stream_data=flow_window,
    )


def start_client(config: QuicConfiguration, now: float) -> PinnedQuicConnection:
    """A client connection with its first flight (the ClientHello) built; pin set later."""
    quic = PinnedQuicConnection(configuration=config, expected_peer_sha256=b"")
    quic.connect(QUIC_ADDR, now=now)
    return quic


def new_server(
    config: QuicConfiguration, initial: bytes, peer_cert_sha256: bytes
) -> PinnedQuicConnection | None:
    """A server connection for the client whose first Initial packet is ``initial``
    (its destination connection id is the one the server must echo); None if ``initial``
    is not a QUIC Initial packet."""
    cid = initial_destination_cid(initial, CONNECTION_ID_LENGTH)
    if cid is None:
        return None
    return PinnedQuicConnection(
        configuration=config, expected_peer_sha256=peer_cert_sha256,
        original_destination_connection_id=cid,
    )


def start_server(
    config: QuicConfiguration, first_flight: tuple[bytes, ...], peer_cert_sha256: bytes,
    now: float,
) -> PinnedQuicConnection | None:
    """A server connection that processed the client's first flight, received ahead of
    the path (in the dialer's offer); None unless it starts with a QUIC Initial packet."""
    quic = new_server(config, first_flight[0], peer_cert_sha256) if first_flight else None
    if quic is not None:
        for datagram in first_flight:
            quic.receive_datagram(datagram, QUIC_ADDR, now=now)
    return quic


def hand_out_first_flight(quic: PinnedQuicConnection, now: float) -> tuple[bytes, ...]:
    """The datagrams ``quic`` has to send now, kept as its flight carried in the
    signaling (built once; their send time is ``now``)."""
    if not quic.early_datagrams:
        quic.early_datagrams = tuple(d for d, _ in quic.datagrams_to_send(now=now))
    return quic.early_datagrams


def binding_exporter(quic: PinnedQuicConnection) -> bytes:
    """The TLS exporter value a HELLO proof binds (see
    :class:`tierlink.wire.channel_frames.ChannelBinding`); the 1-RTT keys must exist."""
    return tls_exporter(quic, EXPORTER_LABEL, b"", EXPORTER_SIZE)
