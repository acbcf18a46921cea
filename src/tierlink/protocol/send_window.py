"""The sending half of a channel, sans-IO: message ids, the in-flight window, the backlog.

The n-th message written on the message stream has id n. At most ``window`` payload bytes
and :data:`MAX_IN_FLIGHT_MESSAGES` messages are unacknowledged at once (one larger message
may be alone in flight); further messages wait in a backlog, in call order, and go out as
cumulative acknowledgements make room. Written bytes wait in :class:`SendWindow` until the
transport asks for them, so many small messages leave as one stream write.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from tierlink.protocol.channel_events import MessagesSent, Queued, WriteStream
from tierlink.wire.channel_frames import ProtocolError, encode_length

#: Unacknowledged messages at most (bounds per-message bookkeeping of tiny messages).
MAX_IN_FLIGHT_MESSAGES = 1024
#: Message payloads up to this size are joined with their length prefix and neighbours into
#: one write; a larger payload is handed over as it is (never copied).
JOIN_LIMIT = 65536


class SendWindow:
    """Ids, window and backlog of one channel's outgoing messages."""

    def __init__(self, withdrawn: Callable[[int], bool] | None = None) -> None:
        """``withdrawn(ticket)``: asked when a backlogged message's turn comes; True skips
        it (the application gave up on it), so withdrawing costs nothing per message."""
        self.window = 1
        self.last_id = 0
        self.in_flight_bytes = 0
        self.peak_in_flight_bytes = 0
        self._withdrawn = withdrawn
        self._next_ticket = 0
        self._unacked: deque[tuple[int, int]] = deque()  # (message id, size)
        self._backlog: deque[tuple[int, bytes]] = deque()  # (ticket, payload)
        self._unwritten: list[bytes] = []  # message stream bytes not yet handed out

    @property
    def backlog_messages(self) -> int:
        """Messages waiting for the window."""
        return len(self._backlog)

    @property
    def unacked_messages(self) -> int:
        """Messages sent and not yet acknowledged."""
        return len(self._unacked)

    def submit(self, payload: bytes) -> int | Queued:
        """Send ``payload`` now (its id) or queue it behind earlier ones (its ticket)."""
        if not self._backlog and self._fits(len(payload)):
            return self._write(payload)
        self._next_ticket += 1
        self._backlog.append((self._next_ticket, payload))
        return Queued(self._next_ticket)

    def withdraw(self, ticket: int) -> bool:
        """Drop a message still in the backlog; False if it is not there (any more)."""
        for i, (queued, _) in enumerate(self._backlog):
            if queued == ticket:
                del self._backlog[i]
                return True
        return False

    def acknowledge(self, message_id: int) -> tuple[int, int, int]:
        """The peer queued every message up to ``message_id``: (first newly acknowledged id,
        how many, their payload bytes); first is 0 when nothing was new."""
        if message_id > self.last_id:
            raise ProtocolError(f"ack for message {message_id}, never sent")
        unacked = self._unacked
        first = count = size_sum = 0
        while unacked and unacked[0][0] <= message_id:
            mid, size = unacked.popleft()
            first = first or mid
            count += 1
            size_sum += size
        self.in_flight_bytes -= size_sum
        return first, count, size_sum

    def pump(self) -> MessagesSent | None:
        """Write backlogged messages, in call order, while the window has room."""
        backlog = self._backlog
        withdrawn = self._withdrawn
        sent: list[int] = []
        first_id = self.last_id + 1
        while backlog:
            ticket, payload = backlog[0]
            if withdrawn is not None and withdrawn(ticket):
                backlog.popleft()
            elif self._fits(len(payload)):
                backlog.popleft()
                self._write(payload)
                sent.append(ticket)
            else:
                break
        return MessagesSent(tuple(sent), first_id) if sent else None

    def pop_writes(self, stream_id: int) -> list[WriteStream]:
        """The message stream bytes written since the last call: small ones joined."""
        writes: list[WriteStream] = []
        small: list[bytes] = []
        for chunk in self._unwritten:
            if len(chunk) <= JOIN_LIMIT:
                small.append(chunk)
                continue
            if small:
                writes.append(WriteStream(stream_id, b"".join(small)))
                small = []
            writes.append(WriteStream(stream_id, chunk))
        if small:
            writes.append(WriteStream(stream_id, b"".join(small)))
        self._unwritten = []
        return writes

    @property
    def has_unwritten(self) -> bool:
        """True if message bytes wait for :meth:`pop_writes`."""
        return bool(self._unwritten)

    def clear(self) -> None:
        """Forget everything (the channel closed)."""
        self._unacked.clear()
        self._backlog.clear()
        self._unwritten = []
        self.in_flight_bytes = 0

    def _fits(self, size: int) -> bool:
        if not self._unacked:
            return True
        return (
            self.in_flight_bytes + size <= self.window
            and len(self._unacked) < MAX_IN_FLIGHT_MESSAGES
        )

    def _write(self, payload: bytes) -> int:
        self.last_id += 1
        size = len(payload)
        # prefix and payload apart: pop_writes joins them (and their neighbours) in one
        # copy; a payload above JOIN_LIMIT is handed over as it is
        self._unwritten += (encode_length(size), payload)
        self._unacked.append((self.last_id, size))
        self.in_flight_bytes += size
        if self.in_flight_bytes > self.peak_in_flight_bytes:
            self.peak_in_flight_bytes = self.in_flight_bytes
        return self.last_id
