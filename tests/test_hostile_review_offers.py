"""An attack on a callee's opening budget, found by reviewing the offers listen: values that
fail the checks needing no cryptography (junk, an old offer replayed past its lifetime) put
ahead of a genuine offer must not spend the budget the genuine offer needs."""

from __future__ import annotations

import asyncio

from tests.nodes import config_for
from tests.waiting import eventually
from tierlink.dht import DhtNodeProcess
from tierlink.node import Node
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
        conn = await dialer.connect(callee.fingerprint)
        try:
            incoming = await callee.accept(timeout=10)
            assert incoming is not None and incoming.remote_fingerprint == dialer.fingerprint
            await conn.send(b"past the junk")
            assert await incoming.recv(5) == b"past the junk"
            await incoming.close()
        finally:
            await conn.close()
