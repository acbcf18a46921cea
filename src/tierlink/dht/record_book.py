"""The book of verified peer records, and the one way a node looks a peer up.

:class:`RecordBook` keeps the newest valid record per fingerprint; :class:`PeerLookup` reads a
peer's records from the DHT through it. A node shares one lookup between every part that looks
peers up (dialing, the offline tier), so a record verified once is reused and a replayed older
record is refused everywhere.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from tierlink.backoff import Backoff
from tierlink.errors import PeerNotFound, RecordError
from tierlink.wire.dhtkeys import ice_candidates_key
from tierlink.wire.records import PeerRecord, now_ms

#: The first wait before asking the DHT again for a record it did not have (seconds).
LOOKUP_RETRY_S = 0.1


@dataclass
class RecordBook:
    """Picks the newest valid record per fingerprint and remembers sequence numbers.

    A record older than one already accepted for that fingerprint is rejected (``stale``):
    a replayed old record cannot roll a peer's addresses back.
    """

    highest_seq: dict[str, int] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    #: The newest record accepted per fingerprint and when (ms), for :meth:`cached`.
    latest: dict[str, tuple[PeerRecord, int]] = field(default_factory=dict)
    #: Fingerprints whose records are kept at most (the least recently accepted go first).
    max_cached: int = 1024

    def cached(self, fingerprint: str, now: int, max_age_ms: int) -> PeerRecord | None:
        """The newest accepted record of ``fingerprint`` if it was accepted less than
        ``max_age_ms`` ago and has not expired; None otherwise."""
        entry = self.latest.get(fingerprint)
        if entry is None:
            return None
        record, accepted_at = entry
        if now - accepted_at >= max_age_ms or record.expires_at_ms <= now:
            return None
        return record

    def _remember(self, record: PeerRecord) -> None:
        self.highest_seq[record.fingerprint] = record.seq
        self.latest.pop(record.fingerprint, None)
        self.latest[record.fingerprint] = (record, now_ms())
        while len(self.latest) > self.max_cached:
            del self.latest[next(iter(self.latest))]

    def accept(self, value: bytes, fingerprint: str | None = None) -> PeerRecord:
        """Verify one value; if ``fingerprint`` is given it must be the record's owner."""
        rec = PeerRecord.decode(value, owner=fingerprint)
        seen = self.highest_seq.get(rec.fingerprint)
        if seen is not None and rec.seq < seen:
            raise RecordError("stale", f"sequence {rec.seq} is older than accepted {seen}")
        self._remember(rec)
        return rec

    def newest(self, values: list[bytes], fingerprint: str) -> PeerRecord | None:
        """The newest valid record among ``values``; rejected ones are counted by reason."""
        best: PeerRecord | None = None
        for value in values:
            try:
                rec = PeerRecord.decode(value, owner=fingerprint)
            except RecordError as exc:
                self.rejected[exc.reason] += 1
                continue
            if best is None or rec.seq > best.seq:
                best = rec
        if best is None:
            return None
        seen = self.highest_seq.get(fingerprint)
        if seen is not None and best.seq < seen:
            self.rejected["stale"] += 1
            return None
        self._remember(best)
        return best


class RecordSource(Protocol):
    """What a lookup needs from a DHT client (:class:`tierlink.dht.DhtClient`)."""

    async def get(self, key: str) -> list[bytes]: ...


class PeerLookup:
    """Peer records from the DHT, verified through one shared :class:`RecordBook`."""

    def __init__(self, dht: RecordSource, book: RecordBook | None = None) -> None:
        self.dht = dht
        self.book = book if book is not None else RecordBook()

    async def lookup(self, fingerprint: str, patience: float = 0.0) -> PeerRecord:
        """The newest valid record of ``fingerprint``; PeerNotFound otherwise.

        A node that has just joined the DHT may not find values yet: an empty answer is
        asked again with backoff for up to ``patience`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline, backoff = loop.time() + patience, Backoff(LOOKUP_RETRY_S)
        while True:
            values = await self.dht.get(ice_candidates_key(fingerprint))
            if values or loop.time() + backoff.peek() > deadline:
                break
            await backoff.sleep()
        record = self.book.newest(values, fingerprint)
        if record is None:
            raise PeerNotFound(
                f"no valid record for {fingerprint[:16]}… in the DHT "
                f"({len(values)} value(s) found)"
            )
        return record

    async def record_for(
        self, fingerprint: str, max_age_ms: int, patience: float = 0.0
    ) -> PeerRecord:
        """A record accepted less than ``max_age_ms`` ago, else a fresh :meth:`lookup`."""
        cached = self.book.cached(fingerprint, now_ms(), max_age_ms)
        return cached if cached is not None else await self.lookup(fingerprint, patience)
