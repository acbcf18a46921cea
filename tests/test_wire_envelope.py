"""Offline envelopes on sealed-sender values: round trip, what the clear part shows, every
rejection reason of the envelope's own fields, and a fuzz of open_envelope.

The sealing itself (clear part, KEM, AEAD, signature transcript) is attacked in
tests/test_wire_sealed.py; here the attacker is a sender whose envelope's fields are wrong.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.verify_counter import VerifyCounter
from tierlink.errors import MessageTooLarge, RecordError, TierlinkError
from tierlink.identity import Identity
from tierlink.wire.ack import create_ack
from tierlink.wire.envelope import (
    ACK_TOKEN_SIZE,
    ENVELOPE,
    K_ACK_TOKEN,
    K_MESSAGE_ID,
    K_PAYLOAD,
    MAX_PAYLOAD,
    ack_token,
    create_envelope,
    open_envelope,
)
from tierlink.wire.records import MAX_VALUE_SIZE, now_ms
from tierlink.wire.sealed import seal_to

ALICE = Identity.generate()
BOB = Identity.generate()
CAROL = Identity.generate()


def envelope(payload: bytes = b"hello bob", ttl_s: float = 3600.0, **kw: Any) -> bytes:
    value, _ = create_envelope(ALICE, BOB.fingerprint, BOB.kem_public_key, payload, ttl_s, **kw)
    return value


def crafted(**changes: Any) -> bytes:
    """A value Alice seals and signs herself with some envelope fields changed or removed."""
    fields: dict[int, Any] = {
        K_MESSAGE_ID: bytes(16), K_ACK_TOKEN: ack_token(ALICE, BOB.fingerprint), K_PAYLOAD: b"x",
    }
    for name, val in changes.items():
        if val is None:
            del fields[int(name[1:])]
        else:
            fields[int(name[1:])] = val
    t = now_ms()
    return seal_to(ALICE, ENVELOPE, BOB.fingerprint, BOB.kem_public_key, fields,
                   created_at_ms=t, expires_at_ms=t + 60_000).value


def reason(value: bytes, me: Identity = BOB, **kw: Any) -> str:
    with pytest.raises(RecordError) as info:
        open_envelope(value, me, **kw)
    return info.value.reason


def test_round_trip() -> None:
    value, mid = create_envelope(ALICE, BOB.fingerprint, BOB.kem_public_key, b"hi", 60.0)
    env = open_envelope(value, BOB)
    assert env.payload == b"hi"
    assert env.message_id == mid and len(mid) == 16
    assert env.sender_fingerprint == ALICE.fingerprint
    assert env.sender_public_key == ALICE.public_key
    assert env.recipient_fingerprint == BOB.fingerprint
    assert env.expires_at_ms - env.created_at_ms == 60_000
    assert env.value_size == len(value)
    assert env.ack_token == ack_token(ALICE, BOB.fingerprint)


def test_clear_part_names_nobody() -> None:
    """Neither end's fingerprint or key, nor the ack token or payload, is in the clear."""
    secret = b"attack at dawn, bring the big ladder"
    value, mid = create_envelope(
        ALICE, BOB.fingerprint, BOB.kem_public_key, secret, 60.0, message_id=b"\x07" * 16
    )
    assert mid == b"\x07" * 16 and open_envelope(value, BOB).message_id == mid
    for needle in (secret, mid, bytes.fromhex(ALICE.fingerprint), ALICE.public_key[:64],
                   bytes.fromhex(BOB.fingerprint), ack_token(ALICE, BOB.fingerprint)):
        assert needle not in value


def test_ack_token_is_per_pair_and_stable() -> None:
    token = ack_token(ALICE, BOB.fingerprint)
    assert len(token) == ACK_TOKEN_SIZE and token == ack_token(ALICE, BOB.fingerprint)
    assert token != ack_token(ALICE, CAROL.fingerprint)
    assert token != ack_token(CAROL, BOB.fingerprint)
    # The recipient cannot compute it from its own secrets and the sender's fingerprint.
    assert token != ack_token(BOB, ALICE.fingerprint)


def test_each_envelope_is_fresh() -> None:
    a, b = envelope(message_id=b"\x01" * 16), envelope(message_id=b"\x01" * 16)
    assert a != b and len(a) == len(b)


@pytest.mark.parametrize("size", [0, 1, 255, 256, MAX_PAYLOAD])
def test_payload_sizes(size: int) -> None:
    value = envelope(bytes(range(256)) * (size // 256) + bytes(size % 256))
    assert len(value) <= MAX_VALUE_SIZE
    assert len(open_envelope(value, BOB).payload) == size
    if size == MAX_PAYLOAD:
        assert len(value) == MAX_VALUE_SIZE  # the cap is the largest payload that fits


def test_payload_over_cap_is_message_too_large() -> None:
    with pytest.raises(MessageTooLarge) as info:
        envelope(bytes(MAX_PAYLOAD + 1))
    assert isinstance(info.value, TierlinkError)
    assert str(MAX_PAYLOAD) in str(info.value)


@pytest.mark.parametrize(
    "kw",
    [
        {"recipient_fp": "ab" * 10},
        {"ttl_s": 0.0},
        {"ttl_s": 31 * 86400.0},
        {"message_id": b"short"},
        {"recipient_kem_pk": b"\x00" * 10},
    ],
)
def test_bad_arguments(kw: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "recipient_fp": BOB.fingerprint, "recipient_kem_pk": BOB.kem_public_key,
        "payload": b"x", "ttl_s": 60.0,
    }
    args.update(kw)
    with pytest.raises(ValueError):
        create_envelope(ALICE, **args)


def test_addressed_to_someone_else_does_not_decrypt(verifies: VerifyCounter) -> None:
    assert reason(envelope(), CAROL) == "decrypt" and verifies.calls == 0


def test_third_identity_cannot_decrypt() -> None:
    # Same signing key (so same fingerprint), other KEM key.
    impostor = Identity(BOB.signing_seed, CAROL.kem_seed)
    assert impostor.fingerprint == BOB.fingerprint
    assert reason(envelope(), impostor) == "decrypt"


def test_sender_off_the_allow_list_costs_no_verification(verifies: VerifyCounter) -> None:
    assert reason(envelope(), allow={CAROL.fingerprint}) == "not-allowed"
    assert verifies.calls == 0
    assert open_envelope(envelope(), BOB, allow={ALICE.fingerprint}).payload == b"hello bob"
    assert verifies.calls == 1


def test_expired() -> None:
    old = now_ms() - 7200_000
    assert reason(envelope(ttl_s=3600.0, created_at_ms=old)) == "expired"
    value = envelope(ttl_s=60.0)
    env = open_envelope(value, BOB)
    assert open_envelope(value, BOB, now_ms=env.expires_at_ms - 1).payload == b"hello bob"
    assert reason(value, now_ms=env.expires_at_ms) == "expired"


def test_oversize_value() -> None:
    assert reason(envelope() + bytes(MAX_VALUE_SIZE)) == "oversize"


def test_oversize_for_receiver_cap_costs_no_decapsulation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    value = envelope(bytes(1000))
    assert len(open_envelope(value, BOB, max_payload=1000).payload) == 1000

    def refuse(self: Identity, ciphertext: bytes) -> bytes:
        raise AssertionError("decapsulated a value its size already refuses")

    monkeypatch.setattr(Identity, "kem_decapsulate", refuse)
    assert reason(value, max_payload=999) == "oversize"


def test_small_payload_over_receiver_cap() -> None:
    # Small payloads have shorter CBOR heads than the size check assumes: the exact check
    # after decoding still refuses them.
    assert reason(envelope(b"12345678"), max_payload=7) == "oversize"


@pytest.mark.parametrize("cut", [0, 1, 2, 100, 3000, -4627, -1])
def test_truncated(cut: int) -> None:
    assert reason(envelope()[:cut]) in ("malformed", "decrypt")


def test_wrong_kind_and_version() -> None:
    ack = create_ack(bytes(ACK_TOKEN_SIZE), [i.to_bytes(16, "big") for i in range(500)])
    assert reason(ack) == "kind"  # (an ack big enough to pass the size check)
    assert reason(b"\x02" + envelope()[1:]) == "version"


def test_tampered_bytes_do_not_decrypt() -> None:
    value = envelope()
    for pos in (30, len(value) // 2, len(value) - 5):
        bad = bytearray(value)
        bad[pos] ^= 0x40
        assert reason(bytes(bad)) == "decrypt"


@pytest.mark.parametrize(
    "changes",
    [
        {"k1": None}, {"k1": b"short"}, {"k1": "text"},
        {"k2": None}, {"k2": bytes(31)}, {"k2": 7},
        {"k3": None}, {"k3": "text payload"},
        {f"k{100 + i}": 0 for i in range(17)},  # too many unknown keys
    ],
)
def test_bad_fields_from_a_genuine_sender_are_malformed(changes: dict[str, Any]) -> None:
    assert reason(crafted(**changes)) == "malformed"


def test_unknown_field_is_tolerated() -> None:
    assert open_envelope(crafted(k99="later"), BOB).payload == b"x"


VALID = envelope(b"fuzz")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    mode=st.sampled_from(["flip", "cut", "splice", "random"]),
)
def test_fuzz_bytes_only_record_error(data: st.DataObject, mode: str) -> None:
    value = bytearray(VALID)
    if mode == "flip":
        for pos in data.draw(st.lists(st.integers(0, len(value) - 1), min_size=1, max_size=8)):
            value[pos] ^= data.draw(st.integers(1, 255))
    elif mode == "cut":
        value = value[: data.draw(st.integers(0, len(value)))]
    elif mode == "splice":
        pos = data.draw(st.integers(0, len(value)))
        value[pos:pos] = data.draw(st.binary(min_size=1, max_size=64))
    else:
        value = bytearray(data.draw(st.binary(max_size=6000)))
    with contextlib.suppress(RecordError):
        open_envelope(bytes(value), BOB)
