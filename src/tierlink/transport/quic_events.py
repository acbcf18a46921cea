"""aioquic's events as tierlink's transport events (:mod:`tierlink.protocol.channel_events`),
for the QUIC pump (:mod:`tierlink.transport.quic`)."""

from __future__ import annotations

from collections.abc import Callable

from aioquic.quic import events

from tierlink.protocol.channel_events import (
    ERROR_NONE,
    DatagramReceived,
    HandshakeCompleted,
    StreamDataReceived,
    StreamReset,
    TransportEvent,
)
from tierlink.transport.aioquic_adapter import PinnedQuicConnection


def translate(
    quic: PinnedQuicConnection, batch: list[TransportEvent], pin_matches: Callable[[], bool]
) -> events.ConnectionTerminated | None:
    """Append ``quic``'s pending events to ``batch`` as transport events, up to the end of
    the connection (returned, if it came). A completed handshake counts only if
    ``pin_matches()`` (which closes the connection otherwise)."""
    while (event := quic.next_event()) is not None:
        if isinstance(event, events.StreamDataReceived):
            batch.append(StreamDataReceived(event.stream_id, event.data, event.end_stream))
        elif isinstance(event, events.DatagramFrameReceived):
            batch.append(DatagramReceived(event.data))
        elif isinstance(event, events.HandshakeCompleted):
            if pin_matches():
                batch.append(HandshakeCompleted())
        elif isinstance(event, events.StreamReset):
            batch.append(StreamReset(event.stream_id))
        elif isinstance(event, events.ConnectionTerminated):
            return event
    return None


def termination_reason(event: events.ConnectionTerminated) -> str:
    """Why the connection ended, for ``close_reason``: the peer's reason phrase with the
    TLS alert or QUIC error code."""
    code = event.error_code
    reason = event.reason_phrase or "no reason given"
    if 0x100 <= code < 0x200:
        detail = f"{reason} (TLS alert {code - 0x100})"
    elif event.frame_type is None and code == ERROR_NONE:
        detail = reason
    else:
        detail = f"{reason} (QUIC error 0x{code:x})"
    return f"connection closed: {detail}"
