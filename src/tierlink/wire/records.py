"""Signed wire formats in the DHT, and the peer record.

Every signed value tierlink puts in the DHT has one layout (the one unsigned value, the
answer, is sealed instead: see :mod:`tierlink.wire.signaling`)::

    value = VERSION (1 byte, 0x01) || KIND (1 byte) || BODY || SIGNATURE (4627 bytes)

``BODY`` is canonical CBOR (RFC 8949 core deterministic encoding) of a map with small
integer keys; ``SIGNATURE`` is ML-DSA-87 by the signer's identity key over
``VERSION || KIND || BODY``. The kind byte separates domains: a peer record can never be
replayed as an offer. Readers ignore map keys they do not know, so later fields can be added
without breaking old readers. Every value is capped at :data:`MAX_VALUE_SIZE` (OpenDHT
values stop at about 63 KiB).

Peer record (kind 0x01) body keys:

===  ================  ===============================================================
key  field             type
===  ================  ===============================================================
1    fingerprint       bytes(64): raw SHA3-512 of the public key
2    public_key        bytes(2592): raw ML-DSA-87 public key
3    seq               uint: strictly increasing per publisher
4    issued_at_ms      uint: Unix time in milliseconds
5    expires_at_ms     uint: Unix time in milliseconds
6    candidates        array of candidate arrays (see :func:`encode_candidate`)
7    kem_public_key    bytes(1568): ML-KEM-1024 public key (offers, offline tier)
8    mode              text: "public" (candidates listed) or "private" (none listed)
9    cert_sha256       bytes(32): optional, reserved for the channel's certificate
===  ================  ===============================================================
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

WIRE_VERSION = 1
MAX_VALUE_SIZE = 60_000

KIND_PEER_RECORD = 0x01
KIND_OFFER = 0x02
KIND_ANSWER = 0x03
KIND_ENVELOPE = 0x04
KIND_ACK = 0x05


def now_ms() -> int:
    """Current Unix time in milliseconds."""
    return int(time.time() * 1000)


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

    kind: int
    body: dict[int, Any]
    signed: bytes
    signature: bytes

    def verify(self, public_key: bytes) -> None:
        """Raise RecordError('signature') unless ``public_key`` signed this value."""
        if not verify_signature(public_key, self.signature, self.signed):
            raise RecordError("signature", "signature does not verify with the claimed key")


def open_value(value: bytes, kind: int) -> Opened:
    """Parse a signed value of the expected ``kind``; raises only RecordError."""
    if not isinstance(value, bytes | bytearray):
        raise RecordError("malformed", "value is not bytes")
    if len(value) > MAX_VALUE_SIZE:
        raise RecordError("oversize", f"value of {len(value)} bytes exceeds {MAX_VALUE_SIZE}")
    if len(value) < 2 + 1 + SIGNATURE_SIZE:
        raise RecordError("malformed", f"value of {len(value)} bytes is too short (truncated?)")
    if value[0] != WIRE_VERSION:
        raise RecordError("version", f"wire version {value[0]} is not {WIRE_VERSION}")
    if value[1] != kind:
        raise RecordError("kind", f"value kind {value[1]:#04x} is not {kind:#04x}")
    signed, signature = bytes(value[:-SIGNATURE_SIZE]), bytes(value[-SIGNATURE_SIZE:])
    try:
        body = cbor2.loads(signed[2:])
    except Exception as exc:  # cbor2 raises many types on garbage
        raise RecordError("malformed", f"body is not valid CBOR: {exc}") from None
    if not isinstance(body, dict):
        raise RecordError("malformed", "body is not a map")
    return Opened(kind, body, signed, signature)


def field_of(body: dict[int, Any], key: int, typ: type | tuple[type, ...], name: str) -> Any:
    """Fetch a required field of a given type or raise RecordError('malformed')."""
    val = body.get(key)
    if not isinstance(val, typ) or (isinstance(val, bool) and typ is int):
        raise RecordError("malformed", f"field {name!r} missing or of the wrong type")
    return val


def check_signer(body: dict[int, Any], opened: Opened, fp_key: int = 1, pk_key: int = 2) -> str:
    """Check the body's public key hashes to its fingerprint and signed the value.

    Returns the signer's fingerprint (hex).
    """
    fp = field_of(body, fp_key, bytes, "fingerprint")
    pk = field_of(body, pk_key, bytes, "public_key")
    if len(pk) != PUBLIC_KEY_SIZE or len(fp) != FINGERPRINT_HEX_LEN // 2:
        raise RecordError("malformed", "public key or fingerprint has the wrong length")
    fingerprint: str = fp.hex()
    if fingerprint_of(pk) != fingerprint:
        raise RecordError("fingerprint", "SHA3-512 of the public key is not the fingerprint")
    opened.verify(pk)
    return fingerprint


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


def decode_candidate(item: Any) -> CandidateInfo:
    """Inverse of :func:`encode_candidate`; RecordError('malformed') on anything else."""
    if not isinstance(item, list) or len(item) < 9:
        raise RecordError("malformed", "candidate is not a 9-element array")
    f, comp, tr, prio, host, port, typ, raddr, rport = item[:9]
    ok = (
        isinstance(f, str) and isinstance(comp, int) and isinstance(tr, str)
        and isinstance(prio, int) and isinstance(host, str) and isinstance(port, int)
        and isinstance(typ, str) and (raddr is None or isinstance(raddr, str))
        and (rport is None or isinstance(rport, int)) and 0 <= port <= 65535
        and typ in ("host", "srflx", "prflx", "relay")
    )
    if not ok:
        raise RecordError("malformed", "candidate fields have the wrong types")
    return CandidateInfo(f, comp, tr, prio, host, port, typ, raddr, rport)


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
    cert_sha256: bytes | None = None

    @classmethod
    def create(
        cls,
        identity: Identity,
        seq: int,
        lifetime_s: float = 600.0,
        candidates: tuple[CandidateInfo, ...] = (),
        mode: str = "private",
        cert_sha256: bytes | None = None,
    ) -> PeerRecord:
        """A record for ``identity`` valid for ``lifetime_s`` seconds from now."""
        t = now_ms()
        return cls(
            identity.fingerprint, identity.public_key, seq, t, t + int(lifetime_s * 1000),
            tuple(candidates), identity.kem_public_key, mode, cert_sha256,
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
    def decode(cls, value: bytes, *, now: int | None = None) -> PeerRecord:
        """Parse and verify a record (signature, fingerprint binding, expiry, size)."""
        opened = open_value(value, KIND_PEER_RECORD)
        body = opened.body
        fingerprint = check_signer(body, opened)
        seq = field_of(body, 3, int, "seq")
        issued = field_of(body, 4, int, "issued_at_ms")
        expires = field_of(body, 5, int, "expires_at_ms")
        cands = field_of(body, 6, list, "candidates")
        kem = body.get(7, b"")
        if not isinstance(kem, bytes) or (kem and len(kem) != KEM_PUBLIC_KEY_SIZE):
            raise RecordError("malformed", "kem_public_key has the wrong type or length")
        mode = body.get(8, "public")
        cert = body.get(9)
        if not isinstance(mode, str) or (cert is not None and not isinstance(cert, bytes)):
            raise RecordError("malformed", "mode or cert_sha256 has the wrong type")
        t = now_ms() if now is None else now
        if expires <= t:
            raise RecordError("expired", f"record expired {(t - expires) / 1000:.1f} s ago")
        return cls(
            fingerprint, field_of(body, 2, bytes, "public_key"), seq, issued, expires,
            tuple(decode_candidate(c) for c in cands), kem, mode, cert,
        )
