"""Acknowledgements: the recipient tells a sender which of its envelopes arrived.

An ack is a signed DHT value (see :mod:`tierlink.wire.records`) of kind
:data:`~tierlink.wire.records.KIND_ACK` (0x05), signed by the **recipient** of the messages and
put under :func:`tierlink.wire.dhtkeys.offline_acks_key` of the **sender**::

    value = 0x01 (wire version) || 0x05 (kind) || BODY || ML-DSA-87 signature (4627 bytes)

``BODY`` is canonical CBOR of a map with these keys:

===  =====================  =================================================================
key  field                  type
===  =====================  =================================================================
1    recipient fingerprint  bytes(64): the signer, raw SHA3-512 of its public key
2    recipient public key   bytes(2592): raw ML-DSA-87 public key
3    sender fingerprint     bytes(64): whose envelopes are acknowledged (the addressee)
4    created_at_ms          uint: Unix time in milliseconds
5    expires_at_ms          uint: Unix time in ms; ``created < expires <= created + 30 days``
6    message ids            array of bytes(16), 1 to :data:`MAX_ACK_IDS` distinct ids
===  =====================  =================================================================

Acks carry no secret (message ids are random and reveal nothing) and are idempotent: a
replayed ack only repeats a fact. :func:`open_ack` checks structure (``malformed``,
``oversize``, ``version``, ``kind``), fingerprint binding and signature (``fingerprint``,
``signature``), the optional expected signer (``fingerprint``), addressee (``recipient``)
and lifetime (``expired``), raising :class:`~tierlink.errors.RecordError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tierlink.errors import RecordError
from tierlink.identity import FINGERPRINT_HEX_LEN, Identity, is_fingerprint
from tierlink.wire.envelope import MAX_TTL_S, MESSAGE_ID_SIZE
from tierlink.wire.records import KIND_ACK, check_signer, field_of, open_value, seal
from tierlink.wire.records import now_ms as _now_ms

MAX_ACK_IDS = 2048
"""Most message ids in one ack (about 37 KB of ids; the value stays under MAX_VALUE_SIZE)."""
DEFAULT_ACK_TTL_S = 24 * 3600.0

K_RECIPIENT_FP, K_RECIPIENT_PK, K_SENDER, K_CREATED, K_EXPIRES, K_IDS = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class ReceivedAck:
    """An ack that passed every check."""

    recipient_fingerprint: str
    sender_fingerprint: str
    created_at_ms: int
    expires_at_ms: int
    message_ids: tuple[bytes, ...]


def create_ack(
    recipient: Identity,
    sender_fp: str,
    message_ids: Iterable[bytes],
    ttl_s: float = DEFAULT_ACK_TTL_S,
    *,
    created_at_ms: int | None = None,
) -> bytes:
    """Sign an ack by ``recipient`` for ``message_ids`` that ``sender_fp`` sent.

    Duplicate ids are dropped (order kept). ValueError on bad arguments or more than
    :data:`MAX_ACK_IDS` ids (split them over several acks).
    """
    if not is_fingerprint(sender_fp):
        raise ValueError(f"not a fingerprint: {sender_fp!r}")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S:.0f}] seconds, got {ttl_s}")
    ids = list(dict.fromkeys(bytes(m) for m in message_ids))
    if not ids or len(ids) > MAX_ACK_IDS:
        raise ValueError(f"an ack lists 1 to {MAX_ACK_IDS} message ids, not {len(ids)}")
    if any(len(m) != MESSAGE_ID_SIZE for m in ids):
        raise ValueError(f"message ids are {MESSAGE_ID_SIZE} bytes")
    created = _now_ms() if created_at_ms is None else created_at_ms
    body: dict[int, Any] = {
        K_RECIPIENT_FP: bytes.fromhex(recipient.fingerprint),
        K_RECIPIENT_PK: recipient.public_key,
        K_SENDER: bytes.fromhex(sender_fp),
        K_CREATED: created,
        K_EXPIRES: created + max(1, int(ttl_s * 1000)),
        K_IDS: ids,
    }
    return seal(recipient, KIND_ACK, body)


def open_ack(
    value: bytes,
    expected_sender_fp: str,
    now_ms: int | None = None,
    *,
    expected_recipient_fp: str | None = None,
) -> ReceivedAck:
    """Verify an ack addressed to ``expected_sender_fp``; raises only RecordError.

    With ``expected_recipient_fp`` the ack must also be signed by that peer. Without it the
    caller must itself match each id against the recipient it was sent to (an ack from a
    stranger must not mark our message to someone else as delivered).
    """
    opened = open_value(value, KIND_ACK)
    body = opened.body
    sender = field_of(body, K_SENDER, bytes, "sender")
    created: int = field_of(body, K_CREATED, int, "created_at_ms")
    expires: int = field_of(body, K_EXPIRES, int, "expires_at_ms")
    raw_ids = field_of(body, K_IDS, list, "message_ids")
    if len(sender) != FINGERPRINT_HEX_LEN // 2:
        raise RecordError("malformed", "sender fingerprint has the wrong length")
    ids = tuple(raw_ids)
    if not (
        0 < len(ids) <= MAX_ACK_IDS
        and all(isinstance(m, bytes) and len(m) == MESSAGE_ID_SIZE for m in ids)
        and len(set(ids)) == len(ids)
    ):
        raise RecordError("malformed", "message ids are not 1 to 2048 distinct 16-byte strings")

    signer = check_signer(body, opened, K_RECIPIENT_FP, K_RECIPIENT_PK)

    if expected_recipient_fp is not None and signer != expected_recipient_fp:
        raise RecordError("fingerprint", "ack is signed by another peer than expected")
    if sender.hex() != expected_sender_fp:
        raise RecordError("recipient", "ack acknowledges another sender's messages")
    if not 0 <= created < expires <= created + int(MAX_TTL_S * 1000):
        raise RecordError("malformed", "ack lifetime is empty, negative or over 30 days")
    t = _now_ms() if now_ms is None else now_ms
    if expires <= t:
        raise RecordError("expired", f"ack expired {(t - expires) / 1000:.1f} s ago")
    return ReceivedAck(signer, sender.hex(), created, expires, ids)
