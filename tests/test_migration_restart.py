"""A peer that restarted (same identity, new process, new ports, new record) is dialed again
at once, not after the liveness timeout; a live peer that merely published a newer record
keeps its connection; a hostile DHT cannot fake a restart."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import config_for, dial
from tests.test_migration import black_hole
from tests.waiting import eventually
from tierlink.dht import DhtClient
from tierlink.errors import ConnectionClosed
from tierlink.identity import Identity
from tierlink.node import Node
from tierlink.node.delivery import Message
from tierlink.protocol.path_restart import (
    GONE_FLOOR_S,
    GONE_LATER_PERIOD_S,
    PeerRestartCheck,
)
from tierlink.transport.connection import Connection
from tierlink.wire.dhtkeys import ice_candidates_key
from tierlink.wire.records import KIND_PEER_RECORD, PeerRecord, seal

#: Far beyond every wait of these tests: a connection they see closed was not closed by the
#: liveness watchdog.
NO_WATCHDOG_S = 120.0


# -- the verdict, sans-IO --------------------------------------------------------------------
def test_a_newer_record_and_a_silent_restart_make_the_verdict() -> None:
    check = PeerRestartCheck(baseline_seq=100, baseline_issued_ms=4_000, opened_at_ms=5_000)
    assert not check.record(100, 4_000, now=10.0)  # the record the connection began with
    assert not check.record(99, 4_000, now=10.5)  # an older one (replayed)
    assert check.deadline(10.0, 0.1) is None
    assert not check.gone(99.0, 10.0, 0.1, declared_at=50.0)
    assert check.record(101, 4_000, now=11.0)  # the peer published again, same period
    assert check.evidence_seq == 101 and not check.evidence_later
    assert check.deadline(10.0, 0.1) == 11.0 + GONE_FLOOR_S  # from the later of the two
    assert not check.gone(11.0 + GONE_FLOOR_S - 0.01, 10.0, 0.1, declared_at=12.0)
    assert check.gone(11.0 + GONE_FLOOR_S, 10.0, 0.1, declared_at=12.0)


def test_a_path_that_answers_again_is_not_a_restarted_peer() -> None:
    check = PeerRestartCheck(baseline_seq=1, baseline_issued_ms=0, opened_at_ms=0)
    check.record(2, 0, now=1.0)
    # declared dead before the offer went out (at 1.0), never again since: it answers
    assert not check.gone(60.0, 1.0, 0.1, declared_at=0.5)
    assert not check.gone(60.0, 1.0, 0.1, declared_at=None)
    assert check.gone(60.0, 1.0, 0.1, declared_at=2.0)


def test_slow_signaling_stretches_the_grace() -> None:
    check = PeerRestartCheck(baseline_seq=1, baseline_issued_ms=0, opened_at_ms=0)
    assert check.grace(0.01) == GONE_FLOOR_S
    assert check.grace(4.0) == 12.0  # a DHT this slow answers that slowly too
    check.record(2, 0, now=0.0)
    assert not check.gone(11.9, 0.0, 4.0, declared_at=5.0)
    assert check.gone(12.0, 0.0, 4.0, declared_at=5.0)


def test_a_record_of_a_later_period_waits_longer() -> None:
    """What a live peer's periodic republish looks like proves less than a second record
    within the connection's period."""
    check = PeerRestartCheck(baseline_seq=200_000, baseline_issued_ms=200_000,
                             opened_at_ms=250_000)
    assert check.record(400_000, 400_000, now=1.0)
    assert check.evidence_later and check.grace(0.01) == GONE_LATER_PERIOD_S
    assert not check.gone(1.0 + GONE_FLOOR_S, 1.0, 0.01, declared_at=2.0)
    assert check.gone(1.0 + GONE_LATER_PERIOD_S, 1.0, 0.01, declared_at=2.0)


def test_a_peer_that_proves_the_session_resets_the_evidence() -> None:
    check = PeerRestartCheck(baseline_seq=5, baseline_issued_ms=0, opened_at_ms=0)
    assert check.record(6, 0, now=1.0)
    check.alive()  # it answered a restart: record 6 is a live peer's
    assert check.evidence_seq is None and check.baseline_seq == 6
    assert not check.gone(99.0, 0.0, 0.1, declared_at=50.0)
    assert not check.record(6, 0, now=2.0)
    assert check.record(7, 0, now=3.0)


def test_without_a_baseline_only_a_record_issued_after_the_opening_is_evidence() -> None:
    check = PeerRestartCheck(baseline_seq=None, baseline_issued_ms=None, opened_at_ms=5_000)
    assert not check.record(7, 4_000, now=1.0)  # first seen: becomes the baseline
    assert check.baseline_seq == 7
    assert check.record(8, 4_000, now=2.0) and not check.evidence_later
    later = PeerRestartCheck(baseline_seq=None, baseline_issued_ms=None, opened_at_ms=5_000)
    assert later.record(3, 6_000, now=1.0) and later.evidence_later  # issued after opening


# -- on real nodes ---------------------------------------------------------------------------
async def _die(node: Node, conn: Connection) -> None:
    """End ``node`` as SIGKILL would for its peer: its side of ``conn`` black-holed first, so
    its close tells the peer nothing."""
    assert black_hole(conn) >= 1
    await node.close()


def _receiver(node: Node, got: list[Message]) -> asyncio.Task[None]:
    async def consume() -> None:
        async for msg in node.messages():
            got.append(msg)
    return asyncio.ensure_future(consume())


def _migration(node: Node) -> dict[str, Any]:
    stats = node.stats()["path_migration"]
    assert isinstance(stats, dict)
    return stats


async def test_a_restarted_peer_is_redialed_and_the_message_delivered_once(dht_node) -> None:
    identity, data_dir = Identity.generate(), Path(tempfile.mkdtemp(prefix="tierlink-test-"))
    a = Node(config_for(dht_node, liveness_timeout=NO_WATCHDOG_S))
    b = Node(config_for(dht_node, identity=identity, data_dir=data_dir,
                        liveness_timeout=NO_WATCHDOG_S))
    await b.start()
    await a.start()
    got: list[Message] = []
    b2: Node | None = None
    consuming = _receiver(b, got)
    try:
        first = await a.send(b.fingerprint, b"one")
        assert await a.wait_delivered(first, 20) is not None
        old = a.messenger.link(b.fingerprint) if a.messenger else None
        assert old is not None and [m.payload for m in got] == [b"one"]
        (b_link,) = b.connections
        consuming.cancel()
        await _die(b, b_link)

        b2 = Node(config_for(dht_node, identity=identity, data_dir=data_dir,
                             liveness_timeout=NO_WATCHDOG_S))
        await b2.start()  # a new process: new ports, a newer record
        got2: list[Message] = []
        consuming = _receiver(b2, got2)
        second = await a.send(b.fingerprint, b"two")
        delivery = await a.wait_delivered(second, 60)

        assert delivery is not None and delivery.tier in ("direct", "relay"), delivery
        assert [m.payload for m in got2] == [b"two"]
        assert old.closed and old.migration.peer_restarted
        new = a.messenger.link(b.fingerprint) if a.messenger else None
        assert new is not None and new is not old
        stats = _migration(a)
        assert stats["peers_restarted"] == 1 and stats["newer_records"] == 1
        assert stats["restarts_started"] >= 1 and stats["path_changes"] == 0
        # nothing else arrives: the next message follows the same link, in order
        third = await a.send(b.fingerprint, b"three")
        assert await a.wait_delivered(third, 20) is not None
        await eventually(lambda: len(got2) >= 2, 10, "the third message")
        assert [m.payload for m in got2] == [b"two", b"three"]
        assert b2.stats()["duplicates_suppressed"] == 0
    finally:
        consuming.cancel()
        await a.close()
        if b2 is not None:
            await b2.close()


async def test_a_connection_to_a_restarted_peer_closes_saying_so(dht_node) -> None:
    identity, data_dir = Identity.generate(), Path(tempfile.mkdtemp(prefix="tierlink-test-"))
    a = Node(config_for(dht_node, liveness_timeout=NO_WATCHDOG_S))
    b = Node(config_for(dht_node, identity=identity, data_dir=data_dir))
    await b.start()
    await a.start()
    b2: Node | None = None
    try:
        ca, cb = await dial(a, b)
        await _die(b, cb)
        b2 = Node(config_for(dht_node, identity=identity, data_dir=data_dir))
        await b2.start()
        with pytest.raises(ConnectionClosed, match="peer restarted"):
            await asyncio.wait_for(ca.send(b"lost with the old process"), 60)
        assert ca.closed and ca.migration.peer_restarted
        again = await a.connect(b.fingerprint)  # the application dials the new process
        cb2 = await b2.accept(timeout=10)
        assert cb2 is not None
        await again.send(b"hello")
        assert await cb2.recv(10) == b"hello"
    finally:
        await a.close()
        if b2 is not None:
            await b2.close()


async def test_a_live_peer_with_a_newer_record_keeps_its_connection(
    dht_node, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The peer published again (as every republish period, or after an address change)
    and then its path died: it answers the restart, the connection migrates. (The peer
    takes the restart offer only once the offerer has seen the newer record, so the answer
    cannot beat the lookup.)"""
    a = Node(config_for(dht_node, liveness_timeout=NO_WATCHDOG_S))
    b = Node(config_for(dht_node, liveness_timeout=NO_WATCHDOG_S))
    await b.start()
    await a.start()
    async with a, b:
        ca, cb = await dial(a, b)
        await b.publish()
        held: list[bytes] = []
        monkeypatch.setattr(b.endpoint.restarts, "receive", held.append)
        black_hole(cb)
        sending = ca.submit(b"across the change")
        await eventually(lambda: _migration(a)["newer_records"] == 1, 30, "the newer record")
        monkeypatch.undo()
        assert held, "the restart offer never reached the peer"
        for value in held:
            b.endpoint.restarts.receive(value)
        await eventually(lambda: ca.migration.changes >= 1, 30, "the path change")
        assert await cb.recv(30) == b"across the change"
        await sending
        stats = _migration(a)
        assert stats["newer_records"] == 1, "the restart never saw the newer record"
        assert stats["peers_restarted"] == 0
        assert not ca.closed and not ca.migration.peer_restarted


def _forged_record(owner: PeerRecord, seq: int) -> bytes:
    """A record claiming ``owner``'s fingerprint and key with a higher ``seq``, signed by
    somebody else."""
    body = {1: bytes.fromhex(owner.fingerprint), 2: owner.public_key, 3: seq,
            4: owner.issued_at_ms, 5: owner.expires_at_ms, 6: [], 7: owner.kem_public_key,
            8: owner.mode}
    return seal(Identity.generate(), KIND_PEER_RECORD, body)


async def test_a_forged_or_replayed_record_does_not_make_a_dead_peer_restarted(
    dht_node,
) -> None:
    """The peer died and did not come back; the DHT holds its last record, a replay of it
    and a forged newer one. Nothing proves a restart: the liveness timeout closes."""
    a = Node(config_for(dht_node, liveness_timeout=8.0))
    b = Node(config_for(dht_node))
    await b.start()
    await a.start()
    async with a, DhtClient(dht_node.proxy_url) as attacker:
        ca, cb = await dial(a, b)
        real = await a.lookup(b.fingerprint)
        key = ice_candidates_key(b.fingerprint)
        (value,) = [v for v in await attacker.get(key) if PeerRecord.decode(v).seq == real.seq]
        await _die(b, cb)
        await attacker.put(key, _forged_record(real, real.seq + 1_000))
        await attacker.put(key, value)  # the real record again
        sending = ca.submit(b"never acknowledged")
        with pytest.raises(ConnectionClosed, match="liveness timeout"):
            await asyncio.wait_for(sending, 60)
        stats = _migration(a)
        assert stats["restarts_started"] >= 1
        assert stats["peers_restarted"] == 0 and stats["newer_records"] == 0
        assert not ca.migration.peer_restarted
        assert a.stats()["record_rejections"].get("signature", 0) >= 1  # type: ignore[attr-defined]
