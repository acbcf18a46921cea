"""What the offline tier (and the mailbox service) needs from a DHT client: put, get, listen.

:class:`tierlink.dht.DhtClient` is one; tests pass in-memory ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol


class Dht(Protocol):
    """What the offline tier needs from a DHT client (:class:`tierlink.dht.DhtClient`)."""

    async def put(self, key: str, value: bytes) -> None: ...
    async def get(
        self, key: str, *, keep: Callable[[bytes], bool] | None = None
    ) -> list[bytes]: ...
    def listen(self, key: str) -> AsyncIterator[bytes]: ...


async def close_listen(it: object) -> None:
    """End a listen from :meth:`Dht.listen` (an iterator without ``aclose`` needs nothing)."""
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()
