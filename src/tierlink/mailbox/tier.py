"""The mailbox tier of a node's delivery: place an undeliverable message, keep collecting.

:meth:`MailboxTier.place` runs when the live tiers failed: it queues the envelope in the DHT
(sealed with the KEM key of the recipient's peer record, or of its mailbox descriptor when the
record is gone) and deposits it with the recipient's mailboxes (outbox state ``in_mailbox``).
:meth:`MailboxTier.maintain` retries deposits that found no mailbox and takes receipts (acks,
expiry notices) from the mailboxes that hold our messages; :meth:`MailboxTier.collect_forever`
keeps a recipient registered with and draining one of its own mailboxes.
"""

from __future__ import annotations

import asyncio
import logging

from tierlink.backoff import Backoff
from tierlink.errors import PeerNotFound, RecordError, TierlinkError
from tierlink.mailbox.client import MailboxClient
from tierlink.mailbox.codec import Descriptor
from tierlink.offline.outbox import QUEUED, QUEUED_DHT
from tierlink.offline.worker import Callback

log = logging.getLogger(__name__)

#: First wait before a failed collect session or maintenance pass runs again (seconds).
RETRY_S = 1.0


class MailboxTier:
    """A node's mailbox client put to work; see the module docstring."""

    def __init__(self, client: MailboxClient, *, poll_interval: float) -> None:
        self.client = client
        self.offline = client.offline
        self.outbox = client.offline.outbox
        self.poll_interval = poll_interval
        self.errors = 0
        """Failed maintenance passes and collect sessions (each logged)."""

    async def place(self, mid: bytes) -> list[str]:
        """Queue ``mid`` in the DHT (descriptor's KEM key if no peer record), then deposit it;
        returns the mailboxes holding it. Raises what :meth:`OfflineTier.queue` raises."""
        entry = self.outbox.get(mid)
        if entry is None:
            return []
        desc: Descriptor | None = None
        try:
            await self.offline.queue(mid)
        except PeerNotFound:
            desc = await self.client.descriptor(entry.recipient)
            if desc is None:
                raise
            await self.offline.queue(mid, desc.kem_public_key)
        return await self.deposit(mid, desc)

    async def deposit(self, mid: bytes, desc: Descriptor | None = None) -> list[str]:
        """Deposit a queued message with its recipient's mailboxes (none: [])."""
        entry = self.outbox.get(mid)
        if entry is None or entry.envelope is None or entry.state not in QUEUED:
            return []
        if desc is None:
            desc = await self.client.descriptor(entry.recipient)
        if desc is None:
            return []
        boxes = await self.client.deposit(mid, entry.recipient, entry.envelope, desc.mailboxes)
        if boxes:
            self.outbox.mark_in_mailbox(mid)
        return boxes

    async def maintain_once(self) -> bool:
        """Deposit queued messages no mailbox holds yet; take receipts from every mailbox
        holding our messages. False if a step failed (a mailbox down, the DHT not joined
        yet): it is tried again on the next pass."""
        ok = True
        for entry in self.outbox.entries([QUEUED_DHT]):
            try:
                await self.deposit(entry.message_id)
            except (TierlinkError, TimeoutError, OSError) as exc:
                ok = False
                self.errors += 1
                log.info("deposit of %s failed: %s", entry.message_id.hex(), exc)
        for box, mine in self.client.store.holding().items():
            try:
                await self.client.fetch_receipts(box, mine)
            except (TierlinkError, TimeoutError, OSError) as exc:
                ok = False
                self.errors += 1
                log.info("receipts from mailbox %s… not taken: %s", box[:16], exc)
        return ok

    async def maintain(self) -> None:
        """:meth:`maintain_once` every ``poll_interval`` seconds, sooner (with backoff from
        :data:`RETRY_S`) after a pass that failed, forever."""
        retry = Backoff(RETRY_S, maximum=max(RETRY_S, self.poll_interval))
        while True:
            if await self.maintain_once():
                retry.reset()
                await asyncio.sleep(self.poll_interval)
            else:
                await retry.sleep()

    async def collect_forever(self, mailbox: str, deliver: Callback) -> None:
        """Stay registered with ``mailbox`` and deliver what it holds; reconnect with backoff."""
        backoff = Backoff(RETRY_S, maximum=max(RETRY_S, self.poll_interval))
        while True:
            try:
                await self.client.collect(mailbox, deliver)
                backoff.reset()
            except (TierlinkError, TimeoutError, OSError) as exc:
                self.errors += 1
                if isinstance(exc, RecordError):
                    log.warning("mailbox %s… sent a bad frame: %s", mailbox[:16], exc)
                else:
                    log.info("collecting from mailbox %s… failed: %s", mailbox[:16], exc)
            await backoff.sleep()
