"""Offline acknowledgements: round trip and every typed rejection."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierlink.errors import RecordError
from tierlink.identity import Identity
from tierlink.wire.ack import MAX_ACK_IDS, create_ack, open_ack
from tierlink.wire.envelope import create_envelope
from tierlink.wire.records import KIND_ACK, MAX_VALUE_SIZE, now_ms, open_value, seal

ALICE = Identity.generate()  # sent the messages
BOB = Identity.generate()  # received them, signs the ack
CAROL = Identity.generate()
IDS = [bytes([i]) * 16 for i in range(1, 4)]


def reason(value: bytes, sender: str = ALICE.fingerprint, **kw: Any) -> str:
    with pytest.raises(RecordError) as info:
        open_ack(value, sender, **kw)
    return info.value.reason


def reseal(value: bytes, signer: Identity, **changes: Any) -> bytes:
    body = dict(open_value(value, KIND_ACK).body)
    for name, val in changes.items():
        body[int(name[1:])] = val
    return seal(signer, KIND_ACK, body)


def test_round_trip() -> None:
    value = create_ack(BOB, ALICE.fingerprint, [*IDS, IDS[0]], ttl_s=60)
    ack = open_ack(value, ALICE.fingerprint, expected_recipient_fp=BOB.fingerprint)
    assert ack.message_ids == tuple(IDS)  # duplicates dropped, order kept
    assert ack.recipient_fingerprint == BOB.fingerprint
    assert ack.sender_fingerprint == ALICE.fingerprint
    assert ack.expires_at_ms - ack.created_at_ms == 60_000


def test_largest_ack_fits() -> None:
    ids = [i.to_bytes(16, "big") for i in range(MAX_ACK_IDS)]
    value = create_ack(BOB, ALICE.fingerprint, ids)
    assert len(value) <= MAX_VALUE_SIZE
    assert len(open_ack(value, ALICE.fingerprint).message_ids) == MAX_ACK_IDS


@pytest.mark.parametrize(
    "ids", [[], [b"short"], [i.to_bytes(16, "big") for i in range(MAX_ACK_IDS + 1)]]
)
def test_create_rejects_bad_ids(ids: list[bytes]) -> None:
    with pytest.raises(ValueError):
        create_ack(BOB, ALICE.fingerprint, ids)


def test_create_rejects_bad_sender_and_ttl() -> None:
    with pytest.raises(ValueError):
        create_ack(BOB, "nope", IDS)
    with pytest.raises(ValueError):
        create_ack(BOB, ALICE.fingerprint, IDS, ttl_s=-1)


def test_for_another_sender() -> None:
    assert reason(create_ack(BOB, CAROL.fingerprint, IDS)) == "recipient"


def test_signed_by_another_key() -> None:
    value = create_ack(BOB, ALICE.fingerprint, IDS)
    signed = value[:-4627]
    assert reason(signed + CAROL.sign(signed)) == "signature"


def test_public_key_not_matching_fingerprint() -> None:
    value = reseal(create_ack(BOB, ALICE.fingerprint, IDS), CAROL, k2=CAROL.public_key)
    assert reason(value) == "fingerprint"


def test_from_unexpected_recipient() -> None:
    # Carol's genuine ack must not mark Alice's messages to Bob as delivered.
    value = create_ack(CAROL, ALICE.fingerprint, IDS)
    assert open_ack(value, ALICE.fingerprint).recipient_fingerprint == CAROL.fingerprint
    assert reason(value, expected_recipient_fp=BOB.fingerprint) == "fingerprint"


def test_expired() -> None:
    old = create_ack(BOB, ALICE.fingerprint, IDS, ttl_s=60, created_at_ms=now_ms() - 120_000)
    assert reason(old) == "expired"
    fresh = create_ack(BOB, ALICE.fingerprint, IDS, ttl_s=60)
    ack = open_ack(fresh, ALICE.fingerprint)
    assert reason(fresh, now_ms=ack.expires_at_ms) == "expired"


@pytest.mark.parametrize(
    "changes",
    [
        {"k6": [IDS[0], IDS[0]]},  # duplicate ids
        {"k6": [b"short"]},
        {"k6": []},
        {"k6": [[1, 2]]},  # unhashable item
        {"k6": "ids"},
        {"k3": b"\x00" * 10},
        {"k4": "yesterday"},
        {"k5": 0},  # expires before created
        {"k4": True},  # bool is not an integer
        {"k5": 2**64 - 1},  # past the integer bound
        {"k6": [IDS[0], cbor2.CBORTag(2, b"\x01")]},  # a tagged id
    ],
)
def test_malformed(changes: dict[str, Any]) -> None:
    value = reseal(create_ack(BOB, ALICE.fingerprint, IDS), BOB, **changes)
    assert reason(value) == "malformed"


def test_wrong_kind_and_truncation() -> None:
    env, _ = create_envelope(ALICE, BOB.fingerprint, BOB.kem_public_key, b"x", 60)
    assert reason(env) == "kind"
    value = create_ack(BOB, ALICE.fingerprint, IDS)
    assert reason(value[:-1]) in ("malformed", "signature")
    assert reason(value[:10]) == "malformed"


VALID = create_ack(BOB, ALICE.fingerprint, IDS)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_only_record_error(data: st.DataObject) -> None:
    value = bytearray(VALID)
    for pos in data.draw(st.lists(st.integers(0, len(value) - 1), min_size=1, max_size=6)):
        value[pos] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(value)))
    with contextlib.suppress(RecordError):
        open_ack(bytes(value[:cut]), ALICE.fingerprint)
