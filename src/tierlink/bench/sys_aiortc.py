"""``aiortc_datachannel``: an aiortc RTCPeerConnection with two data channels.

* ``rel``: ordered, reliable (SCTP) - the reliable mode;
* ``dg``: unordered, ``maxRetransmits=0`` - the datagram mode.

Loopback only: ``RTCConfiguration(iceServers=[])`` (aiortc's default is a public STUN
server), and ``aioice.ice.get_host_addresses`` is replaced, in this worker process only, by
one that returns ``["127.0.0.1"]`` (aiortc gathers through aioice, which skips 127.0.0.1).
SDP offer and answer go over the parent's pipes after full (non-trickle) gathering.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aioice.ice

from tierlink.bench.base import BenchConn, BenchSide, Signal, now, recv_from_queue

SIGNAL_TIMEOUT = 20.0
CONNECT_TIMEOUT = 20.0
ACCEPT_TIMEOUT = 120.0
#: Flow control for the reliable channel: pause above HIGH buffered bytes, resume at LOW.
BUFFER_HIGH = 1 << 20
BUFFER_LOW = 256 << 10


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"]


def restrict_gathering_to_loopback() -> None:
    """Make every aioice Connection in this process gather on 127.0.0.1 only."""
    aioice.ice.get_host_addresses = _loopback_only


class RtcBenchConn(BenchConn):
    """The two channels of one peer connection, each feeding a queue."""

    def __init__(self, pc: Any) -> None:
        self.pc = pc
        self.rel: Any = None
        self.dg: Any = None
        self.rel_queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.dg_queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._low: asyncio.Event = asyncio.Event()

    def attach(self, channel: Any) -> None:
        """Route a channel's messages to its queue (call before it can receive)."""
        if channel.label == "rel":
            self.rel = channel
            channel.bufferedAmountLowThreshold = BUFFER_LOW
            channel.on("message", self.rel_queue.put_nowait)
            channel.on("bufferedamountlow", self._low.set)
        else:
            self.dg = channel
            channel.on("message", self.dg_queue.put_nowait)

    async def _room(self) -> None:
        while self.rel.bufferedAmount > BUFFER_HIGH:
            self._low.clear()
            await asyncio.wait_for(self._low.wait(), 30.0)

    async def send(self, data: bytes) -> None:
        await self._room()
        self.rel.send(data)

    def send_now(self, data: bytes) -> None:
        self.rel.send(data)  # queues in aiortc (bufferedAmount grows), never waits

    async def send_many(self, payload: bytes, count: int, deadline: float, window: int) -> int:
        sent = 0
        while sent < count and now() < deadline:
            if self.rel.bufferedAmount > BUFFER_HIGH:
                await self._room()
            self.rel.send(payload)
            sent += 1
        return sent

    async def recv(self, timeout: float) -> bytes:
        return await recv_from_queue(self.rel_queue, timeout)

    def send_datagram(self, data: bytes) -> None:
        self.dg.send(data)

    async def recv_datagram(self, timeout: float) -> bytes:
        return await recv_from_queue(self.dg_queue, timeout)

    def datagram_backlog(self) -> int:
        return int(self.dg.bufferedAmount)

    async def close(self) -> None:
        await self.pc.close()


async def _wait_open(channel: Any) -> None:
    if channel.readyState == "open":
        return
    opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_open() -> None:
        if not opened.done():
            opened.set_result(None)

    channel.on("open", on_open)
    await opened


class RtcSide(BenchSide):
    """aiortc offerer (dialer) or answerer (callee)."""

    def __init__(self, role: str, signal: Signal) -> None:
        super().__init__(role, signal)
        restrict_gathering_to_loopback()
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        self._config = RTCConfiguration
        self._pc_class = RTCPeerConnection
        self._desc_class = RTCSessionDescription

    def _new_pc(self) -> Any:
        return self._pc_class(configuration=self._config(iceServers=[]))

    async def dial(self) -> BenchConn:
        pc = self._new_pc()
        conn = RtcBenchConn(pc)
        conn.attach(pc.createDataChannel("rel", ordered=True))
        conn.attach(pc.createDataChannel("dg", ordered=False, maxRetransmits=0))
        await pc.setLocalDescription(await pc.createOffer())
        self.signal.send(
            "rtc-offer", {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        )
        answer = await self.signal.recv("rtc-answer", SIGNAL_TIMEOUT)
        await pc.setRemoteDescription(self._desc_class(sdp=answer["sdp"], type=answer["type"]))
        await asyncio.wait_for(
            asyncio.gather(_wait_open(conn.rel), _wait_open(conn.dg)), CONNECT_TIMEOUT
        )
        return conn

    async def accept(self) -> BenchConn:
        offer = await self.signal.recv("rtc-offer", ACCEPT_TIMEOUT)
        pc = self._new_pc()
        conn = RtcBenchConn(pc)
        both: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_channel(channel: Any) -> None:
            conn.attach(channel)
            if conn.rel is not None and conn.dg is not None and not both.done():
                both.set_result(None)

        pc.on("datachannel", on_channel)
        await pc.setRemoteDescription(self._desc_class(sdp=offer["sdp"], type=offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        self.signal.send(
            "rtc-answer", {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        )
        await asyncio.wait_for(both, CONNECT_TIMEOUT)
        return conn
