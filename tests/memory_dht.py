"""An in-memory DHT for tests of the offline tier and record lookups: every put kept, in order."""

from __future__ import annotations

from collections.abc import AsyncIterator


class MemoryDht:
    """Values per key, as a DHT hands them back (every put kept, in order)."""

    def __init__(self) -> None:
        self.values: dict[str, list[bytes]] = {}

    async def get(self, key: str, **_: object) -> list[bytes]:
        return list(self.values.get(key, []))

    async def put(self, key: str, value: bytes) -> None:
        self.values.setdefault(key, []).append(value)

    async def listen(self, key: str) -> AsyncIterator[bytes]:
        """The values stored now (a test drives later fetches itself)."""
        for value in list(self.values.get(key, [])):
            yield value
