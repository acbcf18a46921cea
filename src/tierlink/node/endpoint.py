"""This node's transport side, shared by dialing and answering.

The certificate and ICE settings, the session description it sends in offers and answers,
the pinned QUIC channel over an ICE pair (prepared ahead or opened on the spot, bound to the
dial's offer secret), and the set of open connections.
"""

from __future__ import annotations

from tierlink.dht import DhtClient
from tierlink.errors import HandshakeFailed
from tierlink.node.config import NodeConfig
from tierlink.node.migration import PathRestarts
from tierlink.node.tasks import Supervisor
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel import PreparedChannel, SecureChannel, open_channel
from tierlink.transport.connection import Connection
from tierlink.transport.ice import IceSettings, local_infos
from tierlink.wire.channel_frames import channel_binding
from tierlink.wire.signaling import OfferSecret, SessionDescription

#: What a connection's ICE restarts need: its dial's offer secret, the DHT, the node's tasks.
RestartSignaling = tuple[OfferSecret, DhtClient, Supervisor]


class Endpoint:
    """Certificate, ICE settings, channel setup and the open connections of one node."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.certificate = LocalCertificate.generate()
        self.ice_settings: IceSettings = config.ice_settings()
        self.connections: set[Connection] = set()
        self.handshakes_failed = 0
        """Secure channels that failed to open (pin, binding proof, timeout, ...)."""
        self.restarts = PathRestarts(
            self.new_ice, self.describe, ice_timeout=config.ice_timeout,
            answer_timeout=config.dial_timeout, check_amplification=config.check_amplification,
            fingerprint=config.identity.fingerprint,
        )
        """ICE restarts of the open connections' paths (:mod:`tierlink.node.migration`)."""

    def new_ice(self, controlling: bool) -> IceConnection:
        """A fresh ICE agent with this node's settings."""
        return self.ice_settings.new_connection(controlling=controlling)

    def describe(
        self, ice: IceConnection, purpose: str = "app", quic_flight: tuple[bytes, ...] = ()
    ) -> SessionDescription:
        """What an offer or answer tells the peer about this side of ``ice``."""
        secure = self.config.secure
        settings = self.config.channel_settings()
        return SessionDescription(
            ice.local_username, ice.local_password, local_infos(ice),
            self.certificate.sha256 if secure else None, purpose,
            (settings.max_message_size, settings.window) if secure else None,
            quic_flight,
        )

    def prepared_channel(self, is_client: bool = True) -> PreparedChannel:
        """A QUIC endpoint built ahead of its ICE path (see :class:`PreparedChannel`)."""
        return PreparedChannel(
            is_client=is_client, certificate=self.certificate,
            settings=self.config.channel_settings(),
        )

    def reply_channel(
        self, params: SessionDescription, secret: OfferSecret
    ) -> PreparedChannel | None:
        """The callee's side of a channel whose handshake began in the offer, if it did."""
        if not (self.config.secure and params.quic_flight and params.cert_sha256):
            return None
        draft = self.prepared_channel(is_client=False)
        usable = draft.receive_first_flight(
            params.quic_flight, params.cert_sha256, channel_binding(secret),
            params.channel_limits,
        )
        return draft if usable else None

    async def open_channel(
        self, ice: IceConnection, is_client: bool, peer: SessionDescription,
        secret: OfferSecret, draft: PreparedChannel | None = None,
    ) -> SecureChannel | None:
        """The pinned QUIC channel over the ICE path to the side ``peer`` describes, bound
        to the dial whose offer ``secret`` is (None in raw mode)."""
        if not self.config.secure:
            return None
        try:
            if peer.cert_sha256 is None:
                raise HandshakeFailed("the peer offered no certificate: it runs without a "
                                      "secure channel (secure=False); both sides must agree")
            binding, limits = channel_binding(secret), peer.channel_limits
            if draft is not None:
                return await draft.open(ice, peer.cert_sha256, binding, limits)
            return await open_channel(
                ice, is_client=is_client, certificate=self.certificate,
                peer_cert_sha256=peer.cert_sha256, binding=binding,
                settings=self.config.channel_settings(), peer_limits=limits,
            )
        except HandshakeFailed:
            self.handshakes_failed += 1
            raise

    def adopt(
        self, ice: IceConnection, peer: str, initiator: bool, session: bytes, ms: float,
        channel: SecureChannel | None, restart: RestartSignaling | None = None,
    ) -> Connection:
        """Wrap a connected ICE pair (and its channel) as a tracked :class:`Connection`;
        with ``restart`` (the dial's offer secret, the DHT and the node's tasks), a dead
        path is replaced by an ICE restart (:mod:`tierlink.node.migration`)."""
        conn = Connection(
            ice, peer, initiator=initiator, session_id=session, connect_ms=ms,
            channel=channel, queue_capacity=self.config.queue_capacity,
            on_close=self._closed,
        )
        self.connections.add(conn)
        if restart is not None:
            self.restarts.attach(conn, *restart)
        return conn

    def _closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.restarts.detach(conn)
