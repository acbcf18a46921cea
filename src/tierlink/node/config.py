"""Node configuration: everything a node needs, with defaults that work on loopback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import platformdirs

from tierlink.dht.client import DEFAULT_CONNECTIONS
from tierlink.identity import Identity
from tierlink.mailbox.policy import MailboxSettings
from tierlink.node.admission import AdmissionLimits
from tierlink.offline.store import STORE_FILE
from tierlink.transport.channel import ChannelSettings
from tierlink.transport.host_addresses import check_host_address
from tierlink.transport.ice import IceSettings
from tierlink.transport.ice_servers import TurnServer
from tierlink.transport.recv_queue import DEFAULT_CAPACITY

__all__ = ["NodeConfig", "TurnServer"]


@dataclass
class NodeConfig:
    """Everything a node needs. Only ``identity`` is required.

    ``dht_proxy``: URL of an existing OpenDHT REST proxy; None starts an embedded ``dhtnode``
    child (joined to ``bootstrap``). ``mode``: ``private`` (default) publishes no candidates,
    addresses travel only inside encrypted answers; ``public`` lists them in the record.
    ``allow``: fingerprints this node answers; None answers anyone.
    ``secure``: carry the pinned QUIC channel (reliable, encrypted); False carries raw ICE
    datagrams. ``liveness_timeout``: a dead peer is detected within it.
    ``data_dir``: the durable outbox (default: the user's data dir, per identity);
    ``send_budget``: how long :meth:`Node.send` tries a live path before the offline tier.
    ``address_check_interval``: how often a public node checks whether its addresses changed.
    ``admission``: how many offers are opened and answered (see :mod:`tierlink.node.admission`).
    ``check_amplification``: an answer's ICE checks send at most this many bytes per byte of
    the offer to addresses that have not sent us a valid check themselves.
    ``mailboxes``: fingerprints of this node's mailboxes (it registers with each, collects
    from them and names them in its descriptor, valid ``mailbox_descriptor_lifetime``);
    ``mailbox_redundancy``: how many of a recipient's mailboxes a deposit goes to;
    ``mailbox_poll_interval``: how often receipts are fetched and failed deposits retried.
    ``mailbox_serve``: serve as a mailbox for others (None: do not).
    ``host_addresses``: gather host candidates on exactly these (IPv4 or IPv6, normalised;
    ValueError for link-local, multicast or unspecified ones); None: every address of the
    machine a peer could reach (:mod:`tierlink.transport.host_addresses`), IPv6 too unless
    ``use_ipv6`` is False.
    """

    identity: Identity
    dht_proxy: str | None = None
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    dht_port: int | None = None
    dht_no_rate_limit: bool = False
    host_addresses: list[str] | None = None
    use_ipv6: bool = True
    stun_servers: list[tuple[str, int]] = field(default_factory=list)
    turn_servers: list[TurnServer] = field(default_factory=list)
    relay_only: bool = False
    port_range: tuple[int, int] | None = None
    mode: Literal["private", "public"] = "private"
    allow: set[str] | None = None
    ice_timeout: float = 30.0
    dial_timeout: float = 20.0
    record_lifetime: float = 600.0
    address_check_interval: float = 30.0
    queue_capacity: int = DEFAULT_CAPACITY
    dht_timeout: float = 10.0
    #: HTTP connections to the DHT proxy at once: each dial in flight holds up to two (its
    #: answer listen and its offer put), so more concurrent dials than half of it queue.
    dht_connections: int = DEFAULT_CONNECTIONS
    #: Answered connections waiting for :meth:`Node.accept` / :meth:`Node.incoming`; one
    #: completing while this many wait is closed (and logged), as a full listen backlog.
    incoming_backlog: int = 64
    secure: bool = True
    liveness_timeout: float = 15.0
    handshake_timeout: float = 10.0
    max_message_size: int = 16 * 1024 * 1024
    #: Probe a direct path's MTU and send QUIC packets as large as it carries (up to 16 KB
    #: on loopback, 1452 B on Ethernet); False keeps every packet at 1200 bytes.
    path_mtu_probing: bool = True
    data_dir: Path | None = None
    send_budget: float = 10.0
    ack_timeout: float = 10.0
    offline_reput_interval: float = 300.0
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    check_amplification: float = 2.5
    mailboxes: list[str] = field(default_factory=list)
    mailbox_redundancy: int = 1
    mailbox_poll_interval: float = 60.0
    mailbox_descriptor_lifetime: float = 7 * 24 * 3600.0
    mailbox_serve: MailboxSettings | None = None

    def __post_init__(self) -> None:
        if self.host_addresses is not None:
            self.host_addresses = [check_host_address(a) for a in self.host_addresses]

    def state_dir(self) -> Path:
        """Where the outbox and delivered log live (per identity)."""
        if self.data_dir is not None:
            return Path(self.data_dir)
        root = Path(platformdirs.user_data_dir("tierlink"))
        return root / self.identity.fingerprint[:32]

    def state_file(self) -> Path:
        """The node's SQLite state file (outbox, delivered log, answered sessions)."""
        return self.state_dir() / STORE_FILE

    def channel_settings(self) -> ChannelSettings:
        """The secure channel's part of the configuration."""
        return ChannelSettings(
            queue_capacity=self.queue_capacity,
            liveness_timeout=self.liveness_timeout,
            handshake_timeout=self.handshake_timeout,
            max_message_size=self.max_message_size,
            probe_path_mtu=self.path_mtu_probing,
        )

    def ice_settings(self) -> IceSettings:
        """The ICE part of the configuration."""
        return IceSettings(
            host_addresses=self.host_addresses,
            use_ipv6=self.use_ipv6,
            stun_servers=tuple(self.stun_servers),
            turn_servers=tuple(self.turn_servers),
            relay_only=self.relay_only,
            timeout=self.ice_timeout,
            port_range=self.port_range,
        )
