"""Growing delays for retry loops: the one backoff every retry in tierlink uses.

A :class:`Backoff` hands out ``initial``, ``initial * factor``, ... capped at ``maximum``;
:meth:`Backoff.reset` starts over after a success. It only computes delays: callers sleep
(:meth:`Backoff.sleep`) or compare a delay with a deadline, so it is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import math


class Backoff:
    """Delays growing by ``factor`` from ``initial`` up to ``maximum`` (seconds)."""

    def __init__(self, initial: float, factor: float = 2.0, maximum: float = math.inf) -> None:
        if initial <= 0:
            raise ValueError("the initial delay must be positive")
        if factor < 1:
            raise ValueError("the factor must be at least 1 (delays never shrink)")
        if maximum < initial:
            raise ValueError("the maximum delay must be at least the initial one")
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self._next = initial

    def peek(self) -> float:
        """The delay :meth:`next_delay` will return, without advancing."""
        return self._next

    def next_delay(self) -> float:
        """The next delay; the one after it is ``factor`` times longer (capped)."""
        delay = self._next
        self._next = min(delay * self.factor, self.maximum)
        return delay

    def reset(self) -> None:
        """Start over at ``initial`` (after a success)."""
        self._next = self.initial

    async def sleep(self) -> float:
        """Sleep for the next delay; returns it."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay
