"""The futures of a secure channel's reliable sends: :class:`SendFutures`.

A send's future waits under its backlog ticket while the window is full, under its message
id once its bytes are written, and gets that id once the peer's channel acknowledged it (or
ConnectionClosed, if the channel closes first).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from tierlink.errors import ConnectionClosed


class SendFutures:
    """The unfinished sends of one channel, by backlog ticket and by message id.

    It references neither the channel nor its protocol, so the protocol can hold
    :meth:`withdrawn` without a reference cycle.
    """

    def __init__(self) -> None:
        self.queued: dict[int, asyncio.Future[int]] = {}  # backlog ticket -> its send
        self.in_flight: dict[int, asyncio.Future[int]] = {}  # message id -> its send

    def withdrawn(self, ticket: int) -> bool:
        """The protocol's question when a backlogged send's turn comes: True (and
        forgotten) when the application cancelled its future."""
        fut = self.queued.get(ticket)
        if fut is None or not fut.cancelled():
            return False
        del self.queued[ticket]
        return True

    def forget(self, fut: asyncio.Future[int]) -> int | None:
        """Forget ``fut`` if it still waits for the window: its ticket, else None."""
        for ticket, queued in self.queued.items():
            if queued is fut:
                del self.queued[ticket]
                return ticket
        return None

    def written(self, first_id: int, tickets: Iterable[int]) -> None:
        """Backlogged sends went out, in order, as messages ``first_id``, ``first_id + 1``..."""
        queued, in_flight = self.queued, self.in_flight
        mid = first_id
        for ticket in tickets:
            in_flight[mid] = queued.pop(ticket)
            mid += 1

    def acknowledged(self, first_id: int, last_id: int) -> None:
        """The peer's channel queued messages ``first_id`` to ``last_id``: resolve them."""
        in_flight = self.in_flight
        for mid in range(first_id, last_id + 1):
            fut = in_flight.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(mid)

    def fail(self, closed: ConnectionClosed) -> None:
        """The channel closed: every unfinished send fails with ``closed``."""
        for pending in (self.in_flight, self.queued):
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(closed)
                    fut.exception()  # mark retrieved: its send() may have been cancelled
            pending.clear()
