"""Signed DHT values (VERSION || KIND || BODY || SIGNATURE), candidates and the peer record.

Every signed value has one layout and one opener (:func:`open_value`, then
:func:`claimed_signer` and, after the kind's cheap addressee checks, :meth:`Opened.verify`), so
every kind gets the same size, version, kind, CBOR and signature checks; the kind byte
separates domains (a peer record can never be replayed as an offer). Bodies are read with
:class:`~tierlink.wire.decoding.Fields`. Byte layouts: docs/PROTOCOL.md, sections "Signed
values", "Candidates" and "Peer record".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import cbor2

from tierlink.errors import RecordError
from tierlink.identity import (
    FINGERPRINT_HEX_LEN,
    KEM_PUBLIC_KEY_SIZE,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    fingerprint_of,
    verify_signature,
)
from tierlink.wire.decoding import Fields, check_uint, decode, malformed

WIRE_VERSION = 1
MAX_VALUE_SIZE = 60_000

KIND_PEER_RECORD = 0x01
KIND_OFFER = 0x02
KIND_ANSWER = 0x03
KIND_ENVELOPE = 0x04
KIND_ACK = 0x05
KIND_MAILBOX_DESCRIPTOR = 0x06


MAX_CLOCK_SKEW_MS = 10 * 60 * 1000
"""How far ahead of the receiver's clock a value's issued/created time may lie."""
MAX_RECORD_LIFETIME_S = 24 * 3600.0
"""Longest lifetime a peer record may claim (issued to expires)."""


def republish_period_s(lifetime_s: float) -> float:
    """How often a record of ``lifetime_s`` is published again: a third of its lifetime (of
    at most :data:`MAX_RECORD_LIFETIME_S`), at least a second. A record's times are multiples
    of this period (:func:`record_times`)."""
    return max(min(lifetime_s, MAX_RECORD_LIFETIME_S) / 3, 1.0)


def record_times(now: int, lifetime_s: float) -> tuple[int, int]:
    """``(issued_at_ms, expires_at_ms)`` of a record published at ``now`` (Unix ms).

    ``issued`` is ``now`` rounded down to the republish period P, so the record tells which
    period it was published in and nothing finer; ``expires = issued + P + lifetime``, so it
    stays valid at least ``lifetime`` after ``now`` (the lifetime is capped so that this
    span stays within :data:`MAX_RECORD_LIFETIME_S`).
    """
    period = int(republish_period_s(lifetime_s) * 1000)
    lifetime = min(int(lifetime_s * 1000), int(MAX_RECORD_LIFETIME_S * 1000) - period)
    issued = now - now % period
    return issued, issued + period + lifetime


def next_seq(previous: int, issued: int) -> int:
    """The sequence number of a record issued at ``issued`` after one numbered ``previous``
    (0: none): ``issued`` itself, or ``previous + 1`` if that is larger (a second publish in
    one period). It orders a publisher's records by period, also across restarts once the
    publisher remembers ``previous``, and reveals no time finer than the period."""
    return max(previous + 1, issued)


def now_ms() -> int:
    """Current Unix time in milliseconds."""
    return int(time.time() * 1000)


def check_times(
    what: str, start: int, expires: int, now: int, max_lifetime_ms: int, late_ms: int = 0
) -> None:
    """Bound a value's times to a window of the receiver's clock ``now``.

    ``start`` (issued or created) may lie at most :data:`MAX_CLOCK_SKEW_MS` ahead of ``now``;
    ``start < expires <= start + max_lifetime_ms``; ``expires + late_ms > now`` (else
    ``expired``, checked first; ``late_ms`` lets a short-lived value from a sender whose clock
    is behind ours still count). Otherwise reason ``clock``. So every time field is within
    ``[now - max_lifetime_ms - late_ms, now + max_lifetime_ms + MAX_CLOCK_SKEW_MS]``.
    """
    if expires + late_ms <= now:
        raise RecordError("expired", f"{what} expired {(now - expires) / 1000:.1f} s ago")
    if start > now + MAX_CLOCK_SKEW_MS:
        raise RecordError(
            "clock", f"{what} starts {(start - now) / 1000:.0f} s ahead of our clock"
        )
    if not start < expires <= start + max_lifetime_ms:
        raise RecordError(
            "clock", f"{what} lifetime is empty, negative or over {max_lifetime_ms // 1000} s"
        )


# -- the generic signed value ----------------------------------------------------------------
def seal(identity: Identity, kind: int, body: dict[int, Any]) -> bytes:
    """Encode ``body`` canonically and sign it as a value of ``kind``."""
    head = bytes([WIRE_VERSION, kind]) + cbor2.dumps(body, canonical=True)
    value = head + identity.sign(head)
    if len(value) > MAX_VALUE_SIZE:
        raise RecordError("oversize", f"value of {len(value)} bytes exceeds {MAX_VALUE_SIZE}")
    return value


@dataclass(frozen=True)
class Opened:
    """A value whose structure was parsed; the signature is not yet checked."""

    body: dict[int, Any]
    signed: bytes
    signature: bytes

    def verify(self, public_key: bytes) -> None:
        """Raise RecordError('signature') unless ``public_key`` signed this value."""
        if not verify_signature(public_key, self.signature, self.signed):
            raise RecordError("signature", "signature does not verify with the claimed key")


def check_head(value: bytes, kind: int, min_size: int) -> bytes:
    """Check the type, size, version and kind of any value (signed or sealed)."""
    if not isinstance(value, bytes | bytearray):
        raise malformed("value is not bytes")
    if len(value) > MAX_VALUE_SIZE:
        raise RecordError("oversize", f"value of {len(value)} bytes exceeds {MAX_VALUE_SIZE}")
    if len(value) < min_size:
        raise malformed(f"value of {len(value)} bytes is too short (truncated?)")
    if value[0] != WIRE_VERSION:
        raise RecordError("version", f"wire version {value[0]} is not {WIRE_VERSION}")
    if value[1] != kind:
        raise RecordError("kind", f"value kind {value[1]:#04x} is not {kind:#04x}")
    return bytes(value)


def open_value(value: bytes, kind: int) -> Opened:
    """Parse a signed value of the expected ``kind``; raises only RecordError."""
    value = check_head(value, kind, 2 + 1 + SIGNATURE_SIZE)
    signed, signature = value[:-SIGNATURE_SIZE], value[-SIGNATURE_SIZE:]
    body = decode(signed[2:])
    if not isinstance(body, dict):
        raise malformed("body is not a map")
    return Opened(body, signed, signature)


def claimed_signer(fields: Fields, fp_key: int = 1, pk_key: int = 2) -> tuple[str, bytes]:
    """The body's ``(fingerprint, public key)`` once SHA3-512 binds the key to the fingerprint.

    A hash, not a verification: callers run their cheap addressee and allow-list checks on
    this claim before :meth:`Opened.verify` spends an ML-DSA verification on it.
    """
    fp = fields.bstr(fp_key, "fingerprint", size=FINGERPRINT_HEX_LEN // 2)
    pk = fields.bstr(pk_key, "public_key", size=PUBLIC_KEY_SIZE)
    fingerprint: str = fp.hex()
    if fingerprint_of(pk) != fingerprint:
        raise RecordError("fingerprint", "SHA3-512 of the public key is not the fingerprint")
    return fingerprint, pk


def leads_with_signer(value: bytes, kind: int, fingerprint: str) -> bool:
    """True if ``value`` is a signed value of ``kind`` whose body begins, as canonical CBOR
    orders it, with key 1 holding ``fingerprint``. A byte comparison, no decoding: a reader
    flooded with values may keep only these past a budget (every tierlink writer encodes
    canonically; a value that fails this may still be valid and is then merely skipped)."""
    if len(value) < 4 or value[0] != WIRE_VERSION or value[1] != kind:
        return False
    head = value[2]
    start = 3 if 0xA0 <= head <= 0xB7 else 4 if head == 0xB8 else 0
    claim = b"\x01\x58\x40" + bytes.fromhex(fingerprint)
    return start > 0 and value[start:start + len(claim)] == claim


# -- candidates ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CandidateInfo:
    """An ICE candidate as it travels in records, offers and answers."""

    foundation: str
    component: int
    transport: str
    priority: int
    host: str
    port: int
    type: str
    related_address: str | None = None
    related_port: int | None = None


def encode_candidate(c: CandidateInfo) -> list[Any]:
    """[foundation, component, transport, priority, host, port, type, raddr, rport]."""
    return [
        c.foundation, c.component, c.transport, c.priority, c.host, c.port, c.type,
        c.related_address, c.related_port,
    ]


CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
MAX_CANDIDATE_TEXT = 256


def _text(val: object, what: str) -> str:
    if type(val) is not str or len(val) > MAX_CANDIDATE_TEXT:
        raise malformed(f"candidate {what} is not text of at most {MAX_CANDIDATE_TEXT} chars")
    return val


def decode_candidate(item: Any) -> CandidateInfo:
    """Inverse of :func:`encode_candidate`; RecordError('malformed') on anything else.

    Elements after the ninth are ignored (later versions may append some).
    """
    if type(item) is not list or not 9 <= len(item) <= 16:
        raise malformed("candidate is not an array of 9 to 16 elements")
    f, comp, tr, prio, host, port, typ, raddr, rport = item[:9]
    if typ not in CANDIDATE_TYPES:
        raise malformed(f"candidate type {typ!r} is not one of {CANDIDATE_TYPES}")
    return CandidateInfo(
        _text(f, "foundation"),
        check_uint(comp, "candidate component", maximum=256),
        _text(tr, "transport"),
        check_uint(prio, "candidate priority", maximum=2**32 - 1),
        _text(host, "host"),
        check_uint(port, "candidate port", maximum=65535),
        typ,
        None if raddr is None else _text(raddr, "related address"),
        None if rport is None else check_uint(rport, "candidate related port", maximum=65535),
    )


# -- the peer record ------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerRecord:
    """What a peer publishes under its ICE candidates key."""

    fingerprint: str
    public_key: bytes
    seq: int
    issued_at_ms: int
    expires_at_ms: int
    candidates: tuple[CandidateInfo, ...] = ()
    kem_public_key: bytes = b""
    mode: str = "private"
    #: Key 9: a certificate hash no tierlink code sets (the channel's certificate travels
    #: in the offer and answer); encoded when set, decoded when present.
    cert_sha256: bytes | None = None

    @classmethod
    def create(
        cls,
        identity: Identity,
        seq: int,
        lifetime_s: float = 600.0,
        candidates: tuple[CandidateInfo, ...] = (),
        mode: str = "private",
        now: int | None = None,
    ) -> PeerRecord:
        """A record for ``identity`` published at ``now`` (default: the clock), its times
        quantized to the republish period by :func:`record_times`."""
        issued, expires = record_times(now_ms() if now is None else now, lifetime_s)
        return cls(
            identity.fingerprint, identity.public_key, seq, issued, expires,
            tuple(candidates), identity.kem_public_key, mode,
        )

    def encode(self, identity: Identity) -> bytes:
        """Sign and encode; ``identity`` must be the record's owner."""
        if identity.fingerprint != self.fingerprint:
            raise ValueError("a peer record can only be signed by its owner")
        body: dict[int, Any] = {
            1: bytes.fromhex(self.fingerprint),
            2: self.public_key,
            3: self.seq,
            4: self.issued_at_ms,
            5: self.expires_at_ms,
            6: [encode_candidate(c) for c in self.candidates],
            7: self.kem_public_key,
            8: self.mode,
        }
        if self.cert_sha256 is not None:
            body[9] = self.cert_sha256
        return seal(identity, KIND_PEER_RECORD, body)

    @classmethod
    def decode(
        cls, value: bytes, *, now: int | None = None, owner: str | None = None
    ) -> PeerRecord:
        """Parse and verify a record: :meth:`claim`, then the signature."""
        return cls.claim(value, now=now, owner=owner).verify()

    @classmethod
    def claim(
        cls, value: bytes, *, now: int | None = None, owner: str | None = None
    ) -> RecordClaim:
        """Every check but the signature: size, structure, times, ``owner`` (the fingerprint
        looked up, if given; compared before any hashing), the fingerprint binding, fields.

        A reader holding many values of one key runs this on each (cheap) and spends a
        signature verification only on the claims it prefers (:meth:`RecordClaim.verify`).
        """
        opened = open_value(value, KIND_PEER_RECORD)
        body = Fields(opened.body, "peer record", range(1, 10))
        issued = body.uint(4, "issued_at_ms")
        expires = body.uint(5, "expires_at_ms")
        t = now_ms() if now is None else now
        check_times("record", issued, expires, t, int(MAX_RECORD_LIFETIME_S * 1000))
        if owner is not None and body.map.get(1) != bytes.fromhex(owner):
            raise RecordError("fingerprint", "record belongs to another fingerprint")
        fingerprint, public_key = claimed_signer(body)
        seq = body.uint(3, "seq")
        cands = tuple(decode_candidate(c) for c in body.array(6, "candidates"))
        kem = body.opt_bstr(7, "kem_public_key", max_size=KEM_PUBLIC_KEY_SIZE) or b""
        if kem and len(kem) != KEM_PUBLIC_KEY_SIZE:
            raise malformed(f"kem_public_key must be {KEM_PUBLIC_KEY_SIZE} bytes or empty")
        mode = body.opt_text(8, "mode", "public", max_len=32)
        cert = body.opt_bstr(9, "cert_sha256", size=32)
        record = cls(fingerprint, public_key, seq, issued, expires, cands, kem, mode, cert)
        return RecordClaim(record, opened)


@dataclass(frozen=True)
class RecordClaim:
    """A peer record that passed every check but its signature."""

    record: PeerRecord
    opened: Opened

    @property
    def seq(self) -> int:
        """The claimed sequence number (not yet authenticated)."""
        return self.record.seq

    def verify(self) -> PeerRecord:
        """The record, once its claimed key's signature verifies; RecordError otherwise."""
        self.opened.verify(self.record.public_key)
        return self.record
