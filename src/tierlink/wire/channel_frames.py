"""Wire format of the secure channel inside QUIC (pure functions, no I/O).

Each side opens two unidirectional QUIC streams after the handshake. The first byte of a
stream names its role:

* ``C`` control stream: a sequence of fixed-size frames

  - ``HELLO``  = 0x01, version (u8), max_message_size (u64), receive window (u64)
  - ``ACK``    = 0x02, id (u64): every message up to ``id`` is in the receiver's queue

* ``M`` message stream: a sequence of ``length (u64 big-endian) || payload``. Message ids are
  implicit: the n-th message on the stream has id n (starting at 1), so acks are cumulative.

Unreliable messages travel as QUIC DATAGRAM frames (RFC 9221) without any framing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tierlink.errors import TierlinkError

PROTOCOL_VERSION = 1
TAG_CONTROL = b"C"
TAG_MESSAGES = b"M"

FRAME_HELLO = 0x01
FRAME_ACK = 0x02

_HELLO = struct.Struct(">BBQQ")
_ACK = struct.Struct(">BQ")
_FRAME_SIZES = {FRAME_HELLO: _HELLO.size, FRAME_ACK: _ACK.size}
_LENGTH = struct.Struct(">Q")
LENGTH_PREFIX_SIZE = _LENGTH.size


class ProtocolError(TierlinkError):
    """The peer broke the channel wire format (the channel is closed)."""


@dataclass(frozen=True)
class Hello:
    """First control frame of each side: what it accepts."""

    version: int
    max_message_size: int
    window: int


@dataclass(frozen=True)
class Ack:
    """Cumulative acknowledgement: messages 1..``message_id`` are in the peer's queue."""

    message_id: int


ControlFrame = Hello | Ack


def encode_hello(hello: Hello) -> bytes:
    """Serialize a HELLO frame."""
    return _HELLO.pack(FRAME_HELLO, hello.version, hello.max_message_size, hello.window)


def encode_ack(message_id: int) -> bytes:
    """Serialize an ACK frame."""
    return _ACK.pack(FRAME_ACK, message_id)


def encode_length(length: int) -> bytes:
    """The length prefix of one message on the message stream."""
    return _LENGTH.pack(length)


class ControlReader:
    """Incremental parser of the control stream (after its tag byte)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[ControlFrame]:
        """Consume bytes; return every complete frame. Raises ProtocolError."""
        self._buf += data
        frames: list[ControlFrame] = []
        pos = 0
        buf = self._buf
        while pos < len(buf):
            kind = buf[pos]
            size = _FRAME_SIZES.get(kind)
            if size is None:
                raise ProtocolError(f"unknown control frame type 0x{kind:02x}")
            if len(buf) - pos < size:
                break
            if kind == FRAME_HELLO:
                _, version, max_size, window = _HELLO.unpack_from(buf, pos)
                frames.append(Hello(version=version, max_message_size=max_size, window=window))
            else:
                _, message_id = _ACK.unpack_from(buf, pos)
                frames.append(Ack(message_id=message_id))
            pos += size
        del buf[:pos]
        return frames


class MessageReader:
    """Incremental parser of the message stream (after its tag byte).

    ``limit`` is the largest message accepted; a larger length prefix is a protocol error
    raised before any of its payload is buffered.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._header = bytearray()
        self._need = -1  # payload bytes of the current message; -1 while reading a header
        self._parts: list[bytes] = []
        self._got = 0

    @property
    def partial_bytes(self) -> int:
        """Payload bytes buffered for the message being received."""
        return self._got

    def feed(self, data: bytes) -> list[bytes]:
        """Consume bytes; return every complete message in order. Raises ProtocolError."""
        out: list[bytes] = []
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            if self._need < 0:
                take = min(LENGTH_PREFIX_SIZE - len(self._header), end - pos)
                self._header += view[pos : pos + take]
                pos += take
                if len(self._header) < LENGTH_PREFIX_SIZE:
                    break
                (length,) = _LENGTH.unpack(self._header)
                self._header.clear()
                if length > self._limit:
                    raise ProtocolError(
                        f"peer sent a message of {length} bytes, above the limit of "
                        f"{self._limit} bytes"
                    )
                if length == 0:
                    out.append(b"")
                    continue
                self._need = length
            take = min(self._need - self._got, end - pos)
            if not self._parts and take == self._need:
                out.append(bytes(view[pos : pos + take]))  # whole message in one chunk
                pos += take
                self._need = -1
                continue
            self._parts.append(bytes(view[pos : pos + take]))
            self._got += take
            pos += take
            if self._got == self._need:
                out.append(b"".join(self._parts))
                self._parts.clear()
                self._got = 0
                self._need = -1
        return out
