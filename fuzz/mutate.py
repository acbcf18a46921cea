"""Mutations: random CBOR values, changes to decoded maps and arrays, and raw byte edits.

Structured mutations change a value's fields before it is encoded (and re-signed), so they
test the checks behind the signature; raw mutations change encoded bytes, so they test the
decoder and the checks before it. Both are driven by a :class:`~fuzz.draw.Draw`.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2

from fuzz.draw import Draw

#: Integers at the edges of CBOR's argument widths, of the formats' bounds, and beyond.
EDGE_INTS = (
    0, 1, -1, 23, 24, 255, 256, 65535, 65536, 2**31 - 1, 2**32 - 1, 2**32, 2**53,
    2**62 - 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**64), 2**200, -(2**200),
)
#: Byte-string lengths the formats check exactly (ids, hashes, fingerprints, keys).
EDGE_SIZES = (0, 1, 12, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1567, 1568, 1569, 2592, 4627)
TEXTS = (
    "", "host", "srflx", "relay", "udp", "app", "messages", "private", "public", "m", "a",
    "127.0.0.1", "::1", "fe80::1%eth0", "999.1.1.1", "localhost", "\x00", "é", "\U0001f600",
    "a" * 257, "abcd", "A" * 22, "+/+/" * 64, "a b", "0" * 64,
)
#: Encoded CBOR heads tierlink's profile refuses or that stress it.
HOSTILE_CBOR = (
    b"\x9f", b"\xbf", b"\x5f", b"\x7f", b"\xff", b"\xc2\x49" + b"\x01" * 9, b"\xc0\x60",
    b"\xf7", b"\xf8\x20", b"\xf9\x7c\x00", b"\xfb" + b"\x7f" * 8, b"\x1c", b"\x1f",
    b"\x1b" + b"\xff" * 8, b"\x5b" + b"\xff" * 8, b"\x9b" + b"\x7f" + b"\xff" * 7,
    b"\xbb" + b"\x7f" + b"\xff" * 7, b"\x62\xc3\x28", b"\x81" * 40 + b"\x00",
    b"\xa2\x01\x00\x01\x00", b"\xa1\x80\x00", b"\xa1\xf6\x00",
)


def cbor_value(draw: Draw, depth: int = 0) -> Any:
    """A random value cbor2 can encode: every major type, tags, floats, deep nesting."""
    kind = draw.below(16)
    if kind == 0:
        return draw.choice(EDGE_INTS) + draw.below(3) - 1
    if kind == 1:
        return draw.below(2**16)
    if kind == 2:
        return bytes(draw.choice(EDGE_SIZES)) if draw.chance(128) else draw.raw(draw.size(80))
    if kind == 3:
        return draw.choice(TEXTS)
    if kind == 4:
        return draw.raw(draw.size(40)).decode("utf-8", "replace")
    if kind == 5:
        return draw.choice((True, False, None))
    if kind == 6:
        return draw.choice((0.0, -0.0, 1.5, float("inf"), float("nan"), 1e308))
    if kind == 7:
        return draw.choice((cbor2.undefined, cbor2.CBORSimpleValue(draw.choice((0, 19, 32, 255)))))
    if kind == 8:
        tag = draw.choice((0, 1, 2, 3, 4, 5, 24, 30, 55799, 2**64 - 1))
        return cbor2.CBORTag(tag, cbor_value(draw, depth + 1) if depth < 4 else 0)
    if kind == 9:
        return nested(draw.choice((draw.below(40), 500, 950)))
    if kind in (10, 11) and depth < 4:
        return [cbor_value(draw, depth + 1) for _ in range(draw.below(6))]
    if kind in (12, 13) and depth < 4:
        keys = [draw.choice((draw.below(12), draw.choice(EDGE_INTS), draw.choice(TEXTS)))
                for _ in range(draw.below(6))]
        return {k: cbor_value(draw, depth + 1) for k in keys}
    if kind == 14:
        return [0] * draw.size(3000)
    return draw.choice(EDGE_INTS)


def nested(depth: int) -> Any:
    """Arrays (and maps) nested ``depth`` levels deep."""
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {1: value}
    return value


def mutate_map(draw: Draw, body: dict[Any, Any], known: range) -> dict[Any, Any]:
    """Change a few fields of a decoded map: replace, drop, add unknown keys, swap, nudge."""
    out = dict(body)
    for _ in range(1 + draw.below(3)):
        key = draw.choice(list(known))
        op = draw.below(10)
        if op in (0, 1):
            out[key] = cbor_value(draw)
        elif op == 2:
            out.pop(key, None)
        elif op == 3:
            for _ in range(draw.size(40)):
                extra = (draw.below(2**16), draw.choice(EDGE_INTS), draw.choice(TEXTS))
                out[draw.choice(extra)] = 0
        elif op == 4 and isinstance(out.get(key), int):
            out[key] = out[key] + draw.choice((-1, 1, -(2**32), 2**32, 2**62, -(2**62)))
        elif op == 5 and isinstance(out.get(key), bytes):
            out[key] = resize(draw, out[key])
        elif op == 6 and isinstance(out.get(key), list):
            out[key] = mutate_list(draw, out[key])
        elif op == 7:
            other = draw.choice(list(known))
            out[key], out[other] = out.get(other), out.get(key)
        elif op == 8 and isinstance(out.get(key), str):
            out[key] = draw.choice(TEXTS)
        else:
            out[key] = draw.choice((None, 0, b"", "", [], {}, True))
    return out


def mutate_list(draw: Draw, items: list[Any]) -> list[Any]:
    """Change an array: replace, drop or repeat elements, or mutate one element's fields."""
    out = list(items)
    op = draw.below(5)
    if op == 0 and out:
        out[draw.below(len(out))] = cbor_value(draw)
    elif op == 1 and out:
        del out[draw.below(len(out)):]
    elif op == 2:
        out.extend(out[:1] * draw.size(300) or [cbor_value(draw)])
    elif op == 3 and out and isinstance(out[0], list):
        i = draw.below(len(out))
        out[i] = mutate_list(draw, out[i])
    else:
        out.append(cbor_value(draw))
    return out


def resize(draw: Draw, data: bytes) -> bytes:
    """``data`` cut, grown by one, or replaced by a string of an edge length."""
    op = draw.below(3)
    if op == 0:
        return data[:draw.below(len(data) + 1)]
    if op == 1:
        return data + b"\x00"
    return bytes(draw.choice(EDGE_SIZES))


def mutate_bytes(
    draw: Draw, data: bytes, *, keep: int = 0, others: tuple[bytes, ...] = ()
) -> bytes:
    """Raw edits of an encoding: flips, overwrites, inserts, cuts, splices, hostile heads.

    The first ``keep`` bytes stay (so a value's version and kind survive when wanted).
    """
    buf = bytearray(data)
    for _ in range(1 + draw.below(4)):
        end = len(buf)
        at = keep + draw.below(max(end - keep, 0) + 1)
        op = draw.below(9)
        if op == 0 and at < end:
            buf[at] ^= 1 << draw.below(8)
        elif op == 1 and at < end:
            buf[at] = draw.choice((0x00, 0x17, 0x18, 0x1B, 0x1F, 0x40, 0x5F, 0x80, 0x9F, 0xA0,
                                   0xBF, 0xC0, 0xF4, 0xF6, 0xF7, 0xFF, draw.byte()))
        elif op == 2:
            buf[at:at] = draw.raw(draw.size(64))
        elif op == 3:
            del buf[at:at + draw.size(len(buf))]
        elif op == 4:
            del buf[at:]
        elif op == 5:
            buf[at:at] = draw.choice(HOSTILE_CBOR)
        elif op == 6 and others:
            other = draw.choice(others)
            start = draw.below(len(other) + 1)
            buf[at:] = other[start:]
        elif op == 7 and at < end:
            n = draw.size(64)
            buf[at:at] = buf[at:at + n] * (1 + draw.below(8))
        else:
            buf[at:at + 8] = draw.raw(8)
    return bytes(buf)


def json_value(draw: Draw, depth: int = 0) -> Any:
    """A random JSON value: wrong types, huge numbers, deep nesting, odd strings."""
    kind = draw.below(8)
    if kind == 0:
        return draw.choice(EDGE_INTS)
    if kind == 1:
        return draw.choice(TEXTS)
    if kind == 2:
        return draw.choice((True, False, None, 1.5, 1e308))
    if kind == 3 and depth < 4:
        return [json_value(draw, depth + 1) for _ in range(draw.below(4))]
    if kind == 4 and depth < 4:
        return {draw.choice(TEXTS): json_value(draw, depth + 1) for _ in range(draw.below(4))}
    if kind == 5:
        return draw.raw(draw.size(80)).hex()
    if kind == 6:
        return nested(draw.choice((draw.below(60), 500, 950)))
    return draw.raw(draw.size(40)).decode("latin-1")


def json_text(draw: Draw, value: Any) -> bytes:
    """``value`` as JSON text, sometimes with a hostile raw token spliced in."""
    text = json.dumps(value).encode()
    if draw.chance(64):
        token = draw.choice((b"1" * 5000, b"[" * 100_000, b"1e99999", b"NaN", b"-Infinity",
                             b'"\\ud800"', b"\xff\xfe", b"\x00", b"{", b'"' + b"a" * 70_000))
        at = draw.below(len(text) + 1)
        text = text[:at] + token + text[at:]
    return text
