"""Putting to and listening on the DHT through more than one node.

OpenDHT sends a put only once the search for its key is synced: the key's 8 closest nodes
it knows have all answered, or timed out (about 1 s each) if they have left. A node whose
routing table still lists departed nodes near a fresh key therefore holds the put for a
second or more; another node, knowing other nodes, may not. :class:`MirroredDht` puts
through its own node and through every mirror at once (the put succeeds if one node took
it) and listens through all of them (each value once, from whichever node delivers it
first). Gets go through its own node only.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence

from tierlink.dht.client import DEFAULT_TIMEOUT, DhtClient, DhtListener
from tierlink.errors import DhtError


class MirroredDht(DhtClient):
    """A :class:`DhtClient` for ``base_url`` whose puts and listens also go through
    ``mirrors`` (other OpenDHT proxies)."""

    def __init__(self, base_url: str, mirrors: Sequence[str], *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(base_url, timeout=timeout)
        self.mirrors = [DhtClient(url, timeout=timeout) for url in mirrors]
        self.mirror_failures = 0
        """Puts a mirror failed (the put still succeeded through another node)."""

    async def put(
        self, key: str, value: bytes, *, permanent: bool = False,
        sent: asyncio.Future[None] | None = None,
    ) -> None:
        """Put through every node at once; DhtError only if every one failed."""
        results = await asyncio.gather(
            super().put(key, value, permanent=permanent, sent=sent),
            *(m.put(key, value, permanent=permanent) for m in self.mirrors),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, DhtError):
                raise failure  # a bug, not a node's answer
        if len(failures) == len(results):
            raise failures[0]
        self.mirror_failures += len(failures)

    def listen(self, key: str, *, reconnect: bool = True) -> DhtListener:
        """New values under ``key`` from every node, each once."""
        listener = MergedListener(self, key, reconnect=reconnect)
        self._listeners.add(listener)
        return listener

    async def close(self) -> None:
        """Close every node's client."""
        for mirror in self.mirrors:
            await mirror.close()
        await super().close()


class MergedListener(DhtListener):
    """One listen through the client's own node and each mirror, merged; values are
    de-duplicated by digest. It fails only once every node's listen has failed."""

    MAX_REMEMBERED = DhtListener.MAX_REMEMBERED

    def __init__(self, client: MirroredDht, key: str, *, reconnect: bool = True) -> None:
        super().__init__(client, key, reconnect=reconnect)
        self._mirrored = [m.listen(key, reconnect=reconnect) for m in client.mirrors]

    async def _values(self) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()

        async def pump(source: AsyncIterator[bytes]) -> None:
            try:
                async for value in source:
                    queue.put_nowait(value)
            except Exception as exc:  # handed to the reader: a DhtError ends one node's
                queue.put_nowait(exc)  # listen, anything else is raised there
                return
            queue.put_nowait(None)

        own = super()._values()
        pumps = [asyncio.create_task(pump(source)) for source in (own, *self._mirrored)]
        seen: OrderedDict[bytes, None] = OrderedDict()
        alive, failures = len(pumps), []
        try:
            while alive:
                item = await queue.get()
                if isinstance(item, BaseException) and not isinstance(item, DhtError):
                    raise item
                if item is None or isinstance(item, BaseException):
                    alive -= 1
                    if item is not None:
                        failures.append(item)
                    continue
                digest = hashlib.sha256(item).digest()
                if digest in seen:
                    continue
                seen[digest] = None
                if len(seen) > self.MAX_REMEMBERED:
                    seen.popitem(last=False)
                yield item
            if failures:
                raise failures[0]
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the listen on every node."""
        for listener in self._mirrored:
            await listener.aclose()
        await super().aclose()
