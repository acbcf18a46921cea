"""Attacks on the DHT's values: each test puts an attacker's value beside a genuine one.

Anyone can put any value at any key, and keys follow from a fingerprint. Every path that
reads values (record lookup, offer fetch, envelope fetch, ack fetch) must reject the
attacker's value with a counted reason, before costly work where the reason is cheap to
find, and still find the genuine value beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from tests.memory_dht import MemoryDht
from tests.nodes import config_for
from tests.verify_counter import VerifyCounter
from tests.waiting import eventually
from tierlink.dht import DhtNodeProcess
from tierlink.dht.record_book import PeerLookup, RecordBook
from tierlink.errors import RecordError
from tierlink.identity import Identity
from tierlink.node import Node
from tierlink.offline.delivered import DeliveredLog
from tierlink.offline.outbox import DELIVERED, Outbox
from tierlink.offline.worker import OfflineTier
from tierlink.wire.ack import create_ack
from tierlink.wire.dhtkeys import (
    ice_candidates_key,
    offers_key,
    offline_acks_key,
    offline_queue_key,
)
from tierlink.wire.envelope import (
    ACK_TOKEN_SIZE,
    ReceivedEnvelope,
    ack_token,
    create_envelope,
    open_envelope,
)
from tierlink.wire.records import (
    KIND_ENVELOPE,
    KIND_PEER_RECORD,
    MAX_VALUE_SIZE,
    CandidateInfo,
    PeerRecord,
    now_ms,
    seal,
)
from tierlink.wire.signaling import (
    SessionDescription,
    decode_offer,
    encode_offer,
    new_session_id,
)

VICTIM = Identity.generate()
ATTACKER = Identity.generate()
SENDER = Identity.generate()

#: A bignum mantissa that fills a DHT value: decoding it as a bigfloat or decimal fraction
#: costs a general CBOR decoder ~0.2 s of CPU.
_MANTISSA = cbor2.CBORTag(2, b"\xff" * 50_000)
TAGGED = {
    "bigfloat": cbor2.CBORTag(5, [-(2**40), _MANTISSA]),
    "decimal": cbor2.CBORTag(4, [2**40, _MANTISSA]),
}
#: Integers no tierlink field can hold (CBOR carries them as bignum tags), and one that
#: fits 64 bits but lies far beyond any receiver's clock.
ABSURD = [-(2**1034), 2**1034, 2**63 - 1]


def genuine_record() -> bytes:
    cand = CandidateInfo("1", 1, "udp", 2130706431, "127.0.0.1", 40000, "host")
    return PeerRecord.create(VICTIM, 7, 600.0, (cand,), "public").encode(VICTIM)


def record_body(identity: Identity, **fields: Any) -> dict[int, Any]:
    """A peer record body of ``identity``; ``fields`` override keys ``k3``..``k8``."""
    t = now_ms()
    body: dict[int, Any] = {
        1: bytes.fromhex(identity.fingerprint), 2: identity.public_key, 3: 9, 4: t,
        5: t + 600_000, 6: [], 7: identity.kem_public_key, 8: "public",
    }
    body.update({int(k[1:]): v for k, v in fields.items()})
    return body


def attacker_record(**fields: Any) -> bytes:
    """A record signed by the attacker's own key (its signature verifies)."""
    return seal(ATTACKER, KIND_PEER_RECORD, record_body(ATTACKER, **fields))


def garbage(kind: int) -> list[bytes]:
    """Values that are not valid ``kind`` values: empty, junk, truncated, oversize, tagged,
    and a valid value of another kind."""
    other = attacker_record() if kind != KIND_PEER_RECORD else create_ack(
        bytes(ACK_TOKEN_SIZE), [i.to_bytes(16, "big") for i in range(300)]
    )
    return [
        b"", b"junk", bytes([1, kind]), bytes([1, kind, 0xC5]) + bytes(100),
        bytes([1, kind]) + bytes(70_000), other,
    ]


# -- High 1: CPU before authentication -------------------------------------------------------
@pytest.mark.parametrize("tag", sorted(TAGGED))
def test_tagged_value_is_rejected_before_any_signature_check(
    tag: str, verifies: VerifyCounter
) -> None:
    bad = attacker_record(k5=TAGGED[tag])
    assert 50_000 < len(bad) <= MAX_VALUE_SIZE
    with pytest.raises(RecordError, match="tag") as exc:
        PeerRecord.decode(bad)
    assert exc.value.reason == "malformed"
    assert verifies.calls == 0


@pytest.mark.parametrize("tag", sorted(TAGGED))
async def test_tagged_values_beside_a_genuine_record(tag: str, verifies: VerifyCounter) -> None:
    dht = MemoryDht()
    key = ice_candidates_key(VICTIM.fingerprint)
    for value in [attacker_record(k5=TAGGED[tag])] * 5 + [genuine_record()]:
        await dht.put(key, value)
    lookup = PeerLookup(dht)
    rec = await lookup.lookup(VICTIM.fingerprint)
    assert (rec.fingerprint, rec.seq) == (VICTIM.fingerprint, 7)
    assert lookup.book.rejected == {"malformed": 5}
    assert verifies.calls == 1  # the genuine record's only


# -- High 3: one value blocks a fingerprint --------------------------------------------------
@pytest.mark.parametrize("field", ["k4", "k5", "k3"])
@pytest.mark.parametrize("number", ABSURD)
async def test_absurd_integer_record_does_not_hide_the_genuine_one(
    field: str, number: int
) -> None:
    bad = attacker_record(**{field: number})
    book = RecordBook()
    rec = book.newest([bad, genuine_record(), bad], VICTIM.fingerprint)
    assert rec is not None and rec.fingerprint == VICTIM.fingerprint
    assert sum(book.rejected.values()) == 2
    assert set(book.rejected) <= {"malformed", "clock", "fingerprint"}

    dht = MemoryDht()
    for value in (bad, genuine_record()):
        await dht.put(ice_candidates_key(VICTIM.fingerprint), value)
    found = await PeerLookup(dht).lookup(VICTIM.fingerprint)
    assert found.fingerprint == VICTIM.fingerprint


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"k5": -(2**1034)}, "malformed"),
        ({"k5": 2**1034}, "malformed"),
        ({"k5": 2**63 - 1}, "clock"),  # fits 64 bits; expires far past any lifetime
        ({"k4": 2**62, "k5": 2**62 + 1}, "clock"),  # issued in the far future
        ({"k5": now_ms() + 2 * 86_400_000}, "clock"),  # longer than a record may live
    ],
)
def test_record_times_outside_the_receivers_window(
    fields: dict[str, int], reason: str, verifies: VerifyCounter
) -> None:
    with pytest.raises(RecordError) as exc:
        PeerRecord.decode(attacker_record(**fields))
    assert exc.value.reason == reason
    assert verifies.calls == 0  # times are checked before the signature


def test_record_clock_skew_is_tolerated() -> None:
    t = now_ms()
    value = attacker_record(k4=t + 60_000, k5=t + 600_000)  # issued a minute ahead
    assert PeerRecord.decode(value, now=t).fingerprint == ATTACKER.fingerprint
    with pytest.raises(RecordError) as exc:
        PeerRecord.decode(attacker_record(k4=t + 11 * 60_000, k5=t + 20 * 60_000), now=t)
    assert exc.value.reason == "clock"


async def test_node_lookup_beside_an_absurd_record(
    dht_cluster: list[DhtNodeProcess],
) -> None:
    b = Node(config_for(dht_cluster[1]))
    a = Node(config_for(dht_cluster[0]))
    async with b, a:
        assert a.dht is not None
        for number in (-(2**1034), 2**63 - 1):
            await a.dht.put(ice_candidates_key(b.fingerprint), attacker_record(k5=number))
        rec = await a.lookup(b.fingerprint)
        assert rec.fingerprint == b.fingerprint

        rejections = a.stats()["record_rejections"]
        assert isinstance(rejections, dict) and {"malformed", "clock"} <= set(rejections)


# -- the offline tier: envelopes and acks ----------------------------------------------------
def retimed(value: bytes, created: int, expires: int) -> bytes:
    """``value`` (an envelope or ack) with other clear times: what anyone can put."""
    return value[:2] + created.to_bytes(8, "big") + expires.to_bytes(8, "big") + value[18:]


class Tier:
    """An offline tier over a :class:`MemoryDht`, with what it delivered."""

    def __init__(self, dht: MemoryDht, ident: Identity, db: Path) -> None:
        self.ident = ident
        self.outbox = Outbox(db)
        self.log = DeliveredLog(db)
        self.tier = OfflineTier(dht, ident, self.outbox, self.log)  # type: ignore[arg-type]
        self.got: list[ReceivedEnvelope] = []

    def deliver(self, env: ReceivedEnvelope) -> None:
        self.got.append(env)

    def close(self) -> None:
        self.outbox.close()
        self.log.close()


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[tuple[MemoryDht, Tier, Tier]]:
    dht = MemoryDht()
    victim, sender = Tier(dht, VICTIM, tmp_path / "v.db"), Tier(dht, SENDER, tmp_path / "s.db")
    try:
        yield dht, victim, sender
    finally:
        victim.close()
        sender.close()


def envelope_to_victim(payload: bytes = b"hello", **kw: Any) -> bytes:
    value, _ = create_envelope(SENDER, VICTIM.fingerprint, VICTIM.kem_public_key, payload, **kw)
    return value


POISON: dict[str, Callable[[], bytes]] = {
    # Medium 4: created near 2**63 (a valid 64-bit integer) with a short lifetime.
    "created-near-2^63": lambda: envelope_to_victim(
        b"poison", ttl_s=1.0, created_at_ms=2**63 - 10_000
    ),
    # ... and with the default lifetime: expires passes 2**63 (a signed 64-bit column).
    "expires-past-2^63": lambda: envelope_to_victim(b"poison", created_at_ms=2**63 - 10_000),
    "created-far-future": lambda: envelope_to_victim(
        b"poison", created_at_ms=now_ms() + 3_600_000
    ),
    "times-all-ones": lambda: retimed(envelope_to_victim(), 2**64 - 1, 2**64 - 1),
    "lifetime-over-30-days": lambda: retimed(
        envelope_to_victim(), now_ms() - 1000, now_ms() + 31 * 86_400_000
    ),
    "expires-before-created": lambda: retimed(
        envelope_to_victim(), now_ms() + 60_000, now_ms() + 30_000
    ),
}


@pytest.mark.parametrize("poison", sorted(POISON))
async def test_poison_envelope_beside_a_genuine_one(
    poison: str, tiers: tuple[MemoryDht, Tier, Tier]
) -> None:
    dht, victim, _ = tiers
    bad, good = POISON[poison](), envelope_to_victim(b"genuine")
    for value in (bad, good):
        await dht.put(offline_queue_key(VICTIM.fingerprint), value)
    for _ in range(2):  # the poison is rejected again, not delivered, on every fetch
        res = await victim.tier.fetch_and_deliver(victim.deliver)
        assert sum(res.rejected[r] for r in ("clock", "malformed")) == 1
    assert [e.payload for e in victim.got] == [b"genuine"]
    acks = dht.values[offline_acks_key(ack_token(SENDER, VICTIM.fingerprint))]
    assert len(acks) == 1  # the delivery's: a re-fetch within a minute is not acked again
    assert victim.tier.inbox.rejected["reack_later"] == 1
    assert len(victim.log) == 1


def test_envelope_times_are_checked_before_the_kem(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Identity, ciphertext: bytes) -> bytes:
        raise AssertionError("decapsulated an envelope whose times are out of range")

    values = {name: make() for name, make in POISON.items()}
    monkeypatch.setattr(Identity, "kem_decapsulate", refuse)
    for value in values.values():
        with pytest.raises(RecordError) as exc:
            open_envelope(value, VICTIM)
        assert exc.value.reason in ("clock", "malformed")


# -- per-value isolation ---------------------------------------------------------------------
async def test_lookup_garbage_beside_a_genuine_record() -> None:
    dht = MemoryDht()
    for value in [*garbage(KIND_PEER_RECORD), genuine_record()]:
        await dht.put(ice_candidates_key(VICTIM.fingerprint), value)
    lookup = PeerLookup(dht)
    assert (await lookup.lookup(VICTIM.fingerprint)).fingerprint == VICTIM.fingerprint
    assert sum(lookup.book.rejected.values()) == len(garbage(KIND_PEER_RECORD))


async def test_envelope_fetch_garbage_beside_a_genuine_envelope(
    tiers: tuple[MemoryDht, Tier, Tier],
) -> None:
    dht, victim, _ = tiers
    junk = garbage(KIND_ENVELOPE)
    for value in [*junk, envelope_to_victim(b"genuine")]:
        await dht.put(offline_queue_key(VICTIM.fingerprint), value)
    res = await victim.tier.fetch_and_deliver(victim.deliver)
    assert [e.payload for e in victim.got] == [b"genuine"]
    assert sum(res.rejected.values()) == len(junk)
    assert len(dht.values[offline_acks_key(ack_token(SENDER, VICTIM.fingerprint))]) == 1


async def test_ack_fetch_garbage_beside_a_genuine_ack(
    tiers: tuple[MemoryDht, Tier, Tier],
) -> None:
    dht, _, sender = tiers
    mid = await sender.tier.send(VICTIM.fingerprint, b"m", recipient_kem_pk=VICTIM.kem_public_key)
    token = ack_token(SENDER, VICTIM.fingerprint)
    ack = create_ack(token, [mid])
    poisons = [
        *garbage(0x05),
        retimed(ack, 2**64 - 1, 2**64 - 1),  # absurd clear times
        retimed(ack, now_ms() - 1000, now_ms() + 60_000),  # times bound by the AEAD
        create_ack(ack_token(ATTACKER, VICTIM.fingerprint), [mid]),  # another token
    ]
    for value in [*poisons, ack]:
        await dht.put(offline_acks_key(token), value)
    assert await sender.tier.check_acks() == 1
    entry = sender.outbox.get(mid)
    assert entry is not None and entry.state == DELIVERED
    assert sum(sender.tier.acks.rejected.values()) == len(poisons)


# -- High 2: ICE parameters bounded ----------------------------------------------------------
def cands(n: int, host: str = "127.0.0.1", port: int = 40000) -> tuple[CandidateInfo, ...]:
    return tuple(
        CandidateInfo(str(i), 1, "udp", 2130706431 - i, host, port, "host") for i in range(n)
    )


GOOD_PARAMS = SessionDescription("uFrg", "p" * 22, cands(2))
HOSTILE_PARAMS = {
    "1000-candidates": SessionDescription("uFrg", "p" * 22, cands(1000)),
    "17-candidates": SessionDescription("uFrg", "p" * 22, cands(17)),
    "10KB-ufrag": SessionDescription("u" * 10_000, "p" * 22, cands(1)),
    "short-ufrag": SessionDescription("ufr", "p" * 22, cands(1)),
    "short-pwd": SessionDescription("uFrg", "p" * 21, cands(1)),
    "long-pwd": SessionDescription("uFrg", "p" * 257, cands(1)),
    "ufrag-not-ice-chars": SessionDescription("uf:rg", "p" * 22, cands(1)),
    "pwd-not-ice-chars": SessionDescription("uFrg", "p" * 21 + "\n", cands(1)),
    "hostname": SessionDescription("uFrg", "p" * 22, cands(1, host="victim.example")),
    "port-0": SessionDescription("uFrg", "p" * 22, cands(1, port=0)),
}


def offer_to_victim(params: SessionDescription, signer: Identity = ATTACKER) -> bytes:
    value, _ = encode_offer(
        signer, VICTIM.fingerprint, VICTIM.kem_public_key, new_session_id(), params
    )
    return value


@pytest.mark.parametrize("name", sorted(HOSTILE_PARAMS))
def test_offer_with_unbounded_ice_parameters_is_rejected(name: str) -> None:
    with pytest.raises(RecordError) as exc:
        decode_offer(offer_to_victim(HOSTILE_PARAMS[name]), VICTIM)
    assert exc.value.reason == "malformed"


def test_offer_ice_parameters_at_the_bounds_are_accepted() -> None:
    for params in (
        SessionDescription("+/a9", "A/+" * 7 + "z", cands(16)),
        SessionDescription("u" * 256, "p" * 256, cands(1, host="::1", port=65535)),
    ):
        assert decode_offer(offer_to_victim(params), VICTIM).params == params


async def test_hostile_offers_create_no_ice_agent(dht_cluster: list[DhtNodeProcess]) -> None:
    b = Node(config_for(dht_cluster[1]))
    a = Node(config_for(dht_cluster[0]))
    async with b, a:
        assert a.dht is not None
        agents = 0
        new_ice = b.endpoint.new_ice

        def counted(*args: Any, **kw: Any) -> Any:
            nonlocal agents
            agents += 1
            return new_ice(*args, **kw)

        b.endpoint.new_ice = counted  # type: ignore[method-assign]
        rec = await a.lookup(b.fingerprint)
        junk = [b"junk", bytes([1, 0x02, 0xC5]) + bytes(100), attacker_record()]
        for value in junk:
            await a.dht.put(offers_key(b.fingerprint), value)
        hostile = [HOSTILE_PARAMS["1000-candidates"], HOSTILE_PARAMS["10KB-ufrag"]]
        for params in [*hostile, GOOD_PARAMS]:
            value, _ = encode_offer(
                ATTACKER, b.fingerprint, rec.kem_public_key, new_session_id(), params
            )
            await a.dht.put(offers_key(b.fingerprint), value)
        expect = {"malformed": 4, "kind": 1}
        await eventually(lambda: b.offer_rejections == expect and b.offers_answered == 1,
                         what=f"rejections {expect}, the good offer answered")
        assert agents == 1  # the good offer's only


def test_writers_cap_lifetimes_at_what_readers_accept() -> None:
    record = PeerRecord.create(VICTIM, 1, 10 * 86_400.0)
    assert record.expires_at_ms - record.issued_at_ms == 86_400_000
    assert PeerRecord.decode(record.encode(VICTIM)).fingerprint == VICTIM.fingerprint
    offer = decode_offer(
        encode_offer(ATTACKER, VICTIM.fingerprint, VICTIM.kem_public_key, new_session_id(),
                     GOOD_PARAMS, lifetime_s=3600.0)[0],
        VICTIM,
    )
    assert offer.expires_at_ms - offer.created_at_ms == 600_000
