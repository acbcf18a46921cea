"""Attacks through the DHT on the long-running loops: poison proxy lines, junk offers, and a
loop body that fails. Servers run on 127.0.0.1; nodes use real dhtnode processes."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import cbor2
import pytest
from aiohttp import web

from tests.nodes import config_for
from tests.waiting import eventually
from tierlink.backoff import Backoff
from tierlink.dht import DhtClient
from tierlink.dht.proxy_lines import MAX_LINE_BYTES
from tierlink.errors import DhtUnavailable
from tierlink.node import Node
from tierlink.node.tasks import Supervisor
from tierlink.wire.dhtkeys import offers_key

GOOD = b"the good value"
#: Over aiohttp's own line limit (512 KiB), far over ours.
HUGE_LINE = json.dumps({"data": "A" * (600 * 1024), "id": "9"}).encode() + b"\n"
#: Deep enough for a RecursionError in json, short enough to pass the size bound.
NESTED_LINE = b"[" * 50_000 + b"]" * 50_000 + b"\n"
POISON = [
    HUGE_LINE,
    NESTED_LINE,
    b"not json at all\n",
    b'{"data": 5, "id": "2"}\n',
    b'["a list", "not an object"]\n',
    b'{"data": "!!not base64!!", "id": "3"}\n',
]
EXPECTED_SKIPS = {"oversized": 1, "json": 2, "shape": 2, "base64": 1}


def good_line() -> bytes:
    return json.dumps({"data": base64.b64encode(GOOD).decode(), "id": "1"}).encode() + b"\n"


async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1 (an ephemeral port) and yield its base URL."""
    # A handler ends when its client goes away, as a proxy's listen does.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        await web.SockSite(runner, sock).start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()


@pytest.fixture(params=[16384, 997])
async def poisoned_proxy(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A proxy whose every get and listen sends the poison lines, then one good value (a
    listen streams them in pieces of ``request.param`` bytes and stays open after them, as a
    real one does)."""
    hold = asyncio.Event()
    piece = request.param

    async def listen(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for line in POISON:
            for i in range(0, len(line), piece):  # lines split across reads
                await resp.write(line[i : i + piece])
        await resp.write(good_line()[:5])
        await resp.write(good_line()[5:])
        await hold.wait()
        return resp

    async def get(request: web.Request) -> web.Response:
        return web.Response(body=b"".join(POISON) + good_line())

    app = web.Application()
    app.router.add_get("/key/{key}/listen", listen)
    app.router.add_get("/key/{key}", get)
    async for url in serve(app):
        try:
            yield url
        finally:
            hold.set()


async def test_poison_lines_in_a_listen_are_skipped_and_the_good_value_arrives(
    poisoned_proxy,
) -> None:
    async with DhtClient(poisoned_proxy) as dht:
        listener = dht.listen(os.urandom(20).hex())
        value = await asyncio.wait_for(anext(aiter(listener)), 10)
        assert value == GOOD
        assert dict(dht.skipped_lines) == EXPECTED_SKIPS
        assert len(HUGE_LINE) > 4 * MAX_LINE_BYTES


async def test_poison_lines_in_a_get_are_skipped_beside_the_good_value(poisoned_proxy) -> None:
    async with DhtClient(poisoned_proxy) as dht:
        assert await dht.get(os.urandom(20).hex()) == [GOOD]
        assert dict(dht.skipped_lines) == EXPECTED_SKIPS


@pytest.fixture
async def poisoning_relay(dht_node) -> AsyncIterator[tuple[str, list[str], set[str]]]:
    """A relay in front of a real dhtnode's proxy that sends the poison lines first in every
    listen (an attacker writing through the proxy), then the node's own stream; yields its
    URL, the listened paths and a set of paths to answer once with an error."""
    upstream = dht_node.proxy_url.rstrip("/")
    listened: list[str] = []
    fail_once: set[str] = set()
    async with aiohttp.ClientSession() as session:

        async def relay(request: web.Request) -> web.StreamResponse:
            if request.path in fail_once:
                fail_once.discard(request.path)
                return web.Response(status=503)
            url = upstream + request.path_qs
            body = await request.read()
            timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
            async with session.request(request.method, url, data=body or None,
                                       headers={"Content-Type": "application/json"},
                                       timeout=timeout) as up:
                resp = web.StreamResponse(status=up.status)
                await resp.prepare(request)
                if request.path.endswith("/listen"):
                    listened.append(request.path)
                    for line in POISON:
                        await resp.write(line)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                return resp

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", relay)
        async for url in serve(app):
            yield url, listened, fail_once


async def test_a_node_behind_a_poisoning_proxy_can_still_be_dialed(
    dht_node, poisoning_relay,
) -> None:
    relay_url, listened, _ = poisoning_relay
    victim = Node(dataclasses.replace(config_for(dht_node), dht_proxy=relay_url))
    dialer = Node(config_for(dht_node))
    async with victim, dialer:
        offers_path = f"/key/{offers_key(victim.fingerprint)}/listen"
        await eventually(lambda: offers_path in listened, 10, "the victim to listen for offers")
        assert dialer.dht is not None
        junk = [os.urandom(300), cbor2.dumps({"k": os.urandom(40), 1: [1, 2, {3: 4}]}),
                cbor2.dumps([2**70, -(2**70), 1.5, None]), b"\x00"]
        for value in junk:
            await dialer.dht.put(offers_key(victim.fingerprint), value)
        conn = await dialer.connect(victim.fingerprint)
        try:
            assert await victim.accept(timeout=10) is not None
        finally:
            await conn.close()
        stats = victim.stats()
        assert stats["proxy_lines_skipped"]["oversized"] >= 1
        assert stats["loop_restarts"] == {}  # nothing above ended the offer loop


async def test_an_offer_loop_whose_listen_fails_is_restarted_and_counted(
    dht_node, poisoning_relay,
) -> None:
    relay_url, listened, fail_once = poisoning_relay
    victim = Node(dataclasses.replace(config_for(dht_node), dht_proxy=relay_url))
    offers_path = f"/key/{offers_key(victim.fingerprint)}/listen"
    fail_once.add(offers_path)
    dialer = Node(config_for(dht_node))
    async with victim, dialer:
        await eventually(lambda: offers_path in listened, 20, "the offer loop to listen again")
        assert victim.stats()["loop_restarts"] == {"offers": 1}
        conn = await dialer.connect(victim.fingerprint)
        await conn.close()


class NoWait(Backoff):
    """A backoff that records its delays instead of sleeping them."""

    def __init__(self) -> None:
        super().__init__(1.0, maximum=8.0)
        self.waited: list[float] = []

    async def sleep(self) -> float:
        delay = self.next_delay()
        self.waited.append(delay)
        await asyncio.sleep(0)
        return delay


def failing_first(times: int, error: Exception) -> tuple[Callable[[], Awaitable[None]], list[int]]:
    """A loop body that raises ``error`` on its first ``times`` runs and then returns."""
    runs: list[int] = []

    async def body() -> None:
        runs.append(len(runs))
        if len(runs) <= times:
            raise error

    return body, runs


@pytest.mark.parametrize("error", [RecursionError("deep"), OverflowError("big"),
                                   DhtUnavailable("gone")])
async def test_a_loop_that_fails_is_restarted_with_backoff(error: Exception) -> None:
    tasks = Supervisor("test")
    backoff = NoWait()
    body, runs = failing_first(3, error)
    try:
        task = tasks.keep_running(body, "loop", backoff)
        await asyncio.wait_for(task, 10)
        assert task.exception() is None
        assert runs == [0, 1, 2, 3]
        assert tasks.restarts == {"loop": 3}
        assert backoff.waited == [1.0, 2.0, 4.0]
    finally:
        await tasks.close()


async def test_a_restarting_loop_ends_on_close() -> None:
    tasks = Supervisor("test")
    body, runs = failing_first(10**9, ValueError("always"))
    task = tasks.keep_running(body, "loop", NoWait())
    await eventually(lambda: len(runs) > 5, 10, "a few restarts")
    await tasks.close()
    assert task.cancelled()
    assert len(tasks) == 0
