"""Offers (sealed-sender: dialer, session and description inside) and answers (sealed under the
offer's KEM-derived secret, under a key derived from it)."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.wire_samples import CANDIDATES
from tierlink.errors import RecordError
from tierlink.identity import SIGNATURE_SIZE, Identity
from tierlink.wire.dhtkeys import answer_key
from tierlink.wire.records import (
    KIND_ANSWER,
    MAX_CLOCK_SKEW_MS,
    MAX_VALUE_SIZE,
    WIRE_VERSION,
    now_ms,
)
from tierlink.wire.sealed import seal_to
from tierlink.wire.signaling import (
    OFFER,
    OfferSecret,
    SessionDescription,
    decode_answer,
    decode_offer,
    encode_answer,
    encode_offer,
    new_session_id,
)

DIALER = Identity.generate()
CALLEE = Identity.generate()
CANDS = CANDIDATES
DIALER_PARAMS = SessionDescription("dial", "d" * 22, CANDS[:2], bytes(range(32)), "messages")
CALLEE_PARAMS = SessionDescription("call", "c" * 22, CANDS, bytes(range(32, 64)))


def offer_to(callee: Identity = CALLEE, session: bytes | None = None) -> tuple[bytes, OfferSecret]:
    return encode_offer(
        DIALER, callee.fingerprint, callee.kem_public_key, session or new_session_id(),
        DIALER_PARAMS,
    )


@functools.cache
def offer_to_cached() -> tuple[bytes, OfferSecret]:
    """One offer shared by the tests that only need some valid secret."""
    return offer_to()


def expect(reason: str, value: bytes, secret: OfferSecret) -> None:
    with pytest.raises(RecordError) as exc:
        decode_answer(value, secret)
    assert exc.value.reason == reason


def sealed(secret: OfferSecret, plain: bytes) -> bytes:
    """An answer whose tag verifies but whose payload is ``plain`` (any bytes)."""
    nonce = os.urandom(12)
    return bytes([WIRE_VERSION, KIND_ANSWER]) + nonce + AESGCM(secret.key).encrypt(
        nonce, plain, secret.aad()
    )


def test_both_sides_derive_the_same_answer_secret() -> None:
    value, secret = offer_to()
    offer = decode_offer(value, CALLEE)
    assert offer.secret == secret
    assert len(secret.key) == 32
    assert (secret.dialer, secret.callee) == (DIALER.fingerprint, CALLEE.fingerprint)
    assert (offer.signer, offer.recipient) == (DIALER.fingerprint, CALLEE.fingerprint)
    assert offer.signer_public_key == DIALER.public_key
    assert offer.session_id == secret.session_id
    assert offer.params == DIALER_PARAMS
    assert secret.key.hex() not in repr(secret)
    assert offer.secret.answer_key() == secret.answer_key()


def test_offer_names_no_one_and_its_answer_key_is_unlinkable() -> None:
    """A DHT observer who knows both fingerprints finds neither, nor the session id, in the
    offer, and cannot compute the answer's key from anything it sees."""
    session = new_session_id()
    value, secret = offer_to(session=session)
    for hidden in (bytes.fromhex(DIALER.fingerprint), DIALER.public_key[:64],
                   bytes.fromhex(CALLEE.fingerprint), session, DIALER_PARAMS.ufrag.encode()):
        assert hidden not in value
    key = secret.answer_key()
    assert len(key) == 40 and key != answer_key(os.urandom(32))
    observable = (DIALER.fingerprint, CALLEE.fingerprint, session.hex(), value.hex())
    assert all(key != answer_key(bytes.fromhex(x)) for x in observable)
    # The same session id offered twice gets two unrelated answer keys.
    _, again = offer_to(session=session)
    assert again.answer_key() != key


def test_every_offer_has_its_own_secret() -> None:
    session = new_session_id()
    (_, one), (_, two) = offer_to(session=session), offer_to(session=session)
    assert one.session_id == two.session_id and one.key != two.key


def test_answer_roundtrip_and_size() -> None:
    value, secret = offer_to()
    answer = encode_answer(decode_offer(value, CALLEE).secret, CALLEE_PARAMS)
    assert decode_answer(answer, secret) == CALLEE_PARAMS
    assert answer[:2] == bytes([WIRE_VERSION, KIND_ANSWER])
    assert len(answer) < 1500
    # An observer learns nothing about who answered: no fingerprint, no address.
    for visible in (bytes.fromhex(CALLEE.fingerprint), bytes.fromhex(DIALER.fingerprint),
                    b"198.18.1.2", CALLEE_PARAMS.pwd.encode()):
        assert visible not in answer


def test_raw_mode_answer_without_certificate() -> None:
    _, secret = offer_to()
    raw = SessionDescription("uuuu", "p" * 22, CANDS[:1], None, "app")
    assert decode_answer(encode_answer(secret, raw), secret) == raw


def test_answer_to_another_dial_is_rejected() -> None:
    value, secret = offer_to()
    answer = encode_answer(decode_offer(value, CALLEE).secret, CALLEE_PARAMS)
    _, other = offer_to()
    expect("decrypt", answer, other)  # another session (and another KEM secret)
    _, same_session = offer_to(session=secret.session_id)
    expect("decrypt", answer, same_session)  # same session id, fresh KEM secret
    for change in (
        {"session_id": new_session_id()},
        {"dialer": CALLEE.fingerprint, "callee": DIALER.fingerprint},
        {"dialer": Identity.generate().fingerprint},
        {"callee": Identity.generate().fingerprint},
        {"key": os.urandom(32)},
    ):
        expect("decrypt", answer, dataclasses.replace(secret, **change))


def test_answer_sealed_by_someone_else_is_rejected() -> None:
    """Whoever lacks the callee's KEM private key cannot make an answer that opens."""
    value, secret = offer_to()
    mallory = Identity.generate()
    with pytest.raises(RecordError) as exc:
        decode_offer(value, mallory)  # cannot even read the offer
    assert exc.value.reason == "decrypt"
    forged = dataclasses.replace(secret, key=os.urandom(32))
    expect("decrypt", encode_answer(forged, CALLEE_PARAMS), secret)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_tampered_answer_is_rejected(data: st.DataObject) -> None:
    _, secret = offer_to_cached()
    answer = bytearray(encode_answer(secret, CALLEE_PARAMS))
    index = data.draw(st.integers(0, len(answer) - 1))
    answer[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(RecordError) as exc:
        decode_answer(bytes(answer), secret)
    assert exc.value.reason == {0: "version", 1: "kind"}.get(index, "decrypt")


def test_truncated_or_extended_answer_is_rejected() -> None:
    _, secret = offer_to()
    answer = encode_answer(secret, CALLEE_PARAMS)
    expect("decrypt", answer[:-1], secret)
    expect("decrypt", answer + b"\x00", secret)
    expect("malformed", answer[:29], secret)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "malformed"),
        (b"junk", "malformed"),
        (bytes([WIRE_VERSION, KIND_ANSWER]) + bytes(40), "decrypt"),
        (bytes([2, KIND_ANSWER]) + bytes(40), "version"),
        (bytes([WIRE_VERSION, 0x02]) + bytes(40), "kind"),
        (bytes([WIRE_VERSION, KIND_ANSWER]) + bytes(MAX_VALUE_SIZE), "oversize"),
    ],
)
def test_garbage_is_rejected(value: bytes, reason: str) -> None:
    expect(reason, value, offer_to_cached()[1])


def test_random_garbage_and_offers_are_rejected() -> None:
    value, secret = offer_to_cached()
    for _ in range(20):
        expect("decrypt", bytes([WIRE_VERSION, KIND_ANSWER]) + os.urandom(200), secret)
    expect("kind", value, secret)  # an offer is not an answer
    with pytest.raises(RecordError) as exc:
        decode_answer("text", secret)  # type: ignore[arg-type]
    assert exc.value.reason == "malformed"


@pytest.mark.parametrize(
    "plain",
    [
        b"\xff\x00",  # not CBOR
        cbor2.dumps([1, 2]),  # not a map
        cbor2.dumps({1: "u", 2: "p"}),  # no candidates
        cbor2.dumps({1: "u", 2: "p", 3: [], 4: b"short"}),  # bad certificate hash
        cbor2.dumps({1: "u", 2: "p", 3: [["x"]]}),  # bad candidate
        cbor2.dumps({1: "u", 2: "p", 3: [], 6: "spy"}),  # unknown purpose
        cbor2.dumps({1: "u", 2: "p", 3: [], 7: [1]}),  # channel limits: one number
        cbor2.dumps({1: "u", 2: "p", 3: [], 7: [1, 0]}),  # zero window
        cbor2.dumps({1: "u", 2: "p", 3: [], 7: [-1, 5]}),  # negative size
        cbor2.dumps({1: "u", 2: "p", 3: [], 7: [True, 5]}),  # not an integer
        cbor2.dumps({1: "u", 2: "p", 3: [], 8: b"x" * 10}),  # flight: not a list
        cbor2.dumps({1: "u", 2: "p", 3: [], 8: [b"x"] * 5}),  # flight: too many datagrams
        cbor2.dumps({1: "u", 2: "p", 3: [], 8: [b"x" * 1501]}),  # flight: datagram too big
        cbor2.dumps({1: "u", 2: "p", 3: [], 8: [b""]}),  # flight: empty datagram
        cbor2.dumps({1: "u", 2: "p", 3: [], 8: ["text"]}),  # flight: not bytes
        cbor2.dumps({1: "u", 2: "p", 3: [], 9: cbor2.CBORTag(5, [2**40, 3])}),  # a tag
        cbor2.dumps({1: "u", 2: "p", 3: [], 7: [2**64 - 1, 5]}),  # size past 2**62
        cbor2.dumps({1: "u", 2: "p", 3: [], **{100 + i: 0 for i in range(17)}}),  # 17 unknown
        cbor2.dumps({1: "u", 2: "p", 3: [["f", 1, "udp", 2**40, "h", 1, "host", None, None]]}),
    ],
)
def test_answer_that_opens_but_is_malformed_is_rejected(plain: bytes) -> None:
    secret = offer_to_cached()[1]
    expect("malformed", sealed(secret, plain), secret)


def test_answer_readers_ignore_unknown_and_unused_keys() -> None:
    secret = offer_to_cached()[1]
    plain = cbor2.dumps(
        {1: "uuuu", 2: "p" * 22, 3: [], 5: CALLEE.kem_public_key, 99: "future"}
    )
    expected = SessionDescription("uuuu", "p" * 22, (), None, "app")
    assert decode_answer(sealed(secret, plain), secret) == expected


def test_channel_limits_travel_in_offer_and_answer() -> None:
    limits = (16 * 1024 * 1024, 4 * 1024 * 1024)
    params = dataclasses.replace(DIALER_PARAMS, channel_limits=limits)
    value, secret = encode_offer(
        DIALER, CALLEE.fingerprint, CALLEE.kem_public_key, new_session_id(), params
    )
    offer = decode_offer(value, CALLEE)
    assert offer.params.channel_limits == limits
    reply = dataclasses.replace(CALLEE_PARAMS, channel_limits=(0, 1))
    assert decode_answer(encode_answer(offer.secret, reply), secret).channel_limits == (0, 1)
    assert decode_answer(encode_answer(offer.secret, CALLEE_PARAMS), secret).channel_limits is None


def test_offer_from_a_clock_minutes_behind_still_counts() -> None:
    """A dialer whose clock is 5 minutes behind: its offer has expired on our clock, yet it
    opens (offers count until the skew after their expiry); past that it is ``expired``."""
    late, _ = encode_offer(DIALER, CALLEE.fingerprint, CALLEE.kem_public_key, new_session_id(),
                           DIALER_PARAMS, created_at_ms=now_ms() - 5 * 60_000)
    assert decode_offer(late, CALLEE).session_id
    with pytest.raises(RecordError) as exc:
        decode_offer(late, CALLEE, now=now_ms() + MAX_CLOCK_SKEW_MS)
    assert exc.value.reason == "expired"


def test_offer_rejections() -> None:
    value, _ = offer_to()
    tampered = bytearray(value)
    tampered[-SIGNATURE_SIZE - 5] ^= 0xFF  # inside the AES-GCM ciphertext
    old, _ = encode_offer(DIALER, CALLEE.fingerprint, CALLEE.kem_public_key, new_session_id(),
                          DIALER_PARAMS, lifetime_s=5.0,
                          created_at_ms=now_ms() - MAX_CLOCK_SKEW_MS - 10_000)
    # Addressed to the callee but encrypted to another KEM key: it cannot be opened.
    wrong_kem, _ = encode_offer(DIALER, CALLEE.fingerprint, DIALER.kem_public_key,
                                new_session_id(), DIALER_PARAMS)
    for bad, reason in ((bytes(tampered), "decrypt"), (old, "expired"),
                        (wrong_kem, "decrypt")):
        with pytest.raises(RecordError) as exc:
            decode_offer(bad, CALLEE)
        assert exc.value.reason == reason
    with pytest.raises(ValueError):
        encode_offer(DIALER, CALLEE.fingerprint, CALLEE.kem_public_key, new_session_id(),
                     DIALER_PARAMS, lifetime_s=-1)
    with pytest.raises(ValueError):
        encode_offer(DIALER, CALLEE.fingerprint, CALLEE.kem_public_key, b"short",
                     DIALER_PARAMS)


def test_offer_fields_inside_are_checked_strictly() -> None:
    """A dialer's validly sealed offer with a bad session id or description is malformed."""
    def sealed_offer(fields: dict[int, Any]) -> bytes:
        return seal_to(DIALER, OFFER, CALLEE.fingerprint, CALLEE.kem_public_key, fields,
                       expires_at_ms=now_ms() + 60_000).value

    good: dict[int, Any] = {1: new_session_id(), 2: {1: "uuuu", 2: "p" * 22, 3: []}}
    assert decode_offer(sealed_offer(good), CALLEE).params.ufrag == "uuuu"
    for bad in ({**good, 1: b"short"}, {2: good[2]}, {1: good[1]}, {**good, 2: b"cbor"},
                {**good, 2: {1: "uuuu", 2: "p" * 22, 3: [], 7: [1]}}):
        with pytest.raises(RecordError) as exc:
            decode_offer(sealed_offer(bad), CALLEE)
        assert exc.value.reason == "malformed"


def test_quic_flights_travel_in_offer_and_answer() -> None:
    """Key 8 carries each side's first QUIC flight inside the encrypted payloads."""
    hello = (os.urandom(1200),)
    params = dataclasses.replace(DIALER_PARAMS, quic_flight=hello)
    value, secret = encode_offer(
        DIALER, CALLEE.fingerprint, CALLEE.kem_public_key, new_session_id(), params
    )
    assert hello[0] not in value  # encrypted, not merely carried
    offer = decode_offer(value, CALLEE)
    assert offer.params.quic_flight == hello
    reply = dataclasses.replace(CALLEE_PARAMS, quic_flight=(os.urandom(1200), os.urandom(300)))
    answer = encode_answer(offer.secret, reply)
    assert reply.quic_flight[0] not in answer
    assert decode_answer(answer, secret).quic_flight == reply.quic_flight
    assert decode_answer(encode_answer(offer.secret, CALLEE_PARAMS), secret).quic_flight == ()
