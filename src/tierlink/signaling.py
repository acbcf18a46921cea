"""Offers and answers: how two peers exchange ICE credentials through the DHT, privately.

An offer (kind 0x02, under the callee's offers key) and an answer (kind 0x03, under the
per-session answer key) share one signed layout (see :mod:`tierlink.records`)::

    body = {1: signer fingerprint (64 B), 2: signer ML-DSA-87 public key,
            3: recipient fingerprint (64 B), 4: session id (16 B),
            5: created_at_ms, 6: expires_at_ms,
            7: ML-KEM-1024 ciphertext, 8: AES-GCM nonce, 9: AES-GCM ciphertext}

The ciphertext (see :mod:`tierlink.sealedbox`, label ``offer`` or ``answer``, associated data
= canonical CBOR of fields 1-6) holds ``{1: ICE ufrag, 2: ICE pwd, 3: [candidates],
4: certificate SHA-256 or null, 5: sender's ML-KEM-1024 public key, 6: purpose}``; the purpose
is ``app`` (the connection goes to the application) or ``messages`` (the node's own tiered
message link); readers treat a missing purpose as ``app``. A DHT observer sees who
signals whom, but no address and no credential. The signer's public key travels in the value,
so the receiver verifies it without another lookup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import cbor2

from tierlink.errors import RecordError
from tierlink.identity import KEM_PUBLIC_KEY_SIZE, Identity
from tierlink.records import (
    KIND_ANSWER,
    KIND_OFFER,
    CandidateInfo,
    check_signer,
    decode_candidate,
    encode_candidate,
    field_of,
    now_ms,
    open_value,
    seal,
)
from tierlink.sealedbox import decrypt_with, encrypt_to

SESSION_ID_SIZE = 16
DEFAULT_OFFER_LIFETIME_S = 60.0
_LABELS = {KIND_OFFER: b"offer", KIND_ANSWER: b"answer"}
PURPOSES = ("app", "messages")


def new_session_id() -> bytes:
    """16 random bytes naming one dial attempt."""
    return os.urandom(SESSION_ID_SIZE)


@dataclass(frozen=True)
class IceParams:
    """What one side tells the other: ICE credentials, candidates, certificate, KEM key."""

    ufrag: str
    pwd: str
    candidates: tuple[CandidateInfo, ...]
    cert_sha256: bytes | None = None
    kem_public_key: bytes = b""
    purpose: str = "app"


@dataclass(frozen=True)
class Signal:
    """A verified, decrypted offer or answer."""

    kind: int
    signer: str
    signer_public_key: bytes
    recipient: str
    session_id: bytes
    created_at_ms: int
    expires_at_ms: int
    params: IceParams


def encode_signal(
    kind: int,
    signer: Identity,
    recipient: str,
    recipient_kem_public_key: bytes,
    session_id: bytes,
    params: IceParams,
    lifetime_s: float = DEFAULT_OFFER_LIFETIME_S,
) -> bytes:
    """Encrypt ``params`` to the recipient and sign the whole value."""
    t = now_ms()
    header: dict[int, Any] = {
        1: bytes.fromhex(signer.fingerprint),
        2: signer.public_key,
        3: bytes.fromhex(recipient),
        4: session_id,
        5: t,
        6: t + int(lifetime_s * 1000),
    }
    plain = cbor2.dumps(
        {
            1: params.ufrag,
            2: params.pwd,
            3: [encode_candidate(c) for c in params.candidates],
            4: params.cert_sha256,
            5: params.kem_public_key,
            6: params.purpose,
        },
        canonical=True,
    )
    kem_ct, nonce, ct = encrypt_to(
        recipient_kem_public_key, plain, cbor2.dumps(header, canonical=True), _LABELS[kind]
    )
    return seal(signer, kind, {**header, 7: kem_ct, 8: nonce, 9: ct})


def decode_signal(value: bytes, kind: int, me: Identity, *, now: int | None = None) -> Signal:
    """Verify (structure, signature, fingerprint binding, recipient, expiry) then decrypt."""
    opened = open_value(value, kind)
    body = opened.body
    signer = check_signer(body, opened)
    recipient = field_of(body, 3, bytes, "recipient").hex()
    if recipient != me.fingerprint:
        raise RecordError("recipient", "value is addressed to another fingerprint")
    session_id = field_of(body, 4, bytes, "session_id")
    created = field_of(body, 5, int, "created_at_ms")
    expires = field_of(body, 6, int, "expires_at_ms")
    if len(session_id) != SESSION_ID_SIZE:
        raise RecordError("malformed", "session id has the wrong length")
    t = now_ms() if now is None else now
    if expires <= t:
        raise RecordError("expired", f"{_LABELS[kind].decode()} expired")
    header = {k: body[k] for k in range(1, 7)}
    plain = decrypt_with(
        me,
        field_of(body, 7, bytes, "kem_ciphertext"),
        field_of(body, 8, bytes, "nonce"),
        field_of(body, 9, bytes, "ciphertext"),
        cbor2.dumps(header, canonical=True),
        _LABELS[kind],
    )
    try:
        inner = cbor2.loads(plain)
    except Exception:
        raise RecordError("malformed", "decrypted payload is not CBOR") from None
    if not isinstance(inner, dict):
        raise RecordError("malformed", "decrypted payload is not a map")
    ufrag = field_of(inner, 1, str, "ufrag")
    pwd = field_of(inner, 2, str, "pwd")
    cands = tuple(decode_candidate(c) for c in field_of(inner, 3, list, "candidates"))
    cert = inner.get(4)
    kem = inner.get(5, b"")
    if cert is not None and (not isinstance(cert, bytes) or len(cert) != 32):
        raise RecordError("malformed", "certificate fingerprint must be 32 bytes")
    if not isinstance(kem, bytes) or (kem and len(kem) != KEM_PUBLIC_KEY_SIZE):
        raise RecordError("malformed", "KEM public key has the wrong length")
    purpose = inner.get(6, "app")
    if purpose not in PURPOSES:
        raise RecordError("malformed", f"unknown purpose {purpose!r}")
    return Signal(
        kind, signer, field_of(body, 2, bytes, "public_key"), recipient, session_id,
        created, expires, IceParams(ufrag, pwd, cands, cert, kem, purpose),
    )
