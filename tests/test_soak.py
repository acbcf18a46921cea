"""1000 connect -> send -> recv -> close cycles: no fd, thread, task or memory growth."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from tests.nodes import (
    HTTP_POOL_LIMIT,
    config_for,
    dial,
    pooled_http_connections,
    released,
    resources,
)
from tierlink.node import Node

CYCLES = int(os.environ.get("TIERLINK_SOAK_CYCLES", "1000"))
WARMUP = 20


@pytest.mark.slow
async def test_connect_close_cycles_release_everything(dht_cluster) -> None:
    proc = psutil.Process()
    async with Node(config_for(dht_cluster[0])) as a, Node(config_for(dht_cluster[1])) as b:

        async def cycle(i: int) -> None:
            ca, cb = await dial(a, b)
            await ca.send(f"cycle {i}".encode())
            assert await cb.recv(5) == f"cycle {i}".encode()
            await ca.close()
            await cb.close()

        for i in range(WARMUP):
            await cycle(i)
        base = resources()
        rss0 = proc.memory_info().rss
        t0 = time.perf_counter()
        for i in range(CYCLES):
            await cycle(i)
        wall = time.perf_counter() - t0
        now = await released(base)
        rss1 = proc.memory_info().rss
        growth_mb = (rss1 - rss0) / 2**20
        print(
            f"\n{CYCLES} cycles in {wall:.1f} s ({1000 * wall / CYCLES:.1f} ms each); "
            f"fds {base['fds']}->{now['fds']}, threads {base['threads']}->{now['threads']}, "
            f"tasks {base['tasks']}->{now['tasks']}, RSS {rss0 / 2**20:.1f}->"
            f"{rss1 / 2**20:.1f} MiB (+{growth_mb:.1f})"
        )
        assert not a.connections and not b.connections
        assert pooled_http_connections() <= 2 * HTTP_POOL_LIMIT
        assert growth_mb < 64, f"RSS grew by {growth_mb:.1f} MiB over {CYCLES} cycles"
