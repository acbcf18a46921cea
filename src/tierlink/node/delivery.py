"""Tiered delivery: ``node.send(fingerprint, payload)`` and never lose a message.

A message is first stored in the durable :class:`~tierlink.offline.outbox.Outbox` (SQLite,
committed before ``send`` returns), then delivered by the best tier that works:

1. **direct** / 2. **relay**: a live *message link* to the recipient (a secure connection
   whose offer says ``purpose=messages``), reused or dialed within ``send_budget`` seconds;
   the recipient acknowledges each message once its application took it;
3. **offline**: a sealed-sender envelope in the DHT under the recipient's offline queue
   key (:mod:`tierlink.offline`), re-put until a sealed acknowledgement comes back, and
   deposited with the recipient's mailboxes if it names any (:mod:`tierlink.mailbox`).

The receiver remembers delivered ids in a :class:`~tierlink.offline.delivered.DeliveredLog`: a
message re-sent after a lost acknowledgement (by any tier) is acknowledged again but handed
to the application once. "Handed to the application" means taken from ``node.messages()``.
The log is bounded: when it is full, new messages are held back unacknowledged (by any
tier), so their senders keep them; none is delivered twice or lost.

Incoming messages: :mod:`tierlink.node.incoming_messages`; delivery notices:
:mod:`tierlink.node.delivery_events`. Link frames: :mod:`tierlink.wire.link_frames`
(docs/PROTOCOL.md, "Link frames").
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from tierlink.backoff import Backoff
from tierlink.dht.record_book import PeerLookup
from tierlink.errors import ConnectionClosed, RecordError, TierlinkError
from tierlink.identity import Identity
from tierlink.mailbox.tier import MailboxTier
from tierlink.node.delivery_events import Delivery, DeliveryEvents
from tierlink.node.incoming_messages import IncomingMessages, Message
from tierlink.node.tasks import Supervisor
from tierlink.offline import DeliveredLog, OfflineTier, Outbox
from tierlink.offline.dht_access import Dht
from tierlink.offline.outbox import PENDING, UNDELIVERED
from tierlink.offline.store import STORE_FILE
from tierlink.transport.connection import Connection
from tierlink.wire.envelope import ReceivedEnvelope
from tierlink.wire.link_frames import LinkAck, LinkMessage, decode_link_frame, encode_message_frame
from tierlink.wire.records import now_ms

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 7 * 24 * 3600.0
#: After a failed dial, messages to that peer go straight to the offline tier for this long
#: (instead of each waiting out ``send_budget``); a link the peer dials to us ends it sooner.
UNREACHABLE_S = 30.0
#: The first wait before a recipient's delivery worker runs again after it failed (seconds).
WORKER_RETRY_S = 1.0
#: The longest wait before a failed delivery worker runs again (seconds).
WORKER_RETRY_MAX_S = 60.0

#: Opens a message link: dial a fingerprint within a time budget (seconds).
DialLink = Callable[[str, float], Awaitable[Connection]]


class Messenger:
    """The tiers put together for one node (owned by :class:`~tierlink.node.Node`).

    ``dial`` opens a message link (a secure connection whose offer names
    ``purpose=messages``); ``lookup`` is the node's shared record lookup, which the offline
    tier uses for recipients' KEM keys. ``secure`` says whether live links are possible.
    ``allow`` says whether a sender may leave us offline messages (None: anyone).
    """

    def __init__(
        self, dht: Dht, identity: Identity, dial: DialLink, data_dir: Path, *,
        lookup: PeerLookup, secure: bool, send_budget: float, ack_timeout: float,
        reput_interval_s: float, allow: Callable[[str], bool] | None = None,
    ) -> None:
        self.dial = dial
        self.secure = secure
        self.send_budget = send_budget
        self.ack_timeout = ack_timeout
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.outbox = Outbox(data_dir / STORE_FILE)
        self.delivered_log = DeliveredLog(data_dir / STORE_FILE)
        self.offline = OfflineTier(
            dht, identity, self.outbox, self.delivered_log, lookup=lookup,
            reput_interval_s=reput_interval_s, on_delivered=self._offline_delivered,
            allow=allow,
        )
        self.malformed_link_frames = 0
        self._tasks = Supervisor("messenger")
        self.incoming = IncomingMessages(self.delivered_log, self._tasks)
        self.events = DeliveryEvents(self.outbox)
        self._loop = asyncio.get_running_loop()
        self._links: dict[str, Connection] = {}
        self._unreachable: dict[str, float] = {}  # recipient -> loop time of a failed dial
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._ack_waiters: dict[bytes, asyncio.Future[None]] = {}
        self.mailbox: MailboxTier | None = None
        """The mailbox tier, when the node has one (set before :meth:`start`)."""

    # -- life ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the offline tier and resume every undelivered message from the outbox."""
        self.offline.start(self._offline_message)
        if self.mailbox is not None:
            tier, poll = self.mailbox, self.mailbox.poll_interval
            self._tasks.keep_running(tier.maintain, "mailbox-maintenance", Backoff(poll))
            for box in tier.client.mailboxes:
                self._tasks.keep_running(
                    functools.partial(tier.collect_forever, box, self._mailbox_message),
                    "mailbox-collect", Backoff(poll))
        for entry in self.outbox.pending():
            if entry.state == PENDING:
                self._enqueue(entry.recipient, entry.message_id)

    async def stop(self) -> None:
        """Stop workers and links; the outbox keeps whatever is undelivered."""
        await self._tasks.close()
        await self.offline.stop()
        for conn in list(self._links.values()):
            await conn.close()
        self.outbox.close()
        self.delivered_log.close()
        if self.mailbox is not None:
            self.mailbox.client.store.close()

    @property
    def loop_restarts(self) -> Counter[str]:
        """Restarts of the delivery workers and the offline tier's loops, by loop name."""
        return self._tasks.restarts + self.offline.restarts

    # -- sending -------------------------------------------------------------------------
    async def send(self, recipient: str, payload: bytes, ttl_s: float = DEFAULT_TTL_S) -> bytes:
        """Store durably, schedule delivery; returns the message id."""
        mid = self.outbox.add(recipient, bytes(payload), ttl_s)
        self._enqueue(recipient, mid)
        return mid

    def _enqueue(self, recipient: str, mid: bytes) -> None:
        queue = self._queues.get(recipient)
        if queue is None:
            queue = self._queues[recipient] = asyncio.Queue()
            self._tasks.keep_running(
                lambda: self._worker(recipient, queue), "deliver",
                Backoff(WORKER_RETRY_S, maximum=WORKER_RETRY_MAX_S),
            )
        self.offline.held.add(mid)  # the live tier tries it first
        queue.put_nowait(mid)

    async def _worker(self, recipient: str, queue: asyncio.Queue[bytes]) -> None:
        """Deliver one recipient's messages in order: live link first, else the DHT."""
        while True:
            mid = await queue.get()
            try:
                await self._deliver_one(recipient, mid)
            finally:
                self.offline.held.discard(mid)

    async def _deliver_one(self, recipient: str, mid: bytes, redialed: bool = False) -> None:
        entry = self.outbox.get(mid)
        if entry is None or entry.state != PENDING or entry.expires_ms <= now_ms():
            return
        conn: Connection | None = None
        try:
            conn = await self._link_to(recipient)
            tier = conn.tier
            fut = self._ack_waiters[mid] = self._loop.create_future()
            frame = encode_message_frame(mid, entry.created_ms, entry.expires_ms, entry.payload)
            async with asyncio.timeout(self.ack_timeout):
                await conn.send(frame)
            async with asyncio.timeout(self.ack_timeout):
                await asyncio.shield(fut)
        except (TierlinkError, TimeoutError, OSError) as exc:
            self._ack_waiters.pop(mid, None)
            if conn is not None and conn.migration.peer_restarted and not redialed:
                await self._deliver_one(recipient, mid, redialed=True)  # to the new process
                return
            log.info("live delivery of %s failed (%s); using the offline tier", mid.hex(),
                     exc)
            await self._go_offline(mid)
            return
        self._ack_waiters.pop(mid, None)
        if self.outbox.mark_delivered(mid, tier):
            self.events.delivered(mid, recipient, tier)

    async def _go_offline(self, mid: bytes) -> None:
        entry = self.outbox.get(mid)
        if entry is None or entry.state not in UNDELIVERED:
            return
        try:
            if self.mailbox is not None:
                await self.mailbox.place(mid)
            else:
                await self.offline.queue(mid)
        except (TierlinkError, ValueError, KeyError) as exc:
            log.warning("message %s stays pending (offline tier: %s)", mid.hex(), exc)
            return
        self.events.settled(mid)

    def mailboxes_holding(self, mid: bytes) -> list[str]:
        """Fingerprints of the recipient's mailboxes that hold ``mid`` for us."""
        return [] if self.mailbox is None else self.mailbox.client.store.mailboxes_of(mid)

    def link(self, recipient: str) -> Connection | None:
        """The open message link to ``recipient``, if there is one."""
        conn = self._links.get(recipient)
        return conn if conn is not None and not conn.closed else None

    async def _link_to(self, recipient: str) -> Connection:
        conn = self._links.get(recipient)
        if conn is not None and not conn.closed:
            return conn
        if not self.secure:
            raise TierlinkError("live delivery needs the secure channel (secure=True)")
        failed_at = self._unreachable.get(recipient)
        if failed_at is not None and self._loop.time() - failed_at < UNREACHABLE_S:
            raise TierlinkError(
                f"{recipient[:16]}… was unreachable {self._loop.time() - failed_at:.0f} s ago"
            )
        try:
            conn = await self.dial(recipient, self.send_budget)
        except TierlinkError:
            self._unreachable[recipient] = self._loop.time()
            raise
        self._unreachable.pop(recipient, None)
        self.adopt_link(conn)
        return conn

    # -- delivery events -----------------------------------------------------------------
    def _offline_delivered(self, mid: bytes, recipient: str) -> None:
        self.events.delivered(mid, recipient, "offline")

    async def wait_delivered(self, mid: bytes, timeout: float | None = None) -> Delivery | None:
        """The delivery of ``mid`` once acknowledged; None after ``timeout`` seconds."""
        return await self.events.wait_delivered(mid, timeout)

    async def wait_settled(self, mid: bytes, timeout: float | None = None) -> str:
        """Wait until ``mid`` is delivered or queued (see :meth:`DeliveryEvents.wait_settled`)."""
        return await self.events.wait_settled(mid, timeout)

    def deliveries(self) -> AsyncIterator[Delivery]:
        """Every acknowledgement, as it arrives."""
        return self.events.deliveries()

    # -- receiving -----------------------------------------------------------------------
    def messages(self) -> AsyncIterator[Message]:
        """Incoming messages, each exactly once; taking one acknowledges it."""
        return self.incoming.messages()

    def adopt_link(self, conn: Connection) -> None:
        """Serve a message link (dialed by us or by the peer)."""
        old = self._links.get(conn.remote_fingerprint)
        self._links[conn.remote_fingerprint] = conn
        self._unreachable.pop(conn.remote_fingerprint, None)
        if old is not None and old is not conn and not old.closed:
            self._tasks.spawn(old.close(), "close-link")
        self._tasks.spawn(self._read_link(conn), "link")

    async def _read_link(self, conn: Connection) -> None:
        peer = conn.remote_fingerprint
        try:
            while True:
                data = await conn.recv()
                if data is None:
                    continue
                try:
                    frame = decode_link_frame(data)
                except RecordError as exc:
                    log.warning("closing a message link that sent a malformed frame: %s", exc)
                    self.malformed_link_frames += 1
                    break
                if isinstance(frame, LinkAck):
                    for mid in frame.message_ids:
                        fut = self._ack_waiters.get(mid)
                        if fut is not None and not fut.done():
                            fut.set_result(None)
                elif isinstance(frame, LinkMessage):
                    await self.incoming.from_link(conn, frame)
        except ConnectionClosed:
            pass
        finally:
            if self._links.get(peer) is conn:
                del self._links[peer]
            if conn.migration.peer_restarted and self.link(peer) is None:  # acks never come
                for entry in self.outbox.pending(peer):
                    fut = self._ack_waiters.get(entry.message_id)
                    if fut is not None and not fut.done():
                        fut.set_exception(ConnectionClosed("the peer restarted"))
                        fut.exception()  # retrieved: its sender may have failed already
            if not conn.closed:
                await conn.close()

    async def _offline_message(self, env: ReceivedEnvelope) -> None:
        """OfflineTier callback: return once the application took the message."""
        await self.incoming.sealed(env, "offline")

    async def _mailbox_message(self, env: ReceivedEnvelope) -> None:
        """Mailbox collect callback: return once the application took the message."""
        await self.incoming.sealed(env, "mailbox")
