"""Offline envelopes: round trip, every rejection reason, and a fuzz of open_envelope."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierlink.errors import MessageTooLarge, RecordError, TierlinkError
from tierlink.identity import Identity
from tierlink.wire.ack import create_ack
from tierlink.wire.envelope import (
    K_CIPHERTEXT,
    K_CREATED,
    K_EXPIRES,
    K_KEM_CT,
    K_MESSAGE_ID,
    K_NONCE,
    K_RECIPIENT,
    K_SENDER_FP,
    K_SENDER_PK,
    MAX_PAYLOAD,
    create_envelope,
    open_envelope,
)
from tierlink.wire.records import KIND_ENVELOPE, MAX_VALUE_SIZE, now_ms, open_value, seal

ALICE = Identity.generate()
BOB = Identity.generate()
CAROL = Identity.generate()


def envelope(payload: bytes = b"hello bob", ttl_s: float = 3600.0, **kw: Any) -> bytes:
    value, _ = create_envelope(ALICE, BOB.fingerprint, BOB.kem_public_key, payload, ttl_s, **kw)
    return value


def reseal(value: bytes, signer: Identity, **changes: Any) -> bytes:
    """Re-sign ``value``'s body with some fields changed (keys given as k<N>=...)."""
    body = dict(open_value(value, KIND_ENVELOPE).body)
    for name, val in changes.items():
        body[int(name[1:])] = val
    return seal(signer, KIND_ENVELOPE, body)


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
    # (plaintext absence is checked with a long random secret in the next test)


def test_given_message_id_and_plaintext_absent() -> None:
    secret = b"attack at dawn, bring the big ladder"
    value, mid = create_envelope(
        ALICE, BOB.fingerprint, BOB.kem_public_key, secret, 60.0, message_id=b"\x07" * 16
    )
    assert mid == b"\x07" * 16
    assert secret not in value
    assert open_envelope(value, BOB).message_id == mid


def test_each_envelope_is_fresh() -> None:
    a = open_value(envelope(message_id=b"\x01" * 16), KIND_ENVELOPE).body
    b = open_value(envelope(message_id=b"\x01" * 16), KIND_ENVELOPE).body
    assert a[K_KEM_CT] != b[K_KEM_CT] and a[K_NONCE] != b[K_NONCE]


@pytest.mark.parametrize("size", [0, 1, MAX_PAYLOAD])
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


def test_signed_by_another_key() -> None:
    value = envelope()
    signed = value[:-4627]
    forged = signed + CAROL.sign(signed)
    assert reason(forged) == "signature"


def test_public_key_not_matching_fingerprint() -> None:
    # Carol signs with her key but claims Alice's fingerprint.
    forged = reseal(envelope(), CAROL, k2=CAROL.public_key)
    assert reason(forged) == "fingerprint"


def test_rewrapped_by_another_sender_does_not_decrypt() -> None:
    # Carol takes Alice's ciphertext and re-signs it as her own: a valid signature, but the
    # header (sender) is bound into the AEAD, so Bob cannot be fooled about authorship.
    stolen = reseal(
        envelope(), CAROL, k1=bytes.fromhex(CAROL.fingerprint), k2=CAROL.public_key
    )
    assert reason(stolen) == "decrypt"


def test_addressed_to_someone_else() -> None:
    assert reason(envelope(), CAROL) == "recipient"


def test_third_identity_cannot_decrypt() -> None:
    # Same signing key (so same fingerprint: passes the recipient check), other KEM key.
    impostor = Identity(BOB.signing_seed, CAROL.kem_seed)
    assert impostor.fingerprint == BOB.fingerprint
    assert reason(envelope(), impostor) == "decrypt"


def test_expired() -> None:
    old = now_ms() - 7200_000
    assert reason(envelope(ttl_s=3600.0, created_at_ms=old)) == "expired"
    value = envelope(ttl_s=60.0)
    env = open_envelope(value, BOB)
    assert open_envelope(value, BOB, now_ms=env.expires_at_ms - 1).payload == b"hello bob"
    assert reason(value, now_ms=env.expires_at_ms) == "expired"


@pytest.mark.parametrize(
    "changes",
    [
        {"k6": 0},  # expires before created
        {"k5": 1000, "k6": 1000 + 31 * 86400_000},  # lifetime over 30 days
    ],
)
def test_absurd_lifetime_is_malformed(changes: dict[str, Any]) -> None:
    assert reason(reseal(envelope(), ALICE, **changes)) == "malformed"


def test_oversize_value() -> None:
    assert reason(envelope() + bytes(MAX_VALUE_SIZE)) == "oversize"


def test_oversize_for_receiver_cap() -> None:
    value = envelope(bytes(1000))
    assert reason(value, max_payload=999) == "oversize"
    assert len(open_envelope(value, BOB, max_payload=1000).payload) == 1000


@pytest.mark.parametrize("cut", [0, 1, 2, 100, 3000, -4627, -1])
def test_truncated(cut: int) -> None:
    value = envelope()
    assert reason(value[:cut]) in ("malformed", "signature")


def test_wrong_kind_and_version() -> None:
    ack = create_ack(BOB, ALICE.fingerprint, [b"\x00" * 16])
    assert reason(ack) == "kind"
    assert reason(b"\x02" + envelope()[1:]) == "version"


def test_tampered_bytes_fail_signature() -> None:
    value = bytearray(envelope())
    for pos in (5, len(value) // 2, len(value) - 4627 - 5):
        bad = bytearray(value)
        bad[pos] ^= 0x40
        assert reason(bytes(bad)) in ("signature", "malformed")


@pytest.mark.parametrize("key", [K_CIPHERTEXT, K_NONCE, K_KEM_CT, K_CREATED, K_MESSAGE_ID])
def test_tampered_and_resigned_fails_decrypt(key: int) -> None:
    # The sender itself (or a bug) alters a field after encryption and signs again: the
    # signature is fine, but the AEAD (ciphertext, or header as associated data) is not.
    value = envelope()
    body = open_value(value, KIND_ENVELOPE).body
    old = body[key]
    new = old + 1 if isinstance(old, int) else bytes([old[0] ^ 1]) + old[1:]
    assert reason(reseal(value, ALICE, **{f"k{key}": new})) == "decrypt"


def test_extension_field_added_after_encryption_fails_decrypt() -> None:
    assert reason(reseal(envelope(), ALICE, k99="later")) == "decrypt"


@pytest.mark.parametrize(
    "changes",
    [
        {"k99": cbor2.CBORTag(4, [-2, 27315])},  # a tagged extension field
        {"k5": True},  # bool is not an integer
        {"k6": 2**64 - 1},  # past the integer bound
        {f"k{100 + i}": 0 for i in range(17)},  # too many unknown keys
    ],
)
def test_strict_decoding_is_malformed(changes: dict[str, Any]) -> None:
    assert reason(reseal(envelope(), ALICE, **changes)) == "malformed"


@pytest.mark.parametrize(
    "key",
    [K_SENDER_FP, K_SENDER_PK, K_MESSAGE_ID, K_RECIPIENT, K_CREATED, K_EXPIRES, K_KEM_CT,
     K_NONCE, K_CIPHERTEXT],
)
def test_missing_or_mistyped_field_is_malformed(key: int) -> None:
    value = envelope()
    body = dict(open_value(value, KIND_ENVELOPE).body)
    del body[key]
    assert reason(seal(ALICE, KIND_ENVELOPE, body)) == "malformed"
    body[key] = "text"
    assert reason(seal(ALICE, KIND_ENVELOPE, body)) == "malformed"


VALID = envelope(b"fuzz")
VALID_BODY = open_value(VALID, KIND_ENVELOPE).body

cbor_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
    st.binary(max_size=80), st.text(max_size=20), st.floats(allow_nan=True),
)
cbor_any = st.recursive(
    cbor_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.integers(0, 12), inner,
                                                                max_size=4),
    max_leaves=10,
)


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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.integers(0, 12), cbor_any | st.none(), min_size=1, max_size=4))
def test_fuzz_signed_bodies_only_record_error(changes: dict[int, Any]) -> None:
    # Validly signed values with arbitrary field contents reach every check after the
    # signature (recipient, lifetime, size, AAD re-encoding, decryption).
    body = dict(VALID_BODY)
    for key, val in changes.items():
        if val is None:
            body.pop(key, None)
        else:
            body[key] = val
    try:
        value = seal(ALICE, KIND_ENVELOPE, body)
    except RecordError:
        return
    try:
        env = open_envelope(value, BOB)
    except RecordError:
        return
    # Only changes to fields outside the AAD and the signature could leave it valid.
    assert env.payload == b"fuzz"
