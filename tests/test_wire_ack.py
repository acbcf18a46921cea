"""Offline acknowledgements: round trip, what an observer sees, every typed rejection."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierlink.errors import RecordError
from tierlink.identity import Identity
from tierlink.wire.ack import CLEAR_SIZE, K_IDS, KEY_LABEL, MAX_ACK_IDS, create_ack, open_ack
from tierlink.wire.dhtkeys import offline_acks_key, offline_queue_key
from tierlink.wire.envelope import ack_token, create_envelope
from tierlink.wire.records import KIND_ACK, MAX_VALUE_SIZE, WIRE_VERSION, now_ms

ALICE = Identity.generate()  # sent the messages
BOB = Identity.generate()  # received them, acknowledges
CAROL = Identity.generate()
TOKEN = ack_token(ALICE, BOB.fingerprint)
IDS = [bytes([i]) * 16 for i in range(1, 4)]


def reason(value: bytes, token: bytes = TOKEN, **kw: Any) -> str:
    with pytest.raises(RecordError) as info:
        open_ack(value, token, **kw)
    return info.value.reason


def forge(plain: Any, token: bytes = TOKEN, created: int | None = None,
          lifetime_ms: int = 60_000) -> bytes:
    """An ack whose plaintext is ``plain`` (CBOR-encoded unless bytes), sealed with ``token``:
    what a holder of the token could put."""
    t = now_ms() if created is None else created
    clear = (bytes([WIRE_VERSION, KIND_ACK]) + t.to_bytes(8, "big")
             + (t + lifetime_ms).to_bytes(8, "big") + bytes(12))
    key = HKDF(hashes.SHA256(), 32, salt=None, info=KEY_LABEL).derive(token)
    data = plain if isinstance(plain, bytes) else cbor2.dumps(plain)
    return clear + AESGCM(key).encrypt(clear[-12:], data, clear)


def test_round_trip() -> None:
    value = create_ack(TOKEN, [*IDS, IDS[0]], ttl_s=60)
    ack = open_ack(value, TOKEN)
    assert ack.message_ids == tuple(IDS)  # duplicates dropped, order kept
    assert ack.expires_at_ms - ack.created_at_ms == 60_000


def test_ack_names_nobody_and_its_key_is_secret() -> None:
    """No fingerprint, key, signature or id in the value; the key follows from the token
    alone, not from either end's fingerprint."""
    value = create_ack(TOKEN, IDS)
    for needle in (bytes.fromhex(ALICE.fingerprint), bytes.fromhex(BOB.fingerprint), *IDS,
                   TOKEN):
        assert needle not in value
    assert len(value) < 200  # no public key, no signature
    key = offline_acks_key(TOKEN)
    assert key not in {offline_queue_key(fp) for fp in (ALICE.fingerprint, BOB.fingerprint)}
    assert key != offline_acks_key(ack_token(ALICE, CAROL.fingerprint))


def test_largest_ack_fits() -> None:
    ids = [i.to_bytes(16, "big") for i in range(MAX_ACK_IDS)]
    value = create_ack(TOKEN, ids)
    assert len(value) <= MAX_VALUE_SIZE
    assert len(open_ack(value, TOKEN).message_ids) == MAX_ACK_IDS


@pytest.mark.parametrize(
    "ids", [[], [b"short"], [i.to_bytes(16, "big") for i in range(MAX_ACK_IDS + 1)]]
)
def test_create_rejects_bad_ids(ids: list[bytes]) -> None:
    with pytest.raises(ValueError):
        create_ack(TOKEN, ids)


def test_create_rejects_bad_token_and_ttl() -> None:
    with pytest.raises(ValueError):
        create_ack(b"short", IDS)
    with pytest.raises(ValueError):
        create_ack(TOKEN, IDS, ttl_s=-1)


def test_made_with_another_token_does_not_decrypt() -> None:
    # Carol's ack for her own messages, put under Alice's key for Bob, marks nothing.
    assert reason(create_ack(ack_token(CAROL, BOB.fingerprint), IDS)) == "decrypt"
    assert reason(create_ack(ack_token(ALICE, CAROL.fingerprint), IDS)) == "decrypt"


def test_tampered_bytes_do_not_decrypt() -> None:
    value = create_ack(TOKEN, IDS)
    for pos in (CLEAR_SIZE - 1, CLEAR_SIZE, len(value) - 1):  # nonce, ciphertext, tag
        bad = bytearray(value)
        bad[pos] ^= 1
        assert reason(bytes(bad)) == "decrypt"
    later = bytearray(value)
    later[9] ^= 1  # created, still inside the window: bound as associated data
    assert reason(bytes(later)) == "decrypt"


def test_expired() -> None:
    old = create_ack(TOKEN, IDS, ttl_s=60, created_at_ms=now_ms() - 120_000)
    assert reason(old) == "expired"
    fresh = create_ack(TOKEN, IDS, ttl_s=60)
    ack = open_ack(fresh, TOKEN)
    assert reason(fresh, now_ms=ack.expires_at_ms) == "expired"


def test_times_are_checked_before_decryption(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> bytes:
        raise AssertionError("decrypted an ack whose times are out of range")

    monkeypatch.setattr(AESGCM, "decrypt", refuse)
    assert reason(forge({K_IDS: IDS}, created=now_ms() + 3_600_000)) == "clock"
    assert reason(forge({K_IDS: IDS}, lifetime_ms=31 * 86400_000)) == "clock"
    assert reason(forge({K_IDS: IDS}, lifetime_ms=0)) == "expired"


@pytest.mark.parametrize(
    "plain",
    [
        {K_IDS: [IDS[0], IDS[0]]},  # duplicate ids
        {K_IDS: [b"short"]},
        {K_IDS: []},
        {K_IDS: [[1, 2]]},  # unhashable item
        {K_IDS: "ids"},
        {2: IDS},  # no ids
        [IDS],  # not a map
        {K_IDS: [IDS[0], cbor2.CBORTag(2, b"\x01")]},  # a tagged id
        b"\xff\x00",  # not CBOR
    ],
)
def test_malformed_plaintext(plain: Any) -> None:
    assert reason(forge(plain)) == "malformed"


def test_wrong_kind_version_and_truncation() -> None:
    env, _ = create_envelope(ALICE, BOB.fingerprint, BOB.kem_public_key, b"x", 60)
    assert reason(env) == "kind"
    value = create_ack(TOKEN, IDS)
    assert reason(b"\x02" + value[1:]) == "version"
    assert reason(value[:-1]) == "decrypt"
    assert reason(value[:CLEAR_SIZE]) == "malformed"
    assert reason(value + bytes(MAX_VALUE_SIZE)) == "oversize"


VALID = create_ack(TOKEN, IDS)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_only_record_error(data: st.DataObject) -> None:
    value = bytearray(VALID)
    for pos in data.draw(st.lists(st.integers(0, len(value) - 1), min_size=1, max_size=6)):
        value[pos] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(value)))
    with contextlib.suppress(RecordError):
        open_ack(bytes(value[:cut]), TOKEN)
