"""Two tasks closing one node: the second ``close()`` returns once the node is closed (its
connections and background tasks gone), not at once while the first is still closing."""

from __future__ import annotations

import asyncio

from tests.nodes import config_for, dial
from tierlink.dht import DhtNodeProcess
from tierlink.node import Node


async def test_a_second_close_returns_once_the_node_is_closed(
    dht_cluster: list[DhtNodeProcess],
) -> None:
    a = Node(config_for(dht_cluster[0]))
    b = Node(config_for(dht_cluster[1]))
    await b.start()
    await a.start()
    try:
        _, cb = await dial(a, b)
        first = asyncio.create_task(b.close())
        for _ in range(5):  # lets the first close run up to its first wait (no time passes)
            await asyncio.sleep(0)
        assert not first.done()
        await b.close()  # the second
        assert cb.closed and list(b.connections) == []
        assert b.stats()["background_tasks"] == 0
        await asyncio.wait_for(first, 30)
        await b.close()  # a third, once closed: returns at once
    finally:
        await a.close()
        await b.close()
