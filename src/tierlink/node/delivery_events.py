"""What became of sent messages: acknowledgements as events, and waits for one message.

A message is *delivered* once its recipient acknowledged it (by any tier) and *settled* once
it is delivered or handed to a tier that keeps it without us (queued in the DHT, deposited
with a mailbox). The outbox holds the state; :class:`DeliveryEvents` wakes those waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tierlink.offline.outbox import DELIVERED, PENDING, QUEUED_DHT, Outbox
from tierlink.wire.records import now_ms

#: Deliveries kept for :meth:`DeliveryEvents.deliveries` until read; more are dropped.
DELIVERIES_BACKLOG = 1024


@dataclass(frozen=True)
class Delivery:
    """The recipient acknowledged a message: when and through which tier."""

    message_id: bytes
    recipient: str
    tier: str
    delivered_at_ms: int


class DeliveryEvents:
    """Delivery and settlement notices of one outbox's messages."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._loop = asyncio.get_running_loop()
        self._delivery_waiters: dict[bytes, list[asyncio.Future[Delivery]]] = {}
        # Waiters for "delivered or queued in the DHT", whichever comes first.
        self._settled_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._deliveries: asyncio.Queue[Delivery] = asyncio.Queue(DELIVERIES_BACKLOG)

    def delivered(self, mid: bytes, recipient: str, tier: str) -> None:
        """``recipient`` acknowledged ``mid`` through ``tier`` (the outbox says so already)."""
        d = Delivery(mid, recipient, tier, now_ms())
        with contextlib.suppress(asyncio.QueueFull):
            self._deliveries.put_nowait(d)
        for fut in self._delivery_waiters.pop(mid, []):
            if not fut.done():
                fut.set_result(d)
        self.settled(mid)

    def settled(self, mid: bytes) -> None:
        """``mid`` is delivered or kept by a tier that needs us no more."""
        for fut in self._settled_waiters.pop(mid, []):
            if not fut.done():
                fut.set_result(None)

    async def wait_delivered(self, mid: bytes, timeout: float | None = None) -> Delivery | None:
        """The delivery of ``mid`` once acknowledged; None after ``timeout`` seconds."""
        entry = self.outbox.get(mid)
        if entry is None:
            raise KeyError(f"no message {mid.hex()} in the outbox")
        if entry.state == DELIVERED:
            return Delivery(mid, entry.recipient, entry.tier or "?", entry.delivered_ms or 0)
        fut: asyncio.Future[Delivery] = self._loop.create_future()
        self._delivery_waiters.setdefault(mid, []).append(fut)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return None
        finally:
            waiters = self._delivery_waiters.get(mid)
            if waiters and fut in waiters:
                waiters.remove(fut)

    async def wait_settled(self, mid: bytes, timeout: float | None = None) -> str:
        """Wait until ``mid`` is delivered or queued: "delivered", "queued" (in the DHT),
        "in_mailbox" or (after ``timeout``) the outbox state, e.g. "pending"."""
        entry = self.outbox.get(mid)
        if entry is None:
            raise KeyError(f"no message {mid.hex()} in the outbox")
        if entry.state != PENDING:
            return "queued" if entry.state == QUEUED_DHT else entry.state
        settled: asyncio.Future[None] = self._loop.create_future()
        self._settled_waiters.setdefault(mid, []).append(settled)
        try:
            async with asyncio.timeout(timeout):
                await settled
        except TimeoutError:
            pass
        finally:
            waiters = self._settled_waiters.get(mid)
            if waiters and settled in waiters:
                waiters.remove(settled)
        entry = self.outbox.get(mid)
        state = entry.state if entry is not None else "unknown"
        return "queued" if state == QUEUED_DHT else state

    async def deliveries(self) -> AsyncIterator[Delivery]:
        """Every acknowledgement, as it arrives."""
        while True:
            yield await self._deliveries.get()
