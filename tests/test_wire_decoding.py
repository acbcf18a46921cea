"""The strict CBOR decoder and the typed field reader: what they accept, what they refuse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierlink.errors import RecordError
from tierlink.identity import Identity
from tierlink.wire.decoding import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_UINT,
    MAX_UNKNOWN_KEYS,
    Fields,
    check_bytes,
    check_uint,
    decode,
)
from tierlink.wire.records import KIND_PEER_RECORD, PeerRecord, now_ms, seal


def malformed(data: bytes, **kw: Any) -> str:
    with pytest.raises(RecordError) as exc:
        decode(data, **kw)
    assert exc.value.reason == "malformed"
    return str(exc.value)


scalars = (
    st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20)
    | st.booleans() | st.none()
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.integers(0, 2**16) | st.text(max_size=5), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_decodes_what_cbor2_encodes(doc: Any) -> None:
    assert decode(cbor2.dumps(doc, canonical=True)) == doc
    assert decode(cbor2.dumps(doc)) == doc


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_raises_only_record_error(data: bytes) -> None:
    try:
        decode(data)
    except RecordError as exc:
        assert exc.reason == "malformed"


@pytest.mark.parametrize("tag", [0, 1, 2, 3, 4, 5, 24, 55799, 2**32])
def test_tags_are_rejected_on_their_head(tag: int) -> None:
    """A tag with no content at all is refused as a tag, not as truncated: its content is
    never read, whatever the tag would mean (bignum, decimal fraction, bigfloat, ...)."""
    head = cbor2.dumps(cbor2.CBORTag(tag, 0))[:-1]  # the tag head without its content
    assert "tag at offset 0" in malformed(head)
    nested = cbor2.dumps({1: b"x", 2: [0]})[:-1] + head  # inside a map, after other items
    assert f"tag at offset {len(nested) - len(head)}" in malformed(nested)


def test_bigfloat_is_never_evaluated() -> None:
    """A bigfloat of exponent 2**63 would take cbor2 forever to turn into a Decimal; the
    decoder refuses it at its first byte without calling any other decoder."""
    bomb = bytes([0xC5, 0x82, 0x1B]) + (2**63 - 1).to_bytes(8, "big") + bytes([0xC2, 0x41, 1])
    with mock.patch.object(cbor2, "loads", side_effect=AssertionError("cbor2 used")), \
            mock.patch.object(cbor2, "CBORDecoder", side_effect=AssertionError("cbor2 used")):
        assert "tag at offset 0" in malformed(bomb)


@pytest.mark.parametrize(
    "data",
    [
        cbor2.dumps(1.5), cbor2.dumps(float("nan")), bytes([0xF7]),  # float, NaN, undefined
        bytes([0xF0]), bytes([0xF8, 0x20]), bytes([0xFF]),  # simple values, break
        bytes([0x9F, 0x01, 0xFF]), bytes([0x5F, 0x41, 0x00, 0xFF]),  # indefinite lengths
        bytes([0x1C]),  # reserved additional information
        bytes([0x62, 0xC3, 0x28]),  # invalid UTF-8
        bytes([0xA2, 0x01, 0x00, 0x01, 0x00]),  # duplicate key
        bytes([0xA1, 0x41, 0x00, 0x00]),  # byte-string key
        bytes([0xA1, 0x80, 0x00]),  # array key
        bytes([0x01, 0x02]),  # trailing byte
        b"",  # nothing
        bytes([0x5B]) + (2**64 - 1).to_bytes(8, "big"),  # 2**64-byte string claimed
        bytes([0x9B]) + (2**64 - 1).to_bytes(8, "big"),  # 2**64-element array claimed
        bytes([0xBB]) + (2**63).to_bytes(8, "big"),  # 2**63-pair map claimed
        bytes([0x1B, 0x00]),  # truncated integer
    ],
)
def test_outside_the_profile(data: bytes) -> None:
    malformed(data)


def test_not_bytes() -> None:
    with pytest.raises(RecordError):
        decode("text")  # type: ignore[arg-type]


def test_integers_full_range_but_fields_bounded() -> None:
    assert decode(cbor2.dumps(2**64 - 1)) == 2**64 - 1
    assert decode(cbor2.dumps(-(2**64))) == -(2**64)
    malformed(cbor2.dumps(2**64))  # cbor2 writes a bignum: a tag
    fields = Fields({1: 2**64 - 1, 2: MAX_UINT, 3: -1, 4: True}, "test", range(1, 5))
    assert fields.uint(2, "max") == MAX_UINT
    for key in (1, 3, 4):
        with pytest.raises(RecordError):
            fields.uint(key, "x")


def test_depth_bound() -> None:
    def nested(depth: int) -> bytes:
        return bytes([0x81]) * depth + bytes([0x00])

    assert decode(nested(MAX_DEPTH)) is not None
    assert "deeper" in malformed(nested(MAX_DEPTH + 1))
    assert "deeper" in malformed(nested(100_000))  # no RecursionError
    assert "deeper" in malformed(bytes([0xA1, 0x01]) * (MAX_DEPTH + 1) + bytes([0x00]))


def test_item_bound() -> None:
    assert len(decode(cbor2.dumps([0] * (MAX_ITEMS - 1)))) == MAX_ITEMS - 1
    assert "items" in malformed(cbor2.dumps([0] * MAX_ITEMS))
    assert "items" in malformed(cbor2.dumps([0] * 10), max_items=5)


def test_fields_types_and_lengths() -> None:
    f = Fields({1: b"ab", 2: "txt", 3: [1], 4: None, 5: 7}, "test", range(1, 6))
    assert f.bstr(1, "b", size=2) == b"ab"
    assert f.opt_bstr(4, "b", size=32) is None
    assert f.opt_bstr(9, "b") is None
    assert f.text(2, "t") == "txt" and f.opt_text(4, "t", "dflt") == "dflt"
    assert f.array(3, "a") == [1] and f.opt_array(4, "a") is None
    bad: list[Callable[[], object]] = [
        lambda: f.bstr(1, "b", size=3), lambda: f.bstr(1, "b", max_size=1),
        lambda: f.bstr(1, "b", min_size=3), lambda: f.bstr(2, "b"), lambda: f.bstr(9, "b"),
        lambda: f.text(1, "t"), lambda: f.text(2, "t", max_len=2),
        lambda: f.array(5, "a"), lambda: f.array(3, "a", max_items=0),
        lambda: f.uint(1, "u"), lambda: f.uint(5, "u", maximum=6),
        lambda: f.uint(5, "u", minimum=8), lambda: f.uint(4, "u"),
    ]
    for read in bad:
        with pytest.raises(RecordError) as exc:
            read()
        assert exc.value.reason == "malformed"


def test_fields_unknown_keys_bounded() -> None:
    known = range(1, 3)
    many = {1: 0, 2: 0, **{100 + i: "later" for i in range(MAX_UNKNOWN_KEYS)}}
    assert Fields(many, "test", known).uint(1, "one") == 0
    for refused in (
        {**many, 999: 0},  # one unknown key too many
        {1: 0, "x": 0},  # a text key
        {1: 0, -1: 0},  # a negative key
        {1: 0, 2**16: 0},  # a key out of range
        [1, 2],  # not a map
    ):
        with pytest.raises(RecordError):
            Fields(refused, "test", known)


def test_element_checks() -> None:
    assert check_bytes(b"x" * 16, "id", size=16) == b"x" * 16
    assert check_uint(5, "n", maximum=5) == 5
    checks: list[Callable[[], object]] = [
        lambda: check_bytes("x", "id"), lambda: check_bytes(b"x", "id", size=16),
        lambda: check_uint(True, "n"), lambda: check_uint(6, "n", maximum=5),
    ]
    for check in checks:
        with pytest.raises(RecordError):
            check()


def test_signed_value_with_a_tag_is_malformed() -> None:
    """A correctly signed record with a tag anywhere in its body is refused."""
    ident = Identity.generate()
    t = now_ms()
    body: dict[int, Any] = {
        1: bytes.fromhex(ident.fingerprint), 2: ident.public_key, 3: 1, 4: t, 5: t + 60_000,
        6: [], 7: ident.kem_public_key, 8: "private",
    }
    assert PeerRecord.decode(seal(ident, KIND_PEER_RECORD, body)).seq == 1
    for extra in (cbor2.CBORTag(4, [-2, 27315]), cbor2.CBORTag(1, 0)):
        value = seal(ident, KIND_PEER_RECORD, {**body, 99: extra})
        with pytest.raises(RecordError) as exc:
            PeerRecord.decode(value)
        assert exc.value.reason == "malformed" and "tag" in str(exc.value)
    value = seal(ident, KIND_PEER_RECORD, {**body, 3: 2**64 - 1})  # seq past the bound
    with pytest.raises(RecordError) as exc:
        PeerRecord.decode(value)
    assert exc.value.reason == "malformed"
