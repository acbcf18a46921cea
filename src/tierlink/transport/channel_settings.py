"""The limits and timers a secure channel is opened with: :class:`ChannelSettings`."""

from __future__ import annotations

from dataclasses import dataclass

#: Unacknowledged payload bytes a sender may have in flight, by default.
DEFAULT_WINDOW = 4 * 1024 * 1024


@dataclass(frozen=True)
class ChannelSettings:
    """A channel's limits and timers; a node opens every channel with the same ones.

    ``queue_capacity``: received messages held for the application (beyond it, the sender
    is held back); ``liveness_timeout``: a silent peer is declared dead after it;
    ``handshake_timeout``: the QUIC handshake must complete within it; ``max_message_size``
    and ``window``: our limits, told to the peer in HELLO; ``probe_path_mtu``: find and use
    the largest packet a direct path carries (off: 1200-byte packets).
    """

    queue_capacity: int = 16
    liveness_timeout: float = 15.0
    handshake_timeout: float = 10.0
    max_message_size: int = 16 * 1024 * 1024
    window: int = DEFAULT_WINDOW
    probe_path_mtu: bool = True

    def __post_init__(self) -> None:
        if self.queue_capacity < 1 or self.liveness_timeout <= 0 or self.handshake_timeout <= 0:
            raise ValueError(
                "queue_capacity, liveness_timeout and handshake_timeout must be > 0"
            )
        if not 0 <= self.max_message_size < 2**62 or self.window < 1:
            raise ValueError("max_message_size must be in [0, 2**62) and window >= 1")
