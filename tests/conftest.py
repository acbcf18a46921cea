"""Shared fixtures: real ``dhtnode`` processes on 127.0.0.1 (no mocks of OpenDHT), started by
the launcher's :func:`~tierlink.dht.launcher.start_nodes`."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.dht_switch import switch  # noqa: F401  (a fixture for every test module)
from tests.verify_counter import verifies  # noqa: F401  (a fixture for every test module)
from tierlink.dht import DhtNodeProcess, start_nodes, stop_nodes

needs_dhtnode = pytest.mark.skipif(
    shutil.which("dhtnode") is None, reason="dhtnode not installed (apt-get install dhtnode)"
)


def _require_dhtnode() -> None:
    if shutil.which("dhtnode") is None:
        pytest.skip("dhtnode not installed (apt-get install dhtnode)")


@pytest.fixture
async def dht_cluster() -> AsyncIterator[list[DhtNodeProcess]]:
    """Three connected dhtnode processes, stopped after the test."""
    _require_dhtnode()
    nodes = await start_nodes(3)
    try:
        yield nodes
    finally:
        await stop_nodes(nodes)


@pytest.fixture
async def dht_node() -> AsyncIterator[DhtNodeProcess]:
    """One dhtnode process (a lone node), stopped after the test."""
    _require_dhtnode()
    nodes = await start_nodes(1)
    try:
        yield nodes[0]
    finally:
        await stop_nodes(nodes)


@pytest.fixture
def dht_cluster_sync() -> Iterator[list[DhtNodeProcess]]:
    """Two connected dhtnode processes for blocking (thread-based) tests."""
    _require_dhtnode()
    loop = asyncio.new_event_loop()
    nodes = loop.run_until_complete(start_nodes(2))
    try:
        yield nodes
    finally:
        loop.run_until_complete(stop_nodes(nodes))
        loop.close()
