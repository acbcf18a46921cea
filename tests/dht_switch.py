"""A TCP forwarder in front of a dhtnode's REST proxy, so a test can replace the whole DHT.

Nodes are configured with the switch's URL; :meth:`DhtSwitch.replace` stops the dhtnode behind
it, starts an empty one and cuts every forwarded connection, as if every DHT node of the
network had been replaced (every stored value, peer records included, is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator

import pytest

from tests.waiting import eventually
from tierlink.dht import DhtClient, DhtNodeProcess, start_nodes, stop_nodes
from tierlink.errors import DhtError


class DhtSwitch:
    """Forwards 127.0.0.1:<port> to the current dhtnode's proxy."""

    def __init__(self) -> None:
        self.nodes: list[DhtNodeProcess] = []
        self.replaced = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def proxy_url(self) -> str:
        """The URL nodes use as their DHT proxy."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        """Start a dhtnode and the forwarder."""
        self.nodes = await start_nodes(1)
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)

    async def replace(self) -> None:
        """Replace the dhtnode by an empty one; cut every forwarded connection."""
        await stop_nodes(self.nodes)
        self.nodes = await start_nodes(1)
        for w in list(self._writers):
            w.close()
        self.replaced += 1

    async def stop(self) -> None:
        """Stop the forwarder and the dhtnode."""
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        await stop_nodes(self.nodes)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self.nodes[0].proxy_port
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_w))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_w)


async def in_dht(sw: DhtSwitch, *keys: str) -> None:
    """Wait until every key holds a value in the (current) DHT."""
    client = DhtClient(sw.proxy_url)
    try:
        async def present() -> bool:
            for key in keys:
                try:
                    if not await client.get(key):
                        return False
                except DhtError:  # the DHT behind the switch is restarting
                    return False
            return True

        await eventually(present, 30, f"{len(keys)} keys in the new DHT")
    finally:
        await client.close()


@pytest.fixture
async def switch() -> AsyncIterator[DhtSwitch]:
    """A started :class:`DhtSwitch` (skips when ``dhtnode`` is missing), stopped after."""
    if shutil.which("dhtnode") is None:
        pytest.skip("dhtnode not installed")
    sw = DhtSwitch()
    await sw.start()
    try:
        yield sw
    finally:
        await sw.stop()
