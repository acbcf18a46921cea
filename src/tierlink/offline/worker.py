"""The offline tier at work: put envelopes in the DHT, re-put them, fetch, deliver, ack.

Sender side: :meth:`OfflineTier.send` stores the message in the :class:`Outbox` (durable
first), seals it into one sealed-sender envelope and puts it under the recipient's
:func:`~tierlink.wire.dhtkeys.offline_queue_key`. OpenDHT forgets a value 10 minutes after its put,
so :meth:`OfflineTier.reput_due` puts the *same* envelope bytes again every
:data:`~tierlink.offline.outbox.REPUT_INTERVAL_S` until an ack arrives
(:meth:`OfflineTier.check_acks`, :mod:`tierlink.offline.acks`: keys and listens) or the
message's TTL passes. Messages whose put failed stay ``pending`` and are retried by
``reput_due``.

Receiver side: :meth:`OfflineTier.fetch_and_deliver` reads our queue key, runs the values
through the :class:`Inbox` policy, hands each new message to the application callback,
remembers it in the :class:`DeliveredLog` *after* the callback returned (at-least-once to
the callback, once across restarts), then puts one sealed ack per sender (per ack token)
listing the delivered and re-sent ids. A re-sent message is acked again but delivered once.

:meth:`OfflineTier.start` runs both sides in the background: listens on our queue key and
the ack keys above (with a fetch at start for what arrived while we were away) and a periodic
loop for re-puts, expiry and pruning; a failing background loop is restarted with backoff
(:func:`~tierlink.backoff.keep_restarting`, counted in :attr:`OfflineTier.restarts`). Everything
runs on one event loop (the stores are sqlite objects bound to their thread).

Recipients' KEM keys come from their peer records through a
:class:`~tierlink.dht.record_book.PeerLookup`: a node passes in its own, so dialing and the
offline tier share one book of verified records.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from tierlink.backoff import Backoff, keep_restarting
from tierlink.dht.record_book import PeerLookup
from tierlink.errors import DhtError, PeerNotFound, RecordError
from tierlink.identity import Identity
from tierlink.offline.acks import AckWatch
from tierlink.offline.delivered import DeliveredLog
from tierlink.offline.dht_access import Dht, close_listen
from tierlink.offline.inbox import FetchResult, Inbox, InboxLimits
from tierlink.offline.outbox import (
    PENDING,
    REPUT_INTERVAL_S,
    UNDELIVERED,
    Outbox,
)
from tierlink.wire.ack import MAX_ACK_IDS, create_ack
from tierlink.wire.dhtkeys import offline_acks_key, offline_queue_key
from tierlink.wire.envelope import DEFAULT_TTL_S, ReceivedEnvelope, create_envelope
from tierlink.wire.records import now_ms as _now_ms

log = logging.getLogger(__name__)

Callback = Callable[[ReceivedEnvelope], Awaitable[None] | None]

#: The first wait before a failed background loop runs again (seconds).
RETRY_S = 1.0
#: The longest wait between attempts of a failing background loop (seconds).
RETRY_MAX_S = 60.0


class OfflineTier:
    """Store-and-forward through the DHT for one identity; see the module docstring."""

    def __init__(
        self,
        dht: Dht,
        identity: Identity,
        outbox: Outbox,
        delivered_log: DeliveredLog,
        *,
        limits: InboxLimits | None = None,
        lookup: PeerLookup | None = None,
        reput_interval_s: float = REPUT_INTERVAL_S,
        on_delivered: Callable[[bytes, str], None] | None = None,
        allow: Callable[[str], bool] | None = None,
    ) -> None:
        self.dht = dht
        self.me = identity
        self.outbox = outbox
        # ``allow`` (sender fingerprint -> bool): the node's allow-list, checked once an
        # envelope decrypts; refused ones count ``not-allowed``, are never delivered nor acked.
        self.inbox = Inbox(identity, delivered_log, limits, allow)
        self.reput_interval_s = reput_interval_s
        self.acks = AckWatch(dht, identity, outbox, on_delivered)
        """Acks of our messages (``on_delivered``: called with (message id, recipient) when
        one marks a message delivered)."""
        self.lookup = lookup if lookup is not None else PeerLookup(dht)
        """Where recipients' records (their KEM keys) come from."""
        self.errors = 0
        """Background failures so far (DHT unreachable, callback raised); each is logged."""
        self.restarts: Counter[str] = Counter()
        """Restarts of the background loops after a failure, by loop name."""
        self._fetch_lock = asyncio.Lock()
        self._inflight: set[bytes] = set()  # ids whose put is under way (not retried twice)
        self.held: set[bytes] = set()
        """Ids another tier is delivering right now: :meth:`reput_due` leaves them alone."""
        self._tasks: list[asyncio.Task[None]] = []
        self._incoming: list[bytes] = []
        self._wake = asyncio.Event()

    # -- sender side ----------------------------------------------------------------------
    async def lookup_kem_key(self, fingerprint: str) -> bytes:
        """The ML-KEM key from ``fingerprint``'s newest valid peer record in the DHT."""
        try:
            rec = await self.lookup.lookup(fingerprint)
        except PeerNotFound:
            rec = None
        if rec is None or not rec.kem_public_key:
            raise PeerNotFound(
                f"no valid peer record with a KEM key for {fingerprint[:16]}… in the DHT; "
                "the peer must have been online at least once"
            )
        return rec.kem_public_key

    async def send(
        self,
        recipient: str,
        payload: bytes,
        ttl_s: float = DEFAULT_TTL_S,
        recipient_kem_pk: bytes | None = None,
    ) -> bytes:
        """Store ``payload`` durably, then try to put it in the DHT; returns the message id.

        A failed put (DHT unreachable, no peer record) leaves the message pending for
        :meth:`reput_due`; the error is logged, not raised: the message is safe on disk.
        """
        mid = self.outbox.add(recipient, payload, ttl_s)
        try:
            await self.queue(mid, recipient_kem_pk)
        except (DhtError, PeerNotFound) as exc:
            self.errors += 1
            log.warning("offline message %s stays pending: %s", mid.hex(), exc)
        return mid

    async def queue(self, message_id: bytes, recipient_kem_pk: bytes | None = None) -> bytes:
        """Put one outbox message's envelope in the DHT (reusing a stored one); returns it.

        Raises KeyError for an unknown id, ValueError if it is no longer undelivered,
        PeerNotFound / DhtError when the DHT cannot be used.
        """
        entry = self.outbox.get(message_id)
        if entry is None:
            raise KeyError(message_id.hex())
        if entry.state not in UNDELIVERED:
            raise ValueError(f"message {message_id.hex()} is {entry.state}")
        self._inflight.add(entry.message_id)
        try:
            value = entry.envelope
            if value is None:
                kem = recipient_kem_pk or await self.lookup_kem_key(entry.recipient)
                ttl_s = (entry.expires_ms - entry.created_ms) / 1000
                value, _ = create_envelope(
                    self.me, entry.recipient, kem, entry.payload, ttl_s, entry.message_id,
                    created_at_ms=entry.created_ms,
                )
            await self.dht.put(offline_queue_key(entry.recipient), value)
        finally:
            self._inflight.discard(entry.message_id)
        self.outbox.mark_queued(message_id, value)
        if entry.recipient not in self.acks.listening:
            self.acks.recipients_changed()
        return value

    async def reput_due(self, now_ms: int | None = None) -> int:
        """Expire old messages, re-put due envelopes, retry unsent ones; returns puts made."""
        t = _now_ms() if now_ms is None else now_ms
        self.outbox.expire(t)
        due = self.outbox.due_for_reput(t, self.reput_interval_s)
        unsent = [e for e in self.outbox.pending(now_ms=t) if e.state == PENDING]
        puts = 0
        for entry in [*due, *unsent]:
            if entry.message_id in self._inflight or entry.message_id in self.held:
                continue  # being put right now, or a live tier is trying it
            try:
                await self.queue(entry.message_id)
                puts += 1
            except (DhtError, PeerNotFound) as exc:
                self.errors += 1
                log.warning("offline message %s not put: %s", entry.message_id.hex(), exc)
        return puts

    async def check_acks(
        self, recipient: str | None = None, values: list[bytes] | None = None
    ) -> int:
        """Read acks of our messages and mark them delivered (see :meth:`AckWatch.check`);
        returns messages newly marked delivered."""
        return await self.acks.check(recipient, values)

    # -- receiver side --------------------------------------------------------------------
    async def fetch_and_deliver(
        self, callback: Callback, values: list[bytes] | None = None
    ) -> FetchResult:
        """Fetch our queue (or take ``values``), deliver new messages, ack; returns the result.

        A callback that raises leaves its message unremembered and unacked (the sender
        re-puts it, we retry later); it is logged and counted as ``callback_error``.
        """
        async with self._fetch_lock:  # a listen value and a fetch must not both deliver
            if values is None:
                values = await self.dht.get(offline_queue_key(self.me.fingerprint))
            res = self.inbox.process(values)
            delivered: list[ReceivedEnvelope] = []
            for env in res.accepted:
                try:
                    result = callback(env)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self.errors += 1
                    res.rejected["callback_error"] += 1
                    log.exception("offline message callback failed; will retry")
                    continue
                self.inbox.delivered(env)
                delivered.append(env)
            replays = self.inbox.reacks_due(res.replayed)  # not an ack per copy pushed
            for token, ids in res.ack_ids(delivered, replays).items():
                for i in range(0, len(ids), MAX_ACK_IDS):
                    ack = create_ack(token, ids[i : i + MAX_ACK_IDS])
                    await self.dht.put(offline_acks_key(token), ack)
            return res

    # -- background -----------------------------------------------------------------------
    def start(self, callback: Callback, *, maintenance_s: float | None = None) -> None:
        """Run listens on our queue and ack keys plus periodic re-puts, until :meth:`stop`."""
        if self._tasks:
            raise RuntimeError("the offline tier is already running")
        period = maintenance_s if maintenance_s is not None else self.reput_interval_s / 4
        self._tasks = [
            asyncio.create_task(self._listen_queue(), name="offline-queue"),
            asyncio.create_task(self._deliver_incoming(callback), name="offline-deliver"),
            asyncio.create_task(self._listen_acks(period), name="offline-acks"),
            asyncio.create_task(self._maintain(period), name="offline-maintenance"),
        ]

    async def stop(self) -> None:
        """Cancel the background tasks and wait for them."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _retrying(self, what: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body`` until it returns; restart it with backoff after any failure (a
        background task must not die, nor die silently)."""

        def restarted(name: str) -> None:
            self.errors += 1
            self.restarts[name] += 1

        await keep_restarting(
            body, f"offline-{what}", Backoff(RETRY_S, maximum=RETRY_MAX_S), restarted
        )

    async def _listen_queue(self) -> None:
        async def body() -> None:
            # The listen yields the values already stored first (what arrived while we
            # were away), then new ones. They pile up in a buffer while a batch is being
            # delivered, so a burst is one fetch: the per-fetch caps apply and each sender
            # gets one ack, not one per value.
            it = self.dht.listen(offline_queue_key(self.me.fingerprint))
            try:
                async for value in it:
                    try:  # free checks: junk takes no room in the buffer
                        self.inbox.precheck(value)
                    except RecordError as exc:
                        self.inbox.rejected[exc.reason] += 1
                        continue
                    if len(self._incoming) >= self.inbox.limits.max_values_per_fetch:
                        self.inbox.rejected["deferred"] += 1  # not acked: it comes again
                        continue
                    self._incoming.append(value)
                    self._wake.set()
            finally:
                await close_listen(it)

        await self._retrying("queue", body)

    async def _deliver_incoming(self, callback: Callback) -> None:
        async def body() -> None:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, self._incoming = self._incoming, []
                if batch:
                    await self.fetch_and_deliver(callback, batch)

        await self._retrying("deliver", body)

    async def _listen_acks(self, period: float) -> None:
        await self._retrying("acks", functools.partial(self.acks.listen, period, self._retrying))

    async def _maintain(self, period: float) -> None:
        async def body() -> None:
            while True:
                await self.check_acks()
                await self.reput_due()
                self.outbox.prune()
                self.inbox.log.prune()
                await asyncio.sleep(period)

        await self._retrying("maintenance", body)

