"""Attacks on the offline tier through the DHT, written as attacks beside a genuine sender.

The receiver's delivered log is bounded and never evicts: a flood of valid envelopes from
fresh identities fills it, after which a genuine sender's re-put message is still recognised
(delivered once, acknowledged again) and its new message is held back in the DHT, not lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.memory_dht import MemoryDht
from tierlink.identity import Identity
from tierlink.offline.delivered import MAX_KEEP_MS, PRUNE_GRACE_S, DeliveredLog
from tierlink.offline.inbox import Inbox
from tierlink.offline.outbox import DELIVERED, QUEUED_DHT, Outbox
from tierlink.offline.worker import OfflineTier
from tierlink.wire.dhtkeys import offline_queue_key
from tierlink.wire.envelope import ReceivedEnvelope, create_envelope
from tierlink.wire.records import now_ms

VICTIM = Identity.generate()
SENDER = Identity.generate()
KEM = VICTIM.kem_public_key
CAPACITY = 8
FLOOD = 12
FLOOD_TTL_S = 600.0


class Tier:
    """An offline tier over a :class:`MemoryDht`, with what it delivered."""

    def __init__(self, dht: MemoryDht, ident: Identity, db: Path, capacity: int) -> None:
        self.ident = ident
        self.outbox = Outbox(db, synchronous="NORMAL")
        self.log = DeliveredLog(db, synchronous="NORMAL", capacity=capacity)
        self.tier = OfflineTier(dht, ident, self.outbox, self.log)  # type: ignore[arg-type]
        self.got: list[ReceivedEnvelope] = []

    def deliver(self, env: ReceivedEnvelope) -> None:
        self.got.append(env)

    def payloads(self, sender: Identity) -> list[bytes]:
        return [e.payload for e in self.got if e.sender_fingerprint == sender.fingerprint]

    def close(self) -> None:
        self.outbox.close()
        self.log.close()


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[tuple[MemoryDht, Tier, Tier]]:
    dht = MemoryDht()
    victim = Tier(dht, VICTIM, tmp_path / "v.db", CAPACITY)
    sender = Tier(dht, SENDER, tmp_path / "s.db", CAPACITY)
    try:
        yield dht, victim, sender
    finally:
        victim.close()
        sender.close()


def flood_envelope() -> bytes:
    """A valid envelope to the victim from a fresh identity (short-lived)."""
    value, _ = create_envelope(
        Identity.generate(), VICTIM.fingerprint, VICTIM.kem_public_key, b"flood", FLOOD_TTL_S
    )
    return value


async def test_flood_of_fresh_identities_keeps_exactly_once(
    tiers: tuple[MemoryDht, Tier, Tier],
) -> None:
    dht, victim, sender = tiers
    first = await sender.tier.send(VICTIM.fingerprint, b"first", recipient_kem_pk=KEM)
    await victim.tier.fetch_and_deliver(victim.deliver)
    assert victim.payloads(SENDER) == [b"first"] and len(victim.log) == 1

    for _ in range(FLOOD):
        await dht.put(offline_queue_key(VICTIM.fingerprint), flood_envelope())
    res = await victim.tier.fetch_and_deliver(victim.deliver)
    assert len(victim.log) == CAPACITY  # full, and never more
    assert res.rejected["log_full"] == FLOOD - (CAPACITY - 1)

    # The genuine sender missed our ack (re-put of "first") and sends a new message.
    await sender.tier.queue(first)
    second = await sender.tier.send(VICTIM.fingerprint, b"second", recipient_kem_pk=KEM)
    res = await victim.tier.fetch_and_deliver(victim.deliver)
    assert victim.payloads(SENDER) == [b"first"]  # "first" not twice, "second" held back
    assert res.rejected["replay"] >= 1 and res.rejected["log_full"] >= 1
    assert not victim.log.seen(SENDER.fingerprint, second)
    assert len(victim.log) == CAPACITY

    await sender.tier.check_acks()
    assert sender.outbox.get(first).state == DELIVERED  # type: ignore[union-attr]
    assert sender.outbox.get(second).state == QUEUED_DHT  # type: ignore[union-attr]

    # The flood expires: the DHT forgets its values (and everything not re-put), the victim's
    # clock passes its entries' expiry. The genuine sender's re-put brings "second" once.
    dht.values.clear()
    later = now_ms() + int((FLOOD_TTL_S + PRUNE_GRACE_S) * 1000) + 1
    assert victim.log.prune(later) == CAPACITY - 1
    await sender.tier.reput_due(now_ms() + int(sender.tier.reput_interval_s * 1000))
    await victim.tier.fetch_and_deliver(victim.deliver)
    assert victim.payloads(SENDER) == [b"first", b"second"]
    await sender.tier.check_acks()
    assert sender.outbox.get(second).state == DELIVERED  # type: ignore[union-attr]


def test_full_log_still_recognises_replays(tmp_path: Path) -> None:
    with DeliveredLog(tmp_path / "db", synchronous="NORMAL", capacity=1) as log:
        inbox = Inbox(VICTIM, log)
        genuine, _ = create_envelope(SENDER, VICTIM.fingerprint, VICTIM.kem_public_key, b"g")
        inbox.delivered(inbox.process([genuine]).accepted[0])
        res = inbox.process([genuine, flood_envelope()])
        assert res.accepted == [] and res.rejected == {"replay": 1, "log_full": 1}
        assert len(res.replayed) == 1 and len(log) == 1


def test_log_entry_expires_on_the_receivers_clock(tmp_path: Path) -> None:
    """A sender's far expiry cannot keep an entry past the longest envelope lifetime."""
    t = now_ms()
    with DeliveredLog(tmp_path / "db", synchronous="NORMAL") as log:
        assert log.remember(SENDER.fingerprint, b"m" * 16, 2**62, t)
        grace = int(PRUNE_GRACE_S * 1000)
        assert log.prune(t + MAX_KEEP_MS + grace) == 0
        assert log.prune(t + MAX_KEEP_MS + grace + 1) == 1


def test_full_log_frees_room_only_by_expiry(tmp_path: Path) -> None:
    t = now_ms()
    with DeliveredLog(tmp_path / "db", synchronous="NORMAL", capacity=2) as log:
        log.remember(SENDER.fingerprint, b"a" * 16, t + 1000, t)
        log.remember(SENDER.fingerprint, b"b" * 16, t + 10**9, t)
        assert log.free(t) == 0 and len(log) == 2  # nothing evicted
        assert log.free(t + 1001 + int(PRUNE_GRACE_S * 1000)) == 1
        assert log.seen(SENDER.fingerprint, b"b" * 16)
