"""Strict CBOR decoding: the one place where every received byte format is parsed.

:func:`decode` reads the CBOR subset tierlink writes (RFC 8949: unsigned and negative
integers, byte and text strings, arrays, maps, ``false``, ``true``, ``null``) and rejects
everything else: tags (before their content is read, so a bignum, bigfloat or decimal
fraction is never evaluated), floats, ``undefined`` and other simple values,
indefinite lengths, reserved additional information, invalid UTF-8, duplicate map keys,
map keys other than integers and text, nesting deeper than ``max_depth``, more than
``max_items`` data items, lengths running past the end and trailing bytes.
:class:`Fields` then reads one map with small integer keys: required and optional fields
of exact types, integer ranges and byte lengths, with a bounded number of unknown keys
(ignored, so later versions can add fields). Every failure is
:class:`~tierlink.errors.RecordError` with reason ``malformed``; nothing else escapes.
The rules are specified in docs/PROTOCOL.md, section "CBOR profile".
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from tierlink.errors import RecordError

MAX_DEPTH = 8
"""Deepest nesting of arrays and maps (the formats need 3)."""
MAX_ITEMS = 16_384
"""Most data items in one document (an ack of 2048 ids holds about 2,070)."""
MAX_UNKNOWN_KEYS = 16
"""Most map keys a reader does not know (later versions' fields) it tolerates."""
MAX_KEY = 0xFFFF
"""Largest integer map key."""
MAX_UINT = 2**63 - 1
"""Default upper bound of an integer field: fits a signed 64-bit column (SQLite)."""
MAX_ARRAY = 256
"""Default most elements of an array field."""

_SIMPLE = {20: False, 21: True, 22: None}


def malformed(message: str) -> RecordError:
    """The error every decoding failure raises."""
    return RecordError("malformed", message)


class _Decoder:
    __slots__ = ("data", "items", "max_depth", "max_items", "pos")

    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.pos = 0
        self.items = 0
        self.max_depth = max_depth
        self.max_items = max_items

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise malformed(f"CBOR item at offset {self.pos} runs past the end (truncated)")
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def _argument(self, info: int, start: int) -> int:
        if info < 24:
            return info
        if info <= 27:
            return int.from_bytes(self._take(1 << (info - 24)), "big")
        if info == 31:
            raise malformed(f"indefinite length at offset {start} is not accepted")
        raise malformed(f"reserved additional information {info} at offset {start}")

    def item(self, depth: int) -> Any:
        if depth > self.max_depth:
            raise malformed(f"CBOR nested deeper than {self.max_depth} levels")
        self.items += 1
        if self.items > self.max_items:
            raise malformed(f"CBOR document has more than {self.max_items} items")
        start = self.pos
        head = self._take(1)[0]
        major, info = head >> 5, head & 0x1F
        if major == 6:  # rejected on its head: the tagged content is never read
            raise malformed(f"CBOR tag at offset {start} is not accepted")
        if major == 7:
            if info in _SIMPLE:
                return _SIMPLE[info]
            raise malformed(f"CBOR simple value or float (0x{head:02x}) at offset {start}")
        arg = self._argument(info, start)
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self._take(arg)
        if major == 3:
            try:
                return self._take(arg).decode("utf-8")
            except UnicodeDecodeError:
                raise malformed(f"text at offset {start} is not UTF-8") from None
        remaining = len(self.data) - self.pos
        if major == 4:
            if arg > remaining:  # every element takes at least one byte
                raise malformed(f"array at offset {start} is longer than the data")
            return [self.item(depth + 1) for _ in range(arg)]
        if 2 * arg > remaining:
            raise malformed(f"map at offset {start} is longer than the data")
        out: dict[int | str, Any] = {}
        for _ in range(arg):
            key_at = self.pos
            key = self.item(depth + 1)
            if type(key) is not int and type(key) is not str:
                raise malformed(f"map key at offset {key_at} is not an integer or text")
            if key in out:
                raise malformed(f"duplicate map key {key!r} at offset {key_at}")
            out[key] = self.item(depth + 1)
        return out


def decode(data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> Any:
    """Decode one CBOR document of tierlink's profile; RecordError('malformed') otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise malformed("CBOR input is not bytes")
    dec = _Decoder(bytes(data), max_depth, max_items)
    value = dec.item(0)
    if dec.pos != len(dec.data):
        raise malformed(f"{len(dec.data) - dec.pos} trailing bytes after the CBOR item")
    return value


class Fields:
    """Typed reads from a decoded map whose keys are small integers.

    ``known`` are the keys the format defines; other keys are ignored, at most
    ``max_unknown`` of them. Each read checks the exact type (``bool`` is not an integer),
    the range or length, and raises RecordError('malformed') naming the field.
    """

    def __init__(
        self,
        value: Any,
        what: str,
        known: Collection[int],
        *,
        max_unknown: int = MAX_UNKNOWN_KEYS,
    ) -> None:
        if not isinstance(value, dict):
            raise malformed(f"{what} is not a map")
        unknown = 0
        for key in value:
            if type(key) is not int or not 0 <= key <= MAX_KEY:
                raise malformed(f"{what} has a key {key!r} that is not an integer 0-{MAX_KEY}")
            if key not in known:
                unknown += 1
        if unknown > max_unknown:
            raise malformed(f"{what} has {unknown} unknown keys (at most {max_unknown})")
        self.map: dict[int, Any] = value
        self.what = what

    def _get(self, key: int, name: str, typ: type) -> Any:
        val = self.map.get(key)
        if type(val) is not typ:
            raise malformed(
                f"{self.what}: field {name!r} (key {key}) missing or not {typ.__name__}"
            )
        return val

    def has(self, key: int) -> bool:
        """True if ``key`` is present and not null."""
        return self.map.get(key) is not None

    def uint(self, key: int, name: str, *, minimum: int = 0, maximum: int = MAX_UINT) -> int:
        """A required integer in ``[minimum, maximum]``."""
        val: int = self._get(key, name, int)
        if not minimum <= val <= maximum:
            raise malformed(f"{self.what}: {name!r} = {val} is outside [{minimum}, {maximum}]")
        return val

    def bstr(
        self, key: int, name: str, *, size: int | None = None, min_size: int = 0,
        max_size: int | None = None,
    ) -> bytes:
        """A required byte string of exactly ``size`` bytes, or within the bounds."""
        val: bytes = self._get(key, name, bytes)
        return _check_len(val, f"{self.what}: {name!r}", size, min_size, max_size)

    def opt_bstr(
        self, key: int, name: str, *, size: int | None = None, min_size: int = 0,
        max_size: int | None = None,
    ) -> bytes | None:
        """Like :meth:`bstr`; None when absent or null."""
        if not self.has(key):
            return None
        return self.bstr(key, name, size=size, min_size=min_size, max_size=max_size)

    def text(self, key: int, name: str, *, max_len: int = 256) -> str:
        """A required text string of at most ``max_len`` characters."""
        val: str = self._get(key, name, str)
        if len(val) > max_len:
            raise malformed(f"{self.what}: {name!r} is longer than {max_len} characters")
        return val

    def opt_text(self, key: int, name: str, default: str, *, max_len: int = 256) -> str:
        """Like :meth:`text`; ``default`` when absent or null."""
        return self.text(key, name, max_len=max_len) if self.has(key) else default

    def array(self, key: int, name: str, *, max_items: int = MAX_ARRAY) -> list[Any]:
        """A required array of at most ``max_items`` elements (their types are the caller's)."""
        val: list[Any] = self._get(key, name, list)
        if len(val) > max_items:
            raise malformed(f"{self.what}: {name!r} has more than {max_items} elements")
        return val

    def opt_array(self, key: int, name: str, *, max_items: int = MAX_ARRAY) -> list[Any] | None:
        """Like :meth:`array`; None when absent or null."""
        return self.array(key, name, max_items=max_items) if self.has(key) else None


def _check_len(
    val: bytes, what: str, size: int | None, min_size: int, max_size: int | None
) -> bytes:
    if size is not None and len(val) != size:
        raise malformed(f"{what} must be {size} bytes, not {len(val)}")
    if len(val) < min_size or (max_size is not None and len(val) > max_size):
        raise malformed(f"{what} has {len(val)} bytes, outside [{min_size}, {max_size}]")
    return val


def check_bytes(
    val: Any, what: str, *, size: int | None = None, min_size: int = 0,
    max_size: int | None = None,
) -> bytes:
    """An array element that must be a byte string of the given length."""
    if type(val) is not bytes:
        raise malformed(f"{what} is not a byte string")
    return _check_len(val, what, size, min_size, max_size)


def check_uint(val: Any, what: str, *, minimum: int = 0, maximum: int = MAX_UINT) -> int:
    """An array element that must be an integer in ``[minimum, maximum]``."""
    if type(val) is not int or not minimum <= val <= maximum:
        raise malformed(f"{what} is not an integer in [{minimum}, {maximum}]")
    return val
