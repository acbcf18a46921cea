"""Valid encodings of every signed or sealed kind, and their re-signing by the attacker.

The only module that knows how a value is built: the fuzz targets ask it for a seed value,
for a value's structured body, and for a value re-built from a mutated body or session
description. It builds through the public encoders (``PeerRecord.encode``, ``encode_offer``,
``encode_answer``, ``seal_to`` for the sealed-sender kinds, ``create_ack``); two private
seams let any plaintext be encrypted with the real key and associated data, so a mutated
plaintext gets through the AEAD to the reader behind it: signaling's CBOR encoder, replaced
for one answer, and the ack module's AEAD.

Every value is signed (or sealed) by :data:`ATTACKER` and addressed to :data:`VICTIM`: the
attacker holds a key of its own, so its signatures verify, and only the fields are hostile.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any
from unittest import mock

import cbor2

from tierlink.identity import Identity
from tierlink.wire import ack as ackmod
from tierlink.wire import records, signaling
from tierlink.wire.ack import create_ack
from tierlink.wire.envelope import ENVELOPE, ack_token
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
)
from tierlink.wire.sealed import NONCE_SIZE, TIME_SIZE, SealedKind, seal_to
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


def offer_fields(params: Any = None) -> dict[int, Any]:
    """The offer's inner fields (docs/PROTOCOL.md §9); ``params`` replaces the session
    description's map (any CBOR value)."""
    return {1: bytes(range(16)), 2: session_fields(PARAMS) if params is None else params}


def seal(kind: SealedKind, fields: dict[Any, Any], times: tuple[int, int] | None = None) -> bytes:
    """``fields`` sealed by the attacker to the victim as a value of ``kind`` (re-signed and
    re-encrypted, so a mutation reaches the checks behind the signature)."""
    created, expires = times if times is not None else (NOW - 1000, NOW + 60_000)
    return seal_to(
        ATTACKER, kind, VICTIM.fingerprint, VICTIM.kem_public_key, fields,
        created_at_ms=created, expires_at_ms=expires,
    ).value


def offer() -> tuple[bytes, OfferSecret]:
    """An offer from the attacker to the victim, stamped now, and its answer secret."""
    return signaling.encode_offer(
        ATTACKER, VICTIM.fingerprint, VICTIM.kem_public_key, bytes(range(16)), PARAMS, 600.0
    )


OFFER, SECRET = offer()
"""The seed offer, and the secret the victim's answers to it are sealed with."""


def answer(plaintext: bytes | None = None) -> bytes:
    """An answer to :data:`OFFER`; ``plaintext`` replaces the encoded session description
    (the private seam: signaling's CBOR encoder, replaced for one call)."""
    if plaintext is None:
        return signaling.encode_answer(SECRET, PARAMS)
    encoder = SimpleNamespace(dumps=lambda *_a, **_k: plaintext)
    with mock.patch.object(signaling, "cbor2", encoder):
        return signaling.encode_answer(SECRET, PARAMS)


def envelope_fields() -> dict[int, Any]:
    """An envelope's inner fields (docs/PROTOCOL.md §15)."""
    return {1: MESSAGE_IDS[0], 2: ack_token(ATTACKER, VICTIM.fingerprint), 3: b"hello"}


ACK_TOKEN = ack_token(VICTIM, ATTACKER.fingerprint)
"""The token the victim opens acks with (the attacker acks the victim's messages)."""


def ack(plaintext: bytes | None = None, times: tuple[int, int] | None = None) -> bytes:
    """An ack of three of the victim's messages under :data:`ACK_TOKEN`; ``plaintext``
    replaces the encoded ids (the private seam: the ack module's AEAD, built here)."""
    if plaintext is None and times is None:
        return create_ack(ACK_TOKEN, MESSAGE_IDS, 3600.0, created_at_ms=NOW - 1000)
    created, expires = times if times is not None else (NOW - 1000, NOW + 3_600_000)
    clear = (
        bytes([WIRE_VERSION, KIND_ACK]) + (created % 2**64).to_bytes(TIME_SIZE, "big")
        + (expires % 2**64).to_bytes(TIME_SIZE, "big") + bytes(NONCE_SIZE)
    )
    body = encode({ackmod.K_IDS: list(MESSAGE_IDS)}) if plaintext is None else plaintext
    return clear + ackmod._aead(ACK_TOKEN).encrypt(clear[-NONCE_SIZE:], body, clear)


#: Seed values of the signed and sealed kinds.
SIGNED_SEEDS: dict[int, bytes] = {
    KIND_PEER_RECORD: peer_record(),
    KIND_OFFER: OFFER,
    KIND_ENVELOPE: seal(ENVELOPE, envelope_fields()),
    KIND_ACK: ack(),
}

_RECORD_BODY = open_value(SIGNED_SEEDS[KIND_PEER_RECORD], KIND_PEER_RECORD).body


def record_body() -> dict[Any, Any]:
    """The decoded body of the seed record (a copy to mutate)."""
    return dict(_RECORD_BODY)


def reseal(fields: dict[Any, Any]) -> bytes:
    """``fields`` encoded and signed by the attacker as a peer record."""
    return records.seal(ATTACKER, KIND_PEER_RECORD, fields)


def resign_raw(encoded_body: bytes) -> bytes:
    """Already encoded (possibly non-canonical, possibly broken) record body bytes, signed
    by the attacker: the decoder's leniencies then reach the checks behind the signature."""
    head = bytes([WIRE_VERSION, KIND_PEER_RECORD]) + encoded_body
    return head + ATTACKER.sign(head)


def encode(fields: Any) -> bytes:
    """Canonical CBOR, as tierlink writes it."""
    return cbor2.dumps(fields, canonical=True)
