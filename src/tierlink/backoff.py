"""Growing delays for retry loops: the one backoff every retry in tierlink uses.

A :class:`Backoff` hands out ``initial``, ``initial * factor``, ... capped at ``maximum``;
:meth:`Backoff.reset` starts over after a success. It only computes delays: callers sleep
(:meth:`Backoff.sleep`) or compare a delay with a deadline, so it is tested without sleeping.
:func:`keep_restarting` runs a background loop again after any failure, with a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from tierlink.errors import TierlinkError

log = logging.getLogger(__name__)


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


async def keep_restarting(
    body: Callable[[], Awaitable[None]], name: str, backoff: Backoff,
    on_restart: Callable[[str], None] | None = None,
) -> None:
    """Run ``body()`` until it returns; after any exception log it (a TierlinkError as a
    warning, anything else with its traceback), call ``on_restart(name)``, wait the next
    delay of ``backoff`` and run it again, so no value a peer sends ends a background loop.

    A run that lasted longer than the delay before it counts as healthy: the backoff starts
    over. Cancellation ends the loop.
    """
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await body()
            return
        except TierlinkError as exc:
            log.warning("%s failed: %s (restarting in %.1f s)", name, exc, backoff.peek())
        except Exception:
            log.exception("%s failed (restarting in %.1f s)", name, backoff.peek())
        if on_restart is not None:
            on_restart(name)
        if loop.time() - started > backoff.peek():
            backoff.reset()
        await backoff.sleep()
