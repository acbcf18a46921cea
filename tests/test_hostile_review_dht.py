"""Attacks found by reviewing the DHT-facing readers: each puts attacker values ahead of a
genuine one under the key a reader gets, and the genuine one must still be used.

A DHT hands a key's values back in the order they were stored, so whoever writes first
writes ahead of the owner's later (re-)puts: a reader that reads only the first few values
of a key lets anyone who knows the key hide the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from tests.memory_dht import MemoryDht
from tests.waiting import eventually
from tierlink.dht.record_book import PeerLookup
from tierlink.identity import Identity
from tierlink.mailbox import MailboxClient, SenderStore, create_descriptor
from tierlink.mailbox.client import MAX_DESCRIPTOR_VERIFIES
from tierlink.mailbox.codec import receipts_frame
from tierlink.offline.delivered import DeliveredLog
from tierlink.offline.inbox import InboxLimits
from tierlink.offline.outbox import DELIVERED, IN_MAILBOX, Outbox
from tierlink.offline.worker import OfflineTier
from tierlink.transport.connection import Connection
from tierlink.wire.ack import create_ack
from tierlink.wire.dhtkeys import (
    ice_candidates_key,
    mailboxes_key,
    offline_acks_key,
    offline_queue_key,
)
from tierlink.wire.envelope import ack_token, create_envelope
from tierlink.wire.records import KIND_ENVELOPE, KIND_MAILBOX_DESCRIPTOR, PeerRecord, now_ms

SENDER = Identity.generate()
RECIPIENT = Identity.generate()
ATTACKER = Identity.generate()


@pytest.fixture
def sender(tmp_path: Path) -> Iterator[tuple[MemoryDht, OfflineTier]]:
    dht = MemoryDht()
    db = tmp_path / "sender.db"
    with Outbox(db) as outbox, DeliveredLog(db) as log:
        yield dht, OfflineTier(dht, SENDER, outbox, log)  # type: ignore[arg-type]


# -- peer records ---------------------------------------------------------------------------
class CountingDht(MemoryDht):
    """A :class:`MemoryDht` that counts its gets."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, key: str, **kw: object) -> list[bytes]:
        self.gets += 1
        return await super().get(key, **kw)


async def test_a_value_at_the_record_key_does_not_end_a_lookups_patience() -> None:
    """A lookup waits up to its patience for a record the DHT does not hold yet (a node
    that just joined). One value an attacker put at the key beforehand (here a record of
    its own) must not end that wait: the genuine record put meanwhile is found."""
    dht = CountingDht()
    key = ice_candidates_key(RECIPIENT.fingerprint)
    await dht.put(key, PeerRecord.create(ATTACKER, 1).encode(ATTACKER))
    lookup = PeerLookup(dht)
    task = asyncio.create_task(lookup.lookup(RECIPIENT.fingerprint, patience=30.0))
    await eventually(lambda: dht.gets >= 1 or task.done(), 10, "the lookup's first get")
    await dht.put(key, PeerRecord.create(RECIPIENT, 5).encode(RECIPIENT))
    record = await asyncio.wait_for(task, 30)
    assert record.fingerprint == RECIPIENT.fingerprint and record.seq == 5
    assert lookup.book.rejected["fingerprint"] >= 1


# -- acks ----------------------------------------------------------------------------------
async def test_acks_flooded_ahead_of_the_genuine_ack_do_not_hide_it(
    sender: tuple[MemoryDht, OfflineTier],
) -> None:
    """An ack key is seen by the DHT nodes that store it. An attacker puts 300 ack-shaped
    values there (they pass every clear check; their tags fail) before the recipient's ack:
    the sender's read of the key still finds the ack and marks the message delivered."""
    dht, tier = sender
    mid = await tier.send(RECIPIENT.fingerprint, b"m", recipient_kem_pk=RECIPIENT.kem_public_key)
    token = ack_token(SENDER, RECIPIENT.fingerprint)
    key = offline_acks_key(token)
    flood = [create_ack(ack_token(ATTACKER, RECIPIENT.fingerprint), [mid]) for _ in range(300)]
    for value in [*flood, create_ack(token, [mid])]:
        await dht.put(key, value)
    assert await tier.check_acks() == 1
    entry = tier.outbox.get(mid)
    assert entry is not None and entry.state == DELIVERED
    assert tier.acks.rejected == {"decrypt": len(flood)}
    assert tier.acks.skipped == 0


# -- mailbox descriptors ---------------------------------------------------------------------
OLD_BOX = Identity.generate().fingerprint  # a mailbox the recipient no longer names
NEW_BOX = Identity.generate().fingerprint


async def no_dial(fingerprint: str, timeout: float) -> Connection:
    raise AssertionError("a descriptor lookup dials nobody")


@pytest.fixture
def client(
    sender: tuple[MemoryDht, OfflineTier], tmp_path: Path
) -> Iterator[tuple[MemoryDht, MailboxClient]]:
    dht, tier = sender
    with SenderStore(tmp_path / "sender.db") as store:
        yield dht, MailboxClient(no_dial, SENDER, tier, store, mailboxes=[],
                                 allow=lambda: None, descriptor_lifetime_s=86400.0)


def forged_descriptor(issued: int) -> bytes:
    """A descriptor claiming the recipient (its real public key, which is public) with a
    signature by someone else: every check but the signature passes."""
    body: dict[int, Any] = {
        1: bytes.fromhex(RECIPIENT.fingerprint), 2: RECIPIENT.public_key, 3: issued,
        4: issued + 3_600_000, 5: RECIPIENT.kem_public_key,
        6: [bytes.fromhex(OLD_BOX)],
    }
    head = bytes([1, KIND_MAILBOX_DESCRIPTOR]) + cbor2.dumps(body, canonical=True)
    return head + ATTACKER.sign(head)


async def test_values_ahead_of_the_newest_descriptor_do_not_steer_the_sender(
    client: tuple[MemoryDht, MailboxClient],
) -> None:
    """The recipient's old descriptor (still within its lifetime, naming a mailbox it has
    dropped), replayed, then 64 descriptors of other signers, all ahead of its newest one:
    the sender still takes the newest, and never the dropped mailbox (which would learn the
    sender's address and hold its message)."""
    dht, mailbox = client
    key, t = mailboxes_key(RECIPIENT.fingerprint), now_ms()
    old = create_descriptor(RECIPIENT, [OLD_BOX], 86400.0, now=t - 3_600_000)
    others = [create_descriptor(Identity.generate(), [OLD_BOX], 86400.0) for _ in range(4)]
    new = create_descriptor(RECIPIENT, [NEW_BOX], 86400.0, now=t)
    for value in [old, *(others * 16), new]:
        await dht.put(key, value)
    desc = await mailbox.descriptor(RECIPIENT.fingerprint)
    assert desc is not None and desc.mailboxes == (NEW_BOX,)
    assert mailbox.descriptor_rejections["fingerprint"] == len(others) * 16


async def test_forged_descriptors_ahead_of_the_genuine_one_cost_bounded_work(
    client: tuple[MemoryDht, MailboxClient],
) -> None:
    """More forgeries than one lookup verifies, claiming later issue times than the genuine
    descriptor, ahead of it: a lookup verifies at most MAX_DESCRIPTOR_VERIFIES, remembers
    the forgeries, and the next lookup skips them and finds the genuine descriptor."""
    dht, mailbox = client
    key, t = mailboxes_key(RECIPIENT.fingerprint), now_ms()
    extra = 10
    forged = [forged_descriptor(t + i) for i in range(1, MAX_DESCRIPTOR_VERIFIES + extra + 1)]
    for value in [*forged, create_descriptor(RECIPIENT, [NEW_BOX], 86400.0, now=t)]:
        await dht.put(key, value)
    assert await mailbox.descriptor(RECIPIENT.fingerprint) is None
    assert mailbox.descriptor_rejections == {"signature": MAX_DESCRIPTOR_VERIFIES,
                                             "verify_cap": extra + 1}
    desc = await mailbox.descriptor(RECIPIENT.fingerprint)
    assert desc is not None and desc.mailboxes == (NEW_BOX,)
    # Second lookup: the remembered forgeries skipped unverified, the rest verified once.
    assert mailbox.descriptor_rejections["signature"] == len(forged) + MAX_DESCRIPTOR_VERIFIES


# -- envelopes -------------------------------------------------------------------------------
#: Values anyone can put for free: they fail the checks that need no cryptography.
FREE_JUNK = [b"junk %d" % i for i in range(200)] + [
    bytes([1, KIND_ENVELOPE]) + bytes(7000 + i) for i in range(100)  # times 0: long expired
]


@pytest.fixture
def recipient(tmp_path: Path) -> Iterator[tuple[MemoryDht, OfflineTier, list[bytes]]]:
    dht = MemoryDht()
    db = tmp_path / "recipient.db"
    with Outbox(db) as outbox, DeliveredLog(db) as log:
        limits = InboxLimits(max_values_per_fetch=4)
        yield dht, OfflineTier(dht, RECIPIENT, outbox, log, limits=limits), []  # type: ignore[arg-type]


def envelope_to_recipient(payload: bytes) -> bytes:
    value, _ = create_envelope(SENDER, RECIPIENT.fingerprint, RECIPIENT.kem_public_key, payload)
    return value


async def test_free_junk_takes_no_room_in_a_fetch(
    recipient: tuple[MemoryDht, OfflineTier, list[bytes]],
) -> None:
    """A fetch opens at most ``max_values_per_fetch`` values (4 here), chosen at random.
    300 junk values ahead of the genuine envelope are refused before that choice, so the
    genuine envelope is delivered by the first fetch, not by chance."""
    dht, tier, got = recipient
    key = offline_queue_key(RECIPIENT.fingerprint)
    for value in [*FREE_JUNK, envelope_to_recipient(b"genuine")]:
        await dht.put(key, value)
    res = await tier.fetch_and_deliver(lambda env: got.append(env.payload))
    assert got == [b"genuine"]
    assert res.rejected == {"malformed": 200, "expired": 100}


async def test_free_junk_takes_no_room_in_the_listen_buffer(
    recipient: tuple[MemoryDht, OfflineTier, list[bytes]],
) -> None:
    """The queue listen buffers at most ``max_values_per_fetch`` values while a batch is
    delivered and drops the rest until the sender's next re-put. Junk streamed ahead of
    the genuine envelope must not fill that buffer."""
    dht, tier, got = recipient
    key = offline_queue_key(RECIPIENT.fingerprint)
    for value in [*FREE_JUNK, envelope_to_recipient(b"genuine")]:
        await dht.put(key, value)
    tier.start(lambda env: got.append(env.payload))
    try:
        await eventually(lambda: got == [b"genuine"], 20, "the genuine envelope delivered")
    finally:
        await tier.stop()
    assert tier.inbox.rejected["deferred"] == 0


# -- mailbox receipts ----------------------------------------------------------------------
class ReceiptsConn:
    """A mailbox connection that answers RECEIPTS? with the given receipts."""

    def __init__(self, receipts: list[tuple[bytes, bytes | None]]) -> None:
        self.replies = [receipts_frame(receipts)]
        self.sent: list[bytes] = []

    async def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    async def recv(self, timeout: float | None = None) -> bytes | None:
        return self.replies.pop(0)

    async def close(self) -> None:
        pass


async def test_one_mailboxs_expiry_notice_does_not_end_a_message_another_holds(
    sender: tuple[MemoryDht, OfflineTier], tmp_path: Path,
) -> None:
    """A message deposited with two mailboxes (redundancy 2), and one deposited with the
    second only. The first mailbox answers RECEIPTS? with expiry notices for both (it may
    have a shorter retention, or be hostile): the first message stays undelivered and
    held by the second mailbox, and the second message is untouched."""
    _, tier = sender
    both = await tier.send(RECIPIENT.fingerprint, b"a", recipient_kem_pk=RECIPIENT.kem_public_key)
    other = await tier.send(RECIPIENT.fingerprint, b"b", recipient_kem_pk=RECIPIENT.kem_public_key)
    conn = ReceiptsConn([(both, None), (other, None)])

    async def dial(fingerprint: str, timeout: float) -> Connection:
        assert fingerprint == OLD_BOX
        return conn  # type: ignore[return-value]

    with SenderStore(tmp_path / "sender.db") as store:
        client = MailboxClient(dial, SENDER, tier, store, mailboxes=[], allow=lambda: None,
                               descriptor_lifetime_s=86400.0)
        for mid, boxes in ((both, (OLD_BOX, NEW_BOX)), (other, (NEW_BOX,))):
            for box in boxes:
                store.deposited(mid, box, RECIPIENT.fingerprint)
            assert tier.outbox.mark_in_mailbox(mid)
        assert await client.fetch_receipts(OLD_BOX, store.holding()[OLD_BOX]) == 2
        assert store.mailboxes_of(both) == [NEW_BOX]
        assert store.mailboxes_of(other) == [NEW_BOX]
    for mid in (both, other):
        entry = tier.outbox.get(mid)
        assert entry is not None and entry.state == IN_MAILBOX


async def test_forged_descriptors_do_not_hide_the_cached_one(
    client: tuple[MemoryDht, MailboxClient],
) -> None:
    """The sender verified the recipient's descriptor once (it is cached). Forgeries claiming
    later issue times, more than a lookup verifies, then fill the key: the sender still has
    the cached descriptor, and a replayed older one is not taken over it."""
    dht, mailbox = client
    key, t = mailboxes_key(RECIPIENT.fingerprint), now_ms()
    await dht.put(key, create_descriptor(RECIPIENT, [NEW_BOX], 86400.0, now=t))
    assert (await mailbox.descriptor(RECIPIENT.fingerprint)) is not None
    dht.values[key] = [forged_descriptor(t + i) for i in range(1, 2 * MAX_DESCRIPTOR_VERIFIES)]
    dht.values[key].append(create_descriptor(RECIPIENT, [OLD_BOX], 86400.0, now=t - 60_000))
    desc = await mailbox.descriptor(RECIPIENT.fingerprint)
    assert desc is not None and desc.mailboxes == (NEW_BOX,)
    assert mailbox.descriptor_rejections["stale"] == 1
