"""The channel protocol core, sans-IO: events in, commands and channel events out.

No sockets, no event loop, no clock: two cores are wired to each other by handing one's
stream writes to the other as received stream data.
"""

from __future__ import annotations

from typing import Any

import pytest

from tierlink.errors import ConnectionClosed, MessageTooLarge
from tierlink.protocol import channel_events as ev
from tierlink.protocol.channel import (
    DATAGRAM_MAX_PAYLOAD,
    LOCAL_CLOSE_REASON,
    PEER_CLOSED_REASON,
    ChannelProtocol,
)
from tierlink.protocol.send_window import MAX_IN_FLIGHT_MESSAGES
from tierlink.wire.channel_frames import (
    PROTOCOL_VERSION,
    ChannelBinding,
    Hello,
    encode_ack,
    encode_hello,
    encode_length,
)

# The client's control and message streams (RFC 9000 numbering of unidirectional streams).
A_CONTROL, A_MESSAGES = 2, 6


BINDING = ChannelBinding(bytes(range(32)), bytes(16), b"\xaa" * 64, b"\xbb" * 64)
EXPORTER = bytes(range(100, 132))


def core(is_client: bool = True, **kw: Any) -> ChannelProtocol:
    settings: dict[str, Any] = {"max_message_size": 1000, "window": 4000, "queue_capacity": 4,
                                "binding": BINDING}
    return ChannelProtocol(is_client=is_client, **{**settings, **kw})


def handshake(side: ChannelProtocol, exporter: bytes = EXPORTER) -> None:
    """The connection's keys exist, then its handshake completes."""
    side.handle_event(ev.KeysReady(exporter))
    side.handle_event(ev.HandshakeCompleted())


def hello(limits: tuple[int, int], dialer: bool) -> Hello:
    """A HELLO with the limits and a valid proof of ``dialer``'s side."""
    return Hello(PROTOCOL_VERSION, *limits, BINDING.proof(dialer, EXPORTER))


def carry(src: ChannelProtocol, dst: ChannelProtocol, chunk: int = 0) -> list[ev.Command]:
    """Hand ``src``'s stream writes and datagrams to ``dst``; return the other commands."""
    return feed(dst, src.pop_commands(), chunk)


def feed(dst: ChannelProtocol, commands: list[ev.Command], chunk: int = 0) -> list[ev.Command]:
    """Hand stream writes (in ``chunk``-byte pieces if set) and datagrams to ``dst``;
    return the other commands."""
    rest: list[ev.Command] = []
    for command in commands:
        if isinstance(command, ev.WriteStream):
            data = command.data
            pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
            for piece in pieces:
                dst.handle_event(ev.StreamDataReceived(command.stream_id, piece))
        elif isinstance(command, ev.SendDatagram):
            dst.handle_event(ev.DatagramReceived(command.data))
        else:
            rest.append(command)
    return rest


def opened_pair(**kw: Any) -> tuple[ChannelProtocol, ChannelProtocol]:
    """Client ``a`` and server ``b`` after the handshake and both HELLOs."""
    a = core(True, **{k: v for k, v in kw.items() if not k.startswith("b_")})
    b = core(False, **{k[2:]: v for k, v in kw.items() if k.startswith("b_")})
    for side in (a, b):
        handshake(side)
    carry(a, b)
    carry(b, a)
    for side in (a, b):
        assert [type(e) for e in side.pop_events()] == [ev.ChannelOpened]
    return a, b


def failed(side: ChannelProtocol, match: str) -> None:
    """``side`` closed on a protocol error that mentions ``match``."""
    events = side.pop_events()
    assert isinstance(events[-2], ev.ProtocolViolation) and match in events[-2].detail, events
    assert events[-1] == ev.ChannelClosed(f"protocol error: {events[-2].detail}")
    close = side.pop_commands()[-1]
    assert isinstance(close, ev.CloseConnection) and close.error_code == ev.ERROR_PROTOCOL
    assert side.closed and not side.opened


# -- greeting ---------------------------------------------------------------------------------
def test_hello_exchange_opens_with_the_smaller_limits() -> None:
    a, b = core(True), core(False, max_message_size=500, window=9000)
    with pytest.raises(ConnectionClosed, match="not open yet"):
        a.send_message(b"early")
    handshake(a)
    assert a.pop_commands() == [
        ev.WriteStream(A_CONTROL, b"C" + encode_hello(hello((1000, 4000), True))),
        ev.WriteStream(A_MESSAGES, b"M"),
    ]
    assert a.pop_events() == [] and not a.opened
    b.handle_event(ev.KeysReady(EXPORTER))  # a callee greets before the handshake completes
    assert [c.stream_id for c in b.pop_commands() if isinstance(c, ev.WriteStream)] == [3, 7]
    b.handle_event(ev.KeysReady(EXPORTER))  # announced again: our greeting is one-off
    assert b.pop_commands() == []
    b.handle_event(ev.HandshakeCompleted())
    b.handle_event(ev.HandshakeCompleted())
    failed(b, "second handshake")
    a, b = core(True), core(False, max_message_size=500, window=9000)
    for side in (a, b):
        handshake(side)
    carry(a, b)
    carry(b, a)
    assert a.pop_events() == b.pop_events() == [ev.ChannelOpened(500, 4000)]
    assert a.hello_received and b.hello_received


def test_signaled_limits_must_be_the_ones_the_proven_hello_repeats() -> None:
    a = core(True, peer_limits=(1000, 4000))
    b = core(False)
    handshake(a)
    assert a.pop_events() == [] and not a.opened  # the peer's proof comes first
    handshake(b)
    carry(b, a)
    assert a.pop_events() == [ev.ChannelOpened(1000, 4000)] and a.hello_received
    liar = core(True, peer_limits=(1000, 5000))
    handshake(liar)
    liar.handle_event(ev.StreamDataReceived(3, b"C" + encode_hello(hello((1000, 4000), False))))
    failed(liar, "disagrees with the limits it signaled")


# -- messages -------------------------------------------------------------------------------
def test_a_large_message_is_written_without_joining_it() -> None:
    limits = {"max_message_size": 100_000, "window": 200_000}
    a, b = opened_pair(**limits, **{f"b_{k}": v for k, v in limits.items()})
    big = bytes(70_000)
    assert [a.send_message(m) for m in (b"x", big, b"y")] == [1, 2, 3]
    writes = a.pop_commands()
    assert writes == [
        ev.WriteStream(A_MESSAGES, encode_length(1) + b"x" + encode_length(len(big))),
        ev.WriteStream(A_MESSAGES, big),
        ev.WriteStream(A_MESSAGES, encode_length(1) + b"y"),
    ]
    assert writes[1].data is big  # type: ignore[union-attr]
    feed(b, writes)
    assert [e.data for e in b.pop_events()] == [b"x", big, b"y"]  # type: ignore[union-attr]


def test_message_ids_and_one_cumulative_ack() -> None:
    a, b = opened_pair()
    assert [a.send_message(m) for m in (b"one", b"", b"three")] == [1, 2, 3]
    writes = a.pop_commands()  # one write for the three small messages
    assert writes == [ev.WriteStream(A_MESSAGES, encode_length(3) + b"one" + encode_length(0)
                                  + encode_length(5) + b"three")]
    assert a.unacked_messages == 3 and a.in_flight_bytes == 8
    a.send_message(b"again")
    feed(b, writes + a.pop_commands(), chunk=3)  # any chunking
    assert b.pop_events() == [
        ev.MessageReceived(1, b"one"), ev.MessageReceived(2, b""), ev.MessageReceived(3, b"three"),
        ev.MessageReceived(4, b"again"),
    ]
    b.write_ack()
    b.write_ack()  # nothing new: no second ACK
    assert b.pop_commands() == [ev.WriteStream(3, encode_ack(4))]
    a.handle_event(ev.StreamDataReceived(3, encode_ack(4)))
    assert a.pop_events() == [ev.MessagesAcknowledged(1, 4)]
    a.handle_event(ev.StreamDataReceived(3, encode_ack(2)))  # an older ACK changes nothing
    assert a.pop_events() == [] and a.in_flight_bytes == 0 and a.opened
    assert a.stats["messages_sent"] == 4 and a.stats["bytes_sent"] == 13
    assert b.stats["messages_received"] == 4 and b.stats["bytes_received"] == 13


def test_full_window_queues_in_order_and_drains_on_ack() -> None:
    a, b = opened_pair(b_queue_capacity=10)
    assert a.send_message(b"x" * 1000) == 1
    assert a.send_message(b"y" * 1000) == 2
    assert a.send_message(b"z" * 1000) == 3
    assert a.send_message(b"w" * 1000) == 4  # 4000 bytes: the window is full
    assert a.send_message(b"v") == ev.Queued(1)
    assert a.send_message(b"u") == ev.Queued(2)  # behind the queued one, though it would fit
    assert a.backlog_messages == 2 and a.peak_in_flight_bytes == 4000
    carry(a, b)
    b.pop_events()
    b.write_ack()
    carry(b, a)
    assert a.pop_events() == [ev.MessagesAcknowledged(1, 4), ev.MessagesSent((1, 2), 5)]
    assert a.backlog_messages == 0 and a.in_flight_bytes == 2
    carry(a, b)
    assert [e.data for e in b.pop_events() if isinstance(e, ev.MessageReceived)] == [b"v", b"u"]


def test_a_message_above_the_window_goes_alone() -> None:
    a, b = opened_pair(max_message_size=10_000, b_max_message_size=10_000)
    assert a.send_message(b"s") == 1
    assert a.send_message(bytes(9000)) == ev.Queued(1)
    carry(a, b)
    b.write_ack()
    carry(b, a)
    assert a.pop_events() == [ev.MessagesAcknowledged(1, 1), ev.MessagesSent((1,), 2)]
    assert a.in_flight_bytes == 9000 > a.window
    assert a.send_message(b"t") == ev.Queued(2)


def test_withdrawn_message_is_skipped() -> None:
    a, b = opened_pair(max_message_size=4000, b_max_message_size=4000)
    a.send_message(bytes(4000))
    first, second = a.send_message(b"1"), a.send_message(b"2")
    assert isinstance(first, ev.Queued) and isinstance(second, ev.Queued)
    assert a.withdraw(first.ticket) and not a.withdraw(first.ticket)
    carry(a, b)
    b.write_ack()
    carry(b, a)
    assert a.pop_events() == [ev.MessagesAcknowledged(1, 1), ev.MessagesSent((second.ticket,), 2)]


def test_in_flight_messages_are_capped() -> None:
    a, _b = opened_pair(window=10**9, b_window=10**9)
    ids = [a.send_message(b"") for _ in range(MAX_IN_FLIGHT_MESSAGES)]
    assert ids == list(range(1, MAX_IN_FLIGHT_MESSAGES + 1))
    assert a.send_message(b"") == ev.Queued(1)


def test_full_receive_queue_holds_messages_back_unacknowledged() -> None:
    a, b = opened_pair(b_queue_capacity=2)
    for i in range(4):
        a.send_message(bytes([i]))
    carry(a, b)
    assert [e.message_id for e in b.pop_events() if isinstance(e, ev.MessageReceived)] == [1, 2]
    assert b.held_messages == 2
    b.write_ack()
    assert b.pop_commands() == [ev.WriteStream(3, encode_ack(2))]
    b.message_consumed()
    assert b.pop_events() == [ev.MessageReceived(3, b"\x02")] and b.held_messages == 1
    b.write_ack()
    assert b.pop_commands() == [ev.WriteStream(3, encode_ack(3))]


def test_oversized_message_is_refused_and_the_channel_stays_usable() -> None:
    a, _b = opened_pair(b_max_message_size=100)
    assert a.max_message_size == 100
    with pytest.raises(MessageTooLarge, match=r"101 bytes exceeds .* 100 bytes"):
        a.send_message(bytes(101))
    assert a.send_message(bytes(100)) == 1 and a.opened


# -- broken peers -----------------------------------------------------------------------------
BROKEN: dict[str, tuple[list[tuple[int, bytes]], str]] = {
    "bad stream tag": ([(10, b"X")], "unexpected stream tag b'X'"),
    "second control stream": ([(10, b"C")], "unexpected stream tag b'C'"),
    "our own stream id": ([(3, b"C")], "unexpected stream 3"),
    "bidirectional stream": ([(0, b"M")], "unexpected stream 0"),
    "unknown control frame": ([(A_CONTROL, b"\x07")], "unknown control frame type 0x07"),
    "second HELLO": ([(A_CONTROL, encode_hello(hello((1000, 4000), True)))], "second HELLO"),
    "ack for an unsent id": ([(A_CONTROL, encode_ack(1))], "ack for message 1, never sent"),
    "length above the limit": ([(A_MESSAGES, encode_length(1001))], "above the limit of 1000"),
    "flow control": (
        [(A_MESSAGES, (encode_length(1000) + bytes(1000)) * 4 + encode_length(1) + b"!")],
        "exceeded the flow-control window",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_malformed_input_is_a_protocol_error(case: str) -> None:
    _a, b = opened_pair(b_queue_capacity=1)
    writes, match = BROKEN[case]
    for sid, data in writes:
        b.handle_event(ev.StreamDataReceived(sid, data))
    failed(b, match)
    b.handle_event(ev.StreamDataReceived(A_MESSAGES, encode_length(1) + b"late"))
    assert b.pop_events() == [] and b.pop_commands() == []  # closed: nothing more happens


def test_wrong_version_reset_and_ended_streams_are_protocol_errors() -> None:
    b = core(False)
    old = Hello(1, 1, 1, BINDING.proof(True, EXPORTER))
    b.handle_event(ev.StreamDataReceived(A_CONTROL, b"C" + encode_hello(old)))
    failed(b, f"peer speaks channel protocol 1, we speak {PROTOCOL_VERSION}")
    _, b = opened_pair()
    b.handle_event(ev.StreamReset(A_MESSAGES))
    failed(b, "peer reset stream 6")
    _, b = opened_pair()
    b.handle_event(ev.StreamDataReceived(A_MESSAGES, b"", end_stream=True))
    failed(b, "peer ended its messages stream")
    b = core(False)
    b.handle_event(ev.StreamDataReceived(10, b"", end_stream=True))
    failed(b, "peer ended stream 10")


# -- closing --------------------------------------------------------------------------------
def test_local_close_acknowledges_first_then_closes_once() -> None:
    a, b = opened_pair()
    a.send_message(b"m")
    carry(a, b)
    b.pop_events()
    b.close()
    assert b.pop_commands() == [
        ev.WriteStream(3, encode_ack(1)),
        ev.CloseConnection(ev.ERROR_NONE, LOCAL_CLOSE_REASON, PEER_CLOSED_REASON),
    ]
    assert b.pop_events() == [ev.ChannelClosed(LOCAL_CLOSE_REASON)]
    b.close()
    b.handle_event(ev.ConnectionTerminated("later"))
    assert b.pop_events() == [] and b.pop_commands() == []
    with pytest.raises(ConnectionClosed, match=LOCAL_CLOSE_REASON):
        b.send_message(b"after close")
    with pytest.raises(ConnectionClosed):
        b.send_datagram(b"after close")


def test_termination_drops_what_is_in_flight() -> None:
    a, _b = opened_pair(max_message_size=4000, b_max_message_size=4000)
    a.send_message(bytes(4000))
    a.send_message(b"queued")
    a.handle_event(ev.ConnectionTerminated("connection closed: gone"))
    assert a.pop_events() == [ev.ChannelClosed("connection closed: gone")]
    assert a.in_flight_bytes == a.backlog_messages == a.unacked_messages == 0
    assert a.close_reason == "connection closed: gone"
    a.handle_event(ev.StreamDataReceived(3, encode_ack(1)))
    assert a.pop_events() == []


# -- datagrams ------------------------------------------------------------------------------
def test_datagrams_pass_through_unframed() -> None:
    a, b = opened_pair()
    a.send_datagram(b"d" * DATAGRAM_MAX_PAYLOAD)
    with pytest.raises(MessageTooLarge, match=f"limit of {DATAGRAM_MAX_PAYLOAD} bytes"):
        a.send_datagram(bytes(DATAGRAM_MAX_PAYLOAD + 1))
    assert carry(a, b) == []
    assert b.pop_events() == [ev.DatagramDelivered(b"d" * DATAGRAM_MAX_PAYLOAD)]
    assert a.stats["datagrams_sent"] == b.stats["datagrams_received"] == 1
