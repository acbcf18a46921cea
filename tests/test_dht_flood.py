"""Attacks: a victim's record key flooded with many values beside the genuine record.

Validly signed records of fresh identities are refused by comparing fingerprints (no
signature verification); forgeries that claim the owner cost one verification each, at most
``max_verifies`` per pass and never twice; replays of the owner's older records cost none.
The last tests flood real ``dhtnode`` processes.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import cbor2
import pytest
from aiohttp import web

from tests.nodes import config_for
from tests.test_hostile_dht import serve
from tests.verify_counter import VerifyCounter
from tierlink.bench.dht_flood import attacker_offers, attacker_records, listen_figures
from tierlink.dht import DhtClient, DhtNodeProcess
from tierlink.dht.record_book import MAX_VERIFIES_PER_LOOKUP, PeerLookup, RecordBook
from tierlink.errors import DhtUnavailable, PeerNotFound
from tierlink.identity import SIGNATURE_SIZE, Identity
from tierlink.node import Node
from tierlink.wire.dhtkeys import ice_candidates_key, offers_key
from tierlink.wire.records import (
    KIND_OFFER,
    KIND_PEER_RECORD,
    PeerRecord,
    leads_with_signer,
    seal,
)

VICTIM = Identity.generate()
KEY = ice_candidates_key(VICTIM.fingerprint)
#: Attacker records signed by fresh identities, made once for the module (signing is slow).
@functools.cache
def flood() -> list[bytes]:
    """300 records of fresh identities, made at first use: records expire, so not at import
    (a long suite reaches these tests many minutes after collecting them)."""
    return attacker_records(300)


class MemoryDht:
    """Values per key in put order, as the proxy hands them back."""

    def __init__(self) -> None:
        self.values: dict[str, list[bytes]] = {}
        self.gets = 0

    async def get(self, key: str, **_: Any) -> list[bytes]:
        self.gets += 1
        return list(self.values.get(key, []))

    async def put(self, key: str, value: bytes) -> None:
        self.values.setdefault(key, []).append(value)


def genuine(seq: int) -> bytes:
    return PeerRecord.create(VICTIM, seq).encode(VICTIM)


def forgeries(n: int, first_seq: int) -> list[bytes]:
    """``n`` records claiming the victim (its real key), newer than any genuine one, with
    random signatures: the attacker signs nothing."""
    body: dict[int, Any] = cbor2.loads(genuine(1)[2:-SIGNATURE_SIZE])
    out = []
    for i in range(n):
        body[3] = first_seq + i
        out.append(b"\x01\x01" + cbor2.dumps(body, canonical=True) + os.urandom(SIGNATURE_SIZE))
    return out


async def test_flood_of_other_signers_costs_one_verification(verifies: VerifyCounter) -> None:
    dht = MemoryDht()
    for value in [*flood()[:150], genuine(5), *flood()[150:]]:
        await dht.put(KEY, value)
    lookup = PeerLookup(dht)
    rec = await lookup.lookup(VICTIM.fingerprint)
    assert (rec.fingerprint, rec.seq) == (VICTIM.fingerprint, 5)
    assert lookup.book.rejected == {"fingerprint": len(flood())}
    assert verifies.calls == lookup.book.verified == 1


async def test_forgeries_of_the_owner_cost_a_bounded_pass(verifies: VerifyCounter) -> None:
    """Newer-looking forgeries are verified first, but one pass stops at ``max_verifies``."""
    dht = MemoryDht()
    for value in [genuine(5), *forgeries(100, 1000)]:
        await dht.put(KEY, value)
    lookup = PeerLookup(dht, RecordBook(max_verifies=30))
    with pytest.raises(PeerNotFound):
        await lookup.lookup(VICTIM.fingerprint)  # no patience: one pass
    assert verifies.calls == 30
    assert lookup.book.rejected == {"signature": 30, "verify_cap": 71}


async def test_forgeries_are_verified_once_and_the_lookup_gets_through(
    verifies: VerifyCounter,
) -> None:
    """With patience the lookup asks again; forgeries seen once are skipped unverified."""
    dht = MemoryDht()
    for value in [*forgeries(100, 1000), genuine(5)]:
        await dht.put(KEY, value)
    lookup = PeerLookup(dht, RecordBook(max_verifies=30))
    rec = await lookup.lookup(VICTIM.fingerprint, patience=30.0)
    assert rec.seq == 5
    assert verifies.calls == 101  # every forgery once, then the genuine record
    assert dht.gets == 4  # 30 + 30 + 30 + 11 verifications
    assert len(lookup.book.forgeries) == 100


async def test_replayed_older_records_cost_no_verification(verifies: VerifyCounter) -> None:
    book = RecordBook()
    assert book.accept(genuine(50)).seq == 50
    old = [genuine(seq) for seq in range(1, 11)]
    assert verifies.calls == 1
    assert book.newest([*old, *old], VICTIM.fingerprint) is None
    assert book.rejected == {"stale": 20}
    assert verifies.calls == 1  # refused by sequence, before any signature


def test_default_verification_cap() -> None:
    assert RecordBook().max_verifies == MAX_VERIFIES_PER_LOOKUP


def test_values_past_the_parse_cap_are_counted_not_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tierlink.dht.record_book as book_mod

    monkeypatch.setattr(book_mod, "MAX_VALUES_PER_LOOKUP", 100)
    book = RecordBook()
    assert book.newest([b"junk"] * 150 + [genuine(3)], VICTIM.fingerprint) is None
    assert book.rejected == {"malformed": 100, "over_cap": 51}


# -- on real dhtnode processes ---------------------------------------------------------------
async def test_flooded_record_key_on_real_nodes(
    dht_cluster: list[DhtNodeProcess], verifies: VerifyCounter
) -> None:
    """Genuine record, then a flood of other signers' records and owner forgeries, then a
    republish: every proxy still returns both genuine values; a lookup finds the newest
    one at a bounded cost."""
    first, second = genuine(1), genuine(2)
    owner, attacker, reader = (DhtClient(n.proxy_url) for n in dht_cluster)
    async with owner, attacker, reader:
        await owner.put(KEY, first)
        for value in [*flood(), *forgeries(40, 10**6)]:
            await attacker.put(KEY, value)
        await owner.put(KEY, second)
        got = await reader.get(KEY)
        assert first in got and second in got
        assert len(got) == len(flood()) + 40 + 2
        lookup = PeerLookup(reader, RecordBook(max_verifies=16))
        rec = await lookup.lookup(VICTIM.fingerprint, patience=30.0)
    assert rec.seq == 2
    assert verifies.calls == 41  # 40 forgeries (each once) + the genuine record
    assert lookup.book.rejected["fingerprint"] >= len(flood())


async def test_get_is_cut_at_max_bytes(dht_node: DhtNodeProcess) -> None:
    async with DhtClient(dht_node.proxy_url, max_get_bytes=5500) as client:
        for i in range(20):
            await client.put(KEY, bytes([i]) * 1000)
        assert len(await client.get(KEY)) == 5
        assert client.capped_gets == 1


async def test_big_values_of_other_signers_do_not_hide_the_republished_record(
    dht_cluster: list[DhtNodeProcess], verifies: VerifyCounter
) -> None:
    """Large records of fresh identities fill the get's unfiltered budget and its cap; the
    owner's record put after them still reaches the lookup (only values that lead with the
    owner's fingerprint are kept past the budget)."""
    padded = attacker_records(40, pad=20)  # about 19 KB each
    first, second = genuine(1), genuine(2)
    limits = {"max_get_bytes": 300_000, "unfiltered_get_bytes": 100_000}
    owner, attacker = (DhtClient(n.proxy_url) for n in dht_cluster[:2])
    plain, reader = (DhtClient(dht_cluster[2].proxy_url, **limits) for _ in range(2))
    async with owner, attacker, plain, reader:
        await owner.put(KEY, first)
        for value in padded:
            await attacker.put(KEY, value)
        await owner.put(KEY, second)
        assert second not in await plain.get(KEY)  # cut by the cap without a filter
        assert plain.capped_gets == 1
        rec = await PeerLookup(reader).lookup(VICTIM.fingerprint)
        assert rec.seq == 2
        assert reader.filtered_values > 0 and reader.capped_gets == 0
    assert verifies.calls == 1


def test_leads_with_signer() -> None:
    assert leads_with_signer(genuine(1), KIND_PEER_RECORD, VICTIM.fingerprint)
    assert not leads_with_signer(flood()[0], KIND_PEER_RECORD, VICTIM.fingerprint)
    assert not leads_with_signer(genuine(1), KIND_OFFER, VICTIM.fingerprint)
    # the victim's fingerprint elsewhere in another signer's value does not count
    other = Identity.generate()
    body = {1: bytes.fromhex(other.fingerprint), 2: other.public_key,
            99: bytes.fromhex(VICTIM.fingerprint)}
    assert not leads_with_signer(seal(other, KIND_PEER_RECORD, body), KIND_PEER_RECORD,
                                 VICTIM.fingerprint)
    for junk in (b"", b"\x01\x01", b"\x01\x01\xb9\x00\x01" + bytes(100)):
        assert not leads_with_signer(junk, KIND_PEER_RECORD, VICTIM.fingerprint)


async def test_flooded_offers_key_still_delivers_the_genuine_offer(
    dht_cluster: list[DhtNodeProcess],
) -> None:
    """Signed offer-kind values of fresh identities beside one genuine offer: the callee's
    listen delivers it (it reads at most the flood plus a few values)."""
    key = offers_key(VICTIM.fingerprint)
    flood = attacker_offers(150)
    real = seal(Identity.generate(), KIND_OFFER, {1: b"genuine"})
    attacker, dialer, callee = (DhtClient(n.proxy_url) for n in dht_cluster)
    async with attacker, dialer, callee:
        for value in flood[:75]:
            await attacker.put(key, value)
        await dialer.put(key, real)
        for value in flood[75:]:
            await attacker.put(key, value)
        figures = await listen_figures(callee, key, real, len(flood) + 8)
    assert figures["listen_found"] is True


async def test_a_node_dials_a_peer_whose_record_key_is_flooded(
    dht_cluster: list[DhtNodeProcess],
) -> None:
    """End to end: after the flood, a node looks the callee up, dials and talks to it."""
    a = Node(config_for(dht_cluster[0]))
    b = Node(config_for(dht_cluster[1]))
    async with b, a, DhtClient(dht_cluster[2].proxy_url) as attacker:
        key = ice_candidates_key(b.fingerprint)
        for value in flood():
            await attacker.put(key, value)
        conn = await a.connect(b.fingerprint)
        incoming = await b.accept(timeout=20)
        assert incoming is not None
        await conn.send(b"through the flood")
        assert await incoming.recv(timeout=20) == b"through the flood"
        # The dial reads the key's values until the first valid one: the flood is refused
        # value by value as far as it was read, and none of it was taken for b's record.
        rejections = a.stats()["record_rejections"]
        assert isinstance(rejections, dict) and not rejections.get("signature")
        assert a.records.latest[b.fingerprint][0].fingerprint == b.fingerprint


@pytest.fixture
async def stalling_proxy() -> AsyncIterator[str]:
    """A proxy whose get sends one value (for key ``00…``, none for others), then stalls."""
    hold = asyncio.Event()

    async def get(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        if request.match_info["key"] == "0" * 40:
            await resp.write(json.dumps({"data": base64.b64encode(b"v").decode(),
                                         "id": "1"}).encode() + b"\n")
        await hold.wait()
        return resp

    app = web.Application()
    app.router.add_get("/key/{key}", get)
    async for url in serve(app):
        try:
            yield url
        finally:
            hold.set()


async def test_a_get_that_stalls_returns_what_arrived(stalling_proxy: str) -> None:
    async with DhtClient(stalling_proxy, timeout=1.0) as client:
        assert await client.get("0" * 40) == [b"v"]
        assert client.capped_gets == 1
        with pytest.raises(DhtUnavailable):
            await client.get("1" * 40)
