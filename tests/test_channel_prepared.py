"""PreparedChannel: QUIC handshake flights prepared, and carried in the signaling, before ICE
connects."""

from __future__ import annotations

import asyncio

import pytest

from tests.channel_bindings import BINDING
from tests.ice_pairs import connect_ice
from tests.waiting import eventually
from tierlink.errors import HandshakeFailed
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel import (
    DEFAULT_WINDOW,
    ChannelSettings,
    PreparedChannel,
    open_channel,
)


@pytest.mark.parametrize("stale", [False, True])
async def test_draft_prepared_before_ice_opens_a_working_channel(stale: bool) -> None:
    ca, cb = LocalCertificate.generate(), LocalCertificate.generate()
    liveness = 0.5 if stale else 15.0
    settings = ChannelSettings(liveness_timeout=liveness)
    draft = PreparedChannel(certificate=ca, settings=settings)  # before any ICE
    a, b = await connect_ice()
    try:
        if stale:  # rebuilt at open
            await eventually(lambda: not draft.fresh, what="the draft going stale")
        else:
            assert draft.fresh
        dialer, callee = await asyncio.gather(
            draft.open(a, cb.sha256, BINDING),
            open_channel(b, binding=BINDING, is_client=False,
                         certificate=cb, peer_cert_sha256=ca.sha256),
        )
        assert await dialer.send(b"prepared") == 1
        assert await callee.recv(5) == b"prepared"
        await dialer.close()
        await callee.close()
        with pytest.raises(RuntimeError, match="one channel"):
            await draft.open(a, cb.sha256, BINDING)
    finally:
        await a.close()
        await b.close()


async def test_draft_still_enforces_the_pin_given_at_open() -> None:
    """The pin is set after the ClientHello was built: a wrong callee is still refused."""
    ca, cb, impostor = (LocalCertificate.generate() for _ in range(3))
    draft = PreparedChannel(certificate=ca)
    a, b = await connect_ice()
    try:
        results = await asyncio.gather(
            draft.open(a, cb.sha256, BINDING),
            open_channel(b, binding=BINDING, is_client=False,
                         certificate=impostor, peer_cert_sha256=ca.sha256),
            return_exceptions=True,
        )
        assert all(isinstance(r, HandshakeFailed) for r in results), results
        assert impostor.sha256.hex() in str(results[0]) and "does not match" in str(results[0])
    finally:
        await a.close()
        await b.close()


LIMITS = (16 * 1024 * 1024, DEFAULT_WINDOW)
SIGNALING_DELAY = 0.3  # seconds a flight spends in the DHT, far above a loopback RTT


async def test_flights_ahead_of_the_path_open_the_dialer_without_a_round_trip() -> None:
    """ClientHello and the server's reply travel outside the path (as in an offer and
    its answer): the dialer's channel is open before the callee's side even exists, and
    the signaling's delay does not end up in either side's RTT estimate."""
    ca, cb = LocalCertificate.generate(), LocalCertificate.generate()
    client = PreparedChannel(certificate=ca)
    flight = client.first_flight()
    assert flight and all(0 < len(d) <= 1500 for d in flight)
    assert client.first_flight() == flight  # packetized once
    server = PreparedChannel(certificate=cb, is_client=False)
    await asyncio.sleep(SIGNALING_DELAY)
    assert server.receive_first_flight(flight, ca.sha256, BINDING)
    reply = server.reply()
    await asyncio.sleep(SIGNALING_DELAY)
    client.receive_reply(reply, cb.sha256)
    a, b = await connect_ice()
    try:
        dialer = await client.open(a, cb.sha256, BINDING, LIMITS)  # no callee on the path yet
        sent = asyncio.ensure_future(dialer.send(b"first"))  # with the client's Finished
        callee = await server.open(b, ca.sha256, BINDING, LIMITS)
        assert await callee.recv(5) == b"first"
        assert await asyncio.wait_for(sent, 5) == 1
        for _ in range(3):
            assert await callee.send(b"back") and await dialer.recv(5) == b"back"
        for side in (dialer, callee):
            assert 0 < side.smoothed_rtt < SIGNALING_DELAY / 2, side.smoothed_rtt
        await dialer.close()
        await callee.close()
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("flight", [(), (b"not quic",), (b"\xc0" + bytes(40),)])
async def test_callee_that_cannot_use_the_flight_still_connects(flight) -> None:
    """No reply in the answer: the dialer sends its first flight on the path at open
    (before anything else, rather than at a retransmission timeout)."""
    ca, cb = LocalCertificate.generate(), LocalCertificate.generate()
    client = PreparedChannel(certificate=ca)
    early = client.first_flight()  # went out in the offer; the answer brings no reply
    server = PreparedChannel(certificate=cb, is_client=False)
    assert not server.receive_first_flight(flight, ca.sha256, BINDING)
    a, b = await connect_ice()
    sent: list[bytes] = []
    send_nowait = a.send_nowait

    def record(data: bytes) -> None:
        sent.append(bytes(data))
        send_nowait(data)

    a.send_nowait = record  # type: ignore[method-assign]
    try:
        dialer, callee = await asyncio.gather(
            client.open(a, cb.sha256, BINDING),
            open_channel(b, binding=BINDING, is_client=False,
                         certificate=cb, peer_cert_sha256=ca.sha256),
        )
        assert tuple(sent[: len(early)]) == early
        assert await dialer.send(b"on the path") == 1
        assert await callee.recv(5) == b"on the path"
        await dialer.close()
        await callee.close()
    finally:
        await a.close()
        await b.close()


async def test_reply_from_the_wrong_certificate_fails_the_dial() -> None:
    ca, cb, impostor = (LocalCertificate.generate() for _ in range(3))
    client = PreparedChannel(certificate=ca)
    server = PreparedChannel(certificate=impostor, is_client=False)
    assert server.receive_first_flight(client.first_flight(), ca.sha256, BINDING)
    client.receive_reply(server.reply(), cb.sha256)
    a, b = await connect_ice()
    try:
        with pytest.raises(HandshakeFailed, match="does not match"):
            await client.open(a, cb.sha256, BINDING, LIMITS)
    finally:
        await a.close()
        await b.close()
