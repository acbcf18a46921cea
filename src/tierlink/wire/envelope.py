"""The offline envelope: one message, encrypted to the recipient and signed by the sender.

An envelope is a signed value of kind :data:`~tierlink.wire.records.KIND_ENVELOPE` (0x04)
put under the recipient's offline-queue key. The payload is AES-256-GCM under a key from an
ML-KEM-1024 encapsulation to the recipient, with every other body field as associated data,
so a re-signed stolen ciphertext does not decrypt. :func:`open_envelope` checks structure,
lifetime, the claimed signer's fingerprint binding, addressee, the receiver's payload cap and
allow-list, then the signature, before any decryption work.
Layout, key derivation and check order: docs/PROTOCOL.md, section "Offline envelope".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tierlink.errors import MessageTooLarge, RecordError
from tierlink.identity import (
    FINGERPRINT_HEX_LEN,
    KEM_CIPHERTEXT_SIZE,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    is_fingerprint,
    kem_encapsulate,
)
from tierlink.wire.decoding import Fields, malformed
from tierlink.wire.records import (
    KIND_ENVELOPE,
    MAX_VALUE_SIZE,
    WIRE_VERSION,
    check_times,
    claimed_signer,
    open_value,
    seal,
)
from tierlink.wire.records import now_ms as _now_ms

MESSAGE_ID_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16
HKDF_INFO = b"tierlink offline envelope v1"
DEFAULT_TTL_S = 7 * 24 * 3600.0
MAX_TTL_S = 30 * 24 * 3600.0
"""Longest lifetime an envelope may claim; bounds how long receivers remember its id."""

K_SENDER_FP, K_SENDER_PK, K_MESSAGE_ID, K_RECIPIENT = 1, 2, 3, 4
K_CREATED, K_EXPIRES, K_KEM_CT, K_NONCE, K_CIPHERTEXT = 5, 6, 7, 8, 9


def _overhead() -> int:
    """Bytes a value takes beyond its payload, for realistic (> 2**32 ms) timestamps."""
    body: dict[int, Any] = {
        K_SENDER_FP: bytes(64), K_SENDER_PK: bytes(PUBLIC_KEY_SIZE),
        K_MESSAGE_ID: bytes(MESSAGE_ID_SIZE), K_RECIPIENT: bytes(64),
        K_CREATED: 2**40, K_EXPIRES: 2**40, K_KEM_CT: bytes(KEM_CIPHERTEXT_SIZE),
        K_NONCE: bytes(NONCE_SIZE), K_CIPHERTEXT: bytes(1000),  # a 3-byte bstr header
    }
    return 2 + len(cbor2.dumps(body, canonical=True)) - 1000 + TAG_SIZE + SIGNATURE_SIZE


MAX_PAYLOAD = MAX_VALUE_SIZE - _overhead()
"""Largest payload (bytes) an envelope carries: the value then fills MAX_VALUE_SIZE exactly."""


@dataclass(frozen=True)
class ReceivedEnvelope:
    """An envelope that passed every check, with its decrypted payload."""

    message_id: bytes
    sender_fingerprint: str
    sender_public_key: bytes
    recipient_fingerprint: str
    created_at_ms: int
    expires_at_ms: int
    payload: bytes
    value_size: int


def _aad(header: dict[int, Any]) -> bytes:
    return bytes([WIRE_VERSION, KIND_ENVELOPE]) + cbor2.dumps(header, canonical=True)


def _key(shared_secret: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=HKDF_INFO).derive(shared_secret)


def new_message_id() -> bytes:
    """A fresh random 16-byte message id."""
    return os.urandom(MESSAGE_ID_SIZE)


def create_envelope(
    sender: Identity,
    recipient_fp: str,
    recipient_kem_pk: bytes,
    payload: bytes,
    ttl_s: float = DEFAULT_TTL_S,
    message_id: bytes | None = None,
    *,
    created_at_ms: int | None = None,
) -> tuple[bytes, bytes]:
    """Encrypt ``payload`` to the recipient and sign it; returns ``(value, message_id)``.

    ``created_at_ms`` defaults to now (tests pass it to build old envelopes). Raises
    MessageTooLarge above :data:`MAX_PAYLOAD` and ValueError on bad arguments.
    """
    if len(payload) > MAX_PAYLOAD:
        raise MessageTooLarge(
            f"offline message of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit "
            "of one DHT envelope; send it over a connection instead"
        )
    if not is_fingerprint(recipient_fp):
        raise ValueError(f"not a fingerprint: {recipient_fp!r}")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S:.0f}] seconds, got {ttl_s}")
    mid = new_message_id() if message_id is None else bytes(message_id)
    if len(mid) != MESSAGE_ID_SIZE:
        raise ValueError(f"message id must be {MESSAGE_ID_SIZE} bytes")
    shared, kem_ct = kem_encapsulate(recipient_kem_pk)
    created = _now_ms() if created_at_ms is None else created_at_ms
    header: dict[int, Any] = {
        K_SENDER_FP: bytes.fromhex(sender.fingerprint),
        K_SENDER_PK: sender.public_key,
        K_MESSAGE_ID: mid,
        K_RECIPIENT: bytes.fromhex(recipient_fp),
        K_CREATED: created,
        K_EXPIRES: created + max(1, int(ttl_s * 1000)),
        K_KEM_CT: kem_ct,
        K_NONCE: os.urandom(NONCE_SIZE),
    }
    ct = AESGCM(_key(shared)).encrypt(header[K_NONCE], bytes(payload), _aad(header))
    return seal(sender, KIND_ENVELOPE, {**header, K_CIPHERTEXT: ct}), mid


def open_envelope(
    value: bytes,
    me: Identity,
    now_ms: int | None = None,
    *,
    max_payload: int = MAX_PAYLOAD,
    allow: Callable[[str], bool] | None = None,
) -> ReceivedEnvelope:
    """Verify and decrypt an envelope addressed to ``me``; raises only RecordError.

    ``max_payload`` lets a receiver accept less than the protocol maximum (``oversize``);
    ``allow`` refuses claimed senders (``blocked``) before their signature is verified.
    """
    opened = open_value(value, KIND_ENVELOPE)
    body = Fields(opened.body, "envelope", range(1, 10))
    mid = body.bstr(K_MESSAGE_ID, "message_id", size=MESSAGE_ID_SIZE)
    recipient = body.bstr(K_RECIPIENT, "recipient", size=FINGERPRINT_HEX_LEN // 2)
    created = body.uint(K_CREATED, "created_at_ms")
    expires = body.uint(K_EXPIRES, "expires_at_ms")
    kem_ct = body.bstr(K_KEM_CT, "kem_ciphertext", size=KEM_CIPHERTEXT_SIZE)
    nonce = body.bstr(K_NONCE, "nonce", size=NONCE_SIZE)
    ct = body.bstr(K_CIPHERTEXT, "ciphertext", min_size=TAG_SIZE)
    if not created < expires <= created + int(MAX_TTL_S * 1000):
        raise malformed("envelope lifetime is empty, negative or over 30 days")
    t = _now_ms() if now_ms is None else now_ms
    check_times("envelope", created, expires, t, int(MAX_TTL_S * 1000))

    sender_fp, sender_pk = claimed_signer(body, K_SENDER_FP, K_SENDER_PK)
    if recipient.hex() != me.fingerprint:
        raise RecordError("recipient", f"envelope is addressed to {recipient.hex()[:16]}…")
    if len(ct) - TAG_SIZE > max_payload:
        raise RecordError(
            "oversize", f"payload of {len(ct) - TAG_SIZE} bytes exceeds {max_payload}"
        )
    if allow is not None and not allow(sender_fp):
        raise RecordError("blocked", f"sender {sender_fp[:16]}… is not allowed")
    opened.verify(sender_pk)

    aad = _aad({k: v for k, v in body.map.items() if k != K_CIPHERTEXT})
    try:
        payload = AESGCM(_key(me.kem_decapsulate(kem_ct))).decrypt(nonce, ct, aad)
    except (InvalidTag, ValueError):
        raise RecordError("decrypt", "payload does not decrypt with our KEM key") from None
    return ReceivedEnvelope(
        mid, sender_fp, body.map[K_SENDER_PK], me.fingerprint, created, expires, payload,
        len(value),
    )
