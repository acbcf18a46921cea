"""Raw ICE datagrams as a connection's transport (``secure=False``): :class:`RawDatagrams`.

Each message is one datagram on the nominated pair, with no encryption, acknowledgement or
framing; received ones wait in a drop-oldest queue.
"""

from __future__ import annotations

import asyncio

from tierlink.errors import ConnectionClosed, MessageTooLarge
from tierlink.transport.aioice_adapter import IceConnection
from tierlink.transport.ice import max_payload
from tierlink.transport.recv_queue import RecvQueue


class RawDatagrams:
    """Raw ICE datagrams as a transport: no encryption, no acknowledgement, drop-oldest.

    What raw mode promises: a datagram is delivered only if it came from the nominated
    pair's remote address to that pair's local socket (or TURN allocation); any other
    sender's datagrams are dropped and counted (``foreign_datagrams`` in the connection's
    stats). The connection stays open as long as ICE consent holds (RFC 7675 checks, every
    4-6 s, answered with the peer's ICE password); received datagrams never extend it.
    What it cannot promise: the source address is not authenticated. An attacker who can
    spoof the peer's address and port (on path, or off path where the network does not
    filter spoofed sources) can inject datagrams, and one on the path can read, drop and
    change them. Use the secure channel (the default) for anything that needs integrity.
    """

    def __init__(self, ice: IceConnection, queue_capacity: int) -> None:
        self._ice = ice
        self._queue: RecvQueue[bytes] = RecvQueue(queue_capacity)
        self._limit = max_payload(ice)
        self._closed = asyncio.get_running_loop().create_future()
        self._stats = {"datagrams_sent": 0, "bytes_sent": 0, "bytes_received": 0}
        ice.set_datagram_handler(self._on_datagram, keep_reading=self._keep_reading)

    def _keep_reading(self) -> bool:
        # Drop-oldest queue: the application gets the loop before it overflows.
        return len(self._queue) < self._queue.capacity

    def _on_datagram(self, data: bytes) -> None:
        self._stats["bytes_received"] += len(data)
        self._queue.offer(data)

    @property
    def closed(self) -> bool:
        return self._queue.closed

    @property
    def max_message_size(self) -> int:
        return self._limit

    @property
    def stats(self) -> dict[str, int]:
        return {
            **self._stats,
            "datagrams_received": self._queue.received,
            "datagrams_dropped": self._queue.dropped,
        }

    async def send(self, data: bytes) -> int:
        self.send_datagram(data)
        return self._stats["datagrams_sent"]

    def submit(self, data: bytes) -> asyncio.Future[int]:
        self.send_datagram(data)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.set_result(self._stats["datagrams_sent"])
        return fut

    def send_datagram(self, data: bytes) -> None:
        if self._queue.closed:
            raise ConnectionClosed("connection is closed")
        if len(data) > self._limit:
            raise MessageTooLarge(
                f"message of {len(data)} bytes exceeds the path's limit of "
                f"{self._limit} bytes per datagram"
            )
        try:
            self._ice.send_nowait(bytes(data))
        except ConnectionError as exc:
            raise ConnectionClosed(f"connection lost: {exc}") from None
        self._stats["datagrams_sent"] += 1
        self._stats["bytes_sent"] += len(data)

    async def recv(self, timeout: float | None = None) -> bytes | None:
        return await self._queue.get(timeout)

    recv_datagram = recv

    def fail(self, reason: str) -> None:
        """Close because the path died (ICE consent expired)."""
        self._queue.close(reason)
        if not self._closed.done():
            self._closed.set_result(None)

    async def close(self, reason: str | None = None) -> None:
        self._ice.set_datagram_handler(None)
        self.fail(reason or "connection closed locally")

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)
