"""The message link's frames: message and ack, encoded and strictly decoded."""

from __future__ import annotations

import cbor2
import pytest

from tierlink.errors import RecordError
from tierlink.wire.link_frames import (
    LinkAck,
    LinkMessage,
    decode_link_frame,
    encode_ack_frame,
    encode_message_frame,
)

MID = bytes(range(16))


def test_roundtrip() -> None:
    frame = encode_message_frame(MID, 5, 6, b"payload")
    assert frame == cbor2.dumps({0: "m", 1: MID, 2: 5, 3: 6, 4: b"payload"}, canonical=True)
    assert decode_link_frame(frame) == LinkMessage(MID, 5, 6, b"payload")
    ack = encode_ack_frame([MID, MID[::-1]])
    assert decode_link_frame(ack) == LinkAck((MID, MID[::-1]))


def test_unknown_kind_is_skipped() -> None:
    assert decode_link_frame(cbor2.dumps({0: "z", 1: 1})) is None


@pytest.mark.parametrize(
    "frame",
    [
        {0: "m", 1: MID[:15], 2: 1, 3: 2, 4: b""},  # short id
        {0: "m", 1: MID, 2: -1, 3: 2, 4: b""},  # negative time
        {0: "m", 1: MID, 2: 1, 3: 2**64 - 1, 4: b""},  # time past the bound
        {0: "m", 1: MID, 2: 1, 3: True, 4: b""},  # bool is not an integer
        {0: "m", 1: MID, 2: 1, 3: 2, 4: "text"},  # payload not bytes
        {0: "m", 1: MID, 2: 1, 3: 2},  # no payload
        {0: "a", 1: [MID, "x"]},  # an id that is not bytes
        {0: "a", 1: MID},  # ids not an array
        {0: 1, 1: []},  # kind not text
        {1: []},  # no kind
        ["m", MID],  # not a map
    ],
)
def test_malformed(frame: object) -> None:
    with pytest.raises(RecordError) as exc:
        decode_link_frame(cbor2.dumps(frame))
    assert exc.value.reason == "malformed"


def test_tagged_payload_is_malformed() -> None:
    data = cbor2.dumps({0: "m", 1: MID, 2: 1, 3: 2, 4: cbor2.CBORTag(2, b"\x01")})
    with pytest.raises(RecordError):
        decode_link_frame(data)
