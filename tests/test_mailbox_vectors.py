"""The mailbox reference vectors (tests/vectors/wire.json, ``mailbox`` and the descriptor
value) against today's code: the frames re-encode byte for byte from the stored values, and
each decodes, with the codec's own readers, to what it was built from."""

from __future__ import annotations

import json
from typing import Any

from tests.vectors import generate as gen
from tierlink.mailbox.codec import (
    COLLECT,
    DEPOSIT,
    ITEM,
    RECEIPTS_REQ,
    REGISTER,
    REVOKE,
    TAKEN,
    decode_frame,
    open_descriptor,
    read_allow,
    read_dropped,
    read_ids,
    read_receipts,
    read_result,
)
from tierlink.wire.ack import open_ack
from tierlink.wire.envelope import ack_token, open_envelope

WIRE: dict[str, Any] = json.loads(gen.WIRE_PATH.read_text())
FRAMES = {n: decode_frame(bytes.fromhex(h)) for n, h in WIRE["mailbox"].items()}
VALUES = gen.stored_values(WIRE)


def test_frames_reencode_from_the_stored_values() -> None:
    assert gen.mailbox_frames(VALUES) == WIRE["mailbox"]


def test_register_carries_a_descriptor_the_mailbox_accepts() -> None:
    a, b = gen.identities()
    reg, open_reg = FRAMES["register"], FRAMES["register_open"]
    assert (reg.type, open_reg.type) == (REGISTER, REGISTER)
    desc = open_descriptor(reg.value(1, "descriptor"), owner=a.fingerprint, now=gen.NOW)
    assert desc.mailboxes == (b.fingerprint,) and desc.kem_public_key == a.kem_public_key
    assert desc.expires_at_ms == gen.T0 + 7 * 24 * 3600 * 1000
    assert read_allow(reg) == {b.fingerprint} and read_allow(open_reg) is None


def test_deposit_item_and_receipts_carry_the_stored_envelope_and_ack() -> None:
    a, b = gen.identities()
    dep = FRAMES["deposit"]
    assert (dep.type, dep.mid(1), dep.fp(2, "recipient")) == (
        DEPOSIT, gen.MESSAGE_IDS[0], b.fingerprint)
    envelope = open_envelope(dep.value(3, "envelope"), b, gen.NOW)
    assert envelope.sender_fingerprint == a.fingerprint
    item = FRAMES["item"]
    assert (item.type, item.fields.uint(1, "handle"), item.value(2, "envelope")) == (
        ITEM, 7, dep.value(3, "envelope"))
    token = ack_token(a, b.fingerprint)
    taken = FRAMES["taken"]
    assert taken.type == TAKEN and taken.fields.uint(1, "handle") == 7
    assert open_ack(taken.value(2, "ack"), token, gen.NOW) == open_ack(
        VALUES["offline_ack"], token, gen.NOW)
    assert FRAMES["taken_undeliverable"].fields.opt_bstr(2, "ack") is None
    assert read_receipts(FRAMES["receipts"]) == [
        (gen.MESSAGE_IDS[0], VALUES["offline_ack"]), (gen.MESSAGE_IDS[1], None)]
    assert read_ids(FRAMES["done"]) == list(gen.MESSAGE_IDS)


def test_results_and_bare_requests() -> None:
    assert read_result(FRAMES["result_ok"]) == (True, "")
    assert FRAMES["result_ok"].mid(1) == gen.MESSAGE_IDS[0]
    assert read_result(FRAMES["result_duplicate"]) == (True, "duplicate")
    assert read_result(FRAMES["result_refused"]) == (False, "full")
    revoked = FRAMES["result_revoked"]
    assert read_result(revoked) == (True, "") and read_dropped(revoked) == 2
    assert read_dropped(FRAMES["result_ok"]) == 0
    for name, ftype in (("revoke", REVOKE), ("collect", COLLECT),
                        ("receipts_request", RECEIPTS_REQ)):
        assert FRAMES[name].type == ftype and set(FRAMES[name].fields.map) == {0}
