"""The offline envelope: one message, sealed to the recipient so that only it learns the sender.

An envelope is a sealed-sender value (:mod:`tierlink.wire.sealed`) of kind
:data:`~tierlink.wire.records.KIND_ENVELOPE` (0x04) put under the recipient's offline-queue key.
In the clear it shows only its kind, times and size; the sender's fingerprint, public key and
signature, the message id, the payload and the sender's :func:`ack token <ack_token>` for this
recipient travel inside the AEAD ciphertext. :func:`open_envelope` checks in the order
:func:`~tierlink.wire.sealed.open_sealed` sets (size, head and times, a payload cap from the
size alone, KEM decapsulation, AEAD, inner decoding, fingerprint binding, allow-list,
signature), then the fields.
Layout, labels and check order: docs/PROTOCOL.md, section "Offline envelope".
"""

from __future__ import annotations

import os
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tierlink.errors import MessageTooLarge, RecordError
from tierlink.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, is_fingerprint
from tierlink.wire.records import KIND_ENVELOPE, MAX_VALUE_SIZE
from tierlink.wire.records import now_ms as _now_ms
from tierlink.wire.sealed import (
    CLEAR_SIZE,
    TAG_SIZE,
    SealedKind,
    check_clear,
    open_sealed,
    seal_to,
)

MESSAGE_ID_SIZE = 16
ACK_TOKEN_SIZE = 32
DEFAULT_TTL_S = 7 * 24 * 3600.0
MAX_TTL_S = 30 * 24 * 3600.0
"""Longest lifetime an envelope may claim; bounds how long receivers remember its id."""
ACK_TOKEN_LABEL = b"tierlink/offline/v1/ack-token/"
"""HKDF info of an ack token: ACK_TOKEN_LABEL || the recipient's fingerprint (64 bytes)."""

K_MESSAGE_ID, K_ACK_TOKEN, K_PAYLOAD = 1, 2, 3
ENVELOPE = SealedKind(
    KIND_ENVELOPE, "envelope", int(MAX_TTL_S * 1000), (K_MESSAGE_ID, K_ACK_TOKEN, K_PAYLOAD)
)


def _overhead() -> int:
    """Bytes a value takes beyond its payload (a payload over 255 bytes: 3-byte bstr head)."""
    inner = {
        1: bytes(64), 2: bytes(PUBLIC_KEY_SIZE),
        3: {K_MESSAGE_ID: bytes(MESSAGE_ID_SIZE), K_ACK_TOKEN: bytes(ACK_TOKEN_SIZE),
            K_PAYLOAD: bytes(1000)},
    }
    return CLEAR_SIZE + len(cbor2.dumps(inner, canonical=True)) - 1000 + TAG_SIZE + SIGNATURE_SIZE


OVERHEAD = _overhead()
MAX_PAYLOAD = MAX_VALUE_SIZE - OVERHEAD
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
    ack_token: bytes = field(default=b"", repr=False)
    """Where and how to acknowledge it: :func:`tierlink.wire.dhtkeys.offline_acks_key`."""


def new_message_id() -> bytes:
    """A fresh random 16-byte message id."""
    return os.urandom(MESSAGE_ID_SIZE)


def ack_token(sender: Identity, recipient_fp: str) -> bytes:
    """The ack token ``sender`` gives ``recipient_fp``: HKDF-SHA256 of the sender's signing
    seed, so only the sender can compute it, and it is the same for every message to that
    recipient (the sender listens on one ack key per recipient)."""
    if not is_fingerprint(recipient_fp):
        raise ValueError(f"not a fingerprint: {recipient_fp!r:.40}")
    return HKDF(
        hashes.SHA256(), ACK_TOKEN_SIZE, salt=None,
        info=ACK_TOKEN_LABEL + bytes.fromhex(recipient_fp),
    ).derive(sender.signing_seed)


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
    """Seal ``payload`` from ``sender`` to the recipient; returns ``(value, message_id)``.

    ``created_at_ms`` defaults to now (tests pass it to build old envelopes). Raises
    MessageTooLarge above :data:`MAX_PAYLOAD` and ValueError on bad arguments.
    """
    if len(payload) > MAX_PAYLOAD:
        raise MessageTooLarge(
            f"offline message of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit "
            "of one DHT envelope; send it over a connection instead"
        )
    if not is_fingerprint(recipient_fp):
        raise ValueError(f"not a fingerprint: {recipient_fp!r:.40}")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S:.0f}] seconds, got {ttl_s}")
    mid = new_message_id() if message_id is None else bytes(message_id)
    if len(mid) != MESSAGE_ID_SIZE:
        raise ValueError(f"message id must be {MESSAGE_ID_SIZE} bytes")
    created = _now_ms() if created_at_ms is None else created_at_ms
    fields: dict[int, Any] = {
        K_MESSAGE_ID: mid,
        K_ACK_TOKEN: ack_token(sender, recipient_fp),
        K_PAYLOAD: bytes(payload),
    }
    sealed = seal_to(
        sender, ENVELOPE, recipient_fp, recipient_kem_pk, fields,
        created_at_ms=created, expires_at_ms=created + max(1, int(ttl_s * 1000)),
    )
    return sealed.value, mid


def check_envelope_clear(
    value: bytes, now_ms: int | None = None, *, max_payload: int = MAX_PAYLOAD
) -> None:
    """The checks of :func:`open_envelope` that need no key and no cryptography (the payload
    cap judged from the size, then size, head and times); RecordError with their reasons.
    A reader that bounds how many values it opens runs these first, so values anyone can
    make for free take none of its room."""
    if isinstance(value, bytes | bytearray) and len(value) - OVERHEAD > max_payload:
        raise RecordError(
            "oversize", f"value of {len(value)} bytes holds a payload over {max_payload}"
        )
    check_clear(value, ENVELOPE, now=now_ms)


def open_envelope(
    value: bytes,
    me: Identity,
    now_ms: int | None = None,
    *,
    max_payload: int = MAX_PAYLOAD,
    allow: Container[str] | None = None,
) -> ReceivedEnvelope:
    """Check and open an envelope addressed to ``me``; raises only RecordError.

    ``max_payload`` lets a receiver accept less than the protocol maximum (``oversize``,
    judged from the value's size before any decryption); ``allow`` refuses senders
    (``not-allowed``) before their signature is verified.
    """
    check_envelope_clear(value, now_ms, max_payload=max_payload)
    opened = open_sealed(value, ENVELOPE, me, now=now_ms, allow=allow)
    body = opened.fields
    mid = body.bstr(K_MESSAGE_ID, "message_id", size=MESSAGE_ID_SIZE)
    token = body.bstr(K_ACK_TOKEN, "ack_token", size=ACK_TOKEN_SIZE)
    payload = body.bstr(K_PAYLOAD, "payload")
    if len(payload) > max_payload:
        raise RecordError("oversize", f"payload of {len(payload)} bytes exceeds {max_payload}")
    return ReceivedEnvelope(
        mid, opened.sender, opened.sender_public_key, opened.recipient, opened.created_at_ms,
        opened.expires_at_ms, payload, len(value), token,
    )
