"""The receive queue of a connection: bounded, drop-oldest or backpressure, closable.

Semantics:

* capacity 16 by default; :meth:`RecvQueue.offer` drops the **oldest** item when full and counts
  it in :attr:`RecvQueue.dropped` (datagram mode);
* :meth:`RecvQueue.put` waits for room instead (reliable mode: the caller stops reading and
  flow control pushes back on the sender);
* :meth:`RecvQueue.get` with ``timeout=0`` returns at once, ``timeout=t`` waits up to ``t``
  seconds, ``timeout=None`` waits forever; waiting is a future, never a polling loop; a
  timeout that is not a number (NaN, a bool) is refused (:func:`check_timeout`);
* :meth:`RecvQueue.close` wakes every waiter at once with :class:`ConnectionClosed`;
* a waiter cancelled after it was woken passes the wake-up on to the next one.

The queue lives on one event loop; the blocking facade reaches it through that loop.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Generic, TypeVar

from tierlink.errors import BadTimeout, ConnectionClosed

T = TypeVar("T")

DEFAULT_CAPACITY = 16


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` if it is a number of seconds to wait (None: forever; 0 or less: at once);
    TypeError for anything else (a bool included), BadTimeout for NaN."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout takes seconds (a number) or None, not "
                        f"{type(timeout).__name__}")
    if math.isnan(timeout):
        raise BadTimeout("timeout is NaN: give seconds, 0 for at once or None for forever")
    return timeout


def _expire(fut: asyncio.Future[None]) -> None:
    """A waiter's deadline: wake it like an item would (it then finds none)."""
    if not fut.done():
        fut.set_result(None)


class RecvQueue(Generic[T]):
    """A bounded FIFO with drop-oldest ``offer``, waiting ``put`` and timed ``get``."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        self.dropped = 0
        self.received = 0
        self._items: deque[T] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def waiting(self) -> int:
        """Receivers waiting in :meth:`get` right now."""
        return sum(1 for fut in self._getters if not fut.done())

    @property
    def waiting_to_put(self) -> int:
        """Senders waiting in :meth:`put` for room right now."""
        return sum(1 for fut in self._putters if not fut.done())

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed is not None

    def offer(self, item: T) -> bool:
        """Append without waiting; when full drop the oldest item (counted). False if closed."""
        if self._closed is not None:
            return False
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self.received += 1
        self._wake(self._getters)
        return True

    async def put(self, item: T) -> None:
        """Append, waiting while the queue is full (backpressure). Raises if closed."""
        while True:
            if self._closed is not None:
                raise ConnectionClosed(str(self._closed)) from self._closed
            if len(self._items) < self.capacity:
                break
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            try:
                await fut
            except BaseException:
                if len(self._items) < self.capacity:
                    self._pass_on(fut, self._putters)
                raise
            finally:
                if fut in self._putters:
                    self._putters.remove(fut)
        self._items.append(item)
        self.received += 1
        self._wake(self._getters)

    def get_nowait(self) -> T | None:
        """Pop the oldest item or None; raises ConnectionClosed once closed and drained."""
        if self._items:
            item = self._items.popleft()
            self._wake(self._putters)
            return item
        if self._closed is not None:
            raise ConnectionClosed(str(self._closed)) from self._closed
        return None

    async def get(self, timeout: float | None = None) -> T | None:
        """Pop the oldest item; wait up to ``timeout`` seconds (None: forever).

        Returns None on timeout. Raises :class:`ConnectionClosed` when the queue is closed
        and empty, including for receivers already waiting when it closes.
        """
        timeout = check_timeout(timeout)
        item = self.get_nowait()
        if item is not None or (timeout is not None and timeout <= 0):
            return item
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            self._getters.append(fut)
            # The deadline completes the same future an item would: one plain await, so a
            # cancellation is never swallowed by a timeout wrapper.
            timer = None if deadline is None else loop.call_at(deadline, _expire, fut)
            try:
                await fut
            except BaseException:
                if self._items:
                    self._pass_on(fut, self._getters)
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                if fut in self._getters:
                    self._getters.remove(fut)
            item = self.get_nowait()
            if item is not None or (deadline is not None and loop.time() >= deadline):
                return item

    def close(self, reason: str | BaseException = "connection closed") -> None:
        """Close: wake every waiting getter and putter; items already queued stay readable."""
        if self._closed is not None:
            return
        self._closed = reason if isinstance(reason, BaseException) else ConnectionClosed(reason)
        self._wake(self._getters, every=True)
        self._wake(self._putters, every=True)

    def clear(self) -> None:
        """Discard queued items (used when a connection is torn down)."""
        self._items.clear()
        self._wake(self._putters, every=True)

    @classmethod
    def _pass_on(cls, fut: asyncio.Future[None], waiters: deque[asyncio.Future[None]]) -> None:
        """A waiter leaving (cancelled) after it was woken hands its wake-up to the next one,
        so an item or free room is never left behind while another waits."""
        if fut.done() and not fut.cancelled():
            cls._wake(waiters)

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]], every: bool = False) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                if not every:
                    return
