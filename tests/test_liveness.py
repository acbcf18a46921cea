"""Keep-alive and watchdog: the idle cost of a connection (checks per minute, one shared loop
timer, no ICE consent checks under a secure channel) without loosening the watchdog."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.channel_bindings import BINDING
from tests.ice_pairs import IcePair, connect_ice
from tierlink.transport.aioice_consent import consent_checks_running
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel import ChannelSettings, SecureChannel, open_channel
from tierlink.transport.connection import Connection
from tierlink.transport.liveness import Liveness, wheel_of

TIMEOUT = 15.0
INTERVAL = TIMEOUT / 3


class Recorder:
    """A Liveness's callbacks, recorded."""

    def __init__(self) -> None:
        self.pings = 0
        self.expired: list[str] = []

    def ping(self, n: int) -> None:
        self.pings += 1

    def expire(self, reason: str) -> None:
        self.expired.append(reason)


async def started(is_client: bool) -> tuple[Liveness, Recorder, float]:
    """A started Liveness (its ticks are driven by the test with made-up times, all before
    the wheel's own first check), its recorder and its start time."""
    rec = Recorder()
    live = Liveness(TIMEOUT, is_client=is_client, ping=rec.ping, expire=rec.expire)
    live.start()
    return live, rec, asyncio.get_running_loop().time()


def run_minute(live: Liveness, t0: float, peer_pings: bool) -> int:
    """Drive ``live`` through one idle minute: each check at the time it asked for; the peer
    answers every ping at once (client), or pings every interval itself (server). Returns
    the number of checks (loop wake-ups the connection needed)."""
    assert live.due is not None
    when, checks, next_peer_ping = live.due, 0, t0 + INTERVAL
    while when < t0 + 60.0:
        while peer_pings and next_peer_ping <= when:
            live.heard(next_peer_ping)
            next_peer_ping += INTERVAL
        before = live.keepalives_sent
        nxt = live.tick(when)
        checks += 1
        if live.keepalives_sent > before:
            live.heard(when + 0.001)  # the ACK
        assert nxt is not None and nxt > when
        when = nxt
    return checks


async def test_an_idle_client_checks_and_pings_once_per_interval() -> None:
    live, rec, t0 = await started(is_client=True)
    try:
        checks = run_minute(live, t0, peer_pings=False)
        assert 12 <= checks <= 13  # 60 s / 5 s, checks come early on the grid, never late
        assert rec.pings == checks and not rec.expired
    finally:
        live.release()


async def test_an_idle_server_checks_once_per_interval_and_never_pings() -> None:
    live, rec, t0 = await started(is_client=False)
    try:
        checks = run_minute(live, t0, peer_pings=True)
        assert checks <= 13
        assert rec.pings == 0 and not rec.expired
    finally:
        live.release()


@pytest.mark.parametrize("is_client", [True, False])
async def test_the_watchdog_fires_exactly_at_the_timeout(is_client: bool) -> None:
    """Checks on the keep-alive grid come early; the watchdog's deadline is never late."""
    live, rec, t0 = await started(is_client)
    try:
        heard = t0 + 1.0
        live.heard(heard)
        when = t0
        while True:  # the peer is silent from now on: follow the checks asked for
            nxt = live.tick(when)
            if nxt is None:
                break
            assert nxt <= heard + TIMEOUT
            when = nxt
        assert when == heard + TIMEOUT
        assert rec.expired and "liveness timeout" in rec.expired[0]
        assert rec.pings >= 2  # the quiet path was pinged before it was declared dead
    finally:
        live.release()


async def test_checks_in_one_slot_share_one_time() -> None:
    """Two connections whose checks fall within one slot of the grid are checked together
    from then on (one loop wake-up for both)."""
    a, _, t0 = await started(is_client=True)
    b, _, _ = await started(is_client=True)
    try:
        base = float(int(t0)) + 2 * INTERVAL  # a whole second, after both first checks
        assert a.tick(base + 0.1) == b.tick(base + 0.7)
    finally:
        a.release()
        b.release()


# -- on real channels --------------------------------------------------------------------------
@pytest.fixture
async def ices() -> AsyncIterator[list[IcePair]]:
    pairs = [await connect_ice() for _ in range(3)]
    try:
        yield pairs
    finally:
        for a, b in pairs:
            await a.close()
            await b.close()


async def open_pair(ice: IcePair) -> tuple[SecureChannel, SecureChannel]:
    ca, cb = LocalCertificate.generate(), LocalCertificate.generate()
    return await asyncio.gather(
        open_channel(ice[0], binding=BINDING, is_client=True, certificate=ca,
                     peer_cert_sha256=cb.sha256, settings=ChannelSettings()),
        open_channel(ice[1], binding=BINDING, is_client=False, certificate=cb,
                     peer_cert_sha256=ca.sha256, settings=ChannelSettings()),
    )


async def test_idle_channels_share_one_loop_timer_and_send_no_consent_checks(
    ices: list[IcePair],
) -> None:
    wheel = wheel_of(asyncio.get_running_loop())
    watched = wheel.watched
    for ice in ices:
        assert consent_checks_running(ice[0]) and consent_checks_running(ice[1])
    channels = [ch for ice in ices for ch in await open_pair(ice)]
    assert wheel.watched == watched + 6
    assert wheel.timer_armed  # one loop timer for all six
    for ice in ices:  # the channels' watchdogs replaced ICE's consent checks
        assert not consent_checks_running(ice[0]) and not consent_checks_running(ice[1])
    for ch in channels:
        await ch.close()
    assert wheel.watched == watched
    assert all(ch.armed_timers == 0 for ch in channels)


async def test_a_raw_connection_keeps_its_consent_checks(ices: list[IcePair]) -> None:
    a, b = ices[0]
    conns = [Connection(ice, "peer", initiator=ice is a, session_id=b"s" * 16, connect_ms=0.0)
             for ice in (a, b)]
    try:
        assert consent_checks_running(a) and consent_checks_running(b)
    finally:
        for conn in conns:
            await conn.close()
