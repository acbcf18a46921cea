"""The offline tier against real dhtnode processes on 127.0.0.1 (no mocks of OpenDHT)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import eventually
from tierlink.dht import DhtClient, DhtNodeProcess
from tierlink.errors import PeerNotFound
from tierlink.identity import Identity
from tierlink.offline import acks as ack_watch
from tierlink.offline import inbox as inbox_policy
from tierlink.offline.delivered import DeliveredLog
from tierlink.offline.inbox import InboxLimits
from tierlink.offline.outbox import DELIVERED, PENDING, QUEUED_DHT, Outbox
from tierlink.offline.worker import OfflineTier
from tierlink.wire.ack import create_ack
from tierlink.wire.dhtkeys import ice_candidates_key, offline_acks_key, offline_queue_key
from tierlink.wire.envelope import ReceivedEnvelope, ack_token
from tierlink.wire.records import PeerRecord, now_ms


@dataclass
class Peer:
    ident: Identity
    dht: DhtClient
    outbox: Outbox
    log: DeliveredLog
    tier: OfflineTier
    got: list[ReceivedEnvelope]

    async def deliver(self, env: ReceivedEnvelope) -> None:
        self.got.append(env)


async def stop(*peers: Peer) -> None:
    """Stop each peer's worker and close its DHT client and stores."""
    for p in peers:
        await p.tier.stop()
        await p.dht.close()
        p.outbox.close()
        p.log.close()


def make_peer(
    node: DhtNodeProcess, db: Path, ident: Identity | None = None, **kw: Any
) -> Peer:
    ident = ident or Identity.generate()
    dht = DhtClient(node.proxy_url)
    outbox = Outbox(db, synchronous="NORMAL")
    log = DeliveredLog(db, synchronous="NORMAL")
    return Peer(ident, dht, outbox, log, OfflineTier(dht, ident, outbox, log, **kw), [])


@pytest.fixture
async def peers(
    dht_cluster: list[DhtNodeProcess], tmp_path: Path
) -> AsyncIterator[tuple[Peer, Peer]]:
    alice = make_peer(dht_cluster[0], tmp_path / "alice.sqlite")
    bob = make_peer(dht_cluster[2], tmp_path / "bob.sqlite")
    try:
        yield alice, bob
    finally:
        await stop(alice, bob)


#: Polling the DHT through a proxy: not more often than this (seconds).
DHT_POLL_S = 0.1


async def reput_then_fetch(sender: Peer, receiver: Peer, mid: bytes) -> None:
    """Re-put until ``mid`` is queued in the DHT, then fetch until the receiver has it."""

    async def queued() -> bool:
        await sender.tier.reput_due()
        return sender.outbox.get(mid).state == QUEUED_DHT  # type: ignore[union-attr]

    await eventually(queued, 10, interval=DHT_POLL_S)

    async def fetched() -> bool:
        await receiver.tier.fetch_and_deliver(receiver.deliver)
        return bool(receiver.got)

    await eventually(fetched, 10, interval=DHT_POLL_S)


async def test_send_fetch_ack_round_trip(peers: tuple[Peer, Peer]) -> None:
    alice, bob = peers
    mid = await alice.tier.send(bob.ident.fingerprint, b"while you were out",
                                recipient_kem_pk=bob.ident.kem_public_key)
    entry = alice.outbox.get(mid)
    assert entry is not None and entry.state == QUEUED_DHT and entry.attempts == 1

    async def fetched() -> bool:
        await bob.tier.fetch_and_deliver(bob.deliver)
        return bool(bob.got)

    await eventually(fetched, 10, interval=DHT_POLL_S)
    assert [(e.payload, e.message_id, e.sender_fingerprint) for e in bob.got] == [
        (b"while you were out", mid, alice.ident.fingerprint)
    ]
    assert bob.log.seen(alice.ident.fingerprint, mid)

    async def acked() -> bool:
        return await alice.tier.check_acks() > 0

    await eventually(acked, 10, interval=DHT_POLL_S)
    entry = alice.outbox.get(mid)
    assert entry is not None and (entry.state, entry.tier) == (DELIVERED, "offline")

    # A re-put (the sender missed the ack) is acked again but not delivered again.
    res = await bob.tier.fetch_and_deliver(bob.deliver)
    assert len(bob.got) == 1 and res.rejected["replay"] >= 1


async def test_kem_key_from_peer_record_and_missing_record(peers: tuple[Peer, Peer]) -> None:
    alice, bob = peers
    with pytest.raises(PeerNotFound):
        await alice.tier.lookup_kem_key(bob.ident.fingerprint)
    # Without a peer record the message stays pending, safe on disk.
    mid = await alice.tier.send(bob.ident.fingerprint, b"early")
    assert alice.outbox.get(mid).state == PENDING  # type: ignore[union-attr]
    assert alice.tier.errors == 1

    record = PeerRecord.create(bob.ident, seq=1).encode(bob.ident)
    await bob.dht.put(ice_candidates_key(bob.ident.fingerprint), record)

    await reput_then_fetch(alice, bob, mid)
    assert bob.got[0].payload == b"early"


async def test_reput_reuses_the_same_signed_value(peers: tuple[Peer, Peer]) -> None:
    alice, bob = peers
    mid = await alice.tier.send(bob.ident.fingerprint, b"again",
                                recipient_kem_pk=bob.ident.kem_public_key)
    first = alice.outbox.get(mid)
    assert first is not None and first.envelope is not None
    assert await alice.tier.reput_due() == 0  # not due yet
    later = now_ms() + 301_000
    assert await alice.tier.reput_due(now_ms=later) == 1
    again = alice.outbox.get(mid)
    assert again is not None and again.attempts == 2 and again.envelope == first.envelope

    async def stored() -> bool:
        return first.envelope in await bob.dht.get(offline_queue_key(bob.ident.fingerprint))

    await eventually(stored, 10, interval=DHT_POLL_S)
    values = await bob.dht.get(offline_queue_key(bob.ident.fingerprint))
    assert set(values) == {first.envelope}


async def test_outbox_survives_restart_and_is_reput(
    dht_cluster: list[DhtNodeProcess], tmp_path: Path
) -> None:
    bob_ident = Identity.generate()
    db = tmp_path / "alice.sqlite"
    alice = make_peer(dht_cluster[0], db)
    try:
        mid = alice.outbox.add(bob_ident.fingerprint, b"queued before restart")
    finally:
        await alice.dht.close()
        alice.outbox.close()
        alice.log.close()
    alice2 = make_peer(dht_cluster[1], db, alice.ident)
    bob = make_peer(dht_cluster[2], tmp_path / "bob.sqlite", bob_ident)
    try:
        await bob.dht.put(ice_candidates_key(bob_ident.fingerprint),
                          PeerRecord.create(bob_ident, seq=1).encode(bob_ident))

        await reput_then_fetch(alice2, bob, mid)
        assert bob.got[0].message_id == mid
    finally:
        for p in (alice2, bob):
            await p.dht.close()
            p.outbox.close()
            p.log.close()


async def test_background_listen_delivers_and_marks_delivered(
    peers: tuple[Peer, Peer],
) -> None:
    alice, bob = peers
    bob.tier.start(bob.deliver)
    alice.tier.start(alice.deliver)  # a listen hands over values already stored, too
    mids = [
        await alice.tier.send(bob.ident.fingerprint, b"live %d" % i,
                              recipient_kem_pk=bob.ident.kem_public_key)
        for i in range(3)
    ]

    async def all_delivered() -> bool:
        return all(alice.outbox.get(m).state == DELIVERED for m in mids)  # type: ignore[union-attr]

    await eventually(all_delivered, 15.0, interval=DHT_POLL_S)
    assert sorted(e.payload for e in bob.got) == [b"live 0", b"live 1", b"live 2"]
    assert bob.tier.errors == 0 and alice.tier.errors == 0


async def test_failing_callback_is_retried_not_lost(peers: tuple[Peer, Peer]) -> None:
    alice, bob = peers
    mid = await alice.tier.send(bob.ident.fingerprint, b"retry me",
                                recipient_kem_pk=bob.ident.kem_public_key)

    def broken(env: ReceivedEnvelope) -> None:
        raise RuntimeError("application not ready")

    async def tried() -> bool:
        res = await bob.tier.fetch_and_deliver(broken)
        return res.rejected["callback_error"] > 0

    await eventually(tried, 10, interval=DHT_POLL_S)
    assert not bob.log.seen(alice.ident.fingerprint, mid)
    res = await bob.tier.fetch_and_deliver(bob.deliver)
    assert [e.payload for e in bob.got] == [b"retry me"] and len(res.accepted) == 1


async def test_capped_burst_is_deferred_not_lost(
    dht_cluster: list[DhtNodeProcess], tmp_path: Path
) -> None:
    # Bob takes one message per sender per fetch; the rest are not acked, so Alice re-puts
    # them (every second here instead of every 5 minutes) until each got through, once.
    alice = make_peer(dht_cluster[0], tmp_path / "a.sqlite", reput_interval_s=1.0)
    bob = make_peer(dht_cluster[2], tmp_path / "b.sqlite",
                    limits=InboxLimits(max_envelopes_per_sender=1))
    try:
        mids = [
            await alice.tier.send(bob.ident.fingerprint, b"burst %d" % i,
                                  recipient_kem_pk=bob.ident.kem_public_key)
            for i in range(3)
        ]
        alice.tier.start(alice.deliver, maintenance_s=0.5)
        bob.tier.start(bob.deliver)

        async def all_delivered() -> bool:
            return all(alice.outbox.get(m).state == DELIVERED  # type: ignore[union-attr]
                       for m in mids)

        await eventually(all_delivered, 20.0, interval=DHT_POLL_S)
        assert sorted(e.payload for e in bob.got) == [b"burst 0", b"burst 1", b"burst 2"]
        assert bob.tier.errors == 0 and alice.tier.errors == 0
        print("bob's rejections:", dict(bob.tier.inbox.rejected))
    finally:
        await stop(alice, bob)


async def test_ack_without_the_pairs_token_does_not_mark_delivered(
    peers: tuple[Peer, Peer],
) -> None:
    """Whoever learns Alice's ack key for Bob (it is in the DHT) can put values there, but
    an ack counts only if it was made with the token Alice gave Bob."""
    alice, bob = peers
    carol = Identity.generate()
    mid = await alice.tier.send(bob.ident.fingerprint, b"for bob only",
                                recipient_kem_pk=bob.ident.kem_public_key)
    key = alice.tier.acks.key(bob.ident.fingerprint)
    assert key == offline_acks_key(ack_token(alice.ident, bob.ident.fingerprint))
    await bob.dht.put(key, create_ack(ack_token(carol, bob.ident.fingerprint), [mid]))
    await bob.dht.put(key, b"not an ack at all")

    async def arrived() -> bool:
        return len(await alice.dht.get(key)) == 2

    await eventually(arrived, 10, interval=DHT_POLL_S)
    assert await alice.tier.check_acks() == 0
    assert alice.tier.acks.rejected == {"decrypt": 1, "malformed": 1}
    assert alice.outbox.get(mid).state == QUEUED_DHT  # type: ignore[union-attr]
    await bob.dht.put(key, create_ack(ack_token(alice.ident, bob.ident.fingerprint), [mid]))

    async def acked() -> bool:
        return await alice.tier.check_acks() == 1

    await eventually(acked, 10, interval=DHT_POLL_S)
    assert alice.outbox.get(mid).state == DELIVERED  # type: ignore[union-attr]


async def test_ack_fetch_opens_at_most_the_cap(
    peers: tuple[Peer, Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of acks under our key is opened at most MAX_ACKS_PER_FETCH at a time (made
    small here); the rest are counted skipped, and the genuine ack among them is read by a
    later fetch."""
    monkeypatch.setattr(ack_watch, "MAX_ACKS_PER_FETCH", 16)
    MAX_ACKS_PER_FETCH = ack_watch.MAX_ACKS_PER_FETCH
    alice, bob = peers
    bob_fp = bob.ident.fingerprint
    mid = await alice.tier.send(bob_fp, b"for bob", recipient_kem_pk=bob.ident.kem_public_key)
    carol = Identity.generate()
    flood = [create_ack(ack_token(carol, bob_fp), [bytes([i % 256, i // 256]) * 8])
             for i in range(MAX_ACKS_PER_FETCH + 20)]
    genuine = create_ack(ack_token(alice.ident, bob_fp), [mid])
    assert await alice.tier.check_acks(bob_fp, [*flood, genuine]) == 0
    assert alice.tier.acks.rejected == {"decrypt": MAX_ACKS_PER_FETCH}
    assert alice.tier.acks.skipped == 21
    assert alice.outbox.get(mid).state == QUEUED_DHT  # type: ignore[union-attr]
    assert await alice.tier.check_acks(bob_fp, [genuine]) == 1
    assert alice.outbox.get(mid).state == DELIVERED  # type: ignore[union-attr]


async def test_one_ack_listen_per_recipient_awaiting_acks(peers: tuple[Peer, Peer]) -> None:
    """Five messages to two recipients: two ack listens, not five; a recipient whose
    messages are all acknowledged is no longer listened for."""
    alice, bob = peers
    carol = Identity.generate()
    alice.tier.start(alice.deliver)
    for i in range(3):
        await alice.tier.send(bob.ident.fingerprint, b"to bob %d" % i,
                              recipient_kem_pk=bob.ident.kem_public_key)
    for i in range(2):
        await alice.tier.send(carol.fingerprint, b"to carol %d" % i,
                              recipient_kem_pk=carol.kem_public_key)
    both = {bob.ident.fingerprint, carol.fingerprint}
    await eventually(lambda: alice.tier.acks.listening == both, 10, what="two ack listens")
    bob.tier.start(bob.deliver)
    await eventually(lambda: len(bob.got) == 3, 15, interval=DHT_POLL_S, what="bob's three")
    await eventually(lambda: alice.tier.acks.listening == {carol.fingerprint}, 15,
                     what="bob's listen ended once his acks came")
    assert alice.tier.errors == 0 and bob.tier.errors == 0


async def test_copies_of_a_delivered_envelope_do_not_each_put_an_ack(
    peers: tuple[Peer, Peer], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whoever hands the recipient copies of an envelope it delivered (a hostile mailbox
    pushing it again and again) gets no DHT put per copy: a message's ack is put again at
    most once per REACK_INTERVAL_MS, and then it is (a sender that missed the ack)."""
    alice, bob = peers
    mid = await alice.tier.send(bob.ident.fingerprint, b"once",
                                recipient_kem_pk=bob.ident.kem_public_key)

    async def fetched() -> bool:
        await bob.tier.fetch_and_deliver(bob.deliver)
        return bool(bob.got)

    await eventually(fetched, 10, interval=DHT_POLL_S)
    (value,) = await bob.dht.get(offline_queue_key(bob.ident.fingerprint))
    puts: list[str] = []
    put = bob.dht.put

    async def counting_put(key: str, data: bytes, *args: Any, **kw: Any) -> Any:
        puts.append(key)
        return await put(key, data, *args, **kw)

    monkeypatch.setattr(bob.dht, "put", counting_put)
    token = ack_token(alice.ident, bob.ident.fingerprint)
    for _ in range(20):
        res = await bob.tier.fetch_and_deliver(bob.deliver, [value])
        assert res.replayed and not res.accepted
    assert puts == [] and bob.tier.inbox.rejected["reack_later"] == 20
    assert [e.message_id for e in bob.got] == [mid]
    later = now_ms() + inbox_policy.REACK_INTERVAL_MS
    (due,) = bob.tier.inbox.reacks_due(res.replayed, later)  # due again: acked once more
    assert res.ack_ids(replayed=[due]) == {token: [mid]}
    assert bob.tier.inbox.reacks_due(res.replayed, later) == []
