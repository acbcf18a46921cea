"""A node's mailbox client: deposits for absent recipients, collects from its own mailboxes.

Sender side: :meth:`MailboxClient.descriptor` finds a recipient's verified descriptor (the
sender's cache, else the DHT under :func:`~tierlink.wire.dhtkeys.mailboxes_key`);
:meth:`deposit` hands an outbox message's envelope to ``redundancy`` of its mailboxes, trying
the next one when a mailbox is down or refuses; :meth:`fetch_receipts` takes the acks and
expiry notices a mailbox holds for us, so a sender that was offline learns ``delivered``.
Recipient side: :meth:`collect` registers with one of our mailboxes, hands it our descriptor
and allow-list, and delivers what it pushes through the offline tier's inbox (exactly once,
via the delivered log) before telling it to delete each envelope.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from tierlink.errors import ConnectionClosed, DhtError, RecordError, TierlinkError
from tierlink.identity import Identity
from tierlink.mailbox.codec import (
    COLLECT,
    DONE,
    ITEM,
    RECEIPTS_REQ,
    REVOKE,
    TAKEN,
    Descriptor,
    DescriptorClaim,
    claim_descriptor,
    create_descriptor,
    decode_frame,
    deposit_frame,
    encode_frame,
    open_descriptor,
    read_dropped,
    read_receipts,
    read_result,
    register_frame,
)
from tierlink.mailbox.policy import MailboxRefused
from tierlink.mailbox.store import SenderStore
from tierlink.offline import OfflineTier
from tierlink.offline.worker import Callback
from tierlink.transport.connection import Connection
from tierlink.wire.ack import create_ack
from tierlink.wire.dhtkeys import mailboxes_key
from tierlink.wire.records import KIND_MAILBOX_DESCRIPTOR, leads_with_signer, now_ms

log = logging.getLogger(__name__)

#: Opens a ``mailbox``-purpose connection to a fingerprint within a time budget (seconds).
DialMailbox = Callable[[str, float], Awaitable[Connection]]
REQUEST_TIMEOUT_S = 15.0
#: Descriptor values one lookup checks at most (OpenDHT's own bound per key and node).
MAX_DESCRIPTOR_VALUES = 65536
#: Signatures one descriptor lookup verifies at most, newest claimed issue time first.
MAX_DESCRIPTOR_VERIFIES = 64
#: Digests of descriptor values whose signature failed, skipped unverified when read again.
MAX_REMEMBERED_FORGERIES = 4096


class MailboxClient:
    """One node's mailbox client; see the module docstring."""

    def __init__(
        self, dial: DialMailbox, identity: Identity, offline: OfflineTier, store: SenderStore,
        *, mailboxes: list[str], allow: Callable[[], set[str] | None],
        descriptor_lifetime_s: float, redundancy: int = 1, dial_timeout: float = 10.0,
    ) -> None:
        self.dial = dial
        self.me = identity
        self.offline = offline
        self.store = store
        self.mailboxes = list(mailboxes)
        self.allow = allow
        self.descriptor_lifetime_s = descriptor_lifetime_s
        self.redundancy = max(1, redundancy)
        self.dial_timeout = dial_timeout
        self.refusals: Counter[str] = Counter()
        """Deposits refused by mailboxes, by reason."""
        self.collected = 0
        """Envelopes taken from our mailboxes (delivered or recognised as replays)."""
        self.registered: set[str] = set()
        """Our mailboxes that accepted our registration (this run)."""
        self.descriptor_rejections: Counter[str] = Counter()
        """Descriptor values refused by lookups, by reason (``fingerprint``: another
        signer's, ``signature``: a forgery, ``verify_cap``: left unverified, ...)."""
        self._forgeries: OrderedDict[bytes, None] = OrderedDict()

    # -- sender side -------------------------------------------------------------------------
    async def descriptor(self, recipient: str) -> Descriptor | None:
        """``recipient``'s newest valid descriptor among the DHT's values and our cache; None.

        Anyone can put values under the key, ahead of the owner's: every value gets the cheap
        checks (another signer's costs a CBOR decode and a comparison), then signatures are
        verified newest claimed issue time first until one verifies, at most
        :data:`MAX_DESCRIPTOR_VERIFIES`; a value whose signature failed is remembered and not
        verified again. Refusals are counted in :attr:`descriptor_rejections`.
        """
        try:
            values = await self.offline.dht.get(
                mailboxes_key(recipient),
                keep=lambda v: leads_with_signer(v, KIND_MAILBOX_DESCRIPTOR, recipient),
            )
        except DhtError as exc:
            log.info("no mailbox descriptor lookup for %s…: %s", recipient[:16], exc)
            values = []
        best: Descriptor | None = None
        cached = self.store.cached_descriptor(recipient, now_ms())
        if cached is not None:
            try:
                best = open_descriptor(cached, owner=recipient)
            except RecordError:
                best = None  # expired since it was cached
        newer = self._newest(recipient, values, best)
        if newer is not None:
            best = newer
            self.store.cache_descriptor(recipient, best.value, best.expires_at_ms)
        return best

    def _newest(self, recipient: str, values: list[bytes], known: Descriptor | None
                ) -> Descriptor | None:
        """The valid descriptor of ``recipient`` in ``values`` with the highest issue time,
        if later than ``known``'s (the cached one, never hidden by values of the DHT)."""
        claims: dict[bytes, DescriptorClaim] = {}
        rejected = self.descriptor_rejections
        now, floor = now_ms(), -1 if known is None else known.issued_at_ms
        for i, value in enumerate(values):
            if i >= MAX_DESCRIPTOR_VALUES:
                rejected["over_cap"] += len(values) - i
                break
            digest = hashlib.sha256(value).digest()
            if digest in self._forgeries:
                rejected["signature"] += 1
                continue
            if digest in claims or (known is not None and value == known.value):
                continue  # a re-put of the same bytes
            try:
                claim = claim_descriptor(value, owner=recipient, now=now)
            except RecordError as exc:
                rejected[exc.reason] += 1
                continue
            if claim.descriptor.issued_at_ms > floor:
                claims[digest] = claim
            else:
                rejected["stale"] += 1
        ordered = sorted(claims.items(), key=lambda item: item[1].descriptor.issued_at_ms,
                         reverse=True)
        for n, (digest, claim) in enumerate(ordered):
            if n >= MAX_DESCRIPTOR_VERIFIES:
                rejected["verify_cap"] += len(ordered) - n
                break
            try:
                return claim.verify()
            except RecordError as exc:
                rejected[exc.reason] += 1
                self._forgeries[digest] = None
                while len(self._forgeries) > MAX_REMEMBERED_FORGERIES:
                    self._forgeries.popitem(last=False)
        return None

    async def _request(self, mailbox: str, frames: list[bytes]) -> list[bytes]:
        """Dial ``mailbox``, send ``frames``, return one reply per frame."""
        conn = await self.dial(mailbox, self.dial_timeout)
        try:
            replies = []
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                for f in frames:
                    await conn.send(f)
                    reply = None
                    while reply is None:
                        reply = await conn.recv()
                    replies.append(reply)
            return replies
        finally:
            await conn.close()

    async def deposit(self, message_id: bytes, recipient: str, envelope: bytes,
                      mailboxes: tuple[str, ...]) -> list[str]:
        """Deposit with up to ``redundancy`` of ``mailboxes`` (skipping ones already holding
        it, down, or refusing); returns every mailbox that now holds it."""
        holding = self.store.mailboxes_of(message_id)
        for box in mailboxes:
            if len(holding) >= self.redundancy:
                break
            if box in holding:
                continue
            try:
                (reply,) = await self._request(box, [deposit_frame(recipient, message_id,
                                                                   envelope)])
                ok, reason = read_result(decode_frame(reply))
            except (TierlinkError, TimeoutError, OSError) as exc:
                log.info("mailbox %s… unreachable for a deposit: %s", box[:16], exc)
                continue
            if not ok:
                self.refusals[reason] += 1
                log.warning("mailbox %s… refused message %s: %s", box[:16], message_id.hex(),
                            reason)
                continue
            self.store.deposited(message_id, box, recipient)
            holding.append(box)
        return holding

    async def fetch_receipts(self, mailbox: str, mine: dict[bytes, str]) -> int:
        """Take the acks and expiry notices ``mailbox`` holds for us; returns ids settled.

        A receipt settles only this mailbox's deposit: an expiry notice marks the message
        expired only once no other mailbox holds it, so one mailbox (short retention, or
        hostile) cannot end a message another still holds."""
        conn = await self.dial(mailbox, self.dial_timeout)
        try:
            await conn.send(encode_frame(RECEIPTS_REQ))
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                reply = None
                while reply is None:
                    reply = await conn.recv()
            settled = []
            for mid, ack in read_receipts(decode_frame(reply)):
                recipient = mine.get(mid)
                self.store.settled(mid, mailbox)  # this mailbox's deposit only
                if recipient is not None and ack is not None:
                    await self.offline.check_acks(recipient, [ack])
                elif recipient is not None and self.store.mailboxes_of(mid):
                    log.info("message %s left mailbox %s… undelivered; another mailbox still "
                             "holds it", mid.hex(), mailbox[:16])
                elif recipient is not None:
                    log.warning("message %s to %s… left mailbox %s… undelivered (expired, or "
                                "the recipient withdrew)", mid.hex(), recipient[:16],
                                mailbox[:16])
                    self.offline.outbox.mark_expired(mid)
                settled.append(mid)
            if settled:
                log.info("took %d receipts from mailbox %s…", len(settled), mailbox[:16])
                await conn.send(encode_frame(DONE, {1: settled}))
            return len(settled)
        finally:
            await conn.close()

    # -- recipient side ----------------------------------------------------------------------
    async def revoke(self, mailbox: str) -> int:
        """Withdraw our registration from ``mailbox``; returns the envelopes it dropped (their
        depositors are told they were not delivered). MailboxRefused if it refuses."""
        (reply,) = await self._request(mailbox, [encode_frame(REVOKE)])
        frame = decode_frame(reply)
        ok, reason = read_result(frame)
        if not ok:
            raise MailboxRefused(reason, f"mailbox {mailbox[:16]}… refused the revocation")
        self.registered.discard(mailbox)
        return read_dropped(frame)

    def own_descriptor(self) -> bytes:
        """A fresh descriptor naming our mailboxes."""
        return create_descriptor(self.me, self.mailboxes, self.descriptor_lifetime_s)

    async def publish_descriptor(self) -> None:
        """Put our descriptor under our mailboxes key."""
        await self.offline.dht.put(mailboxes_key(self.me.fingerprint), self.own_descriptor())

    async def collect(self, mailbox: str, deliver: Callback) -> None:
        """Register with ``mailbox`` and deliver what it pushes until the connection ends."""
        conn = await self.dial(mailbox, self.dial_timeout)
        try:
            await conn.send(register_frame(self.own_descriptor(), self.allow()))
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                reply = None
                while reply is None:
                    reply = await conn.recv()
            ok, reason = read_result(decode_frame(reply))
            if not ok:
                raise TierlinkError(f"mailbox {mailbox[:16]}… refused our registration: {reason}")
            self.registered.add(mailbox)
            await conn.send(encode_frame(COLLECT))
            while True:
                data = await conn.recv()
                if data is None:
                    continue
                frame = decode_frame(data)
                if frame.type != ITEM:
                    continue
                handle = frame.fields.uint(1, "handle")
                ack = await self._take(frame.value(2, "envelope"), deliver)
                if ack is not False:
                    fields: dict[int, Any] = {1: handle}
                    if ack is not None:
                        fields[2] = ack
                    await conn.send(encode_frame(TAKEN, fields))
        except ConnectionClosed:
            pass
        finally:
            self.registered.discard(mailbox)
            await conn.close()

    async def _take(self, envelope: bytes, deliver: Callback) -> bytes | bool | None:
        """Deliver one envelope; its ack (delivered or a replay), None (never deliverable:
        delete it) or False (held back: leave it in the mailbox)."""
        res = await self.offline.fetch_and_deliver(deliver, [envelope])
        for env in [*res.accepted, *res.replayed]:
            if self.offline.inbox.log.seen(env.sender_fingerprint, env.message_id):
                self.collected += 1
                return create_ack(env.ack_token, [env.message_id])
            return False
        held = {"log_full", "sender_count", "sender_bytes", "deferred", "callback_error"}
        return False if held & set(res.rejected) else None
