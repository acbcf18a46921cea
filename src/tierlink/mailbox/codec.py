"""Mailbox wire formats: the signed descriptor and the frames of a ``mailbox`` connection.

The **descriptor** is a signed value (:func:`~tierlink.wire.records.seal`) of kind
:data:`~tierlink.wire.records.KIND_MAILBOX_DESCRIPTOR`: the recipient's fingerprint, public
key, times, ML-KEM key and the fingerprints of its mailboxes, valid for the mailbox retention
(up to :data:`MAX_DESCRIPTOR_LIFETIME_S`). It is put under
:func:`~tierlink.wire.dhtkeys.mailboxes_key` by the recipient and re-put by its mailboxes.

**Frames** travel on a secure connection whose offer names ``purpose=mailbox``; the channel
authenticates both ends, so no frame carries a signature of its own. Each frame is one
canonical CBOR map whose key 0 is the frame type. Layouts and check order: docs/PROTOCOL.md,
section "Mailboxes".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from tierlink.errors import RecordError
from tierlink.identity import FINGERPRINT_HEX_LEN, KEM_PUBLIC_KEY_SIZE, Identity
from tierlink.wire.decoding import Fields, check_bytes, decode, malformed
from tierlink.wire.envelope import MESSAGE_ID_SIZE
from tierlink.wire.records import (
    KIND_MAILBOX_DESCRIPTOR,
    MAX_VALUE_SIZE,
    Opened,
    check_times,
    claimed_signer,
    now_ms,
    open_value,
    seal,
)

MAX_DESCRIPTOR_LIFETIME_S = 30 * 24 * 3600.0
"""Longest lifetime a descriptor may claim (issued to expires)."""
MAX_MAILBOXES = 8
"""Most mailboxes one descriptor names."""
MAX_ALLOW = 4096
"""Most fingerprints an allow-list handed to a mailbox holds."""
MAX_ITEMS_PER_FRAME = 256
"""Most receipts one RECEIPTS frame carries."""
FP_SIZE = FINGERPRINT_HEX_LEN // 2

REGISTER, REVOKE, DEPOSIT, RESULT, COLLECT, ITEM, TAKEN, RECEIPTS_REQ, RECEIPTS, DONE = range(
    1, 11
)
FRAME_NAMES = {
    REGISTER: "register", REVOKE: "revoke", DEPOSIT: "deposit", RESULT: "result",
    COLLECT: "collect", ITEM: "item", TAKEN: "taken", RECEIPTS_REQ: "receipts?",
    RECEIPTS: "receipts", DONE: "done",
}
MAX_FRAME = MAX_VALUE_SIZE + 4096
"""Largest frame: a deposit or item carries one envelope (at most MAX_VALUE_SIZE)."""


@dataclass(frozen=True)
class Descriptor:
    """A recipient's verified mailbox descriptor."""

    fingerprint: str
    public_key: bytes
    issued_at_ms: int
    expires_at_ms: int
    kem_public_key: bytes
    mailboxes: tuple[str, ...]
    value: bytes


def create_descriptor(
    identity: Identity, mailboxes: list[str], lifetime_s: float, now: int | None = None
) -> bytes:
    """Sign a descriptor naming ``mailboxes``, valid ``lifetime_s`` from ``now``."""
    if not 0 < lifetime_s <= MAX_DESCRIPTOR_LIFETIME_S:
        raise ValueError("descriptor lifetime must be in (0, 30 days]")
    if not 1 <= len(mailboxes) <= MAX_MAILBOXES:
        raise ValueError(f"a descriptor names 1 to {MAX_MAILBOXES} mailboxes")
    issued = now_ms() if now is None else now
    body: dict[int, Any] = {
        1: bytes.fromhex(identity.fingerprint), 2: identity.public_key, 3: issued,
        4: issued + int(lifetime_s * 1000), 5: identity.kem_public_key,
        6: [bytes.fromhex(m) for m in mailboxes],
    }
    return seal(identity, KIND_MAILBOX_DESCRIPTOR, body)


@dataclass(frozen=True)
class DescriptorClaim:
    """A descriptor that passed every check but its signature."""

    descriptor: Descriptor
    opened: Opened

    def verify(self) -> Descriptor:
        """The descriptor, once its claimed key's signature verifies; RecordError otherwise."""
        self.opened.verify(self.descriptor.public_key)
        return self.descriptor


def claim_descriptor(value: bytes, *, owner: str | None = None, now: int | None = None
                     ) -> DescriptorClaim:
    """Every check of :func:`open_descriptor` but the signature: a reader holding many
    values of one key runs this on each (cheap) and verifies only the claims it prefers."""
    opened = open_value(value, KIND_MAILBOX_DESCRIPTOR)
    body = Fields(opened.body, "mailbox descriptor", range(1, 7))
    issued, expires = body.uint(3, "issued_at_ms"), body.uint(4, "expires_at_ms")
    check_times("descriptor", issued, expires, now_ms() if now is None else now,
                int(MAX_DESCRIPTOR_LIFETIME_S * 1000))
    if owner is not None and body.map.get(1) != bytes.fromhex(owner):
        raise RecordError("fingerprint", "descriptor belongs to another fingerprint")
    fingerprint, public_key = claimed_signer(body)
    kem = body.bstr(5, "kem_public_key", size=KEM_PUBLIC_KEY_SIZE)
    boxes = tuple(check_bytes(m, "mailbox", size=FP_SIZE).hex()
                  for m in body.array(6, "mailboxes", max_items=MAX_MAILBOXES))
    if not boxes:
        raise malformed("descriptor names no mailbox")
    descriptor = Descriptor(fingerprint, public_key, issued, expires, kem, boxes, bytes(value))
    return DescriptorClaim(descriptor, opened)


def open_descriptor(value: bytes, *, owner: str | None = None, now: int | None = None
                    ) -> Descriptor:
    """Check a descriptor: size, head, CBOR, times, ``owner``, fingerprint binding, fields,
    then the signature; raises only RecordError."""
    return claim_descriptor(value, owner=owner, now=now).verify()


# -- frames ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """A decoded frame: its type and the fields map, read with the accessors below."""

    type: int
    fields: Fields

    def fp(self, key: int, name: str) -> str:
        """A fingerprint field."""
        return self.fields.bstr(key, name, size=FP_SIZE).hex()

    def mid(self, key: int = 1) -> bytes:
        """A message id field."""
        return self.fields.bstr(key, "message_id", size=MESSAGE_ID_SIZE)

    def value(self, key: int, name: str) -> bytes:
        """A DHT-sized value field (an envelope, a descriptor, an ack)."""
        return self.fields.bstr(key, name, min_size=1, max_size=MAX_VALUE_SIZE)


def encode_frame(ftype: int, fields: dict[int, Any] | None = None) -> bytes:
    """One frame: ``{0: type, **fields}`` in canonical CBOR."""
    return cbor2.dumps({0: ftype, **(fields or {})}, canonical=True)


def decode_frame(data: bytes) -> Frame:
    """Size, strict CBOR, the type; the fields are read by the handler of that type."""
    if len(data) > MAX_FRAME:
        raise RecordError("oversize", f"mailbox frame of {len(data)} bytes")
    raw = decode(data)
    f = Fields(raw, "mailbox frame", range(0, 8))
    ftype = f.uint(0, "type", minimum=REGISTER, maximum=DONE)
    return Frame(ftype, f)


def register_frame(descriptor: bytes, allow: set[str] | None) -> bytes:
    """REGISTER: the descriptor and, if the recipient has one, its allow-list."""
    fields: dict[int, Any] = {1: descriptor}
    if allow is not None:
        fields[2] = sorted(bytes.fromhex(a) for a in allow)
    return encode_frame(REGISTER, fields)


def read_allow(frame: Frame) -> set[str] | None:
    """The allow-list of a REGISTER frame (None: anyone may deposit)."""
    items = frame.fields.opt_array(2, "allow", max_items=MAX_ALLOW)
    if items is None:
        return None
    return {check_bytes(a, "allowed fingerprint", size=FP_SIZE).hex() for a in items}


def deposit_frame(recipient: str, message_id: bytes, envelope: bytes) -> bytes:
    """DEPOSIT: the recipient, the sender's message id (for dedupe, receipts) and the envelope."""
    return encode_frame(DEPOSIT, {1: message_id, 2: bytes.fromhex(recipient), 3: envelope})


def result_frame(ok: bool, reason: str = "", message_id: bytes = b"",
                 dropped: int | None = None) -> bytes:
    """RESULT: the answer to REGISTER, REVOKE or DEPOSIT (``ok`` only once durable); a
    REVOKE's answer also counts the envelopes the mailbox ``dropped``."""
    fields: dict[int, Any] = {1: message_id, 2: ok, 3: reason}
    if dropped is not None:
        fields[4] = dropped
    return encode_frame(RESULT, fields)


def read_result(frame: Frame) -> tuple[bool, str]:
    """(ok, reason) of a RESULT frame."""
    ok = frame.fields.map.get(2)
    if frame.type != RESULT or type(ok) is not bool:
        raise malformed("expected a RESULT frame")
    return ok, frame.fields.text(3, "reason", max_len=256)


def read_dropped(frame: Frame) -> int:
    """The envelopes dropped by a revocation (0 when the RESULT does not say)."""
    n = frame.fields.map.get(4)
    return 0 if n is None else frame.fields.uint(4, "dropped")


def receipts_frame(items: list[tuple[bytes, bytes | None]]) -> bytes:
    """RECEIPTS: ``[message id, ack value or null (expired)]`` per settled deposit."""
    return encode_frame(RECEIPTS, {1: [[m, a] for m, a in items]})


def read_receipts(frame: Frame) -> list[tuple[bytes, bytes | None]]:
    """The receipts of a RECEIPTS frame."""
    if frame.type != RECEIPTS:
        raise malformed("expected a RECEIPTS frame")
    out: list[tuple[bytes, bytes | None]] = []
    for item in frame.fields.array(1, "receipts", max_items=MAX_ITEMS_PER_FRAME):
        if type(item) is not list or len(item) != 2:
            raise malformed("a receipt is not [message id, ack]")
        mid = check_bytes(item[0], "message id", size=MESSAGE_ID_SIZE)
        ack = None if item[1] is None else check_bytes(item[1], "ack", min_size=1,
                                                       max_size=MAX_VALUE_SIZE)
        out.append((mid, ack))
    return out


def read_ids(frame: Frame) -> list[bytes]:
    """The message ids of a DONE frame."""
    return [check_bytes(m, "message id", size=MESSAGE_ID_SIZE)
            for m in frame.fields.array(1, "message_ids", max_items=MAX_ITEMS_PER_FRAME)]
