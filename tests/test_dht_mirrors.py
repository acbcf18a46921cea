"""``MirroredDht``: puts and listens through more than one OpenDHT proxy, so one node that
holds a put (its search waiting out departed nodes) does not hold the dial."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.test_hostile_dht import serve
from tests.waiting import eventually
from tierlink.dht import MirroredDht
from tierlink.errors import DhtError

KEY = "ab" * 20


class FakeProxy:
    """A proxy whose puts answer only when ``answer_puts`` is set (or fail with 500 when
    ``broken``), and whose listens stream what the test hands them."""

    def __init__(self) -> None:
        self.answer_puts = asyncio.Event()
        self.broken = False
        self.puts: list[bytes] = []
        self.streams: list[asyncio.Queue[bytes]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/key/{key}", self.put)
        app.router.add_get("/key/{key}/listen", self.listen)
        return app

    async def put(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.puts.append(base64.b64decode(body["data"]))
        if self.broken:
            return web.Response(status=500)
        await self.answer_puts.wait()
        return web.json_response({"data": body["data"], "id": "1"})

    async def listen(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.streams.append(queue)
        while True:
            value = await queue.get()
            line = {"data": base64.b64encode(value).decode(), "id": str(hash(value) & 0xFFFF)}
            await resp.write(json.dumps(line).encode() + b"\n")

    def send(self, value: bytes) -> None:
        for queue in self.streams:
            queue.put_nowait(value)


@contextlib.asynccontextmanager
async def running(proxy: FakeProxy) -> AsyncIterator[str]:
    gen = serve(proxy.app())
    url = await anext(gen)
    try:
        yield url
    finally:
        await gen.aclose()


async def test_put_succeeds_through_a_mirror_while_the_own_node_holds_it() -> None:
    own, mirror = FakeProxy(), FakeProxy()
    mirror.answer_puts.set()
    async with running(own) as own_url, running(mirror) as mirror_url:
        dht = MirroredDht(own_url, [mirror_url], timeout=30)
        try:
            put = asyncio.create_task(dht.put(KEY, b"offer"))
            await eventually(lambda: mirror.puts and own.puts, what="both puts sent")
            assert not put.done(), "the put settles once every node answered"
            own.answer_puts.set()
            await asyncio.wait_for(put, 10)
            assert own.puts == mirror.puts == [b"offer"]
        finally:
            await dht.close()


async def test_put_fails_only_when_every_node_failed() -> None:
    own, mirror = FakeProxy(), FakeProxy()
    own.broken = True
    mirror.answer_puts.set()
    async with running(own) as own_url, running(mirror) as mirror_url:
        dht = MirroredDht(own_url, [mirror_url], timeout=30)
        try:
            await asyncio.wait_for(dht.put(KEY, b"x"), 10)
            assert dht.mirror_failures == 1
            mirror.broken = True
            with pytest.raises(DhtError):
                await asyncio.wait_for(dht.put(KEY, b"y"), 10)
        finally:
            await dht.close()


async def test_listen_takes_values_from_every_node_once() -> None:
    own, mirror = FakeProxy(), FakeProxy()
    async with running(own) as own_url, running(mirror) as mirror_url:
        dht = MirroredDht(own_url, [mirror_url], timeout=30)
        try:
            listener = dht.listen(KEY)
            first = asyncio.create_task(anext(aiter(listener)))
            await eventually(lambda: own.streams and mirror.streams, what="both listens")
            mirror.send(b"answer")  # only the mirror has it so far
            assert await asyncio.wait_for(first, 10) == b"answer"
            own.send(b"answer")  # the same value through the own node: not again
            own.send(b"second")
            assert await asyncio.wait_for(anext(aiter(listener)), 10) == b"second"
            await listener.aclose()
        finally:
            await dht.close()
