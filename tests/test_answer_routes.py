"""Answers travel under the answer key and under the callee's offers key: a dial takes the first
copy that opens, from either. Attacks on the offers-key route, as an attacker would mount them
through a real dhtnode: junk answer values (a flood), an answer replayed from an earlier dial,
and their effect on the callee's admission. Plus each route alone, and the listens' cleanup."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from tests.test_node import dial, pair, record_offer_secrets
from tests.waiting import eventually
from tierlink.dht import DhtClient
from tierlink.errors import DialTimeout
from tierlink.node import Node
from tierlink.node.dial import first_answer
from tierlink.wire.dhtkeys import offers_key
from tierlink.wire.records import KIND_ANSWER, KIND_OFFER, WIRE_VERSION
from tierlink.wire.signaling import (
    KIND_RESTART,
    OfferSecret,
    SessionDescription,
    encode_answer,
    is_answer,
    new_session_id,
)

PARAMS = SessionDescription("ufrag", "p" * 22, ())


def junk(kind: int) -> bytes:
    """A value of ``kind`` that opens under nobody's secret."""
    return bytes([WIRE_VERSION, kind]) + os.urandom(120)


def secret() -> OfferSecret:
    return OfferSecret(os.urandom(32), new_session_id(), "a" * 128, "b" * 128)


def watch_puts(monkeypatch: pytest.MonkeyPatch, node: Node,
               drop: Callable[[str, bytes], bool]) -> list[tuple[str, bytes]]:
    """Record every put of ``node``'s DHT client; those ``drop`` names are not sent."""
    dht = node.dht
    assert dht is not None
    real = dht.put
    seen: list[tuple[str, bytes]] = []

    async def put(key: str, value: bytes, **kw: object) -> None:
        seen.append((key, value))
        if not drop(key, value):
            await real(key, value, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(dht, "put", put)
    return seen


async def values(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


# -- the bounded reader, alone ------------------------------------------------------------------
async def test_the_offers_key_reader_skips_other_kinds_and_bounds_its_opens() -> None:
    s = secret()
    genuine = encode_answer(s, PARAMS)
    flood = [junk(KIND_ANSWER) for _ in range(300)]
    others = [junk(KIND_OFFER), junk(KIND_RESTART), b"", b"\x01"]
    counts: Counter[str] = Counter()
    # 300 junk answers before the genuine one: 256 opened, the genuine one is over the bound.
    with pytest.raises(DialTimeout):
        await first_answer(values(*others, *flood, genuine), s, counts, bound=256)
    assert counts == {"not-ours": 256, "over-bound": 45}
    counts.clear()
    got = await first_answer(values(*others, *flood[:10], genuine), s, counts,
                             bound=256)
    assert got == PARAMS
    assert counts == {"not-ours": 10}  # the other kinds were never opened


async def test_the_offers_key_reader_gives_up_after_its_bytes() -> None:
    s = secret()
    big = [junk(KIND_OFFER) for _ in range(10)]  # 122 bytes each
    counts: Counter[str] = Counter()
    with pytest.raises(DialTimeout):
        await first_answer(values(*big, encode_answer(s, PARAMS)), s, counts,
                           bound=256, max_bytes=1000)
    assert counts == {"gave-up": 1}
    assert await first_answer(values(*big[:5], encode_answer(s, PARAMS)), s, counts,
                              bound=256, max_bytes=1000) == PARAMS


async def test_an_answer_of_another_dial_never_opens() -> None:
    mine, earlier = secret(), secret()
    counts: Counter[str] = Counter()
    with pytest.raises(DialTimeout):
        await first_answer(values(encode_answer(earlier, PARAMS)), mine, counts,
                           bound=256)
    assert counts == {"not-ours": 1}


# -- each route alone -------------------------------------------------------------------------
async def test_the_offers_key_copy_alone_completes_a_dial(dht_cluster, monkeypatch) -> None:
    a, b = await pair(dht_cluster)
    async with a, b:
        own = offers_key(b.fingerprint)
        puts = watch_puts(monkeypatch, b, lambda key, value: is_answer(value) and key != own)
        await dial(a, b)
        assert a.stats()["dial_answers"] == {"taken-offers-key": 1}
        assert sum(1 for _k, v in puts if is_answer(v)) == 2  # both copies were made


async def test_the_answer_key_copy_alone_completes_a_dial(dht_cluster, monkeypatch) -> None:
    """What a callee that puts only under the answer key looks like to this dialer."""
    a, b = await pair(dht_cluster)
    async with a, b:
        own = offers_key(b.fingerprint)
        watch_puts(monkeypatch, b, lambda key, value: is_answer(value) and key == own)
        await dial(a, b)
        assert a.stats()["dial_answers"] == {"taken-answer-key": 1}


# -- attacks ------------------------------------------------------------------------------------
async def test_junk_under_the_offers_key_is_skipped_by_kind_and_costs_the_callee_nothing(
    dht_cluster, monkeypatch
) -> None:
    """Junk answers and junk of other kinds stored under the callee's offers key before the
    dial: the dialer opens each junk answer once and no other value, then takes the genuine
    answer; the callee counts the answers and charges no admission budget for them."""
    a, b = await pair(dht_cluster)
    async with a, b:
        own = offers_key(b.fingerprint)
        watch_puts(monkeypatch, b, lambda key, value: is_answer(value) and key != own)
        async with DhtClient(dht_cluster[2].proxy_url) as attacker:
            for _ in range(12):
                await attacker.put(own, junk(KIND_ANSWER))
            await eventually(lambda: b.answerer.answers_seen == 12, what="12 answers seen")
            await attacker.put(own, junk(KIND_RESTART))
            await attacker.put(own, junk(KIND_OFFER))
            await eventually(lambda: b.offer_rejections.total() == 1, what="a junk offer")
        await dial(a, b)
        assert a.stats()["dial_answers"] == {"not-ours": 12, "taken-offers-key": 1}
        await eventually(lambda: b.answerer.answers_seen == 13, what="its own answer seen")
        # Only the junk offer was an offer to the callee: no answer was opened or refused.
        assert b.offer_rejections.total() == 1 and "kind" not in b.offer_rejections
        assert b.answerer.admission.refused == Counter()
        assert b.offers_answered == 1


async def test_a_flood_over_the_bound_does_not_stop_a_dial(dht_cluster, monkeypatch) -> None:
    import tierlink.node.dial as dial_mod

    monkeypatch.setattr(dial_mod, "MAX_OFFERS_KEY_ANSWERS", 8)
    a, b = await pair(dht_cluster)
    async with a, b:
        own = offers_key(b.fingerprint)
        async with DhtClient(dht_cluster[2].proxy_url) as attacker:
            for _ in range(30):
                await attacker.put(own, junk(KIND_ANSWER))
        await eventually(lambda: b.answerer.answers_seen == 30, what="30 answers seen")
        await dial(a, b)
        counts = a.stats()["dial_answers"]
        assert counts.get("not-ours", 0) <= 8, counts
        assert counts.get("taken-answer-key", 0) + counts.get("taken-offers-key", 0) == 1, counts
        assert b.answerer.admission.refused == Counter() and not b.offer_rejections


async def test_an_answer_replayed_from_an_earlier_dial_is_not_taken(
    dht_cluster, monkeypatch
) -> None:
    secrets = record_offer_secrets(monkeypatch)
    a, b = await pair(dht_cluster)
    async with a, b:
        assert a.dht is not None
        puts = watch_puts(monkeypatch, b, lambda key, value: False)
        await dial(a, b)
        earlier = next(v for _k, v in puts if is_answer(v))
        watch_puts(monkeypatch, b, lambda key, value: is_answer(value))  # b answers no more
        async with DhtClient(dht_cluster[2].proxy_url) as attacker:
            await attacker.put(offers_key(b.fingerprint), earlier)
        with pytest.raises(DialTimeout):
            await a.connect(b.fingerprint, timeout=3.0)
        counts = a.stats()["dial_answers"]
        assert counts.get("not-ours", 0) >= 1, counts  # the stored copy and the replay
        assert counts.get("taken-offers-key", 0) + counts.get("taken-answer-key", 0) == 1
        # The failed dial's listens (its answer key, b's offers key) were closed.
        dials = {offers_key(b.fingerprint), secrets[-1].answer_key()}
        assert len(secrets) == 2 and not dials & set(a.dht.listening)


async def test_the_dials_listens_end_with_the_dial(dht_cluster, monkeypatch) -> None:
    secrets = record_offer_secrets(monkeypatch)
    a, b = await pair(dht_cluster)
    async with a, b:
        await dial(a, b)
        dials = {offers_key(b.fingerprint), secrets[0].answer_key()}
        await eventually(lambda: a.dht is not None and not dials & set(a.dht.listening),
                         what="the dial's listens closed")
