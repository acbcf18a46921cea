"""Acknowledgements: the recipient tells a sender which of its envelopes arrived.

An ack is a signed value of kind :data:`~tierlink.wire.records.KIND_ACK` (0x05), signed by
the recipient of the messages and put under the sender's offline-acks key. It carries no
secret (message ids are random) and is idempotent: a replayed ack only repeats a fact.
Layout and checks: docs/PROTOCOL.md, section "Offline ack".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tierlink.errors import RecordError
from tierlink.identity import FINGERPRINT_HEX_LEN, Identity, is_fingerprint
from tierlink.wire.decoding import Fields, check_bytes, malformed
from tierlink.wire.envelope import MAX_TTL_S, MESSAGE_ID_SIZE
from tierlink.wire.records import KIND_ACK, check_times, claimed_signer, open_value, seal
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

    The addressee and expected signer are checked on the claimed (hash-bound) signer before
    the signature, so acks meant for others cost no ML-DSA verification.

    With ``expected_recipient_fp`` the ack must also be signed by that peer. Without it the
    caller must itself match each id against the recipient it was sent to (an ack from a
    stranger must not mark our message to someone else as delivered).
    """
    opened = open_value(value, KIND_ACK)
    body = Fields(opened.body, "ack", range(1, 7))
    sender = body.bstr(K_SENDER, "sender", size=FINGERPRINT_HEX_LEN // 2)
    created = body.uint(K_CREATED, "created_at_ms")
    expires = body.uint(K_EXPIRES, "expires_at_ms")
    ids = tuple(
        check_bytes(m, "message id", size=MESSAGE_ID_SIZE)
        for m in body.array(K_IDS, "message_ids", max_items=MAX_ACK_IDS)
    )
    if not ids or len(set(ids)) != len(ids):
        raise malformed(f"message ids are not 1 to {MAX_ACK_IDS} distinct 16-byte strings")
    if not created < expires <= created + int(MAX_TTL_S * 1000):
        raise malformed("ack lifetime is empty, negative or over 30 days")
    t = _now_ms() if now_ms is None else now_ms
    check_times("ack", created, expires, t, int(MAX_TTL_S * 1000))

    signer, public_key = claimed_signer(body, K_RECIPIENT_FP, K_RECIPIENT_PK)
    if expected_recipient_fp is not None and signer != expected_recipient_fp:
        raise RecordError("fingerprint", "ack is signed by another peer than expected")
    if sender.hex() != expected_sender_fp:
        raise RecordError("recipient", "ack acknowledges another sender's messages")
    opened.verify(public_key)
    return ReceivedAck(signer, sender.hex(), created, expires, ids)
