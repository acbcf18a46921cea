"""Path migration end to end: two nodes on a loopback dhtnode, one side's path dies while
messages stream, the same Connection carries on over an ICE restart."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.nodes import config_for, dial
from tests.waiting import eventually
from tierlink.dht import DhtClient
from tierlink.errors import ConnectionClosed
from tierlink.identity import Identity
from tierlink.node import Node
from tierlink.transport.address_watch import address_usable, address_watch
from tierlink.transport.connection import Connection
from tierlink.wire.dhtkeys import offers_key
from tierlink.wire.signaling import (
    RESTART_OFFER,
    TO_CALLEE,
    OfferSecret,
    Restart,
    SessionDescription,
    encode_restart,
    is_restart,
)


def _sockets_bound_to(address: str, port: int) -> Iterator[socket.socket]:
    """Duplicates of this process's UDP sockets bound to ``(address, port)``."""
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fd = os.dup(int(name))
            try:
                sock = socket.socket(fileno=fd)
            except OSError:  # not a socket
                os.close(fd)
                continue
            if sock.type == socket.SOCK_DGRAM and sock.getsockname()[:2] == (address, port):
                yield sock
            else:
                sock.close()


def black_hole(conn: Connection) -> int:
    """Make ``conn``'s selected pair lose every packet, as a network that moved away would:
    its local socket only accepts datagrams from an address nobody sends from (the kernel
    drops the peer's) and can no longer send (EPIPE, which asyncio swallows). Returns the
    number of sockets changed."""
    local = conn.selected_pair["local"]
    changed = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
        hole.bind(("127.0.0.1", 0))
        for sock in _sockets_bound_to(str(local["address"]), int(local["port"])):
            with sock:
                sock.connect(hole.getsockname())
                sock.shutdown(socket.SHUT_WR)
                changed += 1
    return changed


async def _pair(dht_node: Any) -> tuple[Node, Node]:
    a, b = Node(config_for(dht_node)), Node(config_for(dht_node))
    await b.start()
    await a.start()
    return a, b


async def test_a_dead_path_moves_to_a_new_pair_and_no_message_is_lost_or_doubled(
    dht_node,
) -> None:
    a, b = await _pair(dht_node)
    async with a, b:
        ca, cb = await dial(a, b)
        events: list[dict[str, Any]] = []
        watched: list[dict[str, Any]] = []
        a.watch_paths(watched.append)
        ca.migration.listeners.append(events.append)
        b_events = cb.path_events()
        b_first = asyncio.ensure_future(anext(b_events))
        n, received, arrival = 400, [], []

        async def reader() -> None:
            while len(received) < n:
                msg = await cb.recv(30)
                if msg is None:
                    return
                received.append(int.from_bytes(msg[:4], "big"))
                arrival.append(time.monotonic())

        async def writer() -> None:
            for i in range(n):
                ca.submit(i.to_bytes(4, "big") + b"." * 200)
                await asyncio.sleep(0.005)

        reading = asyncio.create_task(reader())
        writing = asyncio.create_task(writer())
        await eventually(lambda: len(received) >= 100, 20, "the first 100 messages")
        old_pair = ca.selected_pair
        faulted = time.monotonic()
        assert black_hole(cb) == 2  # the socket and its batch reader's duplicate
        await eventually(lambda: ca.migration.changes >= 1, 30, "the dialer's path change")
        b_event = await asyncio.wait_for(b_first, 30)
        await asyncio.wait_for(writing, 30)
        await asyncio.wait_for(reading, 60)

        assert received == list(range(n)), "every message once, in order"
        assert not ca.closed and not cb.closed
        assert a.connections == (ca,) and b.connections == (cb,)
        event = events[0]
        assert event["event"] == "path" and event["change"] is True
        assert event["old_pair"] == old_pair and event["selected_pair"] == ca.selected_pair
        assert ca.selected_pair != old_pair
        assert b_event["old_pair"] != b_event["selected_pair"]
        assert [e for e in watched if e.get("change")] == events
        assert ca.migration.suspects["unanswered"] >= 1
        stats = a.stats()["path_migration"]
        assert stats["path_changes"] >= 1 and stats["restarts_succeeded"] >= 1  # type: ignore[index]
        assert stats["tier_changes"] == {"direct_to_direct": ca.migration.changes}  # type: ignore[index]
        assert b.stats()["path_migration"]["restarts_answered"] >= 1  # type: ignore[index]
        # and the connection still works both ways on the new path
        await cb.send(b"back")
        assert await ca.recv(10) == b"back"

        detected = ca.migration.last_suspect_at
        gaps = [t2 - t1 for t1, t2 in itertools.pairwise(arrival)]
        print(f"\nmigration: detection {(detected or 0) - faulted:.2f} s after the fault "
              f"(loop clock), restart {event['restart_ms']:.0f} ms after detection, "
              f"longest delivery gap {max(gaps):.2f} s, in flight {event['in_flight']} "
              f"packets, {event['old_pair']} -> {event['selected_pair']}")
        await b_events.aclose()


async def test_a_restart_on_a_healthy_path_keeps_the_connection(dht_node) -> None:
    a, b = await _pair(dht_node)
    async with a, b:
        ca, cb = await dial(a, b)
        cb.migration.suspect("address")  # the callee restarts this time
        await eventually(lambda: ca.migration.changes and cb.migration.changes, 30,
                         "both sides on the new path")
        for i in range(20):
            await ca.send(b"m%d" % i)
            assert await cb.recv(10) == b"m%d" % i
        assert cb.migration.stats()["restarts"]["started"] == 1
        assert ca.migration.stats()["restarts"]["answered"] == 1


async def test_an_offer_whose_answer_the_listen_never_brings_finds_it_in_the_dht(
    dht_node, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The offerer's offers listen is dead (as after its NAT lost the mapping of that
    long-lived connection): the restart still gets its answer by asking the DHT."""
    a, b = await _pair(dht_node)
    async with a, b:
        ca, cb = await dial(a, b)
        dropped: list[bytes] = []
        monkeypatch.setattr(a.endpoint.restarts, "receive", dropped.append)
        ca.migration.suspect("unanswered")
        await eventually(lambda: ca.migration.changes and cb.migration.changes, 30,
                         "both sides on the new path")
        assert dropped, "the listen did bring the answer, and it was dropped"
        assert a.stats()["path_migration"]["answers_polled"] == 1  # type: ignore[index]
        await ca.send(b"after")
        assert await cb.recv(10) == b"after"


async def test_a_replaced_agent_that_is_slow_to_close_does_not_hold_up_the_switch(
    dht_node, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old agent's close can hang (its TURN allocation is released from an address
    that is gone): the connection still reports the new path and the restart ends."""
    from tierlink.transport.aioice_adapter import IceConnection

    a, b = await _pair(dht_node)
    async with a, b:
        ca, cb = await dial(a, b)
        release = asyncio.Event()
        held: list[object] = []
        real_close = IceConnection.close

        async def slow_close(self: IceConnection) -> None:
            if not held:  # the first agent closed: the dialer's replaced one
                held.append(self)
                await release.wait()
            await real_close(self)

        monkeypatch.setattr(IceConnection, "close", slow_close)
        ca.migration.suspect("unanswered")
        try:
            await eventually(lambda: ca.migration.changes and cb.migration.changes, 30,
                             "both sides on the new path")
            await eventually(lambda: ca.migration.stats()["restarts"]["succeeded"] == 1, 10,
                             "the dialer's restart ended")
            assert held, "no agent was closed"
            await ca.send(b"after")
            assert await cb.recv(10) == b"after"
        finally:
            release.set()


async def test_when_both_sides_restart_at_once_the_dialers_restart_wins(dht_node) -> None:
    a, b = await _pair(dht_node)
    async with a, b:
        ca, cb = await dial(a, b)
        ca.migration.suspect("unanswered")
        cb.migration.suspect("unanswered")
        await eventually(lambda: ca.migration.changes and cb.migration.changes, 30,
                         "both sides on the new path")
        dialer, callee = ca.migration.stats(), cb.migration.stats()
        assert dialer["restarts"]["started"] == callee["restarts"]["started"] == 1
        assert dialer["restarts"]["succeeded"] == 1 and dialer["restarts"]["answered"] == 0
        assert callee["restarts"]["yielded"] == 1 and callee["restarts"]["answered"] == 1
        assert dialer["restarts_refused"] == {"conflict": 1}
        assert ca.migration.changes == cb.migration.changes == 1
        await ca.send(b"after")
        assert await cb.recv(10) == b"after"


def test_the_address_watch_reports_a_path_whose_address_is_gone() -> None:
    async def run() -> list[str]:
        watch = address_watch()
        gone: list[str] = []
        here = watch.watch(lambda: "127.0.0.1", lambda: gone.append("here"))
        away = watch.watch(lambda: "192.0.2.1", lambda: gone.append("away"))  # TEST-NET-1
        relayed = watch.watch(lambda: None, lambda: gone.append("relayed"))
        watch.check()
        for path in (here, away, relayed):
            watch.unwatch(path)
        assert not watch.listening
        return gone

    assert address_usable("127.0.0.1") and not address_usable("192.0.2.1")
    assert asyncio.run(run()) == ["away"]


async def test_without_a_new_path_the_connection_closes_at_the_liveness_timeout(
    dht_node,
) -> None:
    a = Node(config_for(dht_node, liveness_timeout=4.0))
    b = Node(config_for(dht_node, liveness_timeout=4.0))
    await b.start()
    await a.start()
    async with a, b:
        ca, cb = await dial(a, b)
        black_hole(cb)
        await dht_node.stop()  # no signaling either: no restart can be exchanged
        sending = ca.submit(b"never acknowledged")
        await eventually(lambda: ca.closed and cb.closed, 30, "both sides closed")
        assert ca.migration.stats()["restarts"]["started"] >= 1  # it was tried
        assert ca.migration.changes == cb.migration.changes == 0
        with pytest.raises(ConnectionClosed):
            await sending


async def _restart_values(spy: DhtClient, key: str, found: list[bytes]) -> None:
    async for value in spy.listen(key):
        if is_restart(value):
            found.append(value)


async def test_forged_and_replayed_restarts_are_refused_and_counted(dht_node) -> None:
    a, b = await _pair(dht_node)
    async with a, b, DhtClient(dht_node.proxy_url) as spy:
        seen: list[bytes] = []
        spying = asyncio.create_task(_restart_values(spy, offers_key(b.fingerprint), seen))
        ca, cb = await dial(a, b)
        ca.migration.suspect("address")  # a real restart, offered by A to B
        await eventually(lambda: cb.migration.changes == 1 and seen, 30, "the first restart")
        pair_after = cb.selected_pair

        def refused(reason: str) -> int:
            return int(b.stats()["path_migration"]["restarts_refused"].get(reason, 0))  # type: ignore[index]

        # 1. A's restart offer put again (the attacker saw it on the DHT): a replay.
        await spy.put(offers_key(b.fingerprint), seen[0])
        await eventually(lambda: refused("replay") == 1, 20, "the replay refused")

        # 2. A third identity sends a restart for this session (it knows the session id
        # and both fingerprints, not the session's secret): it opens for no session.
        mallory = Identity.generate()
        forged = OfferSecret(os.urandom(32), ca.session_id, a.fingerprint, b.fingerprint)
        description = SessionDescription("evil", "x" * 22, ())
        value = encode_restart(forged, TO_CALLEE, Restart(RESTART_OFFER, 99, description))
        await spy.put(offers_key(b.fingerprint), value)
        await eventually(lambda: refused("decrypt") == 1, 20, "the forged restart refused")
        assert mallory.fingerprint not in (a.fingerprint, b.fingerprint)

        # 3. The same restart replayed into a later session of the same pair.
        await ca.close()
        await eventually(lambda: not b.connections, 20, "B's side closed")
        ca2 = await a.connect(b.fingerprint)
        cb2 = await b.accept(timeout=10)
        assert cb2 is not None
        await spy.put(offers_key(b.fingerprint), seen[0])
        await eventually(lambda: refused("decrypt") == 2, 20, "the old session's restart")
        assert cb2.migration.changes == 0 and cb2.migration.stats()["restarts"]["answered"] == 0
        assert cb.selected_pair == pair_after
        await ca2.send(b"still fine")
        assert await cb2.recv(10) == b"still fine"
        spying.cancel()
