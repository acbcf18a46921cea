"""Closing a node wakes every task waiting for an incoming connection: ``accept`` raises
ConnectionClosed and ``incoming()`` ends, instead of waiting forever; ``accept`` after close
does the same, and its timeout (and connect's) is checked like ``recv``'s."""

from __future__ import annotations

import asyncio
import math

import pytest

from tests.nodes import config_for, dial
from tierlink.dht import DhtNodeProcess
from tierlink.errors import BadTimeout, ConnectionClosed
from tierlink.node import Node
from tierlink.transport.connection import Connection


async def test_close_wakes_tasks_waiting_in_accept_and_incoming(
    dht_cluster: list[DhtNodeProcess],
) -> None:
    b = Node(config_for(dht_cluster[0]))
    await b.start()
    try:
        forever = asyncio.create_task(b.accept())
        timed = asyncio.create_task(b.accept(120))
        seen: list[Connection] = []

        async def iterate() -> None:
            async for conn in b.incoming():
                seen.append(conn)

        iterating = asyncio.create_task(iterate())
        for _ in range(5):  # lets them reach their wait (no time passes)
            await asyncio.sleep(0)
        assert not (forever.done() or timed.done() or iterating.done())
    finally:
        await b.close()
    for task in (forever, timed):
        with pytest.raises(ConnectionClosed, match="node is closed"):
            await asyncio.wait_for(task, 10)
    await asyncio.wait_for(iterating, 10)  # ends without an error
    assert seen == []
    with pytest.raises(ConnectionClosed, match="node is closed"):
        await asyncio.wait_for(b.accept(), 10)


async def test_accept_and_connect_check_their_timeouts_and_still_work(
    dht_cluster: list[DhtNodeProcess],
) -> None:
    a = Node(config_for(dht_cluster[0]))
    b = Node(config_for(dht_cluster[1]))
    async with b, a:
        with pytest.raises(BadTimeout, match="NaN"):
            await asyncio.wait_for(b.accept(math.nan), 30)
        with pytest.raises(TypeError, match="timeout takes seconds"):
            await asyncio.wait_for(b.accept(True), 30)  # type: ignore[arg-type]
        assert await b.accept(0) is None
        with pytest.raises(BadTimeout, match="NaN"):
            await asyncio.wait_for(a.connect(b.fingerprint, math.nan), 30)
        with pytest.raises(TypeError, match="timeout takes seconds"):
            await asyncio.wait_for(a.connect(b.fingerprint, "10"), 30)  # type: ignore[arg-type]
        assert a.stats()["dials"] == 0  # refused before anything was sent
        ca, cb = await dial(a, b)
        await ca.send(b"through accept")
        assert await cb.recv(10) == b"through accept"
