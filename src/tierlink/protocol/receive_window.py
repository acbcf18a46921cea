"""The receiving half of a channel, sans-IO: held messages, their ids, the next ACK.

Messages parsed from the peer's message stream are held until the application's queue
(``queue_capacity``) has room; the n-th one handed over has id n. At most ``max(window,
max_message_size)`` payload bytes and :data:`~tierlink.protocol.send_window.
MAX_IN_FLIGHT_MESSAGES` messages may wait here (a peer that sends more broke the protocol).
One cumulative ACK announces every message handed over since the previous one.
"""

from __future__ import annotations

from collections import deque

from tierlink.protocol.channel_events import ChannelEvent, MessageReceived
from tierlink.protocol.send_window import MAX_IN_FLIGHT_MESSAGES
from tierlink.wire.channel_frames import MessageReader, ProtocolError


class ReceiveWindow:
    """Held messages, ids and acknowledgements of one channel's incoming messages."""

    def __init__(
        self, *, max_message_size: int, window: int, queue_capacity: int,
        stats: dict[str, int],
    ) -> None:
        """``stats``: the channel's counters; ``messages_received`` and ``bytes_received``
        grow as messages are handed over."""
        self._reader = MessageReader(max_message_size)
        self._limit = max(window, max_message_size)  # payload bytes a peer may have buffered
        self._capacity = queue_capacity
        self._stats = stats
        self.held: deque[bytes] = deque()
        self._held_bytes = 0
        self._handed = 0  # messages handed to the application and not yet consumed
        self._delivered = 0  # messages handed over so far (the id of the last one)
        self._acked = 0  # highest id our ACK frames announced so far

    def feed(self, data: bytes) -> bool:
        """Bytes of the peer's message stream (after its tag); True if messages are held.
        Raises ProtocolError when the peer exceeded the flow-control window."""
        held = self.held
        reader = self._reader
        messages = reader.feed(data)
        if messages:
            held.extend(messages)
            self._held_bytes += sum(map(len, messages))
        if (self._held_bytes + reader.partial_bytes > self._limit
                or len(held) > MAX_IN_FLIGHT_MESSAGES):
            raise ProtocolError("peer exceeded the flow-control window")
        return bool(held)

    def hand_over(self, events: list[ChannelEvent]) -> None:
        """Append held messages to ``events`` while the application's queue has room."""
        held = self.held
        count = min(len(held), self._capacity - self._handed)
        if count <= 0:
            return
        append, pop = events.append, held.popleft
        delivered, size = self._delivered, 0
        for _ in range(count):
            message = pop()
            size += len(message)
            delivered += 1
            append(MessageReceived(delivered, message))
        self._held_bytes -= size
        self._handed += count
        self._delivered = delivered
        self._stats["messages_received"] += count
        self._stats["bytes_received"] += size

    def consumed(self) -> bool:
        """The application took one message off its queue; True if messages are held."""
        if self._handed > 0:
            self._handed -= 1
        return bool(self.held)

    def ack_due(self) -> int | None:
        """The id the next ACK announces (and now counts as announced); None: nothing new
        was handed over since the last one."""
        if self._delivered == self._acked:
            return None
        self._acked = self._delivered
        return self._acked

    def clear(self) -> None:
        """Drop every held message (the channel closed)."""
        self.held.clear()
        self._held_bytes = 0
