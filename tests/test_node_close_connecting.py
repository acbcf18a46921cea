"""Closing a node ends the dials under way: each ``connect`` raises ConnectionClosed naming
the close, not a DialTimeout that blames the peer (nor hands back a connection nobody will
close)."""

from __future__ import annotations

import asyncio

import pytest

from tests.nodes import config_for
from tests.waiting import eventually
from tierlink.dht import DhtNodeProcess
from tierlink.errors import ConnectionClosed
from tierlink.identity import Identity
from tierlink.node import Node


def refused(node: Node) -> int:
    rejections = node.stats()["offer_rejections"]
    assert isinstance(rejections, dict)
    return int(rejections.get("not-allowed", 0))


#: A bound on waiting for a connect to end once its node closed (a hang check, not a timing).
ENDS_S = 30.0


async def test_close_ends_every_connect_under_way(dht_cluster: list[DhtNodeProcess]) -> None:
    # The callee answers only a stranger, so a dial to it waits for an answer that never comes.
    b = Node(config_for(dht_cluster[1], allow={Identity.generate().fingerprint}))
    a = Node(config_for(dht_cluster[0], dial_timeout=120.0))
    async with b:
        await a.start()
        try:
            await b.lookup(b.fingerprint, patience=10.0)  # b's record is in the DHT
            dials = [asyncio.create_task(a.connect(b.fingerprint)) for _ in range(2)]
            await eventually(lambda: refused(b) >= 2, what="both offers refused by the callee")
            assert not any(d.done() for d in dials)
        finally:
            await a.close()
        for d in dials:
            with pytest.raises(ConnectionClosed, match="node is closed"):
                await asyncio.wait_for(d, ENDS_S)
        assert a.stats()["connections"] == 0
