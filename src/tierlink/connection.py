"""A connection to one peer over its ICE-selected path.

Messages here are ICE datagrams: 1 byte up to :attr:`Connection.max_payload` (65,507 on a
direct IPv4 path, 4 less through a TURN relay). The receive side is the seed's, done right:
a bounded drop-oldest queue (capacity 16 by default, drops counted), ``recv(timeout)`` without
polling, and ``close()`` that wakes every waiter and releases the ICE agent's sockets and tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from tierlink.errors import ConnectionClosed, MessageTooLarge
from tierlink.ice import describe_pair, max_payload
from tierlink.ice_compat import IceConnection
from tierlink.queue import DEFAULT_CAPACITY, RecvQueue


class Connection:
    """An established connection; created by :meth:`Node.connect` or :meth:`Node.incoming`."""

    def __init__(
        self,
        ice: IceConnection,
        remote_fingerprint: str,
        *,
        initiator: bool,
        session_id: bytes,
        connect_ms: float,
        queue_capacity: int = DEFAULT_CAPACITY,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self.remote_fingerprint = remote_fingerprint
        self.initiator = initiator
        self.session_id = session_id
        self.connect_ms = connect_ms
        self.selected_pair: dict[str, dict[str, Any]] = describe_pair(ice)
        self.max_payload = max_payload(ice)
        self.opened_at = time.time()
        self.sent = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._ice = ice
        self._queue: RecvQueue[bytes] = RecvQueue(queue_capacity)
        self._on_close = on_close
        self._closing: asyncio.Task[None] | None = None
        ice.set_datagram_handler(self._on_datagram)
        self._watch = asyncio.create_task(self._watch_ice(), name="tierlink-ice-watch")

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Connection {self.remote_fingerprint[:16]}… {state} {self.path_type}>"

    # -- state ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once closed by either side or by a failure."""
        return self._queue.closed

    @property
    def received(self) -> int:
        """Messages received (including those later dropped)."""
        return self._queue.received

    @property
    def dropped(self) -> int:
        """Messages dropped because the receive queue was full (oldest first)."""
        return self._queue.dropped

    @property
    def path_type(self) -> str:
        """``relay`` if either end of the selected pair is a TURN relay, else the local type."""
        if not self.selected_pair:
            return "none"
        types = {self.selected_pair["local"]["type"], self.selected_pair["remote"]["type"]}
        return "relay" if "relay" in types else str(self.selected_pair["local"]["type"])

    def stats(self) -> dict[str, Any]:
        """Counters and path facts, JSON-ready."""
        return {
            "remote": self.remote_fingerprint,
            "selected_pair": self.selected_pair,
            "connect_ms": round(self.connect_ms, 2),
            "sent": self.sent,
            "received": self.received,
            "dropped": self.dropped,
            "queued": len(self._queue),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "closed": self.closed,
        }

    # -- data ----------------------------------------------------------------------------
    def _on_datagram(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self._queue.offer(data)

    async def send(self, data: bytes) -> None:
        """Send one datagram (1 byte up to :attr:`max_payload`)."""
        if self.closed:
            raise ConnectionClosed("connection is closed")
        if not data:
            raise ValueError("cannot send an empty message")
        if len(data) > self.max_payload:
            raise MessageTooLarge(
                f"message of {len(data)} bytes exceeds the path's limit of "
                f"{self.max_payload} bytes per datagram"
            )
        try:
            self._ice.send_nowait(bytes(data))
        except ConnectionError as exc:
            raise ConnectionClosed(f"connection lost: {exc}") from None
        self.sent += 1
        self.bytes_sent += len(data)

    async def recv(self, timeout: float | None = None) -> bytes | None:
        """Next message: ``timeout=0`` at once, ``t`` up to t seconds, None forever.

        Returns None on timeout; raises :class:`ConnectionClosed` once closed and drained.
        """
        return await self._queue.get(timeout)

    # -- life ----------------------------------------------------------------------------
    async def _watch_ice(self) -> None:
        """Close when aioice reports the connection closed (consent freshness expired)."""
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                event = await self._ice.get_event()
                if event is None or type(event).__name__ == "ConnectionClosed":
                    break
            self._start_close("peer unreachable (ICE consent expired)")

    def _start_close(self, reason: str) -> asyncio.Task[None]:
        if self._closing is None:
            self._queue.close(reason)
            self._closing = asyncio.ensure_future(self._release())
        return self._closing

    async def _release(self) -> None:
        current = asyncio.current_task()
        if self._watch is not current and not self._watch.done():
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        self._ice.set_datagram_handler(None)
        await self._ice.close()
        if self._on_close is not None:
            self._on_close(self)

    async def close(self) -> None:
        """Close: every waiting receiver wakes with ConnectionClosed; sockets are released."""
        await asyncio.shield(self._start_close("connection closed locally"))
