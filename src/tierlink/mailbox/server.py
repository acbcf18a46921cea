"""The mailbox service: serves ``mailbox``-purpose connections of an always-on node.

A registered recipient (REGISTER with its own signed descriptor) collects its envelopes
(COLLECT: every held envelope as an ITEM, then new deposits as they arrive) and takes each
(TAKEN, with the sealed ack for the depositor); any authenticated node deposits (DEPOSIT,
answered RESULT once committed) under :mod:`~tierlink.mailbox.policy` and fetches its own
receipts (RECEIPTS?/RECEIPTS/DONE). The envelopes stay sealed to their recipients: the
mailbox learns the depositor's and recipient's fingerprints, sizes, times and message ids,
never a payload. Refusals are logged and counted by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from tierlink.errors import ConnectionClosed, RecordError, TierlinkError
from tierlink.mailbox.codec import (
    COLLECT,
    DEPOSIT,
    DONE,
    ITEM,
    MAX_ITEMS_PER_FRAME,
    RECEIPTS_REQ,
    REGISTER,
    REVOKE,
    TAKEN,
    Frame,
    decode_frame,
    encode_frame,
    open_descriptor,
    read_allow,
    read_ids,
    receipts_frame,
    result_frame,
)
from tierlink.mailbox.policy import MailboxRefused, MailboxSettings, check_deposit
from tierlink.mailbox.store import MailboxStore
from tierlink.offline.dht_access import Dht
from tierlink.transport.connection import Connection
from tierlink.wire.dhtkeys import mailboxes_key
from tierlink.wire.records import KIND_ENVELOPE, check_head
from tierlink.wire.sealed import MIN_SIZE, TIME_SIZE

log = logging.getLogger(__name__)


class MailboxServer:
    """Stores sealed envelopes for registered recipients; see the module docstring."""

    def __init__(self, dht: Dht, me: str, store: MailboxStore, settings: MailboxSettings) -> None:
        self.dht = dht
        self.me = me
        self.store = store
        self.settings = settings
        self.refusals: Counter[str] = Counter()
        """Refused requests by reason (also logged)."""
        self.deposits = 0
        """Deposits stored (duplicates not counted)."""
        self.duplicates = 0
        """Deposits repeated after a lost answer, answered ok and not stored again."""
        self._collectors: dict[str, asyncio.Event] = {}

    def _now(self) -> int:
        return self.settings.clock()

    def _refuse(self, conn: Connection, why: MailboxRefused | RecordError) -> bytes:
        reason = why.reason
        self.refusals[reason] += 1
        log.warning("mailbox refused %s from %s…: %s", reason, conn.remote_fingerprint[:16], why)
        return result_frame(False, reason)

    async def handle(self, conn: Connection) -> None:
        """Serve one connection until it closes."""
        who = conn.remote_fingerprint
        pusher: asyncio.Task[None] | None = None
        try:
            while True:
                data = await conn.recv()
                if data is None:
                    continue
                frame = decode_frame(data)
                if frame.type == COLLECT and pusher is None:
                    if not self.store.registration(who, self._now())[0]:
                        await conn.send(self._refuse(conn, MailboxRefused("not-registered")))
                        continue
                    pusher = asyncio.create_task(self._push(conn), name="mailbox-push")
                    continue
                reply = self._answer(conn, frame)
                if reply is not None:
                    await conn.send(reply)
        except RecordError as exc:
            self.refusals[exc.reason] += 1
            log.warning("mailbox closing %s…: malformed frame: %s", who[:16], exc)
        except (ConnectionClosed, TierlinkError):
            pass
        finally:
            if pusher is not None:
                pusher.cancel()
                with contextlib.suppress(asyncio.CancelledError, TierlinkError):
                    await pusher
            if not conn.closed:
                await conn.close()

    def _answer(self, conn: Connection, frame: Frame) -> bytes | None:
        who, now = conn.remote_fingerprint, self._now()
        if frame.type == REGISTER:
            try:
                desc = open_descriptor(frame.value(1, "descriptor"), owner=who, now=now)
            except RecordError as exc:
                return self._refuse(conn, exc)
            if self.me not in desc.mailboxes:
                return self._refuse(conn, MailboxRefused("not-named", "descriptor omits us"))
            served = self.settings.recipients
            if served is not None and who not in served:
                return self._refuse(conn, MailboxRefused("not-served", "we serve others only"))
            if (not self.store.registration(who, now)[0]
                    and self.store.registrations(now) >= self.settings.max_registrations):
                return self._refuse(conn, MailboxRefused(
                    "registrations-full", f"{self.settings.max_registrations} recipients "
                                          "registered already"))
            expires = min(desc.expires_at_ms, now + int(self.settings.retention_s * 1000))
            self.store.register(who, desc.value, read_allow(frame), now, expires)
            log.info("mailbox registered %s…", who[:16])
            return result_frame(True)
        if frame.type == REVOKE:
            dropped = self.store.revoke(who, now)
            log.info("mailbox registration of %s… revoked (%d dropped, their depositors told)",
                     who[:16], dropped)
            return result_frame(True, dropped=dropped)
        if frame.type == DEPOSIT:
            return self._deposit(conn, frame, now)
        if frame.type == TAKEN:
            handle = frame.fields.uint(1, "handle")
            ack = frame.fields.opt_bstr(2, "ack", min_size=1, max_size=4096)
            self.store.take(who, handle, ack, now)
            return None
        if frame.type == RECEIPTS_REQ:
            return receipts_frame(self.store.receipts(who, MAX_ITEMS_PER_FRAME))
        if frame.type == DONE:
            self.store.forget_receipts(who, read_ids(frame))
            return None
        raise RecordError("malformed", f"frame type {frame.type} is not a request")

    def _deposit(self, conn: Connection, frame: Frame, now: int) -> bytes:
        who = conn.remote_fingerprint
        mid, recipient = frame.mid(1), frame.fp(2, "recipient")
        try:
            envelope = check_head(frame.value(3, "envelope"), KIND_ENVELOPE, MIN_SIZE)
        except RecordError as exc:
            return self._refuse(conn, exc)
        if self.store.has(who, mid):  # a retry after a lost answer
            self.duplicates += 1
            log.info("mailbox already holds %s from %s…: stored once", mid.hex(), who[:16])
            return result_frame(True, "duplicate", mid)
        registered, allow = self.store.registration(recipient, now)
        expires = int.from_bytes(envelope[2 + TIME_SIZE:2 + 2 * TIME_SIZE], "big")
        expires = min(expires, now + int(self.settings.retention_s * 1000))
        try:
            check_deposit(
                self.settings, registered=registered, allow=allow, depositor=who,
                expires_ms=expires, size=len(envelope),
                sender_bytes=self.store.held_bytes(recipient, who),
                recipient_bytes=self.store.held_bytes(recipient),
                total_bytes=self.store.held_bytes(),
            )
        except MailboxRefused as exc:
            return self._refuse(conn, exc)
        if self.store.add(recipient, who, mid, envelope, now, expires):
            self.deposits += 1
        wake = self._collectors.get(recipient)
        if wake is not None:
            wake.set()
        return result_frame(True, "", mid)

    async def _push(self, conn: Connection) -> None:
        """Send every held envelope, then each new one as it is deposited."""
        who = conn.remote_fingerprint
        wake = self._collectors[who] = asyncio.Event()
        after = 0
        try:
            while True:
                wake.clear()
                for dep in self.store.held(who, after):
                    await conn.send(encode_frame(ITEM, {1: dep.handle, 2: dep.envelope}))
                    after = dep.handle
                await wake.wait()
        finally:
            if self._collectors.get(who) is wake:
                del self._collectors[who]

    # -- background --------------------------------------------------------------------------
    async def reput_descriptors(self) -> None:
        """Keep every registered recipient's descriptor in the DHT (a restartable loop)."""
        while True:
            for recipient, value in self.store.descriptors(self._now()):
                await self.dht.put(mailboxes_key(recipient), value)
            await asyncio.sleep(self.settings.descriptor_interval)

    async def expire_loop(self) -> None:
        """Delete expired envelopes, leaving an expiry receipt for each depositor."""
        while True:
            self.expire_now()
            await asyncio.sleep(self.settings.expiry_interval)

    def expire_now(self) -> int:
        """Expire what is due now; returns the count (each one logged)."""
        gone = self.store.expire(self._now())
        for dep in gone:
            log.warning("mailbox expired %s from %s… for %s…", dep.message_id.hex(),
                        dep.depositor[:16], dep.recipient[:16])
        return len(gone)
