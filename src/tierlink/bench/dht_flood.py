"""Flooding one DHT key with validly signed values, measured on real ``dhtnode`` processes.

An attacker who knows a victim's fingerprint can put any number of values, each signed by a
fresh identity, under the victim's record key and offers key. This measures, on a few local
nodes (loopback only, bounded in count and time), what OpenDHT 2.4 keeps of the genuine value,
what the proxy's GET and listen return, and what a :class:`~tierlink.dht.record_book.PeerLookup`
costs and finds. Run ``python -m tierlink.bench.dht_flood --n 2000``; it prints one JSON
line per measurement.

OpenDHT's own bounds (source, v2.4.12): ``Storage::MAX_VALUES`` = 65536 values per key and
node (a value over that is refused, the stored ones stay); ``MAX_VALUE_SIZE`` = 64 KiB; a node
stores ``DEFAULT_STORAGE_LIMIT`` = 64 MiB and, over it, drops the oldest value of the source
IP that stores the most (all of loopback is one IP, so here the genuine value shares the
attacker's bucket); a value lives 10 minutes unless put again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from tierlink.dht import DhtClient, DhtNodeProcess, start_nodes, stop_nodes
from tierlink.dht.record_book import PeerLookup
from tierlink.errors import TierlinkError
from tierlink.identity import SIGNATURE_SIZE, Identity
from tierlink.wire.dhtkeys import ice_candidates_key, offers_key
from tierlink.wire.records import KIND_OFFER, CandidateInfo, PeerRecord, seal

JsonDict = dict[str, Any]
T = TypeVar("T")

#: Every phase of a run gives up after this long (seconds).
PHASE_TIMEOUT_S = 120.0
#: Puts in flight at once.
PUT_CONCURRENCY = 16
#: The byte cap of the gets that show what a proxy returns (beyond a lookup's own cap).
RAW_GET_BYTES = 512 * 1024 * 1024


def padding(count: int) -> tuple[CandidateInfo, ...]:
    """``count`` candidates of about 530 bytes each, to make a value large."""
    return tuple(
        CandidateInfo("f" * 200, 1, "udp", i, "h" * 250, 9, "host") for i in range(count)
    )


def attacker_records(n: int, pad: int = 0) -> list[bytes]:
    """``n`` valid peer records, each signed by a fresh identity (claiming itself)."""
    out = []
    for i in range(n):
        ident = Identity.generate()
        out.append(PeerRecord.create(ident, i + 1, candidates=padding(pad)).encode(ident))
    return out


def forged_records(victim: Identity, n: int, seq: int) -> list[bytes]:
    """``n`` records claiming ``victim`` (its real key) with random signatures: each costs
    the reader a signature verification unless it is refused before."""
    good = PeerRecord.create(victim, seq).encode(victim)
    head = good[:-SIGNATURE_SIZE]
    return [head + os.urandom(SIGNATURE_SIZE) for _ in range(n)]


def attacker_offers(n: int) -> list[bytes]:
    """``n`` validly signed values of the offer kind, each from a fresh identity."""
    out = []
    for _ in range(n):
        ident = Identity.generate()
        out.append(seal(ident, KIND_OFFER, {1: bytes.fromhex(ident.fingerprint),
                                            2: ident.public_key, 3: os.urandom(1568)}))
    return out


async def _bounded(what: str, coro: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(coro, PHASE_TIMEOUT_S)
    except TimeoutError:
        raise TimeoutError(f"{what} took over {PHASE_TIMEOUT_S:.0f} s") from None


async def put_all(client: DhtClient, key: str, values: Sequence[bytes]) -> JsonDict:
    """Put every value (a few at a time); how long it took and how many puts failed."""
    sem = asyncio.Semaphore(PUT_CONCURRENCY)
    failed = 0

    async def one(value: bytes) -> None:
        nonlocal failed
        async with sem:
            try:
                await client.put(key, value)
            except TierlinkError:  # a refused put is a figure here
                failed += 1

    t0 = time.perf_counter()
    await _bounded("flood puts", asyncio.gather(*(one(v) for v in values)))
    return {"put_s": round(time.perf_counter() - t0, 2), "put_failed": failed}


async def get_figures(client: DhtClient, key: str, genuine: Sequence[bytes]) -> JsonDict:
    """What one proxy's GET returns: value count, whether each genuine value is there."""
    t0 = time.perf_counter()
    values = await _bounded("get", client.get(key))
    return {
        "values": len(values),
        "bytes": sum(len(v) for v in values),
        "genuine_present": [g in values for g in genuine],
        "get_s": round(time.perf_counter() - t0, 3),
    }


async def listen_figures(client: DhtClient, key: str, genuine: bytes, limit: int) -> JsonDict:
    """Values a listen delivers before ``genuine`` (at most ``limit`` read)."""
    t0, seen, found = time.perf_counter(), 0, False
    listener = client.listen(key)

    async def read() -> None:
        nonlocal seen, found
        async for value in listener:
            seen += 1
            if value == genuine:
                found = True
                return
            if seen >= limit:
                return

    try:
        await _bounded("listen", read())
    finally:
        await listener.aclose()
    return {"listen_found": found, "listen_values_before": seen - 1 if found else seen,
            "listen_s": round(time.perf_counter() - t0, 3)}


async def lookup_figures(
    client: DhtClient, victim: Identity, seq: int, lookup: PeerLookup | None = None,
    patience: float = 0.0,
) -> JsonDict:
    """A PeerLookup of the victim (a fresh one unless given): found the genuine record?
    verifications spent, rejections, time."""
    lookup = lookup if lookup is not None else PeerLookup(client)
    verified, t0 = lookup.book.verified, time.perf_counter()
    try:
        rec = await _bounded("lookup", lookup.lookup(victim.fingerprint, patience))
        ok = rec.fingerprint == victim.fingerprint and rec.seq == seq
    except (TierlinkError, TimeoutError) as exc:  # the failure is the figure
        return {"lookup_ok": False, "lookup_error": repr(exc)[:200]}
    return {
        "lookup_ok": ok, "lookup_s": round(time.perf_counter() - t0, 3),
        "lookup_verified": lookup.book.verified - verified,
        "lookup_rejected": dict(lookup.book.rejected),
        "get_filtered": client.filtered_values, "get_capped": client.capped_gets,
    }


async def flood_record_key(
    nodes: Sequence[DhtNodeProcess], attack: Sequence[bytes], label: str
) -> JsonDict:
    """Genuine record, then ``attack`` at the record key, then a republish; figures."""
    victim = Identity.generate()
    key = ice_candidates_key(victim.fingerprint)
    first = PeerRecord.create(victim, 1).encode(victim)
    async with DhtClient(nodes[0].proxy_url) as owner, \
            DhtClient(nodes[1].proxy_url) as attacker, \
            DhtClient(nodes[-1].proxy_url) as reader:
        await owner.put(key, first)
        out: JsonDict = {"attack": label, "n": len(attack),
                         "value_bytes": max((len(v) for v in attack), default=0)}
        out |= await put_all(attacker, key, attack)
        second = PeerRecord.create(victim, 2).encode(victim)
        await owner.put(key, second)
        for i, node in enumerate(nodes):
            async with DhtClient(node.proxy_url, max_get_bytes=RAW_GET_BYTES) as c:
                out[f"node{i}"] = await get_figures(c, key, [first, second])
        out |= await listen_figures(reader, key, second, len(attack) + 8)
        out |= await lookup_figures(reader, victim, 2)
    return out


async def flood_offers_key(nodes: Sequence[DhtNodeProcess], n: int) -> JsonDict:
    """``n`` signed offer-kind values beside one genuine offer; does a listen deliver it?"""
    victim = Identity.generate()
    key = offers_key(victim.fingerprint)
    genuine = seal(Identity.generate(), KIND_OFFER, {1: b"genuine"})
    attack = attacker_offers(n)
    async with DhtClient(nodes[1].proxy_url) as attacker, \
            DhtClient(nodes[0].proxy_url) as dialer, \
            DhtClient(nodes[-1].proxy_url, max_get_bytes=RAW_GET_BYTES) as callee:
        out: JsonDict = {"attack": "offers", "n": n}
        out |= await put_all(attacker, key, attack)
        await dialer.put(key, genuine)
        out["reader"] = await get_figures(callee, key, [genuine])
        out |= await listen_figures(callee, key, genuine, n + 8)
    return out


async def run(n: int, pad: int, node_count: int = 3) -> AsyncIterator[JsonDict]:
    """Every flood measurement on ``node_count`` fresh local nodes, one result at a time."""
    runs: list[Callable[[Sequence[DhtNodeProcess]], Awaitable[JsonDict]]] = [
        lambda ns: flood_record_key(ns, attacker_records(n), "records"),
        lambda ns: flood_record_key(
            ns, forged_records(Identity.generate(), n, 3), "forged (another victim)"),
        lambda ns: flood_offers_key(ns, n),
        forged_owner_run(n),
    ]
    if pad:
        runs.append(lambda ns: flood_record_key(
            ns, attacker_records(n, pad), f"records padded ({pad} candidates)"))
    for measure in runs:
        nodes = await start_nodes(node_count)
        try:
            yield await measure(nodes)
        finally:
            await stop_nodes(nodes)


def forged_owner_run(n: int) -> Callable[[Sequence[DhtNodeProcess]], Awaitable[JsonDict]]:
    """Records claiming the victim's own key with bad signatures, beside its genuine one."""

    async def measure(nodes: Sequence[DhtNodeProcess]) -> JsonDict:
        victim = Identity.generate()
        key = ice_candidates_key(victim.fingerprint)
        async with DhtClient(nodes[0].proxy_url) as owner, \
                DhtClient(nodes[1].proxy_url) as attacker, \
                DhtClient(nodes[-1].proxy_url) as reader:
            await owner.put(key, PeerRecord.create(victim, 2).encode(victim))
            out: JsonDict = {"attack": "forged owner", "n": n}
            out |= await put_all(attacker, key, forged_records(victim, n, 10**9))
            out["lookup_no_patience"] = await lookup_figures(reader, victim, 2)
            out["lookup_patience_60s"] = await lookup_figures(reader, victim, 2, patience=60.0)
            shared = PeerLookup(reader)
            out["lookup_shared_book"] = [
                await lookup_figures(reader, victim, 2, shared) for _ in range(3)
            ]
            return out

    return measure


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="attacker values per key")
    parser.add_argument("--pad", type=int, default=0,
                        help="also run records padded with this many candidates")
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args(argv)
    if not 0 < args.n <= 10_000:
        parser.error("--n must be 1..10000")

    async def each() -> None:
        async for result in run(args.n, args.pad, args.nodes):
            print(json.dumps(result, default=str), flush=True)

    asyncio.run(each())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
