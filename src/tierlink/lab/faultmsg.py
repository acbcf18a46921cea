"""The messages of a fault run and the receiver's durable log of the ones it handled.

A stream message is ``fault-msg <seq> <sent_at> `` padded with ``.``: ``sent_at`` is when the
sender handed it to the API (CLOCK_MONOTONIC, one clock for every process of the machine).
:func:`shift_clock` is the lab's injectable wall clock (the clock-skew fault).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

PAYLOAD_HEAD = b"fault-msg "


def shift_clock(offset_s: float) -> None:
    """Shift ``time.time``/``time.time_ns`` of this process by ``offset_s`` seconds."""
    if not offset_s:
        return
    real, real_ns = time.time, time.time_ns
    shift_ns = int(offset_s * 1e9)

    def shifted() -> float:
        return real() + offset_s

    def shifted_ns() -> int:
        return real_ns() + shift_ns

    time.time = shifted
    time.time_ns = shifted_ns


def payload_of(seq: int, size: int = 0, sent_at: float = 0.0) -> bytes:
    """Message ``seq`` of the stream, handed to the API at ``sent_at`` (CLOCK_MONOTONIC),
    padded with ``.`` to ``size`` bytes (if longer)."""
    head = PAYLOAD_HEAD + f"{seq} {sent_at:.4f} ".encode()
    return head + b"." * max(0, size - len(head))


def sent_at_of(payload: bytes) -> float | None:
    """When a stream payload was handed to the API (None for anything else)."""
    try:
        return float(payload[len(PAYLOAD_HEAD):].split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def seq_of(payload: bytes) -> int | None:
    """The sequence number of a stream payload (None for anything else)."""
    if not payload.startswith(PAYLOAD_HEAD):
        return None
    try:
        return int(payload[len(PAYLOAD_HEAD):].split(b" ", 1)[0])
    except ValueError:
        return None


class DeliveryLog:
    """Handled messages, one JSON line each, fsync'ed before :meth:`record` returns."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def record(self, payload: bytes, api: str, tier: str) -> None:
        """Record a handled stream message (anything else is ignored)."""
        seq = seq_of(payload)
        if seq is None:
            return
        line = json.dumps({"seq": seq, "api": api, "tier": tier, "t": time.monotonic(),
                           "sent_at": sent_at_of(payload)})
        os.write(self._fd, line.encode() + b"\n")
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)
