"""Helpers to build nodes for tests (real dhtnode, real aioice on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import psutil

from tests.waiting import DEFAULT_TIMEOUT, eventually
from tierlink.dht import DhtNodeProcess
from tierlink.identity import Identity
from tierlink.node import Node, NodeConfig
from tierlink.transport.connection import Connection


def config_for(dht: DhtNodeProcess, **kw: Any) -> NodeConfig:
    """A node on loopback using an existing dhtnode's proxy."""
    kw.setdefault("identity", Identity.generate())
    kw.setdefault("host_addresses", ["127.0.0.1"])
    kw.setdefault("dial_timeout", 10.0)
    kw.setdefault("ice_timeout", 10.0)
    kw.setdefault("data_dir", Path(tempfile.mkdtemp(prefix="tierlink-test-")))
    return NodeConfig(dht_proxy=dht.proxy_url, **kw)


async def dial(a: Node, b: Node) -> tuple[Connection, Connection]:
    """``a`` dials ``b`` by fingerprint: both ends of the new connection."""
    ca = await a.connect(b.fingerprint)
    cb = await b.accept(timeout=10)
    assert cb is not None
    return ca, cb


#: Keep-alive connections one DHT client may pool (dht/client.py's aiohttp connector limit).
HTTP_POOL_LIMIT = 64


def pooled_http_connections() -> int:
    """Established TCP connections of this process: the DHT clients' keep-alive pools (ICE
    and QUIC use UDP only). Their number follows past concurrency up to the pool's limit, so
    they are counted apart from the other fds."""
    proc = psutil.Process(os.getpid())
    return sum(1 for c in proc.net_connections(kind="tcp")
               if c.raddr and c.status == psutil.CONN_ESTABLISHED)


def resources() -> dict[str, int]:
    """Open fds (pooled HTTP connections apart), threads and asyncio tasks right now."""
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:
        tasks = 0
    return {
        "fds": psutil.Process(os.getpid()).num_fds() - pooled_http_connections(),
        "threads": threading.active_count(),
        "tasks": tasks,
    }


async def released(
    baseline: dict[str, int], *kinds: str, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, int]:
    """Wait until background clean-up brought the counts of ``kinds`` (default: all) back to
    ``baseline`` or below, and return the counts; fails (AssertionError) on timeout."""
    keys = kinds or tuple(baseline)

    def back() -> dict[str, int] | None:
        now = resources()
        return now if all(now[k] <= baseline[k] for k in keys) else None

    try:
        return await eventually(back, timeout, f"{', '.join(keys)} back to {baseline}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still {resources()}") from None
