"""Dialing by fingerprint, end to end, on loopback with real dhtnode processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import config_for, dial, released, resources
from tests.waiting import eventually
from tierlink.blocking import BlockingConnection, BlockingNode
from tierlink.errors import (
    ConnectionClosed,
    DialTimeout,
    HandshakeFailed,
    IceFailed,
    MessageTooLarge,
    PeerNotFound,
    RecordError,
)
from tierlink.identity import SIGNATURE_SIZE, Identity
from tierlink.node import Node
from tierlink.wire.dhtkeys import ice_candidates_key, offers_key
from tierlink.wire.records import MAX_CLOCK_SKEW_MS, now_ms
from tierlink.wire.signaling import (
    OfferSecret,
    SessionDescription,
    encode_answer,
    encode_offer,
    new_session_id,
)


async def pair(dht_cluster, secure: bool = True, **kw_b):
    a = Node(config_for(dht_cluster[0], secure=secure))
    b = Node(config_for(dht_cluster[1], secure=secure, **kw_b))
    await b.start()
    await a.start()
    return a, b


def record_offer_secrets(monkeypatch: pytest.MonkeyPatch) -> list[OfferSecret]:
    """The secret of every offer dialed from now on (what only the two peers know)."""
    import tierlink.node.dial as dial_mod

    secrets: list[OfferSecret] = []
    real = dial_mod.encode_offer

    def recording(*args: Any, **kw: Any) -> tuple[bytes, OfferSecret]:
        value, secret = real(*args, **kw)
        secrets.append(secret)
        return value, secret

    monkeypatch.setattr(dial_mod, "encode_offer", recording)
    return secrets


async def turns(n: int = 5) -> None:
    """Let just-started tasks run up to their first wait (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "raw"])
async def test_dial_by_fingerprint_and_exchange(dht_cluster, secure: bool) -> None:
    a, b = await pair(dht_cluster, secure)
    async with a, b:
        ca, cb = await dial(a, b)
        assert ca.remote_fingerprint == b.fingerprint and cb.remote_fingerprint == a.fingerprint
        assert ca.selected_pair["local"]["type"] == "host"
        report = ca.path_report()
        assert report["tier"] == "direct" and report["direct_ms"] == report["connect_ms"]
        assert report["ice"]["first_success"] == "direct"
        assert report["ice"]["checks_sent"] >= 2  # a check, then the nominating one
        for node in (a, b):
            paths = node.stats()["ice_paths"]
            assert isinstance(paths, dict)
            assert (paths["paths_direct"], paths["paths_relay"]) == (1, 0), paths
        assert ca.secure is secure and cb.secure is secure
        limit = 16 * 2**20 if secure else 65_507
        assert ca.max_payload == limit
        assert ca.max_datagram_payload == (1150 if secure else 65_507)
        await ca.send(b"ping")
        assert await cb.recv(5) == b"ping"
        await cb.send(b"pong")
        assert await ca.recv(5) == b"pong"
        big = b"x" * (65_507 if not secure else 1_000_000)
        await ca.send(big)
        assert await cb.recv(5) == big
        with pytest.raises(MessageTooLarge, match=str(limit)):
            await ca.send(b"x" * (limit + 1))
        with pytest.raises(MessageTooLarge):
            ca.send_datagram(b"x" * (ca.max_datagram_payload + 1))
        ca.send_datagram(b"d")
        assert await cb.recv_datagram(5) == b"d"
        with pytest.raises(ValueError):
            await ca.send(b"")
        await ca.close()
        with pytest.raises(ConnectionClosed):
            await ca.send(b"after close")


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "raw"])
async def test_burst_of_20_keeps_newest_16_and_counts_4_dropped(dht_cluster, secure) -> None:
    a, b = await pair(dht_cluster, secure)
    async with a, b:
        ca, cb = await dial(a, b)
        for i in range(20):
            ca.send_datagram(f"m{i}".encode())
        await eventually(lambda: cb.received == 20, what="20 datagrams received")
        assert cb.dropped == 4
        got = [await cb.recv_datagram(0) for _ in range(16)]
        assert got == [f"m{i}".encode() for i in range(4, 20)]
        assert await cb.recv_datagram(0) is None


async def test_recv_timeouts_and_close_wakes_waiters(dht_cluster) -> None:
    a, b = await pair(dht_cluster)
    async with a, b:
        ca, cb = await dial(a, b)
        assert await cb.recv(0) is None
        assert await cb.recv(0.2) is None
        forever = asyncio.create_task(cb.recv(None))
        await turns()
        assert not forever.done()  # nothing was sent: it waits
        await ca.send(b"late")
        assert await asyncio.wait_for(forever, 5) == b"late"
        waiters = [asyncio.create_task(cb.recv(None)) for _ in range(5)]
        await turns()
        assert not any(w.done() for w in waiters)
        await cb.close()
        for w in waiters:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(w, 2)


async def test_ten_simultaneous_connections_never_mix(dht_cluster) -> None:
    b = Node(config_for(dht_cluster[1], queue_capacity=64))
    dialers = [Node(config_for(dht_cluster[i % 3])) for i in range(10)]
    await b.start()
    for d in dialers:
        await d.start()
    try:
        conns = await asyncio.gather(*(d.connect(b.fingerprint) for d in dialers))
        incoming = {}
        for _ in range(10):
            c = await b.accept(timeout=10)
            assert c is not None
            incoming[c.remote_fingerprint] = c
        assert set(incoming) == {d.fingerprint for d in dialers}
        for d, c in zip(dialers, conns, strict=True):
            for j in range(20):
                await c.send(f"{d.fingerprint[:8]}:{j}".encode())
        for d in dialers:
            c = incoming[d.fingerprint]
            got = [await c.recv(5) for _ in range(20)]
            assert got == [f"{d.fingerprint[:8]}:{j}".encode() for j in range(20)]
    finally:
        for d in dialers:
            await d.close()
        await b.close()


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "raw"])
async def test_steady_10000_messages(dht_cluster, secure: bool) -> None:
    """Secure: every message arrives in order. Raw UDP may lose some: none twice, none out of
    order, and queue drops are counted."""
    a, b = await pair(dht_cluster, secure)
    async with a, b:
        ca, cb = await dial(a, b)
        n, received = 10_000, []

        async def reader() -> None:
            while len(received) < n:
                msg = await cb.recv(5)
                if msg is None:
                    return
                received.append(msg)

        task = asyncio.create_task(reader())
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(n):
            await ca.send(i.to_bytes(4, "big") + b"." * 96)
            if i % 8 == 7:
                await asyncio.sleep(0.001)  # a steady rate the reader keeps up with
        await asyncio.wait_for(task, 30)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        print(f"{'secure' if secure else 'raw'}: 10000 msgs in {wall:.2f} s, CPU {cpu:.2f} s "
              "(both nodes in this process), "
              f"dropped {cb.dropped}")
        numbers = [int.from_bytes(m[:4], "big") for m in received]
        if secure:  # reliable and acknowledged: every message, in order
            assert numbers == list(range(n)) and cb.dropped == 0
        else:  # raw UDP may lose datagrams: what arrives is in order, once, and counted
            assert numbers and numbers == sorted(set(numbers)) and numbers[-1] < n
            assert len(numbers) + cb.dropped <= n


async def test_unknown_fingerprint_is_peer_not_found(dht_cluster) -> None:
    async with Node(config_for(dht_cluster[0])) as a:
        with pytest.raises(PeerNotFound, match="no valid record"):
            await a.connect(Identity.generate().fingerprint)
        base = resources()  # after the HTTP keep-alive pool is warm
        with pytest.raises(PeerNotFound, match="no valid record"):
            await a.connect(Identity.generate().fingerprint)
        with pytest.raises(ValueError, match="128"):
            await a.connect("abc")
        await released(base, "fds")


async def test_tampered_expired_and_replayed_offers_are_ignored(dht_cluster) -> None:
    a, b = await pair(dht_cluster)
    async with a, b:
        dht = a.dht
        assert dht is not None
        rec = await a.lookup(b.fingerprint)
        params = SessionDescription("ufrag", "p" * 22, ())
        good, _ = encode_offer(a.identity, b.fingerprint, rec.kem_public_key,
                               new_session_id(), params)
        tampered = bytearray(good)
        tampered[-SIGNATURE_SIZE - 5] ^= 0xFF  # inside the AES-GCM ciphertext
        expired, _ = encode_offer(a.identity, b.fingerprint, rec.kem_public_key,
                                  new_session_id(), params, lifetime_s=1.0,
                                  created_at_ms=now_ms() - MAX_CLOCK_SKEW_MS - 10_000)
        other = Identity.generate()
        misaddressed, _ = encode_offer(a.identity, other.fingerprint, other.kem_public_key,
                                       new_session_id(), params)
        for value in (bytes(tampered), expired, misaddressed, good, good, b"junk"):
            await dht.put(offers_key(b.fingerprint), value)
        expect = {"decrypt": 2, "expired": 1, "malformed": 1}

        def seen() -> dict[str, int]:
            return {k: v for k, v in b.offer_rejections.items() if k != "replay"}

        await eventually(lambda: seen() == expect and b.offers_answered == 1,
                         what=f"rejections {expect} and one answer")
        # The second put of the same bytes is rejected as a replay when the DHT hands it
        # over again (it may also de-duplicate it); either way no second answer goes out.
        assert b.offer_rejections.get("replay", 0) <= 1
        with pytest.raises(RecordError) as exc:
            b.answerer.check_offer(good)
        assert exc.value.reason == "replay"
        # The one valid offer was answered (its ICE then fails: nobody runs the dialer side).
        assert b.offers_answered == 1


async def test_offer_replayed_after_the_callee_restarts_is_not_answered(dht_cluster) -> None:
    """An offer B answered, put again after B restarted (same identity and state directory,
    within the offer's lifetime), is refused as a replay: no second answer, no ICE checks
    towards the dialer's addresses. A dial made after the restart is answered."""
    callee, state = Identity.generate(), Path(tempfile.mkdtemp(prefix="tierlink-test-"))

    def b_config() -> Any:
        return config_for(dht_cluster[1], identity=callee, data_dir=state)

    async with Node(config_for(dht_cluster[0])) as a:
        assert a.dht is not None
        async with Node(b_config()) as b:
            rec = await a.lookup(b.fingerprint)
            captured, _ = encode_offer(a.identity, b.fingerprint, rec.kem_public_key,
                                       new_session_id(), SessionDescription("uFrg", "p" * 22, ()),
                                       lifetime_s=600.0)
            await a.dht.put(offers_key(b.fingerprint), captured)
            await eventually(lambda: b.offers_answered == 1, what="the offer answered once")
        async with Node(b_config()) as b:
            await a.dht.put(offers_key(b.fingerprint), captured)  # the attacker's replay
            await eventually(lambda: b.offer_rejections["replay"] >= 1, what="a replay refused")
            assert b.offers_answered == 0
            conn = await a.connect(b.fingerprint)
            incoming = await b.accept(timeout=10)
            assert incoming is not None and b.offers_answered == 1
            await conn.close()
            await incoming.close()


async def test_dial_made_while_the_callee_is_down_is_answered_when_it_starts(
    dht_cluster,
) -> None:
    """The offers a node finds stored when it starts, and never answered, are answered."""
    callee, state = Identity.generate(), Path(tempfile.mkdtemp(prefix="tierlink-test-"))

    def b_config() -> Any:
        return config_for(dht_cluster[1], identity=callee, data_dir=state)

    async with Node(config_for(dht_cluster[0])) as a:
        assert a.dht is not None
        async with Node(b_config()) as b:
            await a.lookup(b.fingerprint)
        dialing = asyncio.create_task(a.connect(callee.fingerprint, timeout=20.0))
        try:
            await eventually(lambda: a.dht.get(offers_key(callee.fingerprint)),
                             what="the offer stored while the callee is down")
            async with Node(b_config()) as b:
                conn = await dialing
                incoming = await b.accept(timeout=10)
                assert incoming is not None
                await conn.send(b"ping")
                assert await incoming.recv(5) == b"ping"
                await conn.close()
                await incoming.close()
        finally:
            dialing.cancel()


async def test_answers_not_sealed_by_the_callee_are_ignored(dht_cluster, monkeypatch) -> None:
    """Values under the dial's answer key that do not open with the offer's secret are
    skipped (had one been taken, its bogus ICE parameters would fail the dial). They are put
    before the offer, by someone who learned the answer key (only the two peers can derive
    it), so the dialer's listen hands them over first."""
    session = new_session_id()
    a = Node(config_for(dht_cluster[0]), session_ids=lambda: session)
    b = Node(config_for(dht_cluster[1]))
    secrets = record_offer_secrets(monkeypatch)
    async with b, a:
        assert a.dht is not None
        bogus = SessionDescription("bogus", "b" * 22, ())
        real_put = a.dht.put

        async def forged_first(key: str, value: bytes, **kw: Any) -> None:
            if key == offers_key(b.fingerprint):
                stolen = secrets[-1]
                for forged in (b"junk", encode_answer(
                        OfferSecret(os.urandom(32), session, a.fingerprint, b.fingerprint),
                        bogus)):
                    await real_put(stolen.answer_key(), forged)
            await real_put(key, value, **kw)

        a.dht.put = forged_first  # type: ignore[method-assign]
        ca, cb = await dial(a, b)
        assert ca.session_id == cb.session_id == session
        await ca.send(b"ping")
        assert await cb.recv(5) == b"ping"


async def test_dialer_outside_allow_list_gets_no_answer(dht_cluster) -> None:
    friend = Identity.generate()
    a, b = await pair(dht_cluster, allow={friend.fingerprint})
    async with a, b:
        with pytest.raises(DialTimeout, match="did not answer"):
            await a.connect(b.fingerprint, timeout=1.0)
        base = resources()  # HTTP keep-alive pool warm
        for _ in range(3):
            with pytest.raises(DialTimeout, match="did not answer"):
                await a.connect(b.fingerprint, timeout=1.0)
        await eventually(lambda: b.offer_rejections["not-allowed"] == 4,
                         what="four offers refused")
        assert b.offers_answered == 0
        await released(base, "fds", "tasks")
        # The friend gets through.
        async with Node(config_for(dht_cluster[2], identity=friend)) as f:
            c = await f.connect(b.fingerprint)
            await c.close()


async def test_wrong_ice_password_fails_checks(dht_cluster, monkeypatch) -> None:
    import tierlink.node.dial as dial_mod

    a, b = await pair(dht_cluster)
    a.config.ice_timeout = 3.0
    b.config.ice_timeout = 3.0
    real = dial_mod.set_remote

    async def wrong_pwd(ice, ufrag, pwd, candidates):
        if ice.ice_controlling:
            pwd = "x" * len(pwd)
        await real(ice, ufrag, pwd, candidates)

    monkeypatch.setattr(dial_mod, "set_remote", wrong_pwd)
    async with a, b:
        with pytest.raises(IceFailed, match="no working path"):
            await a.connect(b.fingerprint)
        assert await b.accept(timeout=4) is None
        base = resources()  # HTTP keep-alive pools warm
        for _ in range(2):
            with pytest.raises(IceFailed, match="no working path"):
                await a.connect(b.fingerprint)
        assert await b.accept(timeout=4) is None
        await released(base, "fds")


async def test_private_mode_leaks_no_address_to_dht_observers(dht_cluster, monkeypatch) -> None:
    # A loopback address whose 4 bytes cannot occur in a record's clear millisecond times
    # (127.0.0.1 does: a time ending in 0x7f followed by the next time's 00 00 01).
    addr = "127.77.88.99"
    a = Node(config_for(dht_cluster[0], host_addresses=[addr]))
    b = Node(config_for(dht_cluster[1], host_addresses=[addr]))
    await b.start()
    await a.start()
    secrets = record_offer_secrets(monkeypatch)
    async with a, b:
        ca, _ = await dial(a, b)
        assert ca.selected_pair["remote"]["address"] == addr
        observer = dht_cluster[2]
        from tierlink.dht import DhtClient

        async with DhtClient(observer.proxy_url) as spy:
            keys = [ice_candidates_key(a.fingerprint), ice_candidates_key(b.fingerprint),
                    offers_key(b.fingerprint), secrets[-1].answer_key()]
            values = []
            for key in keys:
                values += await eventually(lambda key=key: spy.get(key), 10, f"a value at {key}",
                                           interval=0.1)
        assert len(values) >= 4
        addr_text, addr_bin = addr.encode(), socket.inet_aton(addr)
        for v in values:
            assert addr_text not in v and addr_bin not in v


async def test_public_mode_lists_candidates(dht_cluster) -> None:
    async with (
        Node(config_for(dht_cluster[0], mode="public")) as p,
        Node(config_for(dht_cluster[1])) as q,
    ):
        rec = await q.lookup(p.fingerprint)
    assert rec.mode == "public" and [c.host for c in rec.candidates] == ["127.0.0.1"]


async def test_node_republishes_with_higher_sequence(dht_cluster) -> None:
    async with (
        Node(config_for(dht_cluster[0], record_lifetime=3.0)) as p,
        Node(config_for(dht_cluster[1])) as q,
    ):
        first = await q.lookup(p.fingerprint)

        async def newer() -> bool:
            return (await q.lookup(p.fingerprint)).seq > first.seq

        await eventually(newer, what="a re-published record", interval=0.1)


@contextlib.contextmanager
def blocking_pair(
    dht_cluster_sync: list[Any],
) -> Iterator[tuple[BlockingConnection, BlockingConnection]]:
    """Two blocking nodes, the first connected to the second: (dialer's, callee's) side."""
    a_dht, b_dht = dht_cluster_sync
    with BlockingNode(config_for(b_dht)) as b, BlockingNode(config_for(a_dht)) as a:
        ca = a.connect(b.fingerprint)
        cb = b.accept(timeout=10)
        assert cb is not None
        yield ca, cb


def test_blocking_facade_recv_timeout_contract(dht_cluster_sync) -> None:
    with blocking_pair(dht_cluster_sync) as (ca, cb):
        assert cb.recv_timeout(0) is None
        assert cb.recv_timeout(200) is None
        ca.send(b"hi")
        assert cb.recv_timeout(-1) == b"hi"
        with pytest.raises(ValueError):
            cb.recv_timeout(-5)
        # several threads blocked forever; another thread closes: all wake, none hang
        outcomes: list[str] = []

        def waiter() -> None:
            try:
                cb.recv_timeout(-1)
                outcomes.append("message")
            except ConnectionClosed:
                outcomes.append("closed")

        threads = [threading.Thread(target=waiter) for _ in range(4)]
        for th in threads:
            th.start()
        time.sleep(0.2)  # lets the threads block first (if one has not, it sees "closed" too)
        closer = threading.Thread(target=cb.close)
        closer.start()
        for th in [*threads, closer]:
            th.join(5)
            assert not th.is_alive()
        assert outcomes == ["closed"] * 4
        with pytest.raises(ConnectionClosed):
            cb.recv_timeout(-1)


def test_blocking_node_close_wakes_blocked_receiver(dht_cluster_sync) -> None:
    a_dht, b_dht = dht_cluster_sync
    a = BlockingNode(config_for(a_dht))
    b = BlockingNode(config_for(b_dht))
    try:
        a.connect(b.fingerprint)
        cb = b.accept(timeout=10)
        assert cb is not None
        result: list[object] = []
        th = threading.Thread(target=lambda: result.append(_recv_or_closed(cb)))
        th.start()
        time.sleep(0.2)  # lets the threads block first (if one has not, it sees "closed" too)
        b.close()  # shutdown of the whole node during a blocking recv_timeout(-1)
        th.join(5)
        assert not th.is_alive() and result == ["closed"]
    finally:
        a.close()
        b.close()


def _recv_or_closed(conn) -> str:
    try:
        conn.recv_timeout(-1)
        return "message"
    except ConnectionClosed:
        return "closed"




async def test_tampered_certificate_fingerprint_fails_handshake(dht_cluster, monkeypatch) -> None:
    a, b = await pair(dht_cluster)
    a.config.handshake_timeout = b.config.handshake_timeout = 3.0
    real = a.endpoint.describe

    def forged(ice, purpose="app", quic_flight=()):
        p = real(ice, purpose, quic_flight)
        return SessionDescription(
            p.ufrag, p.pwd, p.candidates, bytes(32), p.purpose, quic_flight=p.quic_flight
        )

    monkeypatch.setattr(a.endpoint, "describe", forged)
    async with a, b:
        # As in TLS 1.3, the dialer's handshake completes once it has verified the callee;
        # the callee's verdict on the dialer's certificate arrives a round trip later. So
        # the dial fails, or the connection it returned closes with the callee's reason
        # before anything is acknowledged.
        try:
            conn = await a.connect(b.fingerprint)
        except HandshakeFailed as exc:
            assert "certificate" in str(exc)
        else:
            with pytest.raises(ConnectionClosed, match="certificate rejected by the other side"):
                await conn.send(b"never acknowledged")
            await conn.close()
        assert await b.accept(timeout=4) is None
        assert not b.connections
        await eventually(lambda: not a.connections, what="the rejected connection closed")


async def test_secure_and_raw_peers_refuse_each_other(dht_cluster) -> None:
    a = Node(config_for(dht_cluster[0], secure=True, handshake_timeout=2.0))
    b = Node(config_for(dht_cluster[1], secure=False))
    async with b, a:
        with pytest.raises(HandshakeFailed, match=r"no certificate|secure"):
            await a.connect(b.fingerprint)


def test_blocking_datagrams(dht_cluster_sync) -> None:
    with blocking_pair(dht_cluster_sync) as (ca, cb):
        assert isinstance(ca.send(b"reliable"), int)
        assert cb.recv_timeout(5000) == b"reliable"
        ca.send_datagram(b"datagram")
        assert cb.recv_datagram_timeout(5000) == b"datagram"
        assert cb.recv_datagram_timeout(0) is None


async def test_public_node_republishes_when_its_addresses_change(dht_cluster) -> None:
    async with (
        Node(config_for(dht_cluster[0], mode="public", address_check_interval=0.2)) as p,
        Node(config_for(dht_cluster[1])) as q,
    ):
        assert [c.host for c in (await q.lookup(p.fingerprint)).candidates] == ["127.0.0.1"]
        p.config.host_addresses = ["127.0.0.1", "127.0.0.2"]
        p.ice_settings = p.config.ice_settings()

        async def hosts() -> list[str]:
            return sorted(c.host for c in (await q.lookup(p.fingerprint)).candidates)

        async def both() -> bool:
            return await hosts() == ["127.0.0.1", "127.0.0.2"]

        await eventually(both, 10, "the record listing both addresses", interval=0.1)


async def test_port_range_is_used_for_connections(dht_cluster) -> None:
    a = Node(config_for(dht_cluster[0], port_range=(42000, 42020)))
    b = Node(config_for(dht_cluster[1], port_range=(42000, 42020)))
    async with b, a:
        ca, cb = await dial(a, b)
        for conn in (ca, cb):
            assert 42000 <= conn.selected_pair["local"]["port"] <= 42020
        await ca.send(b"in range")
        assert await cb.recv(5) == b"in range"
