"""An attack on a callee's opening budget, found by reviewing the offers listen: values that
fail the checks needing no cryptography (junk, an old offer replayed past its lifetime) put
ahead of a genuine offer must not spend the budget the genuine offer needs."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from tests.nodes import config_for, dial
from tests.waiting import eventually
from tierlink.dht import DhtNodeProcess
from tierlink.node import Node, migration
from tierlink.node.admission import AdmissionLimits
from tierlink.wire.dhtkeys import offers_key
from tierlink.wire.records import now_ms
from tierlink.wire.signaling import SessionDescription, encode_offer, new_session_id


def replayed_offer(callee: Node, dialer: Node) -> bytes:
    """A genuine offer of ``dialer``'s made an hour ago: what anyone can copy from the key."""
    params = SessionDescription("old" + "x" * 5, "p" * 22, ())
    value, _ = encode_offer(dialer.identity, callee.fingerprint,
                            callee.identity.kem_public_key, new_session_id(), params,
                            created_at_ms=now_ms() - 3_600_000)
    return value


async def test_junk_and_expired_replays_spend_no_opening_budget(
    dht_node: DhtNodeProcess,
) -> None:
    """The callee may open 8 offers and gets no token back within the test. 24 junk values
    and 8 replays of the dialer's old offers, put at its offers key first, are refused by
    the free checks; the dialer's real offer is still opened and answered."""
    limits = AdmissionLimits(open_rate=0.001, open_burst=8)
    callee = Node(config_for(dht_node, admission=limits))
    dialer = Node(config_for(dht_node))
    async with callee, dialer:
        junk = [b"junk %d" % i for i in range(16)]
        junk += [bytes([1, 2]) + bytes(7000 + i) for i in range(8)]  # times 0: long expired
        replays = [replayed_offer(callee, dialer) for _ in range(limits.open_burst)]
        assert dialer.dht is not None
        key = offers_key(callee.fingerprint)
        await asyncio.gather(*(dialer.dht.put(key, v) for v in [*junk, *replays]))
        total = len(junk) + len(replays)
        await eventually(lambda: sum(callee.offer_rejections.values()) >= total, 20,
                         "the callee to refuse every junk value and replay")
        assert dict(callee.offer_rejections) == {"malformed": 16, "expired": 16}
        conn, incoming = await dial(dialer, callee)
        try:
            assert incoming.remote_fingerprint == dialer.fingerprint
            await conn.send(b"past the junk")
            assert await incoming.recv(5) == b"past the junk"
        finally:
            await incoming.close()
            await conn.close()


#: Secure connections the attacked node holds, and the restart keys one token pays for.
CONNECTIONS = 8
KEYS_PER_TOKEN = 2


async def test_junk_restart_values_cost_the_budget_of_every_key_they_are_tried_with(
    dht_node: DhtNodeProcess, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restart value names no session: the node tries the restart key of every open
    connection on it. Junk restart values (free to make) put at its offers key must cost
    the opening budget in proportion, so the keys tried stay within what the budget pays
    for (open_burst x restart_keys_per_open) however many connections the node holds."""
    limits = AdmissionLimits(open_rate=0.001, open_burst=16,
                             restart_keys_per_open=KEYS_PER_TOKEN)
    node = Node(config_for(dht_node, admission=limits))
    peer = Node(config_for(dht_node))
    tried = [0]
    real_decode = migration.decode_restart

    def counted(*args: Any, **kw: Any) -> Any:
        tried[0] += 1
        return real_decode(*args, **kw)

    monkeypatch.setattr(migration, "decode_restart", counted)
    async with node, peer:
        conns = []
        for _ in range(CONNECTIONS):  # node dials: its own offers key stays quiet
            conns.append(await node.connect(peer.fingerprint))
            incoming = await peer.accept(timeout=10)
            assert incoming is not None
            conns.append(incoming)
        junk = [bytes([1, 7]) + os.urandom(40) for _ in range(40)]
        assert peer.dht is not None
        key = offers_key(node.fingerprint)
        await asyncio.gather(*(peer.dht.put(key, v) for v in junk))

        def refused() -> int:
            restarts = node.stats()["path_migration"]
            assert isinstance(restarts, dict)
            return node.offer_rejections["busy-open"] + restarts["restarts_refused"].get(
                "decrypt", 0)

        await eventually(lambda: refused() >= len(junk), 20, "every junk restart refused")
        assert tried[0] <= limits.open_burst * KEYS_PER_TOKEN
        assert node.offer_rejections["busy-open"] > 0
        for conn in conns:
            await conn.close()
