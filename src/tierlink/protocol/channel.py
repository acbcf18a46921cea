"""The secure channel's protocol inside QUIC, sans-IO: :class:`ChannelProtocol`.

Fed transport events and the application's calls, it accumulates commands for the
transport (:meth:`ChannelProtocol.pop_commands`) and events for the application
(:meth:`ChannelProtocol.pop_events`); the records are in
:mod:`tierlink.protocol.channel_events`, the bytes in :mod:`tierlink.wire.channel_frames`.

* Once the connection's keys exist (``KeysReady``: the callee's after the ClientHello, so
  its HELLO is 0.5-RTT data; the dialer's with the callee's Finished, so its HELLO leaves
  with its own), each side opens its control stream (tag ``C``, then HELLO with its
  binding proof) and its message stream (tag ``M``): our first two unidirectional streams
  (RFC 9000 numbering: 2 and 6 for the client, 3 and 7 for the server).
* The channel opens once the handshake completed and the peer's HELLO proved this dial
  (:class:`~tierlink.wire.channel_frames.ChannelBinding`: session, both fingerprints, this
  TLS connection). Until then nothing reaches the application (messages are held,
  datagrams dropped) and nothing can be sent; a wrong proof closes the connection as a
  failed handshake (``ERROR_HANDSHAKE``). Limits that came signed with the peer's offer or
  answer must be the ones its HELLO repeats (:mod:`tierlink.protocol.channel_greeting`).
* The n-th message on the message stream has id n. The receiver hands a message to the
  application only while the application's queue (``queue_capacity``) has room, and
  acknowledges what it handed over with one cumulative ACK per :meth:`~ChannelProtocol.
  write_ack`; what does not fit is held back unacknowledged, bounded by our window.
* The sending half (ids, window, backlog) is :class:`~tierlink.protocol.send_window.
  SendWindow`; the receiving half (held messages, ids, the next ACK) is
  :class:`~tierlink.protocol.receive_window.ReceiveWindow`.
"""

from __future__ import annotations

from collections.abc import Callable

from tierlink.errors import ConnectionClosed, MessageTooLarge
from tierlink.protocol.channel_events import (
    ERROR_HANDSHAKE,
    ERROR_NONE,
    ERROR_PROTOCOL,
    ChannelClosed,
    ChannelEvent,
    ChannelOpened,
    CloseConnection,
    Command,
    ConnectionTerminated,
    DatagramDelivered,
    DatagramReceived,
    HandshakeCompleted,
    KeysReady,
    MessagesAcknowledged,
    ProtocolViolation,
    Queued,
    SendDatagram,
    StreamDataReceived,
    StreamReset,
    TransportEvent,
    WriteStream,
)
from tierlink.protocol.channel_greeting import Greeting
from tierlink.protocol.receive_window import ReceiveWindow
from tierlink.protocol.send_window import SendWindow
from tierlink.wire.channel_frames import (
    TAG_CONTROL,
    TAG_MESSAGES,
    Ack,
    ChannelBinding,
    ControlReader,
    Hello,
    ProtocolError,
    encode_ack,
)

#: Largest datagram payload: always fits one 1-RTT packet of 1200 bytes.
DATAGRAM_MAX_PAYLOAD = 1150
LOCAL_CLOSE_REASON = "channel closed locally"
PEER_CLOSED_REASON = "the peer closed the channel"
_CONTROL = "control"
_MESSAGES = "messages"


class ChannelProtocol:
    """One side of a channel: greeting, message ids, acks, window, backlog, datagrams."""

    def __init__(
        self,
        *,
        is_client: bool,
        binding: ChannelBinding,
        max_message_size: int,
        window: int,
        queue_capacity: int,
        peer_limits: tuple[int, int] | None = None,
    ) -> None:
        if queue_capacity < 1 or window < 1 or not 0 <= max_message_size < 2**62:
            raise ValueError("queue_capacity and window must be >= 1, max_message_size in "
                             "[0, 2**62)")
        self.is_client = is_client
        self._greeting = Greeting(is_client=is_client, binding=binding,
                                  max_message_size=max_message_size, window=window,
                                  peer_limits=peer_limits)
        self._max_message_size = max_message_size
        self._window = window
        self._peer_hello: Hello | None = None  # the proven HELLO, once the channel opened
        self.closed = False
        self.close_reason: str | None = None
        self._commands: list[Command] = []
        self._events: list[ChannelEvent] = []
        # sending side: our first two unidirectional streams
        self.control_stream_id = 2 if is_client else 3
        self.message_stream_id = self.control_stream_id + 4
        self._send = SendWindow()
        self._send_limit = 0  # max_message_size, fixed once open
        self.stats = dict.fromkeys(
            ("messages_sent", "bytes_sent", "messages_received", "bytes_received",
             "datagrams_sent", "datagrams_received"),
            0,
        )
        # receiving side
        self._rx_roles: dict[int, str] = {}
        self._ctrl_reader = ControlReader()
        self._recv = ReceiveWindow(max_message_size=max_message_size, window=window,
                                   queue_capacity=queue_capacity, stats=self.stats)

    def set_withdrawn(self, withdrawn: Callable[[int], bool]) -> None:
        """``withdrawn(ticket)``: asked when a backlogged message's turn comes; True skips it
        (the application gave up on it), so withdrawing costs nothing per message. Set it
        before the channel opens (nothing can be sent before)."""
        if self._peer_hello is not None:
            raise RuntimeError("set_withdrawn is for a channel that is not open yet")
        self._send = SendWindow(withdrawn)

    # -- state ------------------------------------------------------------------------------
    @property
    def hello_received(self) -> bool:
        """True once the peer's HELLO arrived (proven or not)."""
        return self._greeting.hello_received

    @property
    def opened(self) -> bool:
        """True once the peer's limits are known (until closed)."""
        return self._peer_hello is not None and not self.closed

    @property
    def max_message_size(self) -> int:
        """Largest reliable message: the smaller of ours and the peer's limit."""
        peer = self._peer_hello.max_message_size if self._peer_hello else 0
        return min(self._max_message_size, peer)

    @property
    def window(self) -> int:
        """Unacknowledged payload bytes the sender may have in flight."""
        peer = self._peer_hello.window if self._peer_hello else 0
        return max(1, min(self._window, peer))

    @property
    def backlog_messages(self) -> int:
        """Messages waiting for the send window."""
        return self._send.backlog_messages

    @property
    def in_flight_bytes(self) -> int:
        """Payload bytes sent and not yet acknowledged."""
        return self._send.in_flight_bytes

    @property
    def peak_in_flight_bytes(self) -> int:
        """The most payload bytes ever in flight at once."""
        return self._send.peak_in_flight_bytes

    @property
    def held_messages(self) -> int:
        """Messages received but held back (unacknowledged): the application's queue is full."""
        return len(self._recv.held)

    @property
    def unacked_messages(self) -> int:
        """Messages sent and not yet acknowledged."""
        return self._send.unacked_messages

    # -- outputs ----------------------------------------------------------------------------
    def pop_commands(self) -> list[Command]:
        """What the transport has to do, in order (and forget it). Message bytes written
        since the last call come first, small ones joined into one write."""
        if self._send.has_unwritten:
            self._commands[:0] = self._send.pop_writes(self.message_stream_id)
        out = self._commands
        if out:
            self._commands = []
        return out

    def pop_events(self) -> list[ChannelEvent]:
        """What happened for the application, in order (and forget it)."""
        out = self._events
        if out:
            self._events = []
        return out

    # -- transport events ---------------------------------------------------------------------
    def handle_event(self, event: TransportEvent) -> None:
        """Feed one transport event; nothing happens once the channel is closed."""
        if self.closed:
            return
        kind = type(event)
        if kind is DatagramReceived:  # the hot path first
            if self._peer_hello is None:
                return  # nothing from an unproven peer reaches the application
            self.stats["datagrams_received"] += 1
            self._events.append(DatagramDelivered(event.data))  # type: ignore[union-attr]
            return
        try:
            if kind is StreamDataReceived:
                self._on_stream_data(
                    event.stream_id, event.data, event.end_stream  # type: ignore[union-attr]
                )
            elif isinstance(event, KeysReady):
                self._on_keys(event.exporter)
            elif isinstance(event, HandshakeCompleted):
                self._on_handshake_completed()
            elif isinstance(event, StreamReset):
                raise ProtocolError(f"peer reset stream {event.stream_id}")
            elif isinstance(event, ConnectionTerminated):
                self._finish(event.reason)
        except ProtocolError as exc:
            self._violation(str(exc))

    def _on_keys(self, exporter: bytes) -> None:
        greeting = self._greeting.on_keys(exporter)
        if greeting is not None:
            self._commands += (WriteStream(self.control_stream_id, greeting),
                               WriteStream(self.message_stream_id, TAG_MESSAGES))

    def _on_handshake_completed(self) -> None:
        self._greeting.on_handshake_completed()
        self._try_open()

    def _on_hello(self, hello: Hello) -> None:
        if not self._greeting.on_hello(hello):
            detail = ("the peer's HELLO does not prove this dial (session, fingerprints and "
                      "TLS connection): channel binding failed")
            self._violation(detail, ERROR_HANDSHAKE)
            return
        self._try_open()

    def _try_open(self) -> None:
        """Open once the handshake completed and the peer proved this dial."""
        if self._greeting.ready and self._peer_hello is None:
            self._peer_hello = self._greeting.proven
            self._send.window = self.window
            self._send_limit = self.max_message_size
            self._events.append(ChannelOpened(self.max_message_size, self.window))
            self._recv.hand_over(self._events)  # messages that arrived before the proof

    def _on_stream_data(self, sid: int, data: bytes, end: bool) -> None:
        role = self._rx_roles.get(sid)
        if role is None:
            peer_initiated = bool(sid & 1) == self.is_client
            if not (sid & 2) or not peer_initiated:
                raise ProtocolError(f"unexpected stream {sid}")
            if not data:
                if end:
                    raise ProtocolError(f"peer ended stream {sid}")
                return
            tag, data = data[:1], data[1:]
            if tag == TAG_CONTROL and _CONTROL not in self._rx_roles.values():
                role = _CONTROL
            elif tag == TAG_MESSAGES and _MESSAGES not in self._rx_roles.values():
                role = _MESSAGES
            else:
                raise ProtocolError(f"unexpected stream tag {tag!r}")
            self._rx_roles[sid] = role
        if end:
            raise ProtocolError(f"peer ended its {role} stream")
        if not data:
            return
        if role == _CONTROL:
            for frame in self._ctrl_reader.feed(data):
                if isinstance(frame, Ack):
                    self._on_ack(frame.message_id)
                else:
                    self._on_hello(frame)
            return
        if self._recv.feed(data) and self._peer_hello is not None:
            self._recv.hand_over(self._events)

    # -- receiving ------------------------------------------------------------------------------
    def message_consumed(self) -> None:
        """The application took one message off its queue: hand over the next held one."""
        if self._recv.consumed() and not self.closed and self._peer_hello is not None:
            self._recv.hand_over(self._events)

    def write_ack(self) -> None:
        """Acknowledge, in one ACK frame, every message handed over since the last one
        (call once per packetization pass: acks coalesce)."""
        if self._greeting.exporter is not None and not self.closed:
            acked = self._recv.ack_due()
            if acked is not None:
                self._commands.append(WriteStream(self.control_stream_id, encode_ack(acked)))

    # -- sending --------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise ConnectionClosed(self.close_reason or "channel closed")
        if self._peer_hello is None:
            raise ConnectionClosed("channel not open yet")

    def send_message(self, data: bytes) -> int | Queued:
        """Send one reliable message: its id if it went out now, else its place in the
        backlog. Raises MessageTooLarge above :attr:`max_message_size`, ConnectionClosed
        unless open."""
        if self.closed or self._peer_hello is None:
            self._check_open()  # raises
        size = len(data)
        limit = self._send_limit
        if size > limit:
            raise MessageTooLarge(
                f"message of {size} bytes exceeds the channel's max_message_size of {limit} bytes"
            )
        return self._send.submit(data if type(data) is bytes else bytes(data))

    def withdraw(self, ticket: int) -> bool:
        """Drop a message still waiting in the backlog; False if it is not there (any more)."""
        if not self._send.withdraw(ticket):
            return False
        self._pump_backlog()
        return True

    def send_datagram(self, data: bytes) -> None:
        """Send one unreliable datagram (at most DATAGRAM_MAX_PAYLOAD bytes)."""
        self._check_open()
        if len(data) > DATAGRAM_MAX_PAYLOAD:
            raise MessageTooLarge(
                f"datagram of {len(data)} bytes exceeds the datagram limit of "
                f"{DATAGRAM_MAX_PAYLOAD} bytes"
            )
        self.stats["datagrams_sent"] += 1
        self._commands.append(SendDatagram(bytes(data)))

    def _on_ack(self, message_id: int) -> None:
        first, count, size = self._send.acknowledge(message_id)
        if first:
            self.stats["messages_sent"] += count
            self.stats["bytes_sent"] += size
            self._events.append(MessagesAcknowledged(first, message_id))
        self._pump_backlog()

    def _pump_backlog(self) -> None:
        sent = self._send.pump()
        if sent is not None:
            self._events.append(sent)

    # -- closing --------------------------------------------------------------------------------
    def close(self, reason: str = LOCAL_CLOSE_REASON) -> None:
        """Close gracefully: acknowledge what was handed over, then close the connection."""
        if self.closed:
            return
        self.write_ack()
        self._commands.append(CloseConnection(ERROR_NONE, reason, PEER_CLOSED_REASON))
        self._finish(reason)

    def _violation(self, detail: str, code: int = ERROR_PROTOCOL) -> None:
        """Close on the peer's fault: a protocol error, or a failed handshake (its HELLO
        did not prove this dial)."""
        what = "handshake failed" if code == ERROR_HANDSHAKE else "protocol error"
        reason = f"{what}: {detail}"
        self._events.append(ProtocolViolation(detail))
        self._commands.append(CloseConnection(code, reason, reason[:200]))
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        self.closed = True
        self.close_reason = reason
        self._send.clear()
        self._recv.clear()
        self._events.append(ChannelClosed(reason))
