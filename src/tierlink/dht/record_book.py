"""The book of verified peer records, and the one way a node looks a peer up.

:class:`RecordBook` keeps the newest valid record per fingerprint; :class:`PeerLookup` reads a
peer's records from the DHT through it. A node shares one lookup between every part that looks
peers up (dialing, the offline tier), so a record verified once is reused and a replayed older
record is refused everywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tierlink.backoff import Backoff
from tierlink.errors import DhtUnavailable, PeerNotFound, RecordError
from tierlink.wire.dhtkeys import ice_candidates_key
from tierlink.wire.records import (
    KIND_PEER_RECORD,
    PeerRecord,
    RecordClaim,
    leads_with_signer,
    now_ms,
)

#: The first wait before asking the DHT again for a record it did not have (seconds).
LOOKUP_RETRY_S = 0.1
#: Values of one key a lookup parses at most (OpenDHT's own bound per key and node); the rest
#: are counted (``over_cap``), not parsed. A value of another signer costs a CBOR decode.
MAX_VALUES_PER_LOOKUP = 65536
#: Signatures one pass of a lookup verifies at most (about half a second of ML-DSA-87 on a
#: slow core): only values that claim the owner and are not older than its accepted record
#: get that far, newest claimed sequence first; the rest are counted (``verify_cap``).
MAX_VERIFIES_PER_LOOKUP = 1024
#: Verifications between two yields to the event loop during a lookup.
VERIFY_CHUNK = 16
#: Digests of values whose signature failed, remembered so later lookups skip them unverified
#: (about as many forgeries as one node can store under a key: 64 MiB of 7.3 KB values).
MAX_REMEMBERED_FORGERIES = 16384


@dataclass
class RecordBook:
    """Picks the newest valid record per fingerprint and remembers sequence numbers.

    A record older than one already accepted for that fingerprint is rejected (``stale``):
    a replayed old record cannot roll a peer's addresses back. Many values under one key
    (a flood of other signers' records, or forgeries claiming the owner) cost cheap checks
    each and at most :data:`MAX_VERIFIES_PER_LOOKUP` signature verifications per lookup.
    """

    highest_seq: dict[str, int] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    #: The newest record accepted per fingerprint and when (ms), for :meth:`cached`.
    latest: dict[str, tuple[PeerRecord, int]] = field(default_factory=dict)
    #: Fingerprints whose records are kept at most (the least recently accepted go first).
    max_cached: int = 1024
    #: Signature verifications spent (every one, valid or not).
    verified: int = 0
    #: Signature verifications one :meth:`newest` spends at most.
    max_verifies: int = MAX_VERIFIES_PER_LOOKUP
    #: SHA-256 digests of values whose signature failed (the newest
    #: :data:`MAX_REMEMBERED_FORGERIES`): skipped unverified when read again.
    forgeries: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

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

    def forget(self, fingerprint: str) -> None:
        """Drop the cached record of ``fingerprint`` (its sequence floor stays, so an older
        record is still refused): the next dial looks it up again."""
        self.latest.pop(fingerprint, None)

    def accepted_at(self, fingerprint: str) -> int | None:
        """When (ms) the cached record of ``fingerprint`` was accepted; None: none cached."""
        entry = self.latest.get(fingerprint)
        return None if entry is None else entry[1]

    def _remember(self, record: PeerRecord) -> None:
        self.highest_seq[record.fingerprint] = record.seq
        self.latest.pop(record.fingerprint, None)
        self.latest[record.fingerprint] = (record, now_ms())
        while len(self.latest) > self.max_cached:
            del self.latest[next(iter(self.latest))]

    def _forged(self, digest: bytes) -> None:
        self.forgeries[digest] = None
        while len(self.forgeries) > MAX_REMEMBERED_FORGERIES:
            self.forgeries.popitem(last=False)

    def accept(self, value: bytes, fingerprint: str | None = None) -> PeerRecord:
        """Verify one value; if ``fingerprint`` is given it must be the record's owner."""
        claim = PeerRecord.claim(value, owner=fingerprint)
        seen = self.highest_seq.get(claim.record.fingerprint)
        if seen is not None and claim.seq < seen:
            raise RecordError("stale", f"sequence {claim.seq} is older than accepted {seen}")
        self.verified += 1
        rec = claim.verify()
        self._remember(rec)
        return rec

    def claims(
        self, values: Iterable[bytes], fingerprint: str
    ) -> deque[tuple[RecordClaim, bytes]]:
        """The values that pass every cheap check as records of ``fingerprint`` (with their
        digests), newest claimed sequence first; every other value is counted by reason."""
        out: list[tuple[RecordClaim, bytes]] = []
        digests: set[bytes] = set()
        floor = self.highest_seq.get(fingerprint)
        now = now_ms()
        for i, value in enumerate(values):
            if i >= MAX_VALUES_PER_LOOKUP:
                self.rejected["over_cap"] += 1
                continue
            try:
                claim = PeerRecord.claim(value, now=now, owner=fingerprint)
            except RecordError as exc:
                self.rejected[exc.reason] += 1
                continue
            digest = hashlib.sha256(value).digest()
            if digest in self.forgeries:
                self.rejected["signature"] += 1
            elif digest in digests:
                self.rejected["duplicate"] += 1
            elif floor is not None and claim.seq < floor:
                self.rejected["stale"] += 1
            else:
                digests.add(digest)
                out.append((claim, digest))
        out.sort(key=lambda item: item[0].seq, reverse=True)
        return deque(out)

    def pick(self, claims: deque[tuple[RecordClaim, bytes]], budget: int) -> PeerRecord | None:
        """Verify ``claims`` from the front (newest first), removing each, until one verifies
        (returned and remembered) or ``budget`` verifications are spent (None)."""
        while claims and budget > 0:
            claim, digest = claims.popleft()
            budget -= 1
            self.verified += 1
            try:
                record = claim.verify()
            except RecordError as exc:
                self.rejected[exc.reason] += 1
                self._forged(digest)
                continue
            self._remember(record)
            return record
        return None

    def newest(self, values: Iterable[bytes], fingerprint: str) -> PeerRecord | None:
        """The newest valid record among ``values``; rejected ones are counted by reason.

        Cheap checks run on every value (another signer's record under the key is refused
        by comparing fingerprints); signatures are verified newest claim first, at most
        :attr:`max_verifies`, and the first that verifies wins, so a value older than it is
        never verified. Claims left unverified are counted as ``verify_cap``.
        """
        claims = self.claims(values, fingerprint)
        record = self.pick(claims, self.max_verifies)
        if record is None and claims:
            self.rejected["verify_cap"] += len(claims)
        return record


class RecordSource(Protocol):
    """What a lookup needs from a DHT client (:class:`tierlink.dht.DhtClient`): ``keep``
    says which values matter once the answer is large (a client may skip the others)."""

    async def get(
        self, key: str, *, keep: Callable[[bytes], bool] | None = None
    ) -> list[bytes]: ...


@runtime_checkable
class StreamSource(Protocol):
    """A DHT client that hands a get's values over as they arrive
    (:class:`tierlink.dht.DhtClient`)."""

    def values(self, key: str) -> AsyncGenerator[bytes, None]: ...


class PeerLookup:
    """Peer records from the DHT, verified through one shared :class:`RecordBook`."""

    def __init__(self, dht: RecordSource, book: RecordBook | None = None) -> None:
        self.dht = dht
        self.book = book if book is not None else RecordBook()
        self.first_by: Counter[str] = Counter()
        """Which way each :meth:`first_record` got its record (``stream`` or ``get``)."""

    def _keep(self, fingerprint: str) -> Callable[[bytes], bool]:
        """The cheap test a value must pass to be worth parsing as ``fingerprint``'s record."""
        def keep(value: bytes) -> bool:
            return leads_with_signer(value, KIND_PEER_RECORD, fingerprint) and (
                hashlib.sha256(value).digest() not in self.book.forgeries
            )
        return keep

    async def first_record(self, fingerprint: str, patience: float = 0.0) -> PeerRecord:
        """The first valid record of ``fingerprint`` the DHT hands over, else
        :meth:`lookup`'s answer.

        OpenDHT answers a get only once its search is complete, which waits out the
        request timeout (about 1 s) of every one of the key's closest nodes that does not
        answer, a node that has left for one; but it streams each value as soon as a node
        returns it. The first value that verifies ends the read. Any valid record serves a
        dial (its KEM key is the identity's); the stream verifies at most
        ``book.max_verifies`` values, cheapest checks first. If the stream ends (or fails)
        without one, :meth:`lookup` asks again with its patience.

        (Not a listen: OpenDHT answers a get on a key it listens on from the listen's cache,
        and in the 100-node lab that cache stayed empty while the record was in the DHT.)
        """
        if isinstance(self.dht, StreamSource):
            try:
                record = await self._streamed(fingerprint)
            except DhtUnavailable:
                record = None
            if record is not None:
                self.first_by["stream"] += 1
                return record
        record = await self.lookup(fingerprint, patience)
        self.first_by["get"] += 1
        return record

    async def _streamed(self, fingerprint: str) -> PeerRecord | None:
        """The first value a streamed get of ``fingerprint``'s record key delivers that
        verifies; None if none does."""
        assert isinstance(self.dht, StreamSource)
        budget, seen = self.book.max_verifies, 0
        stream = self.dht.values(ice_candidates_key(fingerprint))
        try:
            async for value in stream:
                seen += 1
                if seen > MAX_VALUES_PER_LOOKUP:
                    self.book.rejected["over_cap"] += 1
                    break
                if not leads_with_signer(value, KIND_PEER_RECORD, fingerprint):
                    self.book.rejected["fingerprint"] += 1  # as claims() counts it, cheaper
                    continue
                claims = self.book.claims([value], fingerprint)
                if not claims:
                    continue
                if budget <= 0:
                    self.book.rejected["verify_cap"] += 1
                    continue
                budget -= 1
                record = self.book.pick(claims, 1)
                if record is not None:
                    return record
                await asyncio.sleep(0)  # the node's other work runs between verifications
        finally:
            await stream.aclose()
        return None

    async def lookup(self, fingerprint: str, patience: float = 0.0) -> PeerRecord:
        """The newest valid record of ``fingerprint``; PeerNotFound otherwise.

        A node that has just joined the DHT may not find values yet, and a key flooded with
        forgeries of the owner may need several passes of ``book.max_verifies``
        verifications (run in chunks of :data:`VERIFY_CHUNK`, yielding to the event loop in
        between; a forgery found once is skipped unverified): an answer without a valid
        record (empty, or holding only other values: anyone can put those, so they must not
        end the wait) is asked again with backoff for up to ``patience`` seconds. The DHT
        may skip, in a large answer, values that do not lead with the owner's fingerprint
        and known forgeries (``keep``).
        """
        loop = asyncio.get_running_loop()
        deadline, backoff = loop.time() + patience, Backoff(LOOKUP_RETRY_S)
        key = ice_candidates_key(fingerprint)
        keep = self._keep(fingerprint)
        while True:
            values = await self.dht.get(key, keep=keep)
            claims = self.book.claims(values, fingerprint)
            spent = 0
            while claims and spent < self.book.max_verifies:
                chunk = min(VERIFY_CHUNK, self.book.max_verifies - spent)
                record = self.book.pick(claims, chunk)
                if record is not None:
                    return record
                spent += chunk
                await asyncio.sleep(0)  # the node's other work runs between chunks
            if claims:
                self.book.rejected["verify_cap"] += len(claims)
            if loop.time() + backoff.peek() > deadline:
                break
            await backoff.sleep()
        raise PeerNotFound(
            f"no valid record for {fingerprint[:16]}… in the DHT "
            f"({len(values)} value(s) found)"
        )

    async def record_for(
        self, fingerprint: str, max_age_ms: int, patience: float = 0.0
    ) -> PeerRecord:
        """A record accepted less than ``max_age_ms`` ago, else :meth:`first_record`."""
        cached = self.book.cached(fingerprint, now_ms(), max_age_ms)
        return cached if cached is not None else await self.first_record(fingerprint, patience)
