"""A secure channel moved to a new ICE pair under the same QUIC connection (no DHT, no
node): what depends on the path starts over, messages go on, and a path that stops
answering is reported."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.channel_bindings import BINDING
from tests.ice_pairs import connect_ice
from tests.waiting import eventually
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.channel import ChannelSettings, SecureChannel, open_channel
from tierlink.transport.channel_settings import DEFAULT_WINDOW


async def _channels(ice: Any) -> tuple[SecureChannel, SecureChannel]:
    ca, cb = LocalCertificate.generate(), LocalCertificate.generate()
    settings = ChannelSettings()
    return await asyncio.gather(
        open_channel(ice[0], binding=BINDING, is_client=True, certificate=ca,
                     peer_cert_sha256=cb.sha256, settings=settings),
        open_channel(ice[1], binding=BINDING, is_client=False, certificate=cb,
                     peer_cert_sha256=ca.sha256, settings=settings),
    )


async def test_switching_paths_resets_size_and_rtt_and_keeps_every_message() -> None:
    old = await connect_ice()
    new = await connect_ice()
    dialer, callee = await _channels(old)
    try:
        for i in range(50):
            dialer.submit(b"before %d" % i)
        await eventually(lambda: dialer.max_packet_size > 1200, 20, "probed larger packets")
        await eventually(lambda: dialer.smoothed_rtt > 0, 20, "an RTT sample")
        unacked = [dialer.submit(b"x" * 3000) for _ in range(20)]  # some still in flight
        dialer.switch_path(new[0])
        assert dialer.max_packet_size == 1200 and dialer.smoothed_rtt == 0.0
        callee.switch_path(new[1])
        assert callee.max_packet_size == 1200
        got = [await callee.recv(10) for _ in range(70)]
        assert got == [b"before %d" % i for i in range(50)] + [b"x" * 3000] * 20
        await asyncio.wait_for(asyncio.gather(*unacked), 10)
        await dialer.send(b"after")
        assert await callee.recv(10) == b"after"
        assert dialer.window == DEFAULT_WINDOW and not dialer.closed
        await eventually(lambda: dialer.max_packet_size > 1200, 20, "the new path probed")
    finally:
        await dialer.close()
        await callee.close()
        for ice in (*old, *new):
            await ice.close()


async def test_unanswered_packets_make_the_path_suspect() -> None:
    ice = await connect_ice()
    elsewhere = await connect_ice()
    dialer, callee = await _channels(ice)
    suspects: list[str] = []
    dialer.watch_path(suspects.append)
    try:
        await dialer.send(b"answered")
        assert await callee.recv(10) == b"answered"
        assert suspects == []
        callee.switch_path(elsewhere[1])  # the callee stops hearing the dialer's path
        dialer.submit(b"never acknowledged")
        await eventually(lambda: suspects, 20, "the path declared suspect")
        assert set(suspects) == {"unanswered"}
    finally:
        await dialer.close()
        await callee.close()
        for side in (*ice, *elsewhere):
            await side.close()
