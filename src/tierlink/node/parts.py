"""The parts of a running node, built over one DHT client and wired to each other:

* :class:`~tierlink.node.presence.Presence`: the signed record, kept fresh, and lookups;
* :class:`~tierlink.node.dial.Dialer`: dials others by fingerprint;
* :class:`~tierlink.node.answer.Answerer`: answers the offers of the dialers it chooses to;
* :class:`~tierlink.node.delivery.Messenger`: tiered messages (live links, the offline tier,
  mailboxes: :mod:`tierlink.mailbox`);
* :class:`~tierlink.mailbox.MailboxServer`: when ``config.mailbox_serve`` is set, the mailbox
  service for the ``mailbox``-purpose connections others dial to us.

One :class:`~tierlink.dht.record_book.PeerLookup` serves every lookup of the parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tierlink.backoff import Backoff
from tierlink.dht import DhtClient
from tierlink.dht.record_book import PeerLookup, RecordBook
from tierlink.mailbox import MailboxClient, MailboxServer, MailboxStore, SenderStore
from tierlink.mailbox.tier import MailboxTier
from tierlink.node.answer import Answerer, OnConnection
from tierlink.node.config import NodeConfig
from tierlink.node.delivery import DialLink, Messenger
from tierlink.node.dial import Dialer
from tierlink.node.endpoint import Endpoint
from tierlink.node.presence import Presence
from tierlink.node.tasks import Supervisor


@dataclass
class NodeParts:
    """What a running node is made of (see the module docstring)."""

    dht: DhtClient
    presence: Presence
    dialer: Dialer
    answerer: Answerer
    messenger: Messenger


@dataclass(frozen=True)
class Wiring:
    """What the parts call back into the node: its dials by purpose, its routing of answered
    connections, and its allow-list (read at each call: it may change while running)."""

    dial_link: DialLink
    dial_mailbox: DialLink
    route: OnConnection
    allows: Callable[[str], bool]


def build_parts(
    dht: DhtClient, config: NodeConfig, endpoint: Endpoint, records: RecordBook,
    tasks: Supervisor, session_ids: Callable[[], bytes], wiring: Wiring,
) -> NodeParts:
    """The parts of a node over ``dht``; ``tasks`` owns their background work."""
    identity = config.identity
    lookup = PeerLookup(dht, records)
    endpoint.restarts.lookup = lookup  # tells a restarted peer from a slow one
    presence = Presence(dht, identity, config, endpoint, lookup)
    dialer = Dialer(dht, identity, config, endpoint, presence, tasks, session_ids)
    answerer = Answerer(dht, identity, config, endpoint, tasks, wiring.route)
    messenger = Messenger(
        dht, identity, wiring.dial_link, config.state_dir(), lookup=lookup,
        secure=config.secure, send_budget=config.send_budget,
        ack_timeout=config.ack_timeout, reput_interval_s=config.offline_reput_interval,
        allow=wiring.allows,
    )
    messenger.mailbox = MailboxTier(
        MailboxClient(
            wiring.dial_mailbox, identity, messenger.offline,
            SenderStore(config.state_file()), mailboxes=config.mailboxes,
            allow=lambda: None if config.allow is None else set(config.allow),
            descriptor_lifetime_s=config.mailbox_descriptor_lifetime,
            redundancy=config.mailbox_redundancy, dial_timeout=config.dial_timeout,
        ),
        poll_interval=config.mailbox_poll_interval,
    )
    return NodeParts(dht, presence, dialer, answerer, messenger)


def serve_mailbox(dht: DhtClient, config: NodeConfig, tasks: Supervisor) -> MailboxServer:
    """The mailbox service of ``config.mailbox_serve``, its loops running under ``tasks``."""
    settings = config.mailbox_serve
    assert settings is not None
    store = MailboxStore(config.state_dir() / "mailbox.db")
    server = MailboxServer(dht, config.identity.fingerprint, store, settings)
    tasks.keep_running(server.reput_descriptors, "mailbox-descriptors",
                       Backoff(0.5, maximum=max(0.5, settings.descriptor_interval)))
    tasks.keep_running(server.expire_loop, "mailbox-expiry",
                       Backoff(0.5, maximum=max(0.5, settings.expiry_interval)))
    return server


def message_stats(
    messenger: Messenger | None, server: MailboxServer | None
) -> dict[str, object]:
    """The counters of the message tiers and of the mailbox service, for ``Node.stats``."""
    incoming = messenger.incoming if messenger else None
    out: dict[str, object] = {
        "duplicates_suppressed": incoming.duplicates_suppressed if incoming else 0,
        "messages_held_back": incoming.held_back if incoming else 0,
        "malformed_link_frames": messenger.malformed_link_frames if messenger else 0,
    }
    tier = messenger.mailbox if messenger else None
    if tier is not None:
        out["mailbox_refused_us"] = dict(tier.client.refusals)
        out["mailbox_collected"] = tier.client.collected
    if server is not None:
        out["mailbox_deposits"] = server.deposits
        out["mailbox_refusals"] = dict(server.refusals)
    return out
