"""The node: an identity, a DHT, ICE settings, and the tiers put together.

:class:`Node` is the composition root. It starts (or reaches) the DHT, builds the parts
(:mod:`tierlink.node.parts`: presence, dialer, answerer, messenger, mailbox service) and
routes each answered connection: message links to the messenger, mailbox connections to the
mailbox service, the rest to :meth:`Node.incoming`. One
:class:`~tierlink.node.tasks.Supervisor` owns the node's background work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType

from tierlink.dht import DhtClient, DhtNodeProcess
from tierlink.dht.record_book import RecordBook
from tierlink.errors import ConnectionClosed, TierlinkError, require_bytes
from tierlink.identity import is_fingerprint
from tierlink.mailbox import MailboxServer
from tierlink.node.answer import Answerer
from tierlink.node.config import NodeConfig
from tierlink.node.delivery import DEFAULT_TTL_S, Messenger
from tierlink.node.delivery_events import Delivery
from tierlink.node.endpoint import Endpoint
from tierlink.node.incoming_messages import Message
from tierlink.node.parts import NodeParts, Wiring, build_parts, message_stats, serve_mailbox
from tierlink.node.tasks import Supervisor
from tierlink.offline.store import claim_owner
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.connection import Connection
from tierlink.transport.ice import IceSettings, PathListener, PathTally, TurnServer
from tierlink.transport.recv_queue import RecvQueue, check_timeout
from tierlink.wire.records import PeerRecord
from tierlink.wire.signaling import new_session_id

log = logging.getLogger(__name__)

__all__ = ["Delivery", "Message", "Node", "NodeConfig", "TurnServer"]

_NOT_RUNNING = "node is not running (use 'async with Node(config)')"


class Node:
    """A tierlink peer. Use as ``async with Node(config) as node: ...``.

    ``session_ids`` makes the session id of each dial (random by default).
    """

    def __init__(
        self, config: NodeConfig, *, session_ids: Callable[[], bytes] = new_session_id
    ) -> None:
        if config.mode not in ("private", "public"):
            raise ValueError(f"mode must be 'private' or 'public', not {config.mode!r}")
        for name in ("incoming_backlog", "dht_connections"):
            if getattr(config, name) < 1:
                raise ValueError(f"NodeConfig.{name} must be at least 1")
        self.config = config
        self.identity = config.identity
        self.endpoint = Endpoint(config)
        self.records = RecordBook()
        self.dht: DhtClient | None = None
        self.dht_process: DhtNodeProcess | None = None
        self.messenger: Messenger | None = None
        self.mailbox_server: MailboxServer | None = None
        """The mailbox service (``config.mailbox_serve``), once started."""
        self._session_ids = session_ids
        self._parts: NodeParts | None = None
        self._tasks = Supervisor("node")
        self._incoming: RecvQueue[Connection] = RecvQueue(config.incoming_backlog)
        self._started = False
        self._closed = False
        self._closing: asyncio.Future[None] | None = None

    # -- life ----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """This node's fingerprint (128 hex)."""
        return self.identity.fingerprint

    @property
    def certificate(self) -> LocalCertificate:
        """The certificate this node's QUIC channels present (pinned in offers/answers)."""
        return self.endpoint.certificate

    @property
    def ice_settings(self) -> IceSettings:
        """The ICE settings new connections (and public-mode records) use."""
        return self.endpoint.ice_settings

    @ice_settings.setter
    def ice_settings(self, settings: IceSettings) -> None:
        self.endpoint.ice_settings = settings

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Join the DHT, publish the signed record, start answering offers."""
        if self._started:
            return
        self._started = True
        try:
            claim_owner(self.config.state_file(), self.identity.fingerprint)
            url = self.config.dht_proxy
            if url is None:
                self.dht_process = DhtNodeProcess(
                    port=self.config.dht_port,
                    bootstrap=self.config.bootstrap,
                    no_rate_limit=self.config.dht_no_rate_limit,
                )
                await self.dht_process.start()
                url = self.dht_process.proxy_url
            self.dht = DhtClient(url, timeout=self.config.dht_timeout,
                                 connections=self.config.dht_connections)
            parts = build_parts(
                self.dht, self.config, self.endpoint, self.records, self._tasks,
                self._session_ids,
                Wiring(self._dial_link, self._dial_mailbox, self._route, self._allows),
            )
            await parts.presence.publish()
            self._parts = parts
            self.messenger = parts.messenger
            if self.config.mailbox_serve is not None:
                self.mailbox_server = serve_mailbox(self.dht, self.config, self._tasks)
            parts.messenger.start()
            if self.config.mailboxes:
                self._tasks.spawn(self._publish_descriptor(parts.messenger), "descriptor")
            self._tasks.keep_running(parts.presence.republish_loop, "republish",
                                     parts.presence.restart_backoff())
            if parts.presence.watches_dht_route():
                self._tasks.keep_running(parts.presence.dht_route_loop, "dht-route",
                                         parts.presence.restart_backoff())
            self._tasks.keep_running(parts.answerer.run, "offers", parts.answerer.restart_backoff())
        except BaseException:
            await self.close()
            raise

    async def _publish_descriptor(self, messenger: Messenger) -> None:
        """Put our mailbox descriptor in the DHT (our mailboxes keep it there later)."""
        assert messenger.mailbox is not None
        await messenger.mailbox.client.publish_descriptor()

    async def close(self) -> None:
        """Close every connection, stop every task and listener, stop the embedded DHT.

        Every call (a second one, or one from another task while the first runs) returns
        once the node is closed; cancelling a caller does not stop the close.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._closed = True
        self._incoming.close(ConnectionClosed("the node is closed"))  # wakes accept()
        if self.messenger is not None:
            await self.messenger.stop()
        if self.mailbox_server is not None:
            self.mailbox_server.store.close()
        for conn in list(self.endpoint.connections):
            await conn.close()
        await self._tasks.close()
        while len(self._incoming):
            queued = self._incoming.get_nowait()
            if queued is not None:
                await queued.close()
        if self.dht is not None:
            await self.dht.close()
        if self.dht_process is not None:
            await self.dht_process.stop()

    def _running(self) -> NodeParts:
        if self._parts is None or self._closed:
            raise TierlinkError(_NOT_RUNNING)
        return self._parts

    # -- the record ----------------------------------------------------------------------
    async def publish(self) -> PeerRecord:
        """Sign and put a fresh record (sequence = Unix ms, so it grows across restarts)."""
        return await self._running().presence.publish()

    async def lookup(self, fingerprint: str, patience: float = 2.0) -> PeerRecord:
        """The newest valid record of ``fingerprint``, verified; PeerNotFound otherwise.

        A node that has just joined the DHT may not find values yet: an empty answer is
        asked again with backoff for up to ``patience`` seconds.
        """
        return await self._running().presence.lookup(fingerprint, patience)

    # -- connections ---------------------------------------------------------------------
    async def connect(
        self, fingerprint: str, timeout: float | None = None, *, purpose: str = "app"
    ) -> Connection:
        """Dial a peer by fingerprint alone.

        Raises PeerNotFound (no valid record), DialTimeout (no answer within ``timeout``,
        default ``dial_timeout``) or IceFailed (no candidate pair worked), each with the
        time spent; ConnectionClosed when the node closes during the dial. The answer
        counts only if it decrypts under the secret this dial's offer established with the
        callee's KEM key (see :mod:`tierlink.node.dial`).
        """
        parts = self._running()
        timeout = self.config.dial_timeout if timeout is None else timeout
        check_timeout(timeout)  # NaN or a non-number: refused before anything is sent
        try:
            conn = await parts.dialer.connect(fingerprint, timeout, purpose)
        except TierlinkError as exc:
            if self._closed:  # the close ended the dial's listens: say so, not a timeout
                raise ConnectionClosed("the node is closed (while dialing)") from exc
            raise
        if self._closed:  # completed as the node closed: nobody would close it
            await conn.close()
            raise ConnectionClosed("the node is closed (while dialing)")
        parts.answerer.admission.dialed(fingerprint, time.monotonic())  # its reserved lane
        return conn

    def _allows(self, fingerprint: str) -> bool:
        """Whether ``config.allow`` (read now: it may change while running) admits a peer."""
        allow = self.config.allow
        return allow is None or fingerprint in allow

    async def _dial_link(self, fingerprint: str, timeout: float) -> Connection:
        """A message link for the messenger: a dial whose offer names its purpose."""
        return await self.connect(fingerprint, timeout, purpose="messages")

    async def _dial_mailbox(self, fingerprint: str, timeout: float) -> Connection:
        """A connection to a mailbox (ours, or a recipient's for a deposit)."""
        return await self.connect(fingerprint, timeout, purpose="mailbox")

    async def _route(self, conn: Connection, purpose: str) -> None:
        """An answered connection: a message link to the messenger, a mailbox connection to
        the mailbox service (closed if we serve none), else to incoming."""
        if purpose == "messages" and self.messenger is not None and conn.secure:
            self.messenger.adopt_link(conn)
            return
        if purpose == "mailbox":
            if self.mailbox_server is not None and conn.secure:
                self._tasks.spawn(self.mailbox_server.handle(conn), "mailbox-conn")
            else:
                await conn.close()
            return
        if len(self._incoming) >= self._incoming.capacity:
            log.warning("incoming backlog full (NodeConfig.incoming_backlog=%d); closing a "
                        "new connection", self.config.incoming_backlog)
            await conn.close()
        elif not self._incoming.offer(conn):  # the node is closing
            await conn.close()

    async def incoming(self) -> AsyncIterator[Connection]:
        """Connections dialed to this node, as they complete; ends when the node closes."""
        while True:
            try:
                conn = await self._incoming.get()
            except ConnectionClosed:
                return
            if conn is not None:
                yield conn

    async def accept(self, timeout: float | None = None) -> Connection | None:
        """The next incoming connection, or None after ``timeout`` seconds; ConnectionClosed
        once the node is closed (also for a caller waiting when it closes)."""
        return await self._incoming.get(timeout)

    # -- tiered messages ------------------------------------------------------------------
    def _require_messenger(self) -> Messenger:
        if self.messenger is None or self._closed:
            raise TierlinkError(_NOT_RUNNING)
        return self.messenger

    async def send(self, fingerprint: str, payload: bytes, ttl_s: float | None = None) -> bytes:
        """Store ``payload`` durably and deliver it by the best tier; returns the message id.

        Returns once the message is safely in the outbox; :meth:`wait_delivered` and
        :meth:`deliveries` tell when the recipient acknowledged it and through which tier.
        """
        if not is_fingerprint(fingerprint):
            raise ValueError("a fingerprint is 128 lowercase hex characters")
        require_bytes(payload, "send")
        if not payload:
            raise ValueError("cannot send an empty message")
        ttl = DEFAULT_TTL_S if ttl_s is None else ttl_s
        return await self._require_messenger().send(fingerprint, payload, ttl)

    async def wait_delivered(
        self, message_id: bytes, timeout: float | None = None
    ) -> Delivery | None:
        """The :class:`Delivery` of a sent message once acknowledged; None on timeout."""
        return await self._require_messenger().wait_delivered(message_id, timeout)

    def deliveries(self) -> AsyncIterator[Delivery]:
        """Acknowledgements of sent messages as they arrive."""
        return self._require_messenger().deliveries()

    def messages(self) -> AsyncIterator[Message]:
        """Incoming messages (any tier), each handed over exactly once."""
        return self._require_messenger().messages()

    # -- introspection -------------------------------------------------------------------
    @property
    def connections(self) -> Iterable[Connection]:
        """Open connections."""
        return tuple(self.endpoint.connections)

    @property
    def answerer(self) -> Answerer:
        """The part that answers offers (TierlinkError before :meth:`start`)."""
        return self._running().answerer

    @property
    def offers_answered(self) -> int:
        """Offers answered so far."""
        return self._parts.answerer.offers_answered if self._parts else 0

    @property
    def offer_rejections(self) -> Counter[str]:
        """Offers refused so far, by reason."""
        return self._parts.answerer.rejections if self._parts else Counter()

    @property
    def loop_restarts(self) -> Counter[str]:
        """Restarts of the node's long-running loops after a failure, by loop name
        (``offers``, ``republish``, ``deliver``, ``offline-queue``, ...)."""
        total = Counter(self._tasks.restarts)
        if self.messenger is not None:
            total.update(self.messenger.loop_restarts)
        return total

    def watch_paths(self, listener: PathListener) -> None:
        """Call ``listener`` with a path event for each ICE agent of this node that connects
        (dialed or answered): see :meth:`tierlink.transport.ice.PathTally.add`; and with a
        ``path`` event carrying ``old_pair`` whenever a connection's path changes (see
        :meth:`tierlink.transport.connection.Connection.switch_path`)."""
        parts = self._running()
        parts.dialer.paths.listeners.append(listener)
        parts.answerer.paths.listeners.append(listener)
        self.endpoint.restarts.listeners.append(listener)  # path changes (ICE restarts)

    def stats(self) -> dict[str, object]:
        """Counters for tests and the CLI."""
        parts = self._parts
        return {
            "fingerprint": self.fingerprint,
            "connections": len(self.endpoint.connections),
            "dials": parts.dialer.dials if parts else 0,
            "dials_failed": parts.dialer.failures if parts else 0,
            "handshakes_failed": self.endpoint.handshakes_failed,
            "offers_answered": self.offers_answered,
            "offer_rejections": dict(self.offer_rejections),
            "offers_in_flight": parts.answerer.admission.sessions if parts else 0,
            "ice_checks_dropped": parts.answerer.checks_dropped if parts else 0,
            "answers_seen": parts.answerer.answers_seen if parts else 0,
            "dial_answers": dict(parts.dialer.answers) if parts else {},
            "ice_paths": (parts.dialer.paths.merged(parts.answerer.paths) if parts
                          else dict.fromkeys(PathTally.COUNTERS, 0)),
            "path_migration": self.endpoint.restarts.stats(),
            "record_rejections": dict(self.records.rejected),
            "background_tasks": len(self._tasks),
            "loop_restarts": dict(self.loop_restarts),
            "proxy_lines_skipped": dict(self.dht.skipped_lines) if self.dht else {},
            "dht_restarts_seen": parts.presence.dht_restarts_seen if parts else 0,
            "dht_route_changes": parts.presence.dht_route_changes if parts else 0,
            **message_stats(self.messenger, self.mailbox_server),
            "uptime_s": round(time.monotonic(), 1),
        }
