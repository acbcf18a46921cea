"""tierlink's I/O path on uvloop as on asyncio, over real ICE pairs on 127.0.0.1.

* aioquic's clock keeps sub-millisecond resolution. uvloop's ``loop.time()`` is libuv's
  millisecond clock: a pump that handed it to aioquic gave its pacer (which refills by the
  time elapsed since its last look) one refill per millisecond, one burst of at most 16
  packets per ms with the loop spinning in between. The real pump runs under each loop with
  a client connection that records every ``now`` it is given, and moves a stream.
* One batch of reads per loop pass. uvloop's transport hands over up to 32 datagrams per
  readiness; a batch read after each let one busy socket hold the loop for up to 32 x 64.
* ``keep_reading`` holds on uvloop too. asyncio's transport reads one datagram per loop
  pass; uvloop's reads on, up to 32 per readiness, and handed them all to the receive queue
  (16 deep, drop-oldest): a burst lost datagrams the application would have read.
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
from tierlink.transport.aioice_socket import RECV_BATCH
from tierlink.transport.aioquic_adapter import PinnedQuicConnection
from tierlink.transport.certs import LocalCertificate
from tierlink.transport.quic import QuicPump
from tierlink.transport.quic_clock import quic_clock
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


#: The receiving "application" asks to stop once this many datagrams wait for it.
KEEP = 8
BURST = 50


async def burst_through_ice() -> tuple[list[bytes], list[bytes], int, tuple[int, int]]:
    """Send BURST datagrams at once over an ICE pair to a handler whose application takes
    what waits once per loop pass; (sent, received, most waiting at once, read_ahead)."""
    a, b = await connect_ice()
    try:
        waiting: list[bytes] = []
        got: list[bytes] = []
        peak = 0

        def handler(data: bytes) -> None:
            nonlocal peak
            waiting.append(data)
            peak = max(peak, len(waiting))

        def application() -> bool:  # runs once per loop pass (eventually, interval 0)
            got.extend(waiting)
            waiting.clear()
            return len(got) >= BURST

        b.set_datagram_handler(handler, keep_reading=lambda: len(waiting) < KEEP)
        sent = [bytes([0x40]) + i.to_bytes(4, "big") for i in range(BURST)]
        for data in sent:  # all in b's socket before its loop reads any
            a.send_nowait(data)
        await eventually(application, 10.0, "every datagram handed over", interval=0)
        return sent, got, peak, b.read_ahead
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_keep_reading_stops_what_the_loop_hands_over_in_one_pass(loop: str) -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        sent, got, peak, (held, dropped) = runner.run(burst_through_ice())
    assert got == sent  # nothing lost, in order
    assert peak <= KEEP, f"{peak} datagrams handed over in one pass after keep_reading said stop"
    assert dropped == 0
    if loop == "asyncio":
        assert held == 0  # asyncio reads one per pass: nothing is read ahead
    else:
        assert held > 0  # uvloop read past keep_reading: held, not handed over


async def most_in_one_pass(count: int) -> tuple[int, int]:
    """Send ``count`` datagrams at once over an ICE pair (no keep_reading); the most the
    receiver's handler got in one loop pass, and how many it got in all."""
    a, b = await connect_ice()
    try:
        this_pass = most = total = 0

        def handler(data: bytes) -> None:
            nonlocal this_pass, most, total
            this_pass += 1
            total += 1
            most = max(most, this_pass)

        def next_pass() -> bool:  # runs once per loop pass (eventually, interval 0)
            nonlocal this_pass
            this_pass = 0
            return total >= count

        b.set_datagram_handler(handler)
        for i in range(count):  # all in b's socket before its loop reads any
            a.send_nowait(bytes([0x40]) + i.to_bytes(4, "big"))
        await eventually(next_pass, 10.0, "every datagram handed over", interval=0)
        return most, total
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_one_batch_of_reads_per_loop_pass(loop: str) -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        most, total = runner.run(most_in_one_pass(8 * RECV_BATCH))
    assert total == 8 * RECV_BATCH
    # asyncio: its one datagram and a batch; uvloop: its (up to 32) and one batch.
    assert most <= 2 * RECV_BATCH, f"{most} datagrams handled in one loop pass"
