"""Sealed-sender values (wire/sealed.py), written as attacks.

The attacker here knows the protocol: :func:`wrap` builds any clear part and encrypts any
plaintext to a recipient's KEM key, so each test pits a crafted value against a good one.
Decapsulations are counted on :class:`Identity` and signature verifications by
:class:`tests.verify_counter.VerifyCounter`, to prove which values cost what.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.verify_counter import VerifyCounter
from tierlink.errors import RecordError
from tierlink.identity import SIGNATURE_SIZE, Identity, kem_encapsulate
from tierlink.wire.records import MAX_CLOCK_SKEW_MS, MAX_VALUE_SIZE, WIRE_VERSION, now_ms
from tierlink.wire.sealed import (
    CLEAR_SIZE,
    KEY_LABEL,
    MIN_SIZE,
    SIGNATURE_LABEL,
    SealedKind,
    Unsealed,
    open_sealed,
    seal_to,
)

ME = Identity.generate()
FRIEND = Identity.generate()
STRANGER = Identity.generate()
OTHER = Identity.generate()
KIND = SealedKind(0x70, "test value", 600_000, (1, 2))
OTHER_KIND = SealedKind(0x71, "other value", 600_000, (1, 2))
FIELDS: dict[int, Any] = {1: b"session-id-bytes", 2: "hello"}


class Decaps:
    """Counts ML-KEM decapsulations by any identity while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = Identity.kem_decapsulate

        def counted(ident: Identity, ciphertext: bytes) -> bytes:
            self.calls += 1
            return real(ident, ciphertext)

        monkeypatch.setattr(Identity, "kem_decapsulate", counted)


@pytest.fixture
def decaps(monkeypatch: pytest.MonkeyPatch) -> Decaps:
    return Decaps(monkeypatch)


def sealed(sender: Identity = FRIEND, to: Identity = ME, kind: SealedKind = KIND,
           fields: dict[int, Any] | None = None, lifetime_ms: int = 60_000) -> bytes:
    t = now_ms()
    return seal_to(sender, kind, to.fingerprint, to.kem_public_key,
                   FIELDS if fields is None else fields, created_at_ms=t,
                   expires_at_ms=t + lifetime_ms).value


def reject(value: bytes, reason: str, me: Identity = ME, kind: SealedKind = KIND,
           **kw: Any) -> None:
    with pytest.raises(RecordError) as exc:
        open_sealed(value, kind, me, **kw)
    assert exc.value.reason == reason, exc.value


def clear_part(kind: SealedKind, to: Identity, created: int, expires: int
               ) -> tuple[bytes, bytes]:
    """(clear part, KEM shared secret) of a value to ``to``."""
    shared, kem_ct = kem_encapsulate(to.kem_public_key)
    clear = (bytes([WIRE_VERSION, kind.kind]) + created.to_bytes(8, "big")
             + expires.to_bytes(8, "big") + kem_ct + os.urandom(12))
    return clear, shared


def wrap(plain_for: Callable[[bytes], bytes], *, to: Identity = ME, kind: SealedKind = KIND,
         aad_recipient: Identity | None = None, lifetime_ms: int = 60_000,
         times: tuple[int, int] | None = None) -> bytes:
    """The attacker's sealer: any plaintext (built from the clear part), AEAD-valid for ``to``
    (or with another recipient in the associated data), at ``times`` or now."""
    t = now_ms()
    clear, shared = clear_part(kind, to, *(times or (t, t + lifetime_ms)))
    key = HKDF(hashes.SHA256(), 32, None, KEY_LABEL + bytes([kind.kind])).derive(shared)
    aad = clear + bytes.fromhex((aad_recipient or to).fingerprint)
    return clear + AESGCM(key).encrypt(clear[-12:], plain_for(clear), aad)


def inner(claimed: Identity, signer: Identity | None = None, fields: Any = None,
          to: Identity = ME, extra: dict[int, Any] | None = None) -> Callable[[bytes], bytes]:
    """An inner part claiming ``claimed``, signed (over the right transcript) by ``signer``."""
    def build(clear: bytes) -> bytes:
        body = cbor2.dumps({1: bytes.fromhex(claimed.fingerprint), 2: claimed.public_key,
                            3: FIELDS if fields is None else fields, **(extra or {})},
                           canonical=True)
        transcript = SIGNATURE_LABEL + clear + bytes.fromhex(to.fingerprint) + body
        return body + (signer or claimed).sign(transcript)
    return build


# -- what works --------------------------------------------------------------------------------
def test_roundtrip_returns_sender_fields_times_and_secret() -> None:
    t = now_ms()
    made = seal_to(FRIEND, KIND, ME.fingerprint, ME.kem_public_key, FIELDS,
                   created_at_ms=t, expires_at_ms=t + 5000)
    got = open_sealed(made.value, KIND, ME)
    assert isinstance(got, Unsealed)
    assert (got.sender, got.sender_public_key, got.recipient) == (
        FRIEND.fingerprint, FRIEND.public_key, ME.fingerprint)
    assert got.fields.map == FIELDS
    assert (got.created_at_ms, got.expires_at_ms) == (t, t + 5000)
    assert got.shared_secret == made.shared_secret
    assert got.derive(KIND, b"x") == made.derive(KIND, b"x") != made.derive(KIND, b"y")
    assert got.derive(KIND, b"x") != made.derive(OTHER_KIND, b"x")
    for text in (repr(made), repr(got)):
        assert made.shared_secret.hex() not in text and "shared_secret" not in text


def test_observer_sees_no_sender_recipient_or_field() -> None:
    value = sealed()
    for hidden in (bytes.fromhex(FRIEND.fingerprint), FRIEND.public_key[:64],
                   bytes.fromhex(ME.fingerprint), FIELDS[1], b"hello"):
        assert hidden not in value
    assert len(value) - CLEAR_SIZE > SIGNATURE_SIZE  # the signature travels inside


def test_every_value_has_its_own_secret_and_derived_keys() -> None:
    one = seal_to(FRIEND, KIND, ME.fingerprint, ME.kem_public_key, FIELDS,
                  expires_at_ms=now_ms() + 1000)
    two = seal_to(FRIEND, KIND, ME.fingerprint, ME.kem_public_key, FIELDS,
                  expires_at_ms=now_ms() + 1000)
    assert one.shared_secret != two.shared_secret
    assert one.derive(KIND, b"a") != two.derive(KIND, b"a")


def test_unknown_inner_keys_are_tolerated_and_bounded() -> None:
    ok = wrap(inner(FRIEND, fields={**FIELDS, 99: "later"}))
    assert open_sealed(ok, KIND, ME).fields.map[99] == "later"
    reject(wrap(inner(FRIEND, fields={**FIELDS, **{100 + i: 0 for i in range(17)}})),
           "malformed")


def test_seal_refuses_bad_arguments() -> None:
    t = now_ms()
    for created, expires in ((t, t), (t, t - 1), (t, t + KIND.max_lifetime_ms + 1),
                             (-1, t)):
        with pytest.raises(ValueError):
            seal_to(FRIEND, KIND, ME.fingerprint, ME.kem_public_key, FIELDS,
                    created_at_ms=created, expires_at_ms=expires)
    with pytest.raises(ValueError):
        seal_to(FRIEND, KIND, "ab" * 10, ME.kem_public_key, FIELDS, expires_at_ms=t + 1)
    with pytest.raises(ValueError):
        seal_to(FRIEND, KIND, ME.fingerprint, b"short", FIELDS, expires_at_ms=t + 1)
    with pytest.raises(RecordError) as exc:
        seal_to(FRIEND, KIND, ME.fingerprint, ME.kem_public_key, {1: bytes(MAX_VALUE_SIZE)},
                created_at_ms=t, expires_at_ms=t + 1)
    assert exc.value.reason == "oversize"


# -- cheap rejections cost no decapsulation ----------------------------------------------------
def test_head_size_and_time_are_rejected_before_decapsulation(
    decaps: Decaps, verifies: VerifyCounter
) -> None:
    good = sealed()
    t = now_ms()
    far = t + KIND.max_lifetime_ms + MAX_CLOCK_SKEW_MS + 10_000
    attacks: list[tuple[bytes, str, dict[str, Any]]] = [
        (b"", "malformed", {}),
        (good[:MIN_SIZE - 1], "malformed", {}),
        (good + bytes(MAX_VALUE_SIZE), "oversize", {}),
        (bytes([2]) + good[1:], "version", {}),
        (good[:1] + bytes([OTHER_KIND.kind]) + good[2:], "kind", {}),
        (sealed(kind=OTHER_KIND), "kind", {}),
        (good, "expired", {"now": far}),
        (good, "clock", {"now": t - MAX_CLOCK_SKEW_MS - 10_000}),
        # A lifetime past the kind's maximum, written into the clear part.
        (good[:10] + (t + KIND.max_lifetime_ms + 5000).to_bytes(8, "big") + good[18:],
         "clock", {}),
        # Expiry before creation.
        (good[:10] + (t - 1).to_bytes(8, "big") + good[18:], "expired", {}),
    ]
    for value, reason, kw in attacks:
        reject(value, reason, **kw)
    with pytest.raises(RecordError) as exc:
        open_sealed("text", KIND, ME)  # type: ignore[arg-type]
    assert exc.value.reason == "malformed"
    assert decaps.calls == 0 and verifies.calls == 0
    open_sealed(good, KIND, ME)
    assert decaps.calls == 1 and verifies.calls == 1


def test_changed_times_fail_at_the_aead(decaps: Decaps, verifies: VerifyCounter) -> None:
    """Times are associated data: moving them inside the window still fails, unverified."""
    good = sealed()
    created = int.from_bytes(good[2:10], "big")
    reject(good[:2] + (created - 1000).to_bytes(8, "big") + good[10:], "decrypt")
    assert decaps.calls == 1 and verifies.calls == 0


# -- the recipient ------------------------------------------------------------------------------
def test_wrong_recipient_fails_at_the_aead(decaps: Decaps, verifies: VerifyCounter) -> None:
    reject(sealed(to=OTHER), "decrypt")  # to another KEM key
    # Encapsulated to my KEM key, but sealed for another fingerprint (associated data).
    reject(wrap(inner(FRIEND, to=OTHER), aad_recipient=OTHER), "decrypt")
    assert decaps.calls == 2 and verifies.calls == 0


def test_kind_byte_relabelled_to_another_kind_fails_at_the_aead() -> None:
    value = sealed(kind=OTHER_KIND)
    reject(value[:1] + bytes([KIND.kind]) + value[2:], "decrypt")


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_flipped_byte_is_rejected(data: st.DataObject) -> None:
    value = bytearray(sealed_once())
    index = data.draw(st.integers(0, len(value) - 1))
    value[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(RecordError):
        open_sealed(bytes(value), KIND, ME)


_ONCE: list[bytes] = []


def sealed_once() -> bytes:
    if not _ONCE:
        _ONCE.append(seal_to(FRIEND, KIND, ME.fingerprint, ME.kem_public_key, FIELDS,
                             expires_at_ms=now_ms() + 600_000).value)
    return _ONCE[0]


# -- the inner part -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "plain",
    [
        b"\x00" * (SIGNATURE_SIZE - 1),  # shorter than a signature
        b"\xa0",  # a map with nothing after it (no signature)
        b"\xff" + bytes(SIGNATURE_SIZE),  # not CBOR
        cbor2.dumps([1, 2]) + bytes(SIGNATURE_SIZE),  # not a map
        cbor2.dumps({1: b"x", 2: b"y"}) + bytes(SIGNATURE_SIZE),  # no fields map
        cbor2.dumps({1: b"x", 2: b"y", 3: [1]}) + bytes(SIGNATURE_SIZE),  # fields not a map
        cbor2.dumps({1: bytes(64), 2: bytes(2592), 3: {1: cbor2.CBORTag(2, b"\x01" * 40)}})
        + bytes(SIGNATURE_SIZE),  # a bignum tag inside the fields
        cbor2.dumps({1: bytes(63), 2: bytes(2592), 3: {}}) + bytes(SIGNATURE_SIZE),
        cbor2.dumps({1: bytes(64), 2: bytes(2591), 3: {}}) + bytes(SIGNATURE_SIZE),
        cbor2.dumps({"1": bytes(64), 2: bytes(2592), 3: {}}) + bytes(SIGNATURE_SIZE),
    ],
)
def test_malformed_inner_part_costs_no_verification(
    plain: bytes, verifies: VerifyCounter
) -> None:
    reject(wrap(lambda _clear: plain), "malformed")
    assert verifies.calls == 0


def test_public_key_not_matching_the_claimed_fingerprint(verifies: VerifyCounter) -> None:
    def build(clear: bytes) -> bytes:
        body = cbor2.dumps({1: bytes.fromhex(FRIEND.fingerprint), 2: STRANGER.public_key,
                            3: FIELDS}, canonical=True)
        return body + STRANGER.sign(SIGNATURE_LABEL + clear + bytes.fromhex(ME.fingerprint)
                                    + body)
    reject(wrap(build), "fingerprint")
    assert verifies.calls == 0


def test_not_allowed_is_decided_before_the_signature(verifies: VerifyCounter) -> None:
    allow = {FRIEND.fingerprint}
    reject(sealed(sender=STRANGER), "not-allowed", allow=allow)
    # Claiming to be a stranger with a garbage signature is still only "not-allowed".
    reject(wrap(inner(STRANGER, signer=OTHER)), "not-allowed", allow=allow)
    assert verifies.calls == 0
    assert open_sealed(sealed(), KIND, ME, allow=allow).sender == FRIEND.fingerprint
    assert verifies.calls == 1


def test_impersonation_fails_at_the_signature(verifies: VerifyCounter) -> None:
    """A stranger claiming my friend (with its real public key) cannot sign for it."""
    reject(wrap(inner(FRIEND, signer=STRANGER)), "signature", allow={FRIEND.fingerprint})
    assert verifies.calls == 1


def test_stolen_inner_part_cannot_be_rewrapped(verifies: VerifyCounter) -> None:
    """The recipient (or anyone holding the KEM secret) takes FRIEND's signed inner part and
    seals it again as its own value: to itself with the same times, to someone else, under
    new times, or as another kind. The signature covers the recipient and the clear part
    (kind, times, KEM ciphertext), so each fails."""
    value = sealed()
    got = open_sealed(value, KIND, ME)
    key = HKDF(hashes.SHA256(), 32, None, KEY_LABEL + bytes([KIND.kind])).derive(
        got.shared_secret)
    plain = AESGCM(key).decrypt(value[CLEAR_SIZE - 12:CLEAR_SIZE], value[CLEAR_SIZE:],
                                value[:CLEAR_SIZE] + bytes.fromhex(ME.fingerprint))
    times = (got.created_at_ms, got.expires_at_ms)
    reject(wrap(lambda _clear: plain, times=times), "signature")  # only a fresh KEM ciphertext
    reject(wrap(lambda _clear: plain, to=OTHER), "signature", me=OTHER)
    reject(wrap(lambda _clear: plain, lifetime_ms=500_000), "signature")
    reject(wrap(lambda _clear: plain, kind=OTHER_KIND), "signature", kind=OTHER_KIND)
    assert verifies.calls == 1 + 4
    # The same builder with an inner part FRIEND really signed for OTHER opens: the
    # failures above are the signature's, not the attacker tool's.
    rewrapped = wrap(inner(FRIEND, to=OTHER), to=OTHER)
    assert open_sealed(rewrapped, KIND, OTHER).sender == FRIEND.fingerprint
