"""The lines of an OpenDHT proxy's answers, read and decoded as untrusted input.

A line longer than :data:`MAX_LINE_BYTES` is skipped without being buffered whole, and a line
that is not a JSON object with base64 ``data`` is skipped with a reason (``oversized``,
``json``, ``shape``, ``base64``) for the client to count.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from tierlink.errors import DhtError

#: The longest proxy line read (bytes): a DHT value is at most 64 KiB, base64 adds a third,
#: the JSON around it a little more.
MAX_LINE_BYTES = 128 * 1024

class SkippedLine(DhtError):
    """A proxy line that is skipped, with the reason it is counted under."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"proxy line skipped: {reason}")
        self.reason = reason


def decode_proxy_line(line: bytes) -> tuple[str, bytes, bool] | None:
    """(value id, data, expired) from one JSON line; None for a blank line; SkippedLine
    (with a reason) for a line that is not a proxy value."""
    line = line.strip()
    if not line:
        return None
    if len(line) > MAX_LINE_BYTES:
        raise SkippedLine("oversized")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise SkippedLine("json") from None
    if not isinstance(obj, dict):
        raise SkippedLine("shape")
    data, vid = obj.get("data", ""), obj.get("id", "")
    if not isinstance(data, str) or not isinstance(vid, str | int) or isinstance(vid, bool):
        raise SkippedLine("shape")
    try:
        value = base64.b64decode(data, validate=True)
    except ValueError:
        raise SkippedLine("base64") from None
    return str(vid), value, bool(obj.get("expired", False))


def decode_proxy_json(body: bytes, what: str) -> Any:
    """The JSON document of a proxy's answer (``what`` names it in the error); DhtError for
    anything else: bad UTF-8 or JSON, an over-long integer, nesting too deep to parse."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise DhtError(f"DHT proxy sent an unreadable {what}: {body[:80]!r}") from None


async def bounded_lines(
    chunks: AsyncIterable[bytes], limit: int
) -> AsyncIterator[bytes | None]:
    """Lines (without the newline) from a byte stream; a line longer than ``limit`` bytes is
    dropped as it streams in (never held whole) and yielded as None."""
    buf = bytearray()
    skipping = False
    async for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not skipping:
                buf += piece
                if len(buf) > limit:
                    buf.clear()
                    skipping = True
            if end < 0:
                break
            if skipping:
                yield None
                skipping = False
            else:
                yield bytes(buf)
                buf.clear()
            start = end + 1
    if skipping:
        yield None
    elif buf:
        yield bytes(buf)
