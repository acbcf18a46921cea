"""Shared fixtures: real ``dhtnode`` processes on 127.0.0.1 (no mocks of OpenDHT)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest

from tierlink.dht import DhtNodeProcess

needs_dhtnode = pytest.mark.skipif(
    shutil.which("dhtnode") is None, reason="dhtnode not installed (apt-get install dhtnode)"
)


async def start_cluster(n: int) -> list[DhtNodeProcess]:
    """A fresh bootstrap node plus ``n - 1`` nodes joined to it, all without rate limits."""
    nodes: list[DhtNodeProcess] = []
    try:
        first = DhtNodeProcess(no_rate_limit=True)
        await first.start()
        nodes.append(first)
        for _ in range(n - 1):
            node = DhtNodeProcess(no_rate_limit=True, bootstrap=[("127.0.0.1", first.port or 0)])
            await node.start()
            nodes.append(node)
    except BaseException:
        for node in nodes:
            await node.stop()
        raise
    return nodes


@pytest.fixture
async def dht_cluster() -> AsyncIterator[list[DhtNodeProcess]]:
    """Three connected dhtnode processes, stopped after the test."""
    if shutil.which("dhtnode") is None:
        pytest.skip("dhtnode not installed (apt-get install dhtnode)")
    nodes = await start_cluster(3)
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


@pytest.fixture
async def dht_node() -> AsyncIterator[DhtNodeProcess]:
    """One dhtnode process (a lone node), stopped after the test."""
    if shutil.which("dhtnode") is None:
        pytest.skip("dhtnode not installed (apt-get install dhtnode)")
    node = DhtNodeProcess(no_rate_limit=True)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.fixture
def dht_cluster_sync():
    """Two connected dhtnode processes for blocking (thread-based) tests."""
    import asyncio as _asyncio

    if shutil.which("dhtnode") is None:
        pytest.skip("dhtnode not installed (apt-get install dhtnode)")
    loop = _asyncio.new_event_loop()
    nodes = loop.run_until_complete(start_cluster(2))
    try:
        yield nodes
    finally:
        for node in nodes:
            loop.run_until_complete(node.stop())
        loop.close()
