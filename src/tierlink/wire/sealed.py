"""Sealed-sender values: the one way to make and open a value that hides who sent it.

A sealed value names nobody in the clear. Its clear part is the version/kind head, the two
time fields, an ML-KEM-1024 ciphertext to the recipient and an AES-256-GCM nonce; the sender's
fingerprint, public key and ML-DSA-87 signature, and every field of the kind, travel inside
the AES-256-GCM ciphertext, under a key HKDF-SHA256 derives per kind from the KEM secret. The
clear part and the recipient's fingerprint are the associated data, so a value opens only for
the recipient it was made for. The signature (inside) covers a transcript of the kind, the
recipient's fingerprint, the whole clear part (KEM ciphertext included) and the inner fields,
so whoever decrypts a value (its recipient) cannot re-wrap its inner part as a value of its
own to anyone, under other times, or as another kind.

:func:`open_sealed` checks in increasing cost, each failure a RecordError with its own reason:
size, head and times (``oversize``/``malformed``/``version``/``kind``/``expired``/``clock``),
KEM decapsulation (``kem``), the AEAD tag (``decrypt``), strict decoding of the inner map
(``malformed``), the claimed sender's fingerprint binding (``fingerprint``), the receiver's
``allow`` container (``not-allowed``), then the signature (``signature``).
Layout, labels and check order: docs/PROTOCOL.md, section 5.2 "Sealed-sender values".
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Container
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tierlink.errors import RecordError
from tierlink.identity import (
    KEM_CIPHERTEXT_SIZE,
    SIGNATURE_SIZE,
    Identity,
    is_fingerprint,
    kem_encapsulate,
)
from tierlink.wire.decoding import Fields, decode, malformed
from tierlink.wire.records import (
    MAX_VALUE_SIZE,
    WIRE_VERSION,
    Opened,
    check_head,
    check_times,
    claimed_signer,
    now_ms,
)

NONCE_SIZE = 12
TAG_SIZE = 16
TIME_SIZE = 8
#: VERSION || KIND || created (u64) || expires (u64) || KEM ciphertext || nonce.
CLEAR_SIZE = 2 + 2 * TIME_SIZE + KEM_CIPHERTEXT_SIZE + NONCE_SIZE
MIN_SIZE = CLEAR_SIZE + TAG_SIZE + 1 + SIGNATURE_SIZE
"""Smallest sealed value: the clear part, the tag, a one-byte map and the signature."""

KEY_LABEL = b"tierlink/sealed/v1/key/"
"""HKDF info of the AEAD key is KEY_LABEL || KIND (one byte)."""
SIGNATURE_LABEL = b"tierlink/sealed/v1/signature\x00"
"""First bytes of every signed transcript (a signed value's signed part starts with 0x01)."""
DERIVE_LABEL = b"tierlink/sealed/v1/derive/"
"""HKDF info of a caller's key is DERIVE_LABEL || KIND || label."""

K_SENDER_FP, K_SENDER_PK, K_FIELDS = 1, 2, 3


@dataclass(frozen=True)
class SealedKind:
    """One kind of sealed value: its kind byte, name, longest lifetime and inner keys."""

    kind: int
    name: str
    max_lifetime_ms: int
    known: Collection[int]
    """The keys of the kind's inner fields map (others are tolerated, bounded)."""
    late_ms: int = 0
    """How long after its expiry (receiver's clock) a value still counts: the clock skew
    tolerated for kinds whose lifetime is shorter than the skew (see ``check_times``)."""


@dataclass(frozen=True)
class SealedValue:
    """A value just made, with what its sender needs to derive further keys."""

    value: bytes
    shared_secret: bytes = field(repr=False)

    def derive(self, kind: SealedKind, label: bytes) -> bytes:
        """A 32-byte key bound to this exact value; see :func:`derive_key`."""
        return derive_key(self.shared_secret, self.value, kind, label)


@dataclass(frozen=True, eq=False)
class Unsealed:
    """A sealed value that passed every check: its sender, fields and times."""

    sender: str
    sender_public_key: bytes
    recipient: str
    fields: Fields
    created_at_ms: int
    expires_at_ms: int
    value: bytes = field(repr=False)
    shared_secret: bytes = field(repr=False)

    def derive(self, kind: SealedKind, label: bytes) -> bytes:
        """The key the sender derives with :meth:`SealedValue.derive` and this ``label``."""
        return derive_key(self.shared_secret, self.value, kind, label)


def derive_key(shared_secret: bytes, value: bytes, kind: SealedKind, label: bytes) -> bytes:
    """HKDF-SHA256(ikm = KEM secret, salt = SHA-256(clear part of ``value``), info =
    DERIVE_LABEL || KIND || label): only the sender and the recipient can compute it, each
    for one value. The clear part (with the KEM ciphertext) names the value; the signature
    inside is randomized, so salting with it would make derived keys unreproducible."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=hashlib.sha256(value[:CLEAR_SIZE]).digest(),
        info=DERIVE_LABEL + bytes([kind.kind]) + label,
    ).derive(shared_secret)


def _aead(shared_secret: bytes, kind: SealedKind) -> AESGCM:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_LABEL + bytes([kind.kind])
    ).derive(shared_secret)
    return AESGCM(key)


def _transcript(clear: bytes, recipient: bytes, inner: bytes) -> bytes:
    """What the sender signs: label, clear part (kind, times, KEM ciphertext, nonce),
    recipient fingerprint and the inner map's bytes."""
    return SIGNATURE_LABEL + clear + recipient + inner


def seal_to(
    sender: Identity,
    kind: SealedKind,
    recipient: str,
    recipient_kem_public_key: bytes,
    fields: dict[int, Any],
    *,
    created_at_ms: int | None = None,
    expires_at_ms: int,
) -> SealedValue:
    """Seal ``fields`` from ``sender`` to ``recipient`` as a value of ``kind``.

    ``created_at_ms`` defaults to now. Raises ValueError on a bad recipient, KEM key or
    times (the lifetime must be positive and at most the kind's), RecordError('oversize')
    beyond :data:`~tierlink.wire.records.MAX_VALUE_SIZE`.
    """
    if not is_fingerprint(recipient):
        raise ValueError(f"not a fingerprint: {recipient!r:.40}")
    created = now_ms() if created_at_ms is None else created_at_ms
    if not 0 <= created < expires_at_ms <= created + kind.max_lifetime_ms:
        raise ValueError(f"{kind.name} lifetime is empty, negative or too long")
    if expires_at_ms >= 2 ** (8 * TIME_SIZE):
        raise ValueError(f"{kind.name} time does not fit {TIME_SIZE} bytes")
    shared, kem_ct = kem_encapsulate(recipient_kem_public_key)
    nonce = os.urandom(NONCE_SIZE)
    clear = (
        bytes([WIRE_VERSION, kind.kind]) + created.to_bytes(TIME_SIZE, "big")
        + expires_at_ms.to_bytes(TIME_SIZE, "big") + kem_ct + nonce
    )
    recipient_bytes = bytes.fromhex(recipient)
    inner = cbor2.dumps(
        {K_SENDER_FP: bytes.fromhex(sender.fingerprint), K_SENDER_PK: sender.public_key,
         K_FIELDS: fields},
        canonical=True,
    )
    signature = sender.sign(_transcript(clear, recipient_bytes, inner))
    ct = _aead(shared, kind).encrypt(nonce, inner + signature, clear + recipient_bytes)
    value = clear + ct
    if len(value) > MAX_VALUE_SIZE:
        raise RecordError("oversize", f"value of {len(value)} bytes exceeds {MAX_VALUE_SIZE}")
    return SealedValue(value, shared)


def check_clear(value: bytes, kind: SealedKind, *, now: int | None = None
                ) -> tuple[bytes, int, int]:
    """The checks of :func:`open_sealed` that need no key and no cryptography (size, head,
    times): ``(value, created, expires)``, else RecordError. A reader that budgets its
    costly opens runs these first, so values anyone can make for free spend no budget."""
    value = check_head(value, kind.kind, MIN_SIZE)
    created = int.from_bytes(value[2:2 + TIME_SIZE], "big")
    expires = int.from_bytes(value[2 + TIME_SIZE:2 + 2 * TIME_SIZE], "big")
    check_times(kind.name, created, expires, now_ms() if now is None else now,
                kind.max_lifetime_ms, kind.late_ms)
    return value, created, expires


def open_sealed(
    value: bytes,
    kind: SealedKind,
    me: Identity,
    *,
    now: int | None = None,
    allow: Container[str] | None = None,
) -> Unsealed:
    """Check and open a sealed value of ``kind`` addressed to ``me``, cheapest check first
    (module docstring); raises only RecordError. ``allow`` refuses claimed senders
    (``not-allowed``) before their signature is verified."""
    value, created, expires = check_clear(value, kind, now=now)
    clear = value[:CLEAR_SIZE]
    kem_ct = clear[2 + 2 * TIME_SIZE:2 + 2 * TIME_SIZE + KEM_CIPHERTEXT_SIZE]
    nonce = clear[-NONCE_SIZE:]
    try:
        shared = me.kem_decapsulate(kem_ct)
    except ValueError:
        raise RecordError("kem", "KEM ciphertext does not decapsulate") from None
    recipient = bytes.fromhex(me.fingerprint)
    try:
        plain = _aead(shared, kind).decrypt(nonce, value[CLEAR_SIZE:], clear + recipient)
    except InvalidTag:
        raise RecordError("decrypt", f"{kind.name} does not decrypt for us") from None
    if len(plain) <= SIGNATURE_SIZE:
        raise malformed(f"{kind.name} plaintext is too short for a signature")
    inner_bytes, signature = plain[:-SIGNATURE_SIZE], plain[-SIGNATURE_SIZE:]
    inner = Fields(decode(inner_bytes), f"{kind.name} sender", (K_SENDER_FP, K_SENDER_PK,
                                                               K_FIELDS))
    fields = Fields(inner.map.get(K_FIELDS), kind.name, kind.known)
    sender, public_key = claimed_signer(inner, K_SENDER_FP, K_SENDER_PK)
    if allow is not None and sender not in allow:
        raise RecordError("not-allowed", f"sender {sender[:16]}… is not allowed")
    Opened(inner.map, _transcript(clear, recipient, inner_bytes), signature).verify(public_key)
    return Unsealed(
        sender, public_key, me.fingerprint, fields, created, expires, value, shared
    )

