"""Valid encodings of every signed or sealed kind, and their re-signing by the attacker.

The only module that knows how a value is built: the fuzz targets ask it for a seed value,
for a value's structured body, and for a value re-built from a mutated body or session
description. It builds through the public encoders (``PeerRecord.encode``, ``encode_offer``,
``encode_answer``, ``create_envelope``, ``create_ack``, ``seal``); the one private seam is
the session-description encoder, replaced for one call so that any plaintext is encrypted
with the offer's or answer's real key and associated data (a mutated plaintext gets through
the AEAD to the session-description reader).

Every value is signed by :data:`ATTACKER` and addressed to :data:`VICTIM`: the attacker
holds a key of its own, so its signatures verify, and only the fields are hostile.
"""

from __future__ import annotations

import hashlib
from typing import Any
from unittest import mock

import cbor2

from tierlink.identity import Identity
from tierlink.wire import signaling
from tierlink.wire.ack import create_ack
from tierlink.wire.envelope import create_envelope
from tierlink.wire.records import (
    KIND_ACK,
    KIND_ENVELOPE,
    KIND_OFFER,
    KIND_PEER_RECORD,
    WIRE_VERSION,
    CandidateInfo,
    PeerRecord,
    encode_candidate,
    now_ms,
    open_value,
    seal,
)
from tierlink.wire.signaling import OfferSecret, SessionDescription


def _identity(name: str) -> Identity:
    """A fixed identity, so a finding replays with the same keys."""
    seed = hashlib.sha512(b"tierlink-fuzz/" + name.encode()).digest()
    return Identity(seed[:32], hashlib.sha512(seed).digest())


ATTACKER = _identity("attacker")
VICTIM = _identity("victim")
NOW = now_ms()
"""The receiver's clock for values built from the seeds (their times are fixed)."""

CANDIDATES = (
    CandidateInfo("1a2b", 1, "udp", 2130706431, "198.18.1.2", 40000, "host"),
    CandidateInfo("3c4d", 1, "udp", 1694498815, "203.0.113.10", 50000, "srflx", "198.18.1.2", 4),
    CandidateInfo("5e6f", 1, "udp", 16777215, "2001:db8::7", 3478, "relay", "203.0.113.10", 5),
)
PARAMS = SessionDescription(
    "abcd", "A" * 22, CANDIDATES, bytes(32), "messages", (1 << 20, 1 << 22), (b"\xc0" * 40,),
)
MESSAGE_IDS = tuple(hashlib.sha256(bytes([i])).digest()[:16] for i in range(3))


def session_fields(params: SessionDescription) -> dict[int, Any]:
    """The session description's map (docs/PROTOCOL.md §8), to mutate before encoding."""
    fields: dict[int, Any] = {
        1: params.ufrag, 2: params.pwd, 3: [encode_candidate(c) for c in params.candidates],
        4: params.cert_sha256, 6: params.purpose,
    }
    if params.channel_limits is not None:
        fields[7] = list(params.channel_limits)
    if params.quic_flight:
        fields[8] = list(params.quic_flight)
    return fields


def peer_record() -> bytes:
    """The attacker's record with candidates of every shape."""
    record = PeerRecord(
        ATTACKER.fingerprint, ATTACKER.public_key, 7, NOW - 1000, NOW + 600_000, CANDIDATES,
        ATTACKER.kem_public_key, "public", bytes(32),
    )
    return record.encode(ATTACKER)


def offer(plaintext: bytes | None = None) -> tuple[bytes, OfferSecret]:
    """An offer from the attacker to the victim, stamped now; ``plaintext`` replaces the
    encoded session description inside the ciphertext."""
    session_id = bytes(range(16))
    if plaintext is None:
        return signaling.encode_offer(
            ATTACKER, VICTIM.fingerprint, VICTIM.kem_public_key, session_id, PARAMS, 600.0
        )
    with mock.patch.object(signaling, "_encode_params", lambda _params: plaintext):
        return signaling.encode_offer(
            ATTACKER, VICTIM.fingerprint, VICTIM.kem_public_key, session_id, PARAMS, 600.0
        )


OFFER, SECRET = offer()
"""The seed offer, and the secret the victim's answers to it are sealed with."""


def answer(plaintext: bytes | None = None) -> bytes:
    """An answer to :data:`OFFER`; ``plaintext`` replaces the encoded session description."""
    if plaintext is None:
        return signaling.encode_answer(SECRET, PARAMS)
    with mock.patch.object(signaling, "_encode_params", lambda _params: plaintext):
        return signaling.encode_answer(SECRET, PARAMS)


def envelope() -> bytes:
    """An envelope from the attacker to the victim, created a second before :data:`NOW`."""
    value, _ = create_envelope(
        ATTACKER, VICTIM.fingerprint, VICTIM.kem_public_key, b"hello", 3600.0, MESSAGE_IDS[0],
        created_at_ms=NOW - 1000,
    )
    return value


def ack() -> bytes:
    """An ack signed by the attacker for three of the victim's messages."""
    return create_ack(ATTACKER, VICTIM.fingerprint, MESSAGE_IDS, 3600.0, created_at_ms=NOW - 1000)


#: Signed kinds: the seed value of each.
SIGNED_SEEDS: dict[int, bytes] = {
    KIND_PEER_RECORD: peer_record(),
    KIND_OFFER: OFFER,
    KIND_ENVELOPE: envelope(),
    KIND_ACK: ack(),
}


_BODIES = {kind: open_value(value, kind).body for kind, value in SIGNED_SEEDS.items()}


def body(kind: int) -> dict[Any, Any]:
    """The decoded body of the seed value of a signed ``kind`` (a copy to mutate)."""
    return dict(_BODIES[kind])


def reseal(kind: int, fields: dict[Any, Any]) -> bytes:
    """``fields`` encoded and signed by the attacker as a value of ``kind``."""
    return seal(ATTACKER, kind, fields)


def resign_raw(kind: int, encoded_body: bytes) -> bytes:
    """Already encoded (possibly non-canonical, possibly broken) body bytes, signed by the
    attacker: the decoder's leniencies then reach the checks behind the signature."""
    head = bytes([WIRE_VERSION, kind]) + encoded_body
    return head + ATTACKER.sign(head)


def encode(fields: Any) -> bytes:
    """Canonical CBOR, as tierlink writes it."""
    return cbor2.dumps(fields, canonical=True)
