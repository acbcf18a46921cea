"""The self-contained demo: a local DHT, two fresh identities, A dials B by fingerprint.

No root, no network but loopback. Used by ``tierlink demo`` and ``make demo``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tierlink.dht import start_nodes, stop_nodes
from tierlink.errors import ConnectionClosed
from tierlink.identity import Identity
from tierlink.node import Node, NodeConfig
from tierlink.transport.connection import Connection

Say = Callable[[str], None]


async def _collect(conn: Connection, n: int, timeout: float) -> list[bytes]:
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < n:
        try:
            msg = await conn.recv(max(deadline - loop.time(), 0.0))
        except ConnectionClosed:
            break
        if msg is None:
            break
        got.append(msg)
    return got


async def run_demo(messages: int = 10, say: Say | None = None) -> dict[str, Any]:
    """Run the demo; returns the JSON-ready summary. ``say`` receives plain-words progress."""
    tell: Say = say or (lambda _m: None)
    result: dict[str, Any] = {"connected": False, "messages": messages}
    with tempfile.TemporaryDirectory(prefix="tierlink-demo-") as tmp:
        return await _demo(messages, tell, result, Path(tmp))


async def _demo(messages: int, tell: Say, result: dict[str, Any], tmp: Path) -> dict[str, Any]:
    (boot,) = await start_nodes(1)
    try:
        return await _with_dht(messages, tell, result, tmp, boot.port or 0)
    finally:
        await stop_nodes([boot])


async def _with_dht(
    messages: int, tell: Say, result: dict[str, Any], tmp: Path, boot_port: int
) -> dict[str, Any]:
    tell(f"started a local OpenDHT bootstrap node on udp 127.0.0.1:{boot_port}")

    def config() -> NodeConfig:
        return NodeConfig(
            identity=Identity.generate(),
            bootstrap=[("127.0.0.1", boot_port)],
            dht_no_rate_limit=True,
            host_addresses=["127.0.0.1"],
            data_dir=tmp / os.urandom(4).hex(),
        )

    async with Node(config()) as b, Node(config()) as a:
        tell(f"B is online and published its signed record: {b.fingerprint[:32]}…")
        tell(f"A ({a.fingerprint[:32]}…) dials B by fingerprint alone")
        t0 = time.perf_counter()
        conn_a = await a.connect(b.fingerprint, timeout=20)
        conn_b = await b.accept(timeout=20)
        if conn_b is None:
            raise ConnectionClosed("B saw no incoming connection")
        result["connect_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        result["connected"] = True
        result["selected_pair"] = {
            "local": conn_a.selected_pair["local"]["type"],
            "remote": conn_a.selected_pair["remote"]["type"],
        }
        result["secure"] = conn_a.secure
        tell(
            f"connected in {result['connect_ms']} ms (ICE + pinned QUIC/TLS 1.3 channel) "
            f"over a "
            f"{result['selected_pair']['local']}↔{result['selected_pair']['remote']} "
            f"candidate pair ({conn_a.selected_pair['local']['address']}:"
            f"{conn_a.selected_pair['local']['port']} ↔ "
            f"{conn_a.selected_pair['remote']['address']}:"
            f"{conn_a.selected_pair['remote']['port']})"
        )
        recv_b = asyncio.create_task(_collect(conn_b, messages, 10))
        recv_a = asyncio.create_task(_collect(conn_a, messages, 10))
        for i in range(messages):
            await conn_a.send(f"hello B, this is A #{i}".encode())
            await conn_b.send(f"hello A, this is B #{i}".encode())
            await asyncio.sleep(0)
        got_b, got_a = await recv_b, await recv_a
        result["sent"] = conn_a.sent + conn_b.sent
        result["received"] = len(got_a) + len(got_b)
        result["dropped"] = conn_a.dropped + conn_b.dropped
        result["in_order"] = got_b == [f"hello B, this is A #{i}".encode() for i in
                                       range(len(got_b))]
        tell(f"A sent {conn_a.sent}, B received {len(got_b)}; "
             f"B sent {conn_b.sent}, A received {len(got_a)}; dropped {result['dropped']}")
        if got_b:
            tell(f"B's first message: {got_b[0].decode()!r}")
        await conn_a.close()
        await conn_b.close()
        tell("closed both connections; stopping the nodes and their DHT processes")
    result["ok"] = result["connected"] and result["received"] == 2 * messages
    return result
