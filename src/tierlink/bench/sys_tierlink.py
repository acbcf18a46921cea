"""``tierlink``: two Nodes in two processes, dialing by fingerprint through one dhtnode proxy.

The parent starts the dhtnode and passes its proxy URL in ``setup``; the callee's setup
returns its fingerprint, which the parent hands to the dialer's setup. The Node API is
imported at run time so that the harness still runs (and records an error for this
system) while ``tierlink.node`` does not exist yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import Any

from tierlink.bench.base import BenchConn, BenchSide, JsonDict, Signal, now

CONNECT_TIMEOUT = 20.0
ACCEPT_TIMEOUT = 120.0


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class TierlinkBenchConn(BenchConn):
    """A tierlink connection as the benchmark drives it."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def send(self, data: bytes) -> None:
        await self.conn.send(data)

    async def send_many(self, payload: bytes, count: int, deadline: float, window: int) -> int:
        pending: set[asyncio.Future[Any]] = set()
        sent = 0
        while sent < count and now() < deadline:
            if len(pending) >= window:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    fut.result()
            pending.add(self.conn.submit(payload))  # a future per message, no task
            sent += 1
        if pending:
            await asyncio.gather(*pending)
        return sent

    def send_now(self, data: bytes) -> None:
        fut = self.conn.submit(data)
        fut.add_done_callback(_consume)  # a failure shows up as a missing probe

    async def recv(self, timeout: float) -> bytes:
        data: bytes | None = await self.conn.recv(timeout=timeout)
        if data is None:  # tierlink's recv returns None on timeout
            raise TimeoutError
        return data

    def send_datagram(self, data: bytes) -> None:
        send = getattr(self.conn, "send_datagram", None)
        if send is None:
            raise NotImplementedError("tierlink Connection has no send_datagram yet")
        send(data)

    async def recv_datagram(self, timeout: float) -> bytes:
        data: bytes | None = await self.conn.recv_datagram(timeout=timeout)
        if data is None:
            raise TimeoutError
        return data

    def receive_queue_drops(self) -> int | None:
        return int(self.conn.stats().get("datagrams_dropped", 0))

    def path_type(self) -> str | None:
        return str(self.conn.path_type)

    def limit_packet_size(self, size: int | None) -> bool:
        self.conn.limit_packet_size(size)
        return True

    async def close(self) -> None:
        await self.conn.close()


def node_overrides(params: JsonDict, node_mod: Any) -> JsonDict:
    """NodeConfig fields a bench phase sets through ``setup``: ``turn`` (one TURN server as
    {host, port, username, password}) with ``relay_only``, ``admission`` (AdmissionLimits
    fields) and ``dht_connections``."""
    out: JsonDict = {}
    if turn := params.get("turn"):
        out["turn_servers"] = [node_mod.TurnServer(**turn)]
        out["relay_only"] = bool(params.get("relay_only", False))
    if admission := params.get("admission"):
        limits = importlib.import_module("tierlink.node.admission").AdmissionLimits
        out["admission"] = limits(**admission)
    if connections := params.get("dht_connections"):
        out["dht_connections"] = int(connections)
    return out


class TierlinkSide(BenchSide):
    """A Node with a fresh identity; the dialer connects to the callee's fingerprint."""

    def __init__(self, role: str, signal: Signal) -> None:
        super().__init__(role, signal)
        self._stack = contextlib.AsyncExitStack()
        self._node: Any = None
        self._incoming: Any = None
        self._peer = ""

    async def setup(self, params: JsonDict) -> JsonDict:
        identity_mod = importlib.import_module("tierlink.identity")
        node_mod = importlib.import_module("tierlink.node")
        identity = identity_mod.Identity.generate()
        cfg = node_mod.NodeConfig(
            identity=identity,
            dht_proxy=params.get("dht_proxy"),
            host_addresses=["127.0.0.1"],
            **node_overrides(params, node_mod),
        )
        self._node = await self._stack.enter_async_context(node_mod.Node(cfg))
        if self.role == "callee":
            self._incoming = self._node.incoming().__aiter__()
        else:
            self._peer = str(params["peer"])
        return {"fingerprint": identity.fingerprint}

    async def dial(self) -> BenchConn:
        conn = await self._node.connect(self._peer, timeout=CONNECT_TIMEOUT)
        return TierlinkBenchConn(conn)

    async def accept(self) -> BenchConn:
        conn = await asyncio.wait_for(self._incoming.__anext__(), ACCEPT_TIMEOUT)
        return TierlinkBenchConn(conn)

    async def incoming(self) -> AsyncIterator[BenchConn]:
        async for conn in self._incoming:
            yield TierlinkBenchConn(conn)

    def stats(self) -> JsonDict:
        """The node's offer refusals (admission: ``busy``, ``rate-limited``, ...) and the
        offers it answered."""
        if self._node is None:
            return {}
        return {"offer_rejections": dict(self._node.offer_rejections),
                "offers_answered": self._node.offers_answered}

    async def shutdown(self) -> None:
        await self._stack.aclose()
