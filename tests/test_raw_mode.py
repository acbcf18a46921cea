"""Attacks on a connection's socket from a spoofing sender on loopback.

A raw connection (``secure=False``) delivers only datagrams from the nominated pair's remote
address; a sender on another port (here: the same IP) is dropped and counted. A secure
connection's liveness is kept only by QUIC packets that decrypt: garbage arriving from the
peer's own address does not keep a silent peer alive.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.channel_bindings import BINDING
from tests.ice_pairs import IcePair, connect_ice
from tests.waiting import eventually
from tierlink.errors import ConnectionClosed
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel import ChannelSettings, open_channel
from tierlink.transport.connection import Connection

#: What the spoofer sends: application-looking bytes, and bytes aioice first parses as STUN.
SPOOFED = [b"\x40spoofed", b"\xffspoofed", b"\x00\x01not stun", os.urandom(300)]


@pytest.fixture(params=[True, False], ids=["batched", "one-per-pass"])
async def ice(request: pytest.FixtureRequest) -> AsyncIterator[IcePair]:
    a, b = await connect_ice(batch_receive=request.param)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def raw(ice: Any) -> Connection:
    return Connection(ice, "f" * 128, initiator=False, session_id=bytes(16), connect_ms=0.0)


def target(ice: Any) -> tuple[str, int]:
    """The local address of ``ice``'s nominated pair: where its peer sends."""
    pair = ice.selected_pair()
    assert pair is not None
    return pair[0].host, pair[0].port


@pytest.fixture
def spoofer() -> AsyncIterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock  # type: ignore[misc]
    finally:
        sock.close()


async def test_spoofed_datagrams_are_dropped_and_counted(
    ice: IcePair, spoofer: socket.socket
) -> None:
    a, b = raw(ice[0]), raw(ice[1])
    try:
        for data in SPOOFED * 5:
            spoofer.sendto(data, target(ice[1]))
        await eventually(lambda: b.stats()["foreign_datagrams"] == len(SPOOFED) * 5,
                         what="every spoofed datagram counted")
        await a.send(b"genuine")
        assert await b.recv(timeout=10) == b"genuine"
        assert b.received == 1 and b.stats()["foreign_datagrams"] == len(SPOOFED) * 5
        assert await b.recv(timeout=0) is None
    finally:
        await a.close()
        await b.close()


async def test_spoofed_datagrams_before_the_handler_are_not_handed_out(
    ice: IcePair, spoofer: socket.socket
) -> None:
    """Datagrams held between ICE completion and the connection's creation are checked
    too: the spoofer's are dropped, the peer's is delivered."""
    for data in SPOOFED:
        spoofer.sendto(data, target(ice[1]))
    ice[0].send_nowait(b"early genuine")
    await eventually(lambda: ice[1].foreign_datagrams == len(SPOOFED),
                     what="the spoofed datagrams counted")
    await eventually(lambda: ice[1].held_datagrams == 1, what="the genuine datagram held")
    b = raw(ice[1])
    try:
        assert await b.recv(timeout=10) == b"early genuine"
        assert b.received == 1
    finally:
        await b.close()


async def test_garbage_from_the_peers_address_does_not_keep_a_silent_peer_alive(
    ice: IcePair,
) -> None:
    """The peer stops sending QUIC but keeps sending garbage from its own address (as an
    attacker spoofing it would): the liveness watchdog still closes the channel."""
    certs = LocalCertificate.generate(), LocalCertificate.generate()
    settings = ChannelSettings(liveness_timeout=1.0)
    a, b = await asyncio.gather(
        open_channel(ice[0], binding=BINDING, is_client=True, certificate=certs[0],
                     peer_cert_sha256=certs[1].sha256, settings=settings),
        open_channel(ice[1], binding=BINDING, is_client=False, certificate=certs[1],
                     peer_cert_sha256=certs[0].sha256, settings=settings),
    )
    send = ice[1].send_nowait
    ice[1].send_nowait = lambda data: None  # type: ignore[method-assign]  # b falls silent

    async def garbage() -> None:
        for _ in range(400):  # bounded: 20 s at most
            send(b"\x40" + os.urandom(60))
            await asyncio.sleep(0.05)

    spraying = asyncio.create_task(garbage())
    try:
        with pytest.raises(ConnectionClosed, match="liveness timeout"):
            await asyncio.wait_for(a.recv(), 10.0)
    finally:
        spraying.cancel()
        await a.close()
        await b.close()
