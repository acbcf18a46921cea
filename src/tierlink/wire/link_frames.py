"""Frames of the message link: one canonical-CBOR frame per secure-channel message.

The node's tiered delivery sends each message over a live link as a ``message`` frame and
the receiver acknowledges it with an ``ack`` frame once the application took it. A frame
whose kind (key 0) this version does not know decodes to None, so a later version can add
kinds; anything else that is not a valid frame raises RecordError('malformed').
Layout: docs/PROTOCOL.md, section "Link frames".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cbor2

from tierlink.wire.decoding import Fields, check_bytes, decode, malformed

KIND_MESSAGE = "m"
KIND_ACK = "a"
MESSAGE_ID_SIZE = 16
MAX_ACK_IDS = 2048
"""Most message ids one ack frame may list."""


@dataclass(frozen=True)
class LinkMessage:
    """A message frame: ``{0: "m", 1: id, 2: created_at_ms, 3: expires_at_ms, 4: payload}``."""

    message_id: bytes
    created_at_ms: int
    expires_at_ms: int
    payload: bytes


@dataclass(frozen=True)
class LinkAck:
    """An ack frame: ``{0: "a", 1: [id, ...]}``: these messages were taken."""

    message_ids: tuple[bytes, ...]


LinkFrame = LinkMessage | LinkAck


def encode_message_frame(
    message_id: bytes, created_at_ms: int, expires_at_ms: int, payload: bytes
) -> bytes:
    """The frame carrying one message."""
    frame = {0: KIND_MESSAGE, 1: message_id, 2: created_at_ms, 3: expires_at_ms, 4: payload}
    return cbor2.dumps(frame, canonical=True)


def encode_ack_frame(message_ids: Iterable[bytes]) -> bytes:
    """The frame acknowledging ``message_ids``."""
    return cbor2.dumps({0: KIND_ACK, 1: list(message_ids)}, canonical=True)


def decode_link_frame(data: bytes) -> LinkFrame | None:
    """Decode one frame; None for a frame of an unknown kind; RecordError('malformed')."""
    raw = decode(data)
    kind = raw.get(0) if isinstance(raw, dict) else None
    if kind == KIND_MESSAGE:
        msg = Fields(raw, "link message frame", range(5))
        return LinkMessage(
            msg.bstr(1, "message_id", size=MESSAGE_ID_SIZE),
            msg.uint(2, "created_at_ms"),
            msg.uint(3, "expires_at_ms"),
            msg.bstr(4, "payload"),
        )
    if kind == KIND_ACK:
        ack = Fields(raw, "link ack frame", range(2))
        ids = ack.array(1, "message_ids", max_items=MAX_ACK_IDS)
        return LinkAck(tuple(check_bytes(m, "message id", size=MESSAGE_ID_SIZE) for m in ids))
    if type(kind) is not str:
        raise malformed("link frame is not a map with a text kind at key 0")
    return None

