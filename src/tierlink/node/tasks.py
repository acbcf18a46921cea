"""Task ownership for the node: every task has an owner that awaits or cancels it.

* :class:`Supervisor`: the owner of background work that outlives the call that started it
  (the offer loop, an offer being answered, a DHT put that settles after a dial already has
  its answer). It logs each failure and cancels and awaits everything on :meth:`close`.
  :meth:`Supervisor.keep_running` runs a long-lived loop that restarts (with backoff) after
  any failure, counted in :attr:`Supervisor.restarts`.
* :func:`task_group`: an :class:`asyncio.TaskGroup` for work inside one call (a dial, an
  answer) that raises its first error as itself, so callers catch ``IceFailed`` or
  ``DhtError`` rather than an exception group.
* :func:`outcome_of`: wait for a task another owner holds and raise its error, so a task group
  fails when, say, the offer put it depends on fails.
* :func:`io_turns`: yield to I/O just started before a stretch of CPU work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from tierlink.backoff import Backoff, keep_restarting
from tierlink.errors import TierlinkError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Supervisor:
    """Owns background tasks until they finish; :meth:`close` cancels and awaits the rest."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.restarts: Counter[str] = Counter()
        """Restarts of loops run by :meth:`keep_running`, by loop name."""

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run ``coro`` as a task owned here; TierlinkError once :meth:`close` began."""
        if self._closed:
            coro.close()
            raise TierlinkError(f"{self.name} is closed")
        task = asyncio.get_running_loop().create_task(coro, name=f"tierlink-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def keep_running(
        self, factory: Callable[[], Coroutine[Any, Any, None]], name: str, backoff: Backoff
    ) -> asyncio.Task[None]:
        """Run ``factory()`` as a task owned here, and again (after the next delay of
        ``backoff``) whenever it raises: a failure is logged once and counted in
        :attr:`restarts`, and never ends the loop; returning or :meth:`close` does."""

        def restarted(loop_name: str) -> None:
            self.restarts[loop_name] += 1

        return self.spawn(keep_restarting(factory, name, backoff, restarted), name)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, TierlinkError):
            log.info("%s: task %s failed: %s", self.name, task.get_name(), error)
        elif error is not None:
            log.error("%s: task %s failed: %r", self.name, task.get_name(), error,
                      exc_info=error)

    async def close(self) -> None:
        """Refuse new tasks, cancel the running ones and wait until they have all ended."""
        self._closed = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An :class:`asyncio.TaskGroup` that raises its first error unwrapped."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as errors:
        raise _first_leaf(errors) from None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    for other in group.exceptions[1:]:
        log.debug("a further error in the same task group: %r", other)
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def outcome_of(task: asyncio.Task[Any]) -> None:
    """Return once ``task`` succeeded; raise its error if it failed (without cancelling it
    when this wait is cancelled: its owner decides that)."""
    await asyncio.wait([task])
    if task.cancelled():
        raise TierlinkError(f"{task.get_name()} was cancelled")
    error = task.exception()
    if error is not None:
        raise error


async def io_turns(turns: int = 4) -> None:
    """Give the loop a few turns, so I/O just started (an aioice check: a task that starts a
    task) is on the wire before a stretch of CPU work."""
    for _ in range(turns):
        await asyncio.sleep(0)
