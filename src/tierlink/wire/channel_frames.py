"""Wire format of the secure channel inside QUIC (pure functions, no I/O).

Each side opens two unidirectional QUIC streams after the handshake. The first byte of a
stream names its role:

* ``C`` control stream: a sequence of fixed-size frames

  - ``HELLO``  = 0x01, version (u8), max_message_size (u64), receive window (u64),
    proof (32 bytes, see below)
  - ``ACK``    = 0x02, id (u64): every message up to ``id`` is in the receiver's queue

* ``M`` message stream: a sequence of ``length (u64 big-endian) || payload``. Message ids are
  implicit: the n-th message on the stream has id n (starting at 1), so acks are cumulative.

Unreliable messages travel as QUIC DATAGRAM frames (RFC 9221) without any framing.

The HELLO's proof binds this QUIC connection to the dial that set it up: an HMAC, under a
key only the offer's two ends derive (:class:`ChannelBinding`), over the sender's role, the
session id, both fingerprints and the TLS exporter of the connection (RFC 8446 §7.5). A
peer that relays another dial's offer and answer (so that two victims handshake with each
other, each believing it talks to the relay) knows both dials' keys but cannot make either
victim's proof name the other dial: each victim rejects the other's HELLO. The exporter,
not the certificates, names the connection: a node serves every connection with one
certificate, while the exporter differs on every handshake, so a proof cannot be replayed
into another connection.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tierlink.errors import TierlinkError
from tierlink.wire.signaling import SESSION_ID_SIZE, OfferSecret

PROTOCOL_VERSION = 2
TAG_CONTROL = b"C"
TAG_MESSAGES = b"M"

FRAME_HELLO = 0x01
FRAME_ACK = 0x02

PROOF_SIZE = 32
#: TLS exporter label (RFC 8446 §7.5) of the value a proof binds; empty context, 32 bytes.
EXPORTER_LABEL = b"EXPORTER-tierlink-channel-binding"
EXPORTER_SIZE = 32
BINDING_KEY_INFO = b"tierlink/channel-binding"
PROOF_PREFIX = b"tierlink/channel-proof"
ROLE_DIALER = 0x01
ROLE_CALLEE = 0x02

_HELLO = struct.Struct(">BBQQ32s")
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
    proof: bytes


@dataclass(frozen=True)
class Ack:
    """Cumulative acknowledgement: messages 1..``message_id`` are in the peer's queue."""

    message_id: int


ControlFrame = Hello | Ack


def encode_hello(hello: Hello) -> bytes:
    """Serialize a HELLO frame."""
    if len(hello.proof) != PROOF_SIZE:
        raise ValueError(f"a HELLO's proof is {PROOF_SIZE} bytes")
    return _HELLO.pack(
        FRAME_HELLO, hello.version, hello.max_message_size, hello.window, hello.proof
    )


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
                _, version, max_size, window, proof = _HELLO.unpack_from(buf, pos)
                frames.append(Hello(version, max_size, window, proof))
            else:
                _, message_id = _ACK.unpack_from(buf, pos)
                frames.append(Ack(message_id=message_id))
            pos += size
        del buf[:pos]
        return frames


@dataclass(frozen=True)
class ChannelBinding:
    """What one dial's channel must be bound to: the offer's session, both fingerprints
    (raw 64 bytes each) and a MAC key only the dialer and the callee derive."""

    key: bytes = field(repr=False)
    session_id: bytes
    dialer: bytes
    callee: bytes

    def __post_init__(self) -> None:
        if len(self.key) != 32 or len(self.session_id) != SESSION_ID_SIZE:
            raise ValueError("a binding key is 32 bytes, a session id 16")
        if len(self.dialer) != 64 or len(self.callee) != 64:
            raise ValueError("fingerprints are 64 raw bytes")

    def proof(self, dialer_side: bool, exporter: bytes) -> bytes:
        """The HELLO proof of the dialer's (``dialer_side``) or the callee's side of the
        connection whose TLS exporter value is ``exporter``."""
        if len(exporter) != EXPORTER_SIZE:
            raise ValueError(f"the exporter value is {EXPORTER_SIZE} bytes")
        role = ROLE_DIALER if dialer_side else ROLE_CALLEE
        transcript = (
            PROOF_PREFIX + bytes([role]) + self.session_id + self.dialer + self.callee + exporter
        )
        return hmac.new(self.key, transcript, hashlib.sha256).digest()

    def verify(self, dialer_side: bool, exporter: bytes, proof: bytes) -> bool:
        """True if ``proof`` is the HELLO proof of that side (constant-time compare)."""
        return hmac.compare_digest(self.proof(dialer_side, exporter), proof)


def channel_binding(secret: OfferSecret) -> ChannelBinding:
    """The binding of the channel set up by the offer whose answer ``secret`` seals: its
    key is HKDF-SHA256 of the offer secret's key with its own label (never the sealing key
    itself)."""
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=secret.session_id, info=BINDING_KEY_INFO
    ).derive(secret.key)
    return ChannelBinding(
        key, secret.session_id, bytes.fromhex(secret.dialer), bytes.fromhex(secret.callee)
    )


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
        pos, end = 0, len(data)
        unpack_from = _LENGTH.unpack_from
        while pos < end:
            if self._need < 0:
                if not self._header and end - pos >= LENGTH_PREFIX_SIZE:
                    (length,) = unpack_from(data, pos)  # the whole prefix in this chunk
                    pos += LENGTH_PREFIX_SIZE
                else:
                    take = min(LENGTH_PREFIX_SIZE - len(self._header), end - pos)
                    self._header += data[pos : pos + take]
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
                if not self._parts and end - pos >= length:
                    out.append(data[pos : pos + length])  # whole message in this chunk
                    pos += length
                    continue
                self._need = length
            take = min(self._need - self._got, end - pos)
            self._parts.append(data[pos : pos + take])
            self._got += take
            pos += take
            if self._got == self._need:
                out.append(b"".join(self._parts))
                self._parts.clear()
                self._got = 0
                self._need = -1
        return out
