"""The channel's wire format parsers: any chunking, limits enforced before buffering."""

from __future__ import annotations

import random

import pytest

from tierlink.wire import channel_frames as cf


def _chunks(data: bytes, rng: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        step = rng.choice([1, 2, 7, 1100, 5000])
        out.append(data[pos : pos + step])
        pos += step
    return out


def test_messages_survive_any_chunking() -> None:
    rng = random.Random(3)
    messages = [b"", b"a", rng.randbytes(1200), b"", rng.randbytes(70_000), b"z" * 8]
    stream = b"".join(cf.encode_length(len(m)) + m for m in messages)
    for _ in range(20):
        reader = cf.MessageReader(limit=70_000)
        got: list[bytes] = []
        for chunk in _chunks(stream, rng):
            got += reader.feed(chunk)
        assert got == messages
        assert reader.partial_bytes == 0


def test_message_over_limit_is_rejected_from_its_header() -> None:
    reader = cf.MessageReader(limit=10)
    assert reader.feed(cf.encode_length(10) + b"x" * 10) == [b"x" * 10]
    with pytest.raises(cf.ProtocolError, match="11 bytes, above the limit of 10"):
        reader.feed(cf.encode_length(11))
    big = cf.MessageReader(limit=1 << 30)
    with pytest.raises(cf.ProtocolError):
        big.feed(cf.encode_length(1 << 40))


def test_partial_bytes_counts_the_message_in_progress() -> None:
    reader = cf.MessageReader(limit=100)
    assert reader.feed(cf.encode_length(50) + b"x" * 20) == []
    assert reader.partial_bytes == 20
    assert reader.feed(b"x" * 30 + cf.encode_length(1)) == [b"x" * 50]
    assert reader.partial_bytes == 0


def test_control_frames_any_chunking() -> None:
    rng = random.Random(5)
    hello = cf.Hello(version=2, max_message_size=16 << 20, window=4 << 20, proof=bytes(range(32)))
    stream = cf.encode_hello(hello) + cf.encode_ack(1) + cf.encode_ack(2**40)
    for _ in range(10):
        reader = cf.ControlReader()
        frames = []
        for chunk in _chunks(stream, rng):
            frames += reader.feed(chunk)
        assert frames == [hello, cf.Ack(1), cf.Ack(2**40)]


def test_unknown_control_frame_is_a_protocol_error() -> None:
    with pytest.raises(cf.ProtocolError, match="0x07"):
        cf.ControlReader().feed(b"\x07" + b"\0" * 16)
