"""Real dhtnode processes on 127.0.0.1: publish, fetch, listen, failure, cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tierlink.dht import DhtClient, DhtNodeProcess
from tierlink.dht.record_book import RecordBook
from tierlink.errors import DhtError, DhtNodeMissing, DhtUnavailable
from tierlink.identity import Identity
from tierlink.wire.dhtkeys import ice_candidates_key
from tierlink.wire.records import PeerRecord


def fresh_key() -> str:
    return os.urandom(20).hex()


async def test_publish_through_one_fetch_through_another(dht_cluster) -> None:
    a, _, c = dht_cluster
    ident = Identity.generate()
    key = ice_candidates_key(ident.fingerprint)
    async with DhtClient(a.proxy_url) as ca, DhtClient(c.proxy_url) as cc:
        await ca.put(key, PeerRecord.create(ident, seq=1).encode(ident))
        values: list[bytes] = []
        for _ in range(50):  # the value travels through the DHT; bounded wait
            values = await cc.get(key)
            if values:
                break
            await asyncio.sleep(0.1)
        rec = RecordBook().newest(values, ident.fingerprint)
        assert rec is not None and rec.seq == 1


async def test_listen_sees_new_value_and_cancel_stops_delivery(dht_cluster) -> None:
    a, b, _ = dht_cluster
    key = fresh_key()
    async with DhtClient(a.proxy_url) as ca, DhtClient(b.proxy_url) as cb:
        listener = cb.listen(key)
        got: list[tuple[float, bytes]] = []

        async def consume() -> None:
            async for value in listener:
                got.append((time.perf_counter(), value))

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        await ca.put(key, b"first")
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.05)
        assert [v for _, v in got] == [b"first"]
        print(f"listen latency {1000 * (got[0][0] - t0):.0f} ms")
        await listener.aclose()
        await asyncio.wait_for(task, 5)
        await ca.put(key, b"second")
        await asyncio.sleep(1.0)
        assert [v for _, v in got] == [b"first"]


async def test_killing_node_mid_listen_gives_clear_error() -> None:
    node = DhtNodeProcess(no_rate_limit=True)
    await node.start()
    try:
        async with DhtClient(node.proxy_url, timeout=2.0) as client:
            listener = client.listen(fresh_key())

            async def consume() -> list[bytes]:
                return [v async for v in listener]

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.3)
            await node.stop()  # node gone for good (supervisor stopped too)
            with pytest.raises(DhtUnavailable):
                await asyncio.wait_for(task, 15)
            with pytest.raises(DhtUnavailable):
                await client.get(fresh_key())
    finally:
        await node.stop()


async def test_supervisor_restarts_a_crashed_node(dht_node) -> None:
    pid = dht_node.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    async with DhtClient(dht_node.proxy_url, timeout=2.0) as client:
        for _ in range(100):
            try:
                await client.info()
                if dht_node.pid not in (None, pid):
                    break
            except DhtUnavailable:
                pass
            await asyncio.sleep(0.1)
        assert dht_node.restarts == 1 and dht_node.pid not in (None, pid)
        await client.put(fresh_key(), b"after restart")


async def test_lone_node_put_is_not_reported_as_loss(dht_node) -> None:
    key = fresh_key()
    async with DhtClient(dht_node.proxy_url) as client:
        await client.put(key, b"alone")
        assert await client.get(key) == [b"alone"]
        await client.put(key, b"kept", permanent=True)
        assert sorted(await client.get(key)) == [b"alone", b"kept"]


async def test_lone_node_read_back_is_not_repeated_for_every_put(dht_node, monkeypatch) -> None:
    """A lone node answers "Put failed" yet stores; one read-back vouches for a while."""
    async with DhtClient(dht_node.proxy_url) as client:
        reads = 0
        real_get = client.get

        async def counting_get(key: str) -> list[bytes]:
            nonlocal reads
            reads += 1
            return await real_get(key)

        monkeypatch.setattr(client, "get", counting_get)
        keys = [fresh_key() for _ in range(3)]
        for i, key in enumerate(keys):
            await client.put(key, b"v%d" % i)
        assert reads == 1
        for i, key in enumerate(keys):
            assert await real_get(key) == [b"v%d" % i]
        client._lone_until = 0.0  # the trust period ended: the next put reads back again
        await client.put(fresh_key(), b"checked")
        assert reads == 2


async def test_unreachable_proxy_is_a_typed_error() -> None:
    from tierlink.dht.launcher import free_port

    async with DhtClient(f"http://127.0.0.1:{free_port()}", timeout=1.0) as client:
        with pytest.raises(DhtUnavailable, match="unreachable"):
            await client.put(fresh_key(), b"x")
        with pytest.raises(ValueError, match="40 lowercase hex"):
            await client.get("not-a-key")


async def test_missing_dhtnode_says_how_to_install() -> None:
    with pytest.raises(DhtNodeMissing, match="apt-get install dhtnode"):
        await DhtNodeProcess(executable="dhtnode-does-not-exist").start()


async def test_port_in_use_is_a_clear_error(dht_node) -> None:
    clash = DhtNodeProcess(proxy_port=dht_node.proxy_port, start_timeout=3)
    with pytest.raises(DhtError):
        await clash.start()
    await clash.stop()


async def test_children_gone_after_stop() -> None:
    node = DhtNodeProcess(no_rate_limit=True)
    await node.start()
    pid = node.pid
    await node.stop()
    assert pid is not None and not psutil.pid_exists(pid)


CHILD = """
import asyncio, sys
from tierlink.dht import DhtNodeProcess
async def main():
    node = DhtNodeProcess(no_rate_limit=True)
    await node.start()
    print(node.pid, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def test_no_orphan_after_parent_sigkill() -> None:
    parent = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        else:
            os.kill(child_pid, signal.SIGKILL)
            pytest.fail("dhtnode outlived its SIGKILLed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
