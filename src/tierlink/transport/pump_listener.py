"""What the QUIC pump reports to, and asks of, the channel it carries; and the stand-in
listener of a closed pump, which keeps no reference to its channel (no reference cycle)."""

from __future__ import annotations

from typing import Protocol

from tierlink.protocol.channel_events import TransportEvent


class _Detached:
    """The listener of a closed pump: it no longer references its channel (no cycle)."""

    def transport_event(self, event: TransportEvent) -> None:
        """Ignored: the channel already heard ConnectionTerminated."""

    def transport_events(self, events: list[TransportEvent]) -> None:
        """Ignored, as :meth:`transport_event`."""

    def keep_reading(self) -> bool:
        """Nothing reads any more."""
        return False

    def before_flush(self) -> None:
        """Nothing to write."""


DETACHED = _Detached()


class PumpListener(Protocol):
    """What the pump reports to, and asks of, the channel it carries."""

    def transport_event(self, event: TransportEvent) -> None:
        """One transport event; ConnectionTerminated comes once, last."""

    def transport_events(self, events: list[TransportEvent]) -> None:
        """Several transport events, in order, from one batch of received packets."""

    def keep_reading(self) -> bool:
        """Whether to read another datagram in this loop pass (see set_datagram_handler)."""

    def before_flush(self) -> None:
        """Write coalesced stream data (e.g. one cumulative ack) just before packetizing."""
