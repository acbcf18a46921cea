"""Incoming messages from every tier, handed to the application exactly once.

A message arrives on a live message link or sealed (offline queue, mailbox). It is queued for
the application unless its id is already queued or in the
:class:`~tierlink.offline.delivered.DeliveredLog`; it is remembered and acknowledged only once
the application took it from :meth:`IncomingMessages.messages`. A re-sent message is
acknowledged again but handed over once. When the delivered log is full, live-link messages
are held back unacknowledged, so their senders keep them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tierlink.errors import TierlinkError
from tierlink.node.tasks import Supervisor
from tierlink.offline import DeliveredLog
from tierlink.transport.connection import Connection
from tierlink.wire.envelope import ReceivedEnvelope
from tierlink.wire.link_frames import LinkMessage, encode_ack_frame
from tierlink.wire.records import now_ms

INBOX_CAPACITY = 256


@dataclass(frozen=True)
class Message:
    """A message handed to the application."""

    sender: str
    message_id: bytes
    payload: bytes
    tier: str
    created_at_ms: int
    received_at_ms: int


class IncomingMessages:
    """The application's inbox of one node; ``tasks`` runs the acknowledgements."""

    def __init__(self, delivered_log: DeliveredLog, tasks: Supervisor) -> None:
        self.delivered_log = delivered_log
        self.duplicates_suppressed = 0
        self.held_back = 0
        """Live-link messages not taken because the delivered log was full (left unacked:
        the sender keeps them and tries again, as the offline inbox does)."""
        self._tasks = tasks
        self._loop = asyncio.get_running_loop()
        self._inbox: asyncio.Queue[tuple[Message, asyncio.Future[None]]] = asyncio.Queue(
            INBOX_CAPACITY
        )
        self._pending_in: dict[tuple[str, bytes], asyncio.Future[None]] = {}

    async def messages(self) -> AsyncIterator[Message]:
        """Incoming messages, each exactly once; taking one acknowledges it."""
        while True:
            msg, taken = await self._inbox.get()
            if not taken.done():
                taken.set_result(None)
            yield msg

    async def from_link(self, conn: Connection, frame: LinkMessage) -> None:
        """A message frame from the live link ``conn``: queue it (acknowledged once taken),
        acknowledge a known one again, or hold it back while the delivered log is full."""
        sender, mid = conn.remote_fingerprint, frame.message_id
        if self.delivered_log.seen(sender, mid):
            self.duplicates_suppressed += 1
            await self.ack(conn, mid)
            return
        if self.delivered_log.free() == 0:
            self.held_back += 1
            return
        taken = await self._hand_over(sender, mid, frame.created_at_ms, frame.payload,
                                      conn.tier)
        if taken is None:
            return
        self._tasks.spawn(
            self._ack_when_taken(conn, sender, mid, frame.expires_at_ms, taken), "ack")

    async def sealed(self, env: ReceivedEnvelope, tier: str) -> None:
        """A sealed message (``tier`` "offline" or "mailbox"): return once the application
        took it (the caller then remembers and acknowledges it)."""
        key = (env.sender_fingerprint, env.message_id)
        pending = self._pending_in.get(key)
        if pending is not None:  # the same message is waiting from a live link
            self.duplicates_suppressed += 1
            await asyncio.shield(pending)
            return
        taken = await self._hand_over(env.sender_fingerprint, env.message_id,
                                      env.created_at_ms, env.payload, tier)
        if taken is not None:
            await asyncio.shield(taken)
            self._pending_in.pop(key, None)

    async def ack(self, conn: Connection, mid: bytes) -> None:
        """Acknowledge ``mid`` on a live link (a link that fails is the sender's problem:
        it re-sends)."""
        with contextlib.suppress(TierlinkError):
            await conn.send(encode_ack_frame([mid]))

    async def _hand_over(
        self, sender: str, mid: bytes, created: int, payload: bytes, tier: str
    ) -> asyncio.Future[None] | None:
        """Queue for the application unless already queued; None if already queued."""
        key = (sender, mid)
        if key in self._pending_in:
            self.duplicates_suppressed += 1
            return None
        taken: asyncio.Future[None] = self._loop.create_future()
        self._pending_in[key] = taken
        await self._inbox.put((Message(sender, mid, payload, tier, created, now_ms()), taken))
        return taken

    async def _ack_when_taken(
        self, conn: Connection, sender: str, mid: bytes, expires: int, taken: asyncio.Future[None]
    ) -> None:
        await taken
        self.delivered_log.remember(sender, mid, expires)
        self._pending_in.pop((sender, mid), None)
        await self.ack(conn, mid)
