"""Real dhtnode processes on 127.0.0.1: publish, fetch, listen, failure, cleanup."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable

import psutil
import pytest

from tests.waiting import eventually
from tierlink.dht import DhtClient, DhtListener, DhtNodeProcess, NodePlace, launcher, start_nodes
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
        values = await eventually(lambda: cc.get(key), 10, "the value to reach another node")
        rec = RecordBook().newest(values, ident.fingerprint)
        assert rec is not None and rec.seq == 1


async def test_listen_sees_new_value_and_cancel_stops_delivery(dht_cluster) -> None:
    a, b, c = dht_cluster
    key = fresh_key()
    async with (DhtClient(a.proxy_url) as ca, DhtClient(b.proxy_url) as cb,
                DhtClient(c.proxy_url) as cc):
        listener, witness = cb.listen(key), cc.listen(key)
        got: list[bytes] = []
        seen: list[bytes] = []

        async def consume(source: DhtListener, into: list[bytes]) -> None:
            async for value in source:
                into.append(value)

        task = asyncio.create_task(consume(listener, got))
        watch = asyncio.create_task(consume(witness, seen))
        await ca.put(key, b"first")
        await eventually(lambda: got, 10, "the listener to see the first value")
        assert got == [b"first"]
        await listener.aclose()
        await asyncio.wait_for(task, 5)
        await ca.put(key, b"second")
        await eventually(lambda: b"second" in seen, 10, "a live listener to see the second")
        assert got == [b"first"]  # the closed listener got nothing more
        await witness.aclose()
        await asyncio.wait_for(watch, 5)


async def test_killing_node_mid_listen_gives_clear_error() -> None:
    (node,) = await start_nodes(1)
    try:
        async with DhtClient(node.proxy_url, timeout=2.0) as client:
            key = fresh_key()
            listener = client.listen(key)
            got: list[bytes] = []

            async def consume() -> None:
                async for value in listener:
                    got.append(value)

            task = asyncio.create_task(consume())
            await client.put(key, b"streaming")
            await eventually(lambda: got, 10, "the listen stream to deliver a value")
            await node.stop()  # node gone for good (supervisor stopped too)
            with pytest.raises(DhtUnavailable):
                await asyncio.wait_for(task, 15)
            with pytest.raises(DhtUnavailable):
                await client.get(fresh_key())
    finally:
        await node.stop()


async def test_supervisor_restarts_a_crashed_node(dht_node) -> None:
    pid, port, proxy_port = dht_node.pid, dht_node.port, dht_node.proxy_port
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    async with DhtClient(dht_node.proxy_url, timeout=2.0) as client:

        async def restarted() -> bool:
            if dht_node.pid in (None, pid):
                return False
            try:
                await client.info()
            except DhtUnavailable:
                return False
            return True

        await eventually(restarted, 15, "the supervisor to restart dhtnode")
        assert dht_node.restarts == 1
        assert (dht_node.port, dht_node.proxy_port) == (port, proxy_port)  # same ports
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
    with pytest.raises(DhtError, match=f"TCP proxy port 127.0.0.1:{dht_node.proxy_port} is "
                                       "not free"):
        await clash.start()
    await clash.stop()


def _udp_ports(pid: int) -> set[int]:
    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="udp")}


async def test_unset_udp_port_is_read_back_from_the_child() -> None:
    """``port=None`` runs ``dhtnode -p 0``; :attr:`port` is the port the child bound."""
    node = DhtNodeProcess(no_rate_limit=True)
    await node.start()
    try:
        assert node.pid is not None and node.port not in (None, 0)
        assert node.port in _udp_ports(node.pid)
        joined = DhtNodeProcess(no_rate_limit=True, bootstrap=[("127.0.0.1", node.port or 0)])
        async with joined, DhtClient(joined.proxy_url) as client:
            await eventually(_has_good_peer(client), 10, "the second node to join the first")
    finally:
        await node.stop()


def _has_good_peer(client: DhtClient) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        info = await client.info()
        return bool(info["ipv4"]["good"] or info["ipv4"]["dubious"])

    return check


async def test_proxy_port_lost_to_another_program_is_picked_again(monkeypatch) -> None:
    """The picked proxy port is taken before dhtnode binds it: it starts on a fresh one."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = [taken]
        real_free_port = launcher.free_port

        def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
            return picks.pop() if picks else real_free_port(kind, host)

        monkeypatch.setattr(launcher, "free_port", free_port)
        async with DhtNodeProcess(no_rate_limit=True) as node:
            assert not picks and node.proxy_port != taken
            async with DhtClient(node.proxy_url) as client:
                assert "node_id" in await client.info()


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip")
async def test_start_nodes_stops_all_when_one_fails() -> None:
    started: list[DhtNodeProcess] = []
    pids: list[int | None] = []
    real_start = DhtNodeProcess.start

    async def recording_start(self: DhtNodeProcess) -> None:
        started.append(self)
        await real_start(self)
        pids.append(self.pid)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DhtNodeProcess, "start", recording_start)
        with pytest.raises(DhtError, match="exited at start"):
            await start_nodes(2, places=[NodePlace(), NodePlace(netns="tl-no-such-namespace")])
    assert len(started) == 2 and len(pids) == 1 and pids[0] is not None
    assert all(node.pid is None for node in started) and not psutil.pid_exists(pids[0])


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


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_no_orphan_after_parent_sigkill() -> None:
    parent = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    child_pid = 0
    try:
        assert parent.stdout is not None
        child_pid = int(await asyncio.to_thread(parent.stdout.readline))
        assert psutil.pid_exists(child_pid)
        parent.send_signal(signal.SIGKILL)
        await asyncio.to_thread(parent.wait, 10)
        await eventually(lambda: _gone(child_pid), 10, "dhtnode to die with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
        if child_pid and not _gone(child_pid):
            os.kill(child_pid, signal.SIGKILL)


async def test_a_dead_bootstrap_node_falls_back_to_the_next(dht_node) -> None:
    """dhtnode takes one bootstrap node: with the first dead, the child is started again
    through the second, and the node then reaches the DHT that one belongs to."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:  # receives, never answers
        dead.bind(("127.0.0.1", 0))
        live = ("127.0.0.1", dht_node.port)
        # per node: the dead one costs it in full, and the live one must be known within it
        # even on a loaded machine (the proxy may report known nodes only ~3 s after start)
        joined = DhtNodeProcess(bootstrap=[dead.getsockname(), live], join_timeout=6.0,
                                no_rate_limit=True)
        await joined.start()
        try:
            assert joined.bootstrap_index == 1
            assert joined.command().bootstrap == live  # a restart keeps the live one
            key = fresh_key()
            async with DhtClient(joined.proxy_url) as near, DhtClient(dht_node.proxy_url) as far:
                await near.put(key, b"through the fallback")
                await eventually(lambda: _values(far, key), 15, "the value on the other node")
        finally:
            await joined.stop()


async def _values(client: DhtClient, key: str) -> bool:
    return b"through the fallback" in await client.get(key)


async def test_no_bootstrap_node_answering_names_them_all() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as one, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as two:
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        node = DhtNodeProcess(bootstrap=[one.getsockname(), two.getsockname()],
                              join_timeout=0.5)
        with pytest.raises(DhtUnavailable) as info:
            await node.start()
        where = ", ".join(f"{h}:{p}" for h, p in (one.getsockname(), two.getsockname()))
        assert f"through {where} within" in str(info.value)
        assert "UDP may be blocked" in str(info.value)
        assert node.pid is None
