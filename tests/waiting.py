"""The one way tests wait for something: :func:`eventually`, which fails with a message.

Waiting polls a condition at a short interval up to a bound, because many of the things a
test waits for (a DHT value propagating, a background task finishing) have no event a test can
await. A wait that runs out raises ``AssertionError`` naming what was awaited, so a timeout is
never mistaken for success.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: How long a test waits for a condition by default (seconds): generous, since CI is shared.
DEFAULT_TIMEOUT = 20.0


async def eventually(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = DEFAULT_TIMEOUT,
    what: str | None = None,
    interval: float = 0.01,
) -> T:
    """Wait until ``predicate()`` returns a truthy value and return it.

    ``predicate`` may be a plain function or a coroutine function. After ``timeout`` seconds
    without a truthy answer, raises ``AssertionError`` naming ``what`` (or the predicate).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if loop.time() >= deadline:
            name = what or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {name}")
        await asyncio.sleep(interval)
