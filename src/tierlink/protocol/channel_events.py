"""What the channel core (:mod:`tierlink.protocol.channel`) is fed and what it asks for.

Three kinds of small records, none tied to a QUIC library:

* transport events, fed in by the shell that drives the QUIC connection (it maps its QUIC
  library's events onto these): :class:`KeysReady`, :class:`HandshakeCompleted`,
  :class:`StreamDataReceived`,
  :class:`StreamReset`, :class:`DatagramReceived`, :class:`ConnectionTerminated`;
* commands for that shell: :class:`WriteStream`, :class:`SendDatagram`,
  :class:`CloseConnection`;
* channel events for the application: :class:`ChannelOpened`, :class:`MessageReceived`,
  :class:`MessagesSent`, :class:`MessagesAcknowledged`, :class:`DatagramDelivered`,
  :class:`ProtocolViolation`, :class:`ChannelClosed`.

The close codes are the QUIC application error codes a tierlink peer sends.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Application error codes of a CONNECTION_CLOSE.
ERROR_NONE = 0x0
ERROR_PROTOCOL = 0x1
ERROR_HANDSHAKE = 0x2
ERROR_LIVENESS = 0x3


# -- transport events (in) -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KeysReady:
    """The connection's 1-RTT keys exist (callee: after the ClientHello; dialer: with the
    callee's Finished); ``exporter`` is its TLS exporter value for the channel binding."""

    exporter: bytes


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The secure handshake completed and the peer's certificate matched its pin."""


@dataclass(frozen=True, slots=True)
class StreamDataReceived:
    """Bytes of one stream, in order; ``end_stream`` when the peer ended it."""

    stream_id: int
    data: bytes
    end_stream: bool = False


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer abandoned one of its streams."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    """One unreliable datagram's payload."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The connection is gone (peer close, lost path, timeout...); ``reason`` says why."""

    reason: str


TransportEvent = (
    KeysReady | HandshakeCompleted | StreamDataReceived | StreamReset | DatagramReceived
    | ConnectionTerminated
)


# -- commands (out, for the transport) -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WriteStream:
    """Append ``data`` to one of our unidirectional streams."""

    stream_id: int
    data: bytes
    end_stream: bool = False


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send one unreliable datagram."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close the connection with ``error_code``; ``peer_reason`` is what the peer is told."""

    error_code: int
    reason: str
    peer_reason: str


Command = WriteStream | SendDatagram | CloseConnection


# -- channel events (out, for the application) -----------------------------------------------
@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """The peer's limits are known: messages may be sent (within the effective limits)."""

    max_message_size: int
    window: int


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A reliable message for the application's receive queue (it is acknowledged)."""

    message_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class MessagesSent:
    """Messages that waited in the backlog went out: ``tickets[i]`` as ``first_id + i``."""

    tickets: tuple[int, ...]
    first_id: int


@dataclass(frozen=True, slots=True)
class MessagesAcknowledged:
    """Messages ``first_id``..``last_id`` are in the peer's receive queue."""

    first_id: int
    last_id: int


@dataclass(frozen=True, slots=True)
class DatagramDelivered:
    """A received datagram for the application."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the channel protocol; a :class:`ChannelClosed` follows."""

    detail: str


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The channel is closed; every pending send fails with ``reason``."""

    reason: str


ChannelEvent = (
    ChannelOpened
    | MessageReceived
    | MessagesSent
    | MessagesAcknowledged
    | DatagramDelivered
    | ProtocolViolation
    | ChannelClosed
)


@dataclass(frozen=True, slots=True)
class Queued:
    """A message that waits for the send window; :class:`MessagesSent` names its id later."""

    ticket: int
