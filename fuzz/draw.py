"""Choices read from a fuzz input: the one source of every decision a target makes.

An exhausted input reads as zeros, and zero always means "the first, plainest option", so
the empty input builds the unmutated valid encoding and libFuzzer's byte mutations map to
small steps in the choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Draw:
    """A cursor over the fuzz input."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        """The next byte (0 once the input is used up)."""
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def below(self, n: int) -> int:
        """An integer in ``[0, n)`` (one byte for n <= 256, more for larger n)."""
        if n <= 1:
            return 0
        width = (n.bit_length() + 7) // 8
        acc = 0
        for _ in range(width):
            acc = (acc << 8) | self.byte()
        return acc % n

    def chance(self, in_256: int) -> bool:
        """True with probability ``in_256``/256 for random input; False when exhausted."""
        return self.byte() >= 256 - in_256

    def choice(self, options: Sequence[T]) -> T:
        """One of ``options`` (the first when exhausted)."""
        return options[self.below(len(options))]

    def raw(self, n: int) -> bytes:
        """Up to ``n`` bytes of the input itself (fewer once it is used up)."""
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def size(self, limit: int) -> int:
        """A length up to ``limit``, biased to small values and to the bounds."""
        kind = self.below(8)
        if kind == 0:
            return self.below(17)
        if kind == 1:
            return limit
        if kind == 2:
            return self.below(limit + 1)
        return self.below(min(limit, 256) + 1)
