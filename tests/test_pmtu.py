"""Path MTU probing: the prober's logic (sans-IO) and its effect on a real loopback channel."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.ice_pairs import connect_ice
from tests.test_channel import open_pair
from tests.waiting import eventually
from tierlink.protocol.pmtu import (
    DEFAULT_SIZES,
    NONCE_SIZE,
    PROBE,
    PROBE_ACK,
    PathMtuProber,
    answer,
    is_probe_traffic,
)
from tierlink.transport.aioquic_adapter import MAX_PACKET_SIZE
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.quic_setup import MAX_DATAGRAM_SIZE


def test_probes_have_their_size_and_are_not_quic_or_stun() -> None:
    prober = PathMtuProber(1200)
    probes = prober.start(now=0.0)
    assert sorted(len(p) for p in probes) == sorted(DEFAULT_SIZES)
    for probe in probes:
        assert probe[0] == PROBE and is_probe_traffic(probe)
        assert not probe[0] & 0x40  # QUIC sets the fixed bit in every packet
        assert probe[0] > 3  # STUN messages start with 0-3
    assert not is_probe_traffic(b"\x40quic") and not is_probe_traffic(b"")


def test_largest_acknowledged_size_wins_and_probing_stops() -> None:
    prober = PathMtuProber(1200)
    probes = {len(p): p for p in prober.start(now=0.0)}
    small = answer(probes[1452])
    assert small is not None and small[0] == PROBE_ACK
    assert prober.on_ack(small) == 1452 and prober.size == 1452
    assert not prober.done  # larger sizes still unanswered
    big = answer(probes[MAX_PACKET_SIZE])
    assert big is not None
    assert prober.on_ack(big) == MAX_PACKET_SIZE
    assert prober.done and prober.timer is None
    assert prober.on_ack(big) is None  # each nonce counts once
    # A late answer for a smaller size never shrinks the size.
    mid = answer(probes[8952])
    assert mid is not None and prober.on_ack(mid) is None and prober.size == MAX_PACKET_SIZE


def test_forged_truncated_and_stale_acks_are_ignored() -> None:
    prober = PathMtuProber(1200, attempts=2, interval=0.5)
    probes = {len(p): p for p in prober.start(now=0.0)}
    forged = bytes((PROBE_ACK,)) + bytes(NONCE_SIZE) + (8952).to_bytes(4, "big")
    assert prober.on_ack(forged) is None
    truncated = answer(probes[8952][:3000])  # the peer saw only part of it
    assert truncated is not None and prober.on_ack(truncated) is None
    assert prober.size == 1200
    again = prober.on_timer(now=0.6)  # second round: fresh nonces
    assert len(again) == len(DEFAULT_SIZES)
    stale = answer(probes[1452])
    assert stale is not None and prober.on_ack(stale) is None
    assert prober.on_timer(now=1.2) == [] and prober.done and prober.timer is None
    assert prober.size == 1200  # nothing confirmed: stays at the base


def test_answer_only_answers_probes() -> None:
    assert answer(b"\x40" * 100) is None
    assert answer(bytes((PROBE,))) is None  # too short to carry a nonce
    with pytest.raises(ValueError):
        PathMtuProber(1200, attempts=0)


async def _channel_packet_sizes(probe: bool) -> tuple[int, int, int]:
    certs = (LocalCertificate.generate(), LocalCertificate.generate())
    ice = await connect_ice()
    a, b = await open_pair(ice, certs, probe_path_mtu=probe)
    try:
        if probe:  # one round trip answers every probe on loopback
            await eventually(lambda: a.max_packet_size == b.max_packet_size == MAX_PACKET_SIZE,
                             what="probed packet sizes")
        payload = bytes(range(256)) * 200  # 51 200 bytes
        send = asyncio.ensure_future(a.send(payload))
        assert await b.recv(10.0) == payload
        await send
        assert a.path_probing == b.path_probing == probe
        sock = ice[0].nominated_socket()
        assert sock is not None
        df = sock.getsockopt(socket.IPPROTO_IP, 10)  # IP_MTU_DISCOVER
        return a.max_packet_size, b.max_packet_size, df
    finally:
        await a.close()
        await b.close()
        await ice[0].close()
        await ice[1].close()


async def test_loopback_channel_raises_its_packet_size() -> None:
    a_size, b_size, df = await _channel_packet_sizes(probe=True)
    print(f"probed packet sizes on loopback: {a_size}, {b_size}")
    assert a_size == b_size == MAX_PACKET_SIZE  # loopback carries 65 535-byte datagrams
    assert df == 3  # IP_PMTUDISC_PROBE: don't fragment


async def test_probing_off_keeps_1200_byte_packets() -> None:
    a_size, b_size, df = await _channel_packet_sizes(probe=False)
    assert a_size == b_size == MAX_DATAGRAM_SIZE
    assert df != 3


async def test_packet_size_cap_applies_and_lifts() -> None:
    certs = (LocalCertificate.generate(), LocalCertificate.generate())
    ice = await connect_ice()
    a, b = await open_pair(ice, certs)
    try:
        await eventually(lambda: a.max_packet_size == MAX_PACKET_SIZE, what="the probed size")
        a.limit_packet_size(1452)
        assert a.max_packet_size == 1452
        payload = bytes(100_000)
        send = asyncio.ensure_future(a.send(payload))
        assert await b.recv(10.0) == payload
        await send
        a.limit_packet_size(None)
        assert a.max_packet_size == MAX_PACKET_SIZE
        with pytest.raises(ValueError):
            a.limit_packet_size(1000)
        await b.close()  # the peer closes: the size in use is still reported afterwards
        await eventually(lambda: a.closed, what="the peer's close")
        assert a.max_packet_size == MAX_PACKET_SIZE
    finally:
        await a.close()
        await b.close()
        await ice[0].close()
        await ice[1].close()
