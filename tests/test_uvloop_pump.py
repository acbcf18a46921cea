"""The QUIC pump on uvloop as on asyncio: aioquic's clock keeps sub-millisecond resolution.

uvloop's ``loop.time()`` is libuv's millisecond clock. A pump that handed it to aioquic gave
its pacer (which refills by the time elapsed since its last look) one refill per millisecond:
one burst of at most 16 packets per ms, the loop spinning in between. These tests run the
real pump over a real ICE pair on 127.0.0.1 under each loop, with a client connection that
records every ``now`` the pump hands aioquic, and move a stream through it.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from tests.ice_pairs import connect_ice
from tests.waiting import eventually
from tierlink.protocol.channel_events import (
    HandshakeCompleted,
    StreamDataReceived,
    TransportEvent,
)
from tierlink.transport.aioquic_adapter import PinnedQuicConnection
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.quic import QuicPump, quic_clock
from tierlink.transport.quic_setup import QUIC_ADDR, quic_configuration

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
#: Bytes the client streams to the server (1200-byte packets: path MTU probing off).
STREAM_BYTES = 2 * 1024 * 1024
WRITE = 64 * 1024


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A new event loop of the named kind."""
    if name == "uvloop":
        factory: Callable[[], asyncio.AbstractEventLoop] = (
            importlib.import_module("uvloop").new_event_loop)
        return factory
    return asyncio.new_event_loop


LOOPS = [
    "asyncio",
    pytest.param("uvloop", marks=pytest.mark.skipif(
        not HAVE_UVLOOP, reason="uvloop is not installed (the test extra installs it)")),
]


class ClockSpy(PinnedQuicConnection):
    """A client connection recording every ``now`` it is given."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.nows: list[float] = []

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        self.nows.append(now)
        return super().datagrams_to_send(now=now)

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        self.nows.append(now)
        super().receive_datagram(data, addr, now=now)

    def handle_timer(self, now: float) -> None:
        self.nows.append(now)
        super().handle_timer(now=now)


class Collector:
    """A pump listener that opens the pump on the handshake and counts stream bytes."""

    def __init__(self) -> None:
        self.pump: QuicPump | None = None
        self.received = 0

    def transport_event(self, event: TransportEvent) -> None:
        self.transport_events([event])

    def transport_events(self, events: list[TransportEvent]) -> None:
        for event in events:
            if isinstance(event, HandshakeCompleted) and self.pump is not None:
                self.pump.mark_ready()
            elif isinstance(event, StreamDataReceived):
                self.received += len(event.data)

    def keep_reading(self) -> bool:
        return True

    def before_flush(self) -> None:
        pass


async def stream_through_pumps() -> tuple[list[float], int]:
    """Open a client and a server pump over an ICE pair, stream STREAM_BYTES from the
    client; the client's recorded clock readings and the bytes the server got."""
    a_cert, b_cert = LocalCertificate.generate(), LocalCertificate.generate()
    ice_a, ice_b = await connect_ice()
    listeners = (Collector(), Collector())
    pumps: list[QuicPump] = []
    try:
        client_config = quic_configuration(
            is_client=True, certificate=a_cert, liveness_timeout=10.0, window=1 << 20)
        spy = ClockSpy(configuration=client_config, expected_peer_sha256=b"")
        spy.connect(QUIC_ADDR, now=quic_clock())
        client = QuicPump(ice_a, listeners[0], config=client_config,
                          peer_cert_sha256=b_cert.sha256, liveness_timeout=10.0,
                          started=spy, probe_path_mtu=False)
        server = QuicPump(ice_b, listeners[1], config=quic_configuration(
            is_client=False, certificate=b_cert, liveness_timeout=10.0, window=1 << 20),
            peer_cert_sha256=a_cert.sha256, liveness_timeout=10.0, probe_path_mtu=False)
        pumps += [client, server]
        listeners[0].pump, listeners[1].pump = client, server
        await asyncio.gather(client.start(10.0), server.start(10.0))
        for offset in range(0, STREAM_BYTES, WRITE):
            client.write_stream(0, bytes(WRITE), end_stream=offset + WRITE >= STREAM_BYTES)
        await eventually(lambda: listeners[1].received >= STREAM_BYTES, 30.0,
                         "the server received the whole stream")
        return spy.nows, listeners[1].received
    finally:
        for pump in pumps:
            pump.close("test over")
        await ice_a.close()
        await ice_b.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_the_pump_gives_aioquic_a_sub_millisecond_clock(loop: str) -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        nows, received = runner.run(stream_through_pumps())
    assert received == STREAM_BYTES
    assert len(nows) > 100  # the stream took many pump passes
    assert all(b >= a for a, b in itertools.pairwise(nows)), "time went back"
    whole_ms = sum(abs(t * 1000 - round(t * 1000)) < 1e-6 for t in nows)
    # A millisecond clock makes every reading a whole millisecond; CLOCK_MONOTONIC at
    # nanosecond resolution almost never does.
    assert whole_ms < len(nows) // 10, f"{whole_ms} of {len(nows)} readings on whole ms"


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_uvloop_loop_time_is_the_millisecond_clock_the_pump_must_not_use() -> None:
    """The premise: on uvloop, ``loop.time()`` readings are whole milliseconds."""

    async def readings() -> list[float]:
        loop = asyncio.get_running_loop()
        out = []
        for _ in range(20):
            out.append(loop.time())
            await asyncio.sleep(0.0003)
        return out

    with asyncio.Runner(loop_factory=loop_factory("uvloop")) as runner:
        times = runner.run(readings())
    assert all(abs(t * 1000 - round(t * 1000)) < 1e-6 for t in times)
