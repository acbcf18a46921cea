"""The receive queue of a connection: bounded, drop-oldest or backpressure, closable.

Semantics:

* capacity 16 by default; :meth:`RecvQueue.offer` drops the **oldest** item when full and counts
  it in :attr:`RecvQueue.dropped` (datagram mode);
* :meth:`RecvQueue.put` waits for room instead (reliable mode: the caller stops reading and
  flow control pushes back on the sender);
* :meth:`RecvQueue.get` with ``timeout=0`` returns at once, ``timeout=t`` waits up to ``t``
  seconds, ``timeout=None`` waits forever; waiting is a future, never a polling loop;
* :meth:`RecvQueue.close` wakes every waiter at once with :class:`ConnectionClosed`.

The queue lives on one event loop; the blocking facade reaches it through that loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

from tierlink.errors import ConnectionClosed

T = TypeVar("T")

DEFAULT_CAPACITY = 16


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
        item = self.get_nowait()
        if item is not None or (timeout is not None and timeout <= 0):
            return item
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            self._getters.append(fut)
            try:
                if deadline is None:
                    await fut
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return None
                    try:
                        await asyncio.wait_for(asyncio.shield(fut), remaining)
                    except TimeoutError:
                        return self.get_nowait()
            finally:
                if fut in self._getters:
                    self._getters.remove(fut)
                if not fut.done():
                    fut.cancel()
            item = self.get_nowait()
            if item is not None:
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

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]], every: bool = False) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                if not every:
                    return
