from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.wire_samples import CANDIDATES
from tierlink.dht.record_book import RecordBook
from tierlink.errors import RecordError
from tierlink.identity import Identity
from tierlink.wire.records import (
    KIND_PEER_RECORD,
    MAX_VALUE_SIZE,
    PeerRecord,
    now_ms,
    seal,
)

ALICE = Identity.generate()
BOB = Identity.generate()
CANDS = CANDIDATES[:2]


def body_of(ident: Identity, over: dict[int, Any] | None = None) -> dict[int, Any]:
    t = now_ms()
    body: dict[int, Any] = {
        1: bytes.fromhex(ident.fingerprint), 2: ident.public_key, 3: 1, 4: t, 5: t + 60_000,
        6: [], 7: ident.kem_public_key, 8: "public",
    }
    body.update(over or {})
    return body


def test_roundtrip() -> None:
    rec = PeerRecord.create(ALICE, seq=7, candidates=CANDS, mode="public")
    value = rec.encode(ALICE)
    assert value[0] == 1 and value[1] == KIND_PEER_RECORD
    back = PeerRecord.decode(value)
    assert back == rec
    assert back.candidates[1].related_address == "198.18.1.2"


def test_signed_by_another_key() -> None:
    value = seal(BOB, KIND_PEER_RECORD, body_of(ALICE))
    with pytest.raises(RecordError) as exc:
        PeerRecord.decode(value)
    assert exc.value.reason == "signature"


def test_public_key_not_matching_fingerprint() -> None:
    value = seal(ALICE, KIND_PEER_RECORD, body_of(ALICE, {1: bytes.fromhex(BOB.fingerprint)}))
    with pytest.raises(RecordError) as exc:
        PeerRecord.decode(value)
    assert exc.value.reason == "fingerprint"


def test_expired() -> None:
    value = seal(ALICE, KIND_PEER_RECORD, body_of(ALICE, {5: now_ms() - 1}))
    with pytest.raises(RecordError) as exc:
        PeerRecord.decode(value)
    assert exc.value.reason == "expired"


def test_older_sequence_rejected() -> None:
    book = RecordBook()
    book.accept(PeerRecord.create(ALICE, seq=5).encode(ALICE))
    book.accept(PeerRecord.create(ALICE, seq=6).encode(ALICE))
    with pytest.raises(RecordError) as exc:
        book.accept(PeerRecord.create(ALICE, seq=4).encode(ALICE))
    assert exc.value.reason == "stale"


def test_truncated_and_oversize() -> None:
    value = PeerRecord.create(ALICE, seq=1).encode(ALICE)
    for cut in (0, 1, 10, len(value) // 2, len(value) - 1):
        with pytest.raises(RecordError) as exc:
            PeerRecord.decode(value[:cut])
        assert exc.value.reason in ("malformed", "signature")
    with pytest.raises(RecordError) as exc:
        PeerRecord.decode(value + b"\x00" * MAX_VALUE_SIZE)
    assert exc.value.reason == "oversize"
    many = tuple(CANDS[0] for _ in range(2000))
    with pytest.raises(RecordError) as exc:
        PeerRecord.create(ALICE, seq=1, candidates=many).encode(ALICE)
    assert exc.value.reason == "oversize"


def test_wrong_version_and_kind() -> None:
    value = PeerRecord.create(ALICE, seq=1).encode(ALICE)
    with pytest.raises(RecordError) as exc:
        PeerRecord.decode(b"\x09" + value[1:])
    assert exc.value.reason == "version"
    with pytest.raises(RecordError) as exc:
        PeerRecord.decode(value[:1] + b"\x02" + value[2:])
    assert exc.value.reason == "kind"


def test_unknown_fields_are_ignored() -> None:
    value = seal(ALICE, KIND_PEER_RECORD, body_of(ALICE, {99: "future field", 9: b"c" * 32}))
    rec = PeerRecord.decode(value)
    assert rec.cert_sha256 == b"c" * 32


def test_newest_of_several_values_and_rejections_counted() -> None:
    book = RecordBook()
    values = [
        PeerRecord.create(ALICE, seq=3).encode(ALICE),
        PeerRecord.create(ALICE, seq=9).encode(ALICE),
        seal(BOB, KIND_PEER_RECORD, body_of(ALICE, {3: 100})),  # forged, higher seq
        seal(ALICE, KIND_PEER_RECORD, body_of(ALICE, {3: 50, 5: now_ms() - 5})),  # expired
        PeerRecord.create(BOB, seq=77).encode(BOB),  # someone else's record under the key
        b"garbage",
    ]
    rec = book.newest(values, ALICE.fingerprint)
    assert rec is not None and rec.seq == 9
    assert book.rejected == {"signature": 1, "expired": 1, "fingerprint": 1, "malformed": 1}


def test_malformed_body_fields() -> None:
    for over in ({3: "x"}, {6: "notalist"}, {6: [["bad"]]}, {7: b"short"}, {2: b"k"}):
        value = seal(ALICE, KIND_PEER_RECORD, body_of(ALICE, over))
        with pytest.raises(RecordError) as exc:
            PeerRecord.decode(value)
        assert exc.value.reason in ("malformed", "fingerprint")
    head = b"\x01\x01" + cbor2.dumps([1, 2, 3])
    with pytest.raises(RecordError) as exc:
        PeerRecord.decode(head + ALICE.sign(head))
    assert exc.value.reason == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=6000))
def test_arbitrary_bytes_raise_only_record_error(data: bytes) -> None:
    with pytest.raises(RecordError):
        PeerRecord.decode(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_arbitrary_bodies_raise_only_record_error(body: bytes) -> None:
    head = b"\x01\x01" + body
    with pytest.raises(RecordError):
        PeerRecord.decode(head + b"\x00" * 4627)


@pytest.mark.parametrize(
    "over",
    [
        {9: b"c" * 31},  # certificate hash of the wrong length
        {8: "m" * 33},  # mode text too long
        {3: True},  # bool is not an integer
        {7: b"k" * 100},  # KEM key of the wrong length
        {6: [["f", 1, "udp", 1, "h", 70000, "host", None, None]]},  # port past 65535
    ],
)
def test_strict_fields_are_malformed(over: dict[int, Any]) -> None:
    with pytest.raises(RecordError) as exc:
        PeerRecord.decode(seal(ALICE, KIND_PEER_RECORD, body_of(ALICE, over)))
    assert exc.value.reason == "malformed"
