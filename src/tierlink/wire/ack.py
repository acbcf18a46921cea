"""Acknowledgements: the recipient tells a sender which of its envelopes arrived.

Only the two ends can find, read or write an ack. The sender derives an *ack token* per
recipient from its own identity secret (:func:`~tierlink.wire.envelope.ack_token`,
deterministic, so nothing is stored) and puts it inside every sealed envelope to that
recipient. The recipient puts acks under :func:`~tierlink.wire.dhtkeys.offline_acks_key` of
the token, each a value of kind
:data:`~tierlink.wire.records.KIND_ACK` (0x05) whose message ids are AES-256-GCM under a key
HKDF derives from the token. An ack carries no signature and no fingerprint: the AEAD tag
proves it was made by a holder of the token (the recipient; the sender has no reason to
forge its own acks), and an observer sees a key and a ciphertext it cannot link to either end.
Acks are idempotent: a replayed ack only repeats a fact.
Layout, labels and checks: docs/PROTOCOL.md, section "Offline ack".
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tierlink.errors import RecordError
from tierlink.wire.decoding import Fields, check_bytes, decode, malformed
from tierlink.wire.envelope import ACK_TOKEN_SIZE, MAX_TTL_S, MESSAGE_ID_SIZE
from tierlink.wire.records import KIND_ACK, MAX_VALUE_SIZE, WIRE_VERSION, check_head, check_times
from tierlink.wire.records import now_ms as _now_ms
from tierlink.wire.sealed import NONCE_SIZE, TAG_SIZE, TIME_SIZE

MAX_ACK_IDS = 2048
"""Most message ids in one ack (about 37 KB of ids; the value stays under MAX_VALUE_SIZE)."""
DEFAULT_ACK_TTL_S = 24 * 3600.0
#: VERSION || KIND || created (u64) || expires (u64) || nonce: the associated data.
CLEAR_SIZE = 2 + 2 * TIME_SIZE + NONCE_SIZE
MIN_SIZE = CLEAR_SIZE + TAG_SIZE + 1

KEY_LABEL = b"tierlink/offline/v1/ack-key"
"""HKDF info of the AEAD key of acks under one token."""

K_IDS = 1


@dataclass(frozen=True)
class ReceivedAck:
    """An ack that passed every check."""

    created_at_ms: int
    expires_at_ms: int
    message_ids: tuple[bytes, ...]


def _aead(token: bytes) -> AESGCM:
    if len(token) != ACK_TOKEN_SIZE:
        raise ValueError(f"an ack token is {ACK_TOKEN_SIZE} bytes")
    return AESGCM(HKDF(hashes.SHA256(), 32, salt=None, info=KEY_LABEL).derive(token))


def create_ack(
    token: bytes,
    message_ids: Iterable[bytes],
    ttl_s: float = DEFAULT_ACK_TTL_S,
    *,
    created_at_ms: int | None = None,
) -> bytes:
    """Seal an ack of ``message_ids`` under the sender's ack ``token``.

    Duplicate ids are dropped (order kept). ValueError on bad arguments or more than
    :data:`MAX_ACK_IDS` ids (split them over several acks).
    """
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S:.0f}] seconds, got {ttl_s}")
    ids = list(dict.fromkeys(bytes(m) for m in message_ids))
    if not ids or len(ids) > MAX_ACK_IDS:
        raise ValueError(f"an ack lists 1 to {MAX_ACK_IDS} message ids, not {len(ids)}")
    if any(len(m) != MESSAGE_ID_SIZE for m in ids):
        raise ValueError(f"message ids are {MESSAGE_ID_SIZE} bytes")
    created = _now_ms() if created_at_ms is None else created_at_ms
    expires = created + max(1, int(ttl_s * 1000))
    clear = (
        bytes([WIRE_VERSION, KIND_ACK]) + created.to_bytes(TIME_SIZE, "big")
        + expires.to_bytes(TIME_SIZE, "big") + os.urandom(NONCE_SIZE)
    )
    plain = cbor2.dumps({K_IDS: ids}, canonical=True)
    value = clear + _aead(token).encrypt(clear[-NONCE_SIZE:], plain, clear)
    if len(value) > MAX_VALUE_SIZE:
        raise RecordError("oversize", f"value of {len(value)} bytes exceeds {MAX_VALUE_SIZE}")
    return value


def open_ack(value: bytes, token: bytes, now_ms: int | None = None) -> ReceivedAck:
    """Check and decrypt an ack under our ack ``token``; raises only RecordError.

    Checks in increasing cost: size, version and kind, times (on our clock), the AEAD tag
    (``decrypt``: not made with this token), then the strict decoding of the ids.
    """
    value = check_head(value, KIND_ACK, MIN_SIZE)
    created = int.from_bytes(value[2 : 2 + TIME_SIZE], "big")
    expires = int.from_bytes(value[2 + TIME_SIZE : 2 + 2 * TIME_SIZE], "big")
    t = _now_ms() if now_ms is None else now_ms
    check_times("ack", created, expires, t, int(MAX_TTL_S * 1000))
    clear = value[:CLEAR_SIZE]
    try:
        plain = _aead(token).decrypt(clear[-NONCE_SIZE:], value[CLEAR_SIZE:], clear)
    except InvalidTag:
        raise RecordError("decrypt", "ack was not made with our ack token") from None
    body = Fields(decode(plain), "ack", (K_IDS,))
    ids = tuple(
        check_bytes(m, "message id", size=MESSAGE_ID_SIZE)
        for m in body.array(K_IDS, "message_ids", max_items=MAX_ACK_IDS)
    )
    if not ids or len(set(ids)) != len(ids):
        raise malformed(f"message ids are not 1 to {MAX_ACK_IDS} distinct 16-byte strings")
    return ReceivedAck(created, expires, ids)
