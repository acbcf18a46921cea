"""Overlapping a dial's steps: waiting on DHT puts without serializing on them.

A DHT proxy hands a value to listeners before the put's HTTP answer returns, and a dial's
CPU work (signing, TLS) can run while a request is in flight. These helpers let the dialer
and the callee wait for what they need (an answer, ICE checks) while a put runs, tidy up
finished puts off the critical path, and yield to just-started I/O before CPU work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from tierlink.dht import DhtListener
from tierlink.errors import TierlinkError

log = logging.getLogger(__name__)

T = TypeVar("T")


def retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a background future's exception as retrieved (it was already handled)."""
    if not task.cancelled():
        task.exception()


async def while_putting(put: asyncio.Future[Any], work: Awaitable[T]) -> T:
    """Await ``work`` while ``put`` (a DHT put it depends on) runs; a failed put fails it.

    The DHT hands a value to listeners before the put call returns, so waiting for the
    put first would only add its round trip to every dial.
    """
    task: asyncio.Future[T] = asyncio.ensure_future(work)
    try:
        while True:
            pending: set[asyncio.Future[Any]] = {task} if put.done() else {task, put}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            error = put.exception()
            if error is not None:
                raise error
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
        task.add_done_callback(retrieve)


async def settle(put: asyncio.Future[Any], listener: DhtListener | None) -> None:
    """Let a put that has served its purpose finish, then close ``listener``.

    Cancelling an HTTP request mid-flight costs its pooled connection, and the dial
    already has what it waited for, so both ends are tidied off its critical path.
    """
    try:
        await put
    except TierlinkError as exc:
        log.debug("a put finished late with an error: %s", exc)
    finally:
        if listener is not None:
            await listener.aclose()


async def io_turns(turns: int = 4) -> None:
    """Give the loop a few turns, so I/O just started (an aioice check: a task that
    starts a task) is on the wire before a stretch of CPU work."""
    for _ in range(turns):
        await asyncio.sleep(0)
