"""Fuzz inputs for the stream parsers: channel frames and protocol, path-MTU probes, proxy lines.

These parsers read a stream in pieces, so every input is also cut at drawn points: a frame
split across two reads must parse as it does whole.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterable, AsyncIterator, Coroutine
from typing import Any

from fuzz import builders as b
from fuzz.draw import Draw
from fuzz.mutate import json_text, json_value, mutate_bytes
from tierlink.dht.proxy_lines import (
    SkippedLine,
    bounded_lines,
    decode_proxy_json,
    decode_proxy_line,
)
from tierlink.protocol.channel import ChannelProtocol
from tierlink.protocol.channel_events import HandshakeCompleted, KeysReady, StreamDataReceived
from tierlink.protocol.pmtu import PROBE_ACK, PathMtuProber, answer
from tierlink.wire.channel_frames import (
    PROTOCOL_VERSION,
    ChannelBinding,
    ControlReader,
    Hello,
    MessageReader,
    ProtocolError,
    encode_ack,
    encode_hello,
    encode_length,
)


def chunked(draw: Draw, data: bytes) -> tuple[bytes, ...]:
    """``data`` cut into pieces at drawn points (incremental readers see every split)."""
    pieces: list[bytes] = []
    pos = 0
    while pos < len(data) and len(pieces) < 32:
        n = 1 + draw.size(len(data) - pos - 1)
        pieces.append(data[pos:pos + n])
        pos += n
    if pos < len(data):
        pieces.append(data[pos:])
    return tuple(pieces)


#: The dial both channel ends were bound to, and their connection's TLS exporter value.
BINDING = ChannelBinding(bytes(range(32)), bytes(16), b"\xaa" * 64, b"\xbb" * 64)
EXPORTER = bytes(range(100, 132))
#: The callee's HELLO, with a valid proof, so mutations reach the opened channel.
HELLO = encode_hello(Hello(PROTOCOL_VERSION, 1 << 20, 1 << 22, BINDING.proof(False, EXPORTER)))
CONTROL_SEED = HELLO + encode_ack(1) + encode_ack(2**64 - 1)
MESSAGES_SEED = encode_length(3) + b"abc" + encode_length(0) + encode_length(5) + b"hello"


def build_control(draw: Draw) -> tuple[bytes, ...]:
    return chunked(draw, mutate_bytes(draw, CONTROL_SEED) if draw.chance(224) else CONTROL_SEED)


def parse_control(chunks: tuple[bytes, ...]) -> None:
    reader = ControlReader()
    for chunk in chunks:
        reader.feed(chunk)


def build_messages(draw: Draw) -> tuple[int, tuple[bytes, ...]]:
    data = mutate_bytes(draw, MESSAGES_SEED) if draw.chance(224) else MESSAGES_SEED
    return draw.choice((1 << 20, 0, 4, 2**64 - 1)), chunked(draw, data)


def parse_messages(arg: tuple[int, tuple[bytes, ...]]) -> None:
    limit, chunks = arg
    reader = MessageReader(limit)
    for chunk in chunks:
        reader.feed(chunk)


# -- path-MTU probes -----------------------------------------------------------------------
def build_pmtu(draw: Draw) -> tuple[PathMtuProber, bytes]:
    """A prober with probes out, and a datagram: a mutated probe or acknowledgement."""
    prober = PathMtuProber(1200, (1452, 1500))
    probes = prober.start(0.0)
    probe = draw.choice(probes)
    ack = struct.pack(">B16sI", PROBE_ACK, probe[1:17], len(probe))
    return prober, mutate_bytes(draw, draw.choice((ack, probe))) if draw.chance(224) else ack


def parse_pmtu(arg: tuple[PathMtuProber, bytes]) -> None:
    prober, data = arg
    answer(data)
    prober.on_ack(data)
    prober.on_timer(1.0)


# -- DHT proxy lines ----------------------------------------------------------------------
PROXY_SEED = {"data": base64.b64encode(b.OFFER).decode(), "id": "5f3a", "type": 3}


def build_proxy(draw: Draw) -> tuple[int, tuple[bytes, ...]]:
    """(line limit, stream chunks) of JSON lines, mutated as JSON or as bytes."""
    lines = []
    for _ in range(1 + draw.below(3)):
        doc: Any = dict(PROXY_SEED)
        if draw.chance(96):
            doc["expired"] = json_value(draw)
        if draw.chance(128):
            doc[draw.choice(("data", "id", "type", "expired"))] = json_value(draw)
        if draw.chance(32):
            doc = json_value(draw)
        line = json_text(draw, doc)
        lines.append(mutate_bytes(draw, line) if draw.chance(64) else line)
    limit = draw.choice((128 * 1024, 64, 1))
    return limit, chunked(draw, b"\n".join(lines))


def drain(agen: AsyncIterator[bytes | None]) -> list[bytes | None]:
    """Every item of an async generator that never suspends, without an event loop."""
    out = []
    while True:
        step: Coroutine[Any, Any, bytes | None] = agen.__anext__()  # type: ignore[assignment]
        try:
            step.send(None)
        except StopIteration as done:
            out.append(done.value)
        except StopAsyncIteration:
            return out
        else:
            raise RuntimeError("the line reader suspended on a stream that never waits")


async def _stream(chunks: tuple[bytes, ...]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def parse_proxy(arg: tuple[int, tuple[bytes, ...]]) -> None:
    """Split the stream into lines and decode each, as a get or a listen does; the first
    skipped line is raised once every line was read (the harness counts it)."""
    limit, chunks = arg
    source: AsyncIterable[bytes] = _stream(chunks)
    skipped: SkippedLine | None = None
    for line in drain(bounded_lines(source, limit)):
        try:
            if line is None:
                raise SkippedLine("oversized")
            decode_proxy_line(line)
        except SkippedLine as skip:
            skipped = skipped or skip
    if skipped is not None:
        raise skipped



#: A put that the node reported failed, and a node's status.
PROXY_ANSWERS = (
    {"err": "Put failed"},
    {"node_id": "ab" * 20, "ipv4": {"good": 3, "dubious": 0}, "ipv6": {}, "public_ip": "::1"},
)


def build_proxy_answer(draw: Draw) -> bytes:
    """The body of a proxy's answer to a put or a status request, mutated."""
    doc: Any = dict(draw.choice(PROXY_ANSWERS))
    if draw.chance(128):
        doc[draw.choice(("err", "node_id", "ipv4", "x"))] = json_value(draw)
    if draw.chance(32):
        doc = json_value(draw)
    text = json_text(draw, doc)
    return mutate_bytes(draw, text) if draw.chance(64) else text


def parse_proxy_answer(body: bytes) -> None:
    """Read an answer as a put and a status request do."""
    answer = decode_proxy_json(body, "answer")
    if isinstance(answer, dict) and "err" in answer:
        str(answer)


# -- the channel protocol, fed the peer's streams ----------------------------------------
#: The server's control and message streams, as a client receives them.
PEER_STREAMS = ((3, b"C" + HELLO + encode_ack(1)), (7, b"M" + MESSAGES_SEED))


def build_channel(draw: Draw) -> tuple[tuple[int, bytes, bool], ...]:
    """Stream data events: the peer's two streams, mutated, cut and interleaved."""
    pending = []
    for sid, data in PEER_STREAMS:
        if draw.chance(160):
            data = mutate_bytes(draw, data)
        if draw.chance(16):
            sid = draw.choice((2, 6, 11, 15, 2**62 - 1))
        pending.append([(sid, piece, False) for piece in chunked(draw, data)])
    events = []
    while any(pending):
        stream = draw.choice([p for p in pending if p])
        events.append(stream.pop(0))
    if draw.chance(16):
        sid, piece, _ = events[-1] if events else (3, b"", False)
        events.append((sid, piece, True))
    return tuple(events)


def parse_channel(events: tuple[tuple[int, bytes, bool], ...]) -> None:
    """A client channel after its handshake (bound to :data:`BINDING`), fed the events; it
    sends and takes messages as it goes, so the peer's acks and messages meet real state. A
    violation (the channel handles it by closing) is raised at the end, so the harness counts
    it as a rejection."""
    proto = ChannelProtocol(is_client=True, max_message_size=1 << 20, window=1 << 22,
                            queue_capacity=2, binding=BINDING)
    proto.handle_event(KeysReady(EXPORTER))
    proto.handle_event(HandshakeCompleted())
    for sid, data, end in events:
        proto.handle_event(StreamDataReceived(sid, data, end))
        if proto.opened:
            proto.send_message(b"x" * 100)
            proto.message_consumed()
            proto.write_ack()
        proto.pop_commands()
        proto.pop_events()
    if proto.closed:
        raise ProtocolError(proto.close_reason or "closed")
