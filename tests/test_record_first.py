"""``PeerLookup.first_record``: a dial takes the first valid record the proxy streams instead
of waiting for the get to complete (OpenDHT completes it only once every one of the key's
closest nodes answered or timed out), without giving up any check: forgeries, other signers'
records and replays stay refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from tests.verify_counter import VerifyCounter
from tests.waiting import eventually
from tierlink.dht.record_book import PeerLookup, RecordBook
from tierlink.errors import DhtUnavailable, PeerNotFound
from tierlink.identity import SIGNATURE_SIZE, Identity
from tierlink.wire.dhtkeys import ice_candidates_key
from tierlink.wire.records import PeerRecord

OWNER = Identity.generate()
OTHER = Identity.generate()
KEY = ice_candidates_key(OWNER.fingerprint)
END = object()


def record(seq: int, who: Identity = OWNER) -> bytes:
    return PeerRecord.create(who, seq).encode(who)


def forged(seq: int) -> bytes:
    good = record(seq)
    return good[:-SIGNATURE_SIZE] + bytes(SIGNATURE_SIZE)


class StreamingDht:
    """A get whose values the test streams one by one (the search never completes unless
    the test ends it), and a plain get that answers ``stored``."""

    def __init__(self, stored: list[bytes]) -> None:
        self.stored = stored
        self.feed: asyncio.Queue[object] = asyncio.Queue()
        self.streams = 0
        self.closed_streams = 0
        self.gets = 0

    async def values(self, key: str) -> AsyncGenerator[bytes, None]:
        assert key == KEY
        self.streams += 1
        try:
            while True:
                item = await self.feed.get()
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            self.closed_streams += 1

    async def get(self, key: str, **_: Any) -> list[bytes]:
        assert key == KEY
        self.gets += 1
        return list(self.stored)

    def stream(self, *items: object) -> None:
        for item in items:
            self.feed.put_nowait(item)


class GetOnlyDht:
    """A DHT client that cannot stream a get."""

    def __init__(self, stored: list[bytes]) -> None:
        self.stored = stored

    async def get(self, key: str, **_: Any) -> list[bytes]:
        return list(self.stored)


async def test_the_first_streamed_record_is_taken_before_the_search_completes() -> None:
    dht = StreamingDht([])
    lookup = PeerLookup(dht)
    dht.stream(record(1))  # and the search never completes
    found = await asyncio.wait_for(lookup.first_record(OWNER.fingerprint), 10)
    assert found.seq == 1 and found.fingerprint == OWNER.fingerprint
    assert lookup.first_by == {"stream": 1}
    assert dht.closed_streams == 1 and dht.gets == 0


async def test_streamed_forgeries_and_other_signers_are_refused(verifies: VerifyCounter) -> None:
    dht = StreamingDht([])
    lookup = PeerLookup(dht)
    dht.stream(record(9, OTHER), forged(8), record(3))
    found = await asyncio.wait_for(lookup.first_record(OWNER.fingerprint), 10)
    assert found.seq == 3, "neither the other signer's record nor the forgery is taken"
    assert lookup.book.rejected["signature"] == 1
    assert lookup.book.rejected["fingerprint"] == 1
    assert verifies.calls == 2, "another signer's record costs no verification"


async def test_a_streamed_replay_older_than_accepted_is_refused() -> None:
    book = RecordBook()
    book.accept(record(5), OWNER.fingerprint)
    dht = StreamingDht([record(5)])
    lookup = PeerLookup(dht, book)
    dht.stream(record(2), END)
    found = await asyncio.wait_for(lookup.first_record(OWNER.fingerprint), 10)
    assert book.rejected["stale"] >= 1
    assert found.seq == 5 and lookup.first_by == {"get": 1}


async def test_streamed_verifications_are_bounded(verifies: VerifyCounter) -> None:
    dht = StreamingDht([record(1)])
    lookup = PeerLookup(dht, RecordBook(max_verifies=3))
    dht.stream(*(forged(10 + i) for i in range(6)))
    task = asyncio.create_task(lookup.first_record(OWNER.fingerprint))
    await eventually(lambda: lookup.book.rejected["verify_cap"] == 3, what="budget spent")
    assert verifies.calls == 3 and not task.done()
    dht.stream(END)
    assert (await asyncio.wait_for(task, 10)).seq == 1, "then the get (forgeries known)"


async def test_a_failed_stream_leaves_the_get() -> None:
    dht = StreamingDht([record(4)])
    lookup = PeerLookup(dht)
    dht.stream(DhtUnavailable("proxy gone"))
    assert (await asyncio.wait_for(lookup.first_record(OWNER.fingerprint), 10)).seq == 4
    assert lookup.first_by == {"get": 1} and dht.closed_streams == 1


async def test_nothing_valid_anywhere_is_not_found() -> None:
    dht = StreamingDht([forged(2)])
    lookup = PeerLookup(dht)
    dht.stream(forged(2), END)
    with pytest.raises(PeerNotFound):
        await asyncio.wait_for(lookup.first_record(OWNER.fingerprint), 10)


async def test_a_client_without_streaming_uses_the_get() -> None:
    lookup = PeerLookup(GetOnlyDht([record(7)]))
    assert (await lookup.first_record(OWNER.fingerprint)).seq == 7
    assert lookup.first_by == {"get": 1}
