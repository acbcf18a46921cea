"""``PeerLookup.first_record``: a dial takes the first valid record a listen delivers instead
of waiting for the get (which OpenDHT answers only once its search completes), without
giving up any check: forgeries, other signers' records and replays stay refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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


def record(seq: int, who: Identity = OWNER) -> bytes:
    return PeerRecord.create(who, seq).encode(who)


def forged(seq: int) -> bytes:
    good = record(seq)
    return good[:-SIGNATURE_SIZE] + bytes(SIGNATURE_SIZE)


class Stream:
    """A listen fed by the test; counts closes."""

    def __init__(self, dht: SlowGetDht) -> None:
        self.dht = dht
        self.queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._values()

    async def _values(self) -> AsyncIterator[bytes]:
        while True:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def aclose(self) -> None:
        self.dht.closed_listens += 1


class SlowGetDht:
    """A get that answers only when the test releases it (a search waiting out timeouts),
    and listens the test feeds value by value."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = values
        self.release = asyncio.Event()
        self.streams: list[Stream] = []
        self.gets_cancelled = 0
        self.closed_listens = 0

    async def get(self, key: str, **_: Any) -> list[bytes]:
        assert key == KEY
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.gets_cancelled += 1
            raise
        return list(self.values)

    def listen(self, key: str) -> Stream:
        assert key == KEY
        stream = Stream(self)
        self.streams.append(stream)
        return stream


class GetOnlyDht:
    """A DHT client without listen."""

    def __init__(self, values: list[bytes]) -> None:
        self.values = values

    async def get(self, key: str, **_: Any) -> list[bytes]:
        return list(self.values)


async def _fed(dht: SlowGetDht, *values: bytes | BaseException) -> None:
    await eventually(lambda: dht.streams, what="the lookup's listen")
    for value in values:
        dht.streams[0].queue.put_nowait(value)


async def test_first_listened_record_wins_while_the_get_still_waits() -> None:
    dht = SlowGetDht([record(1)])
    lookup = PeerLookup(dht)
    feeder = asyncio.create_task(_fed(dht, record(1)))
    found = await asyncio.wait_for(lookup.first_record(OWNER.fingerprint), 10)
    await feeder
    assert found.seq == 1 and found.fingerprint == OWNER.fingerprint
    assert lookup.first_by == {"listen": 1}
    assert dht.gets_cancelled == 1, "the get still waiting is given up"
    assert dht.closed_listens == 1


async def test_listen_forgeries_and_other_signers_are_refused(
    verifies: VerifyCounter,
) -> None:
    dht = SlowGetDht([])
    lookup = PeerLookup(dht)
    feeder = asyncio.create_task(_fed(dht, record(9, OTHER), forged(8), record(3)))
    found = await asyncio.wait_for(lookup.first_record(OWNER.fingerprint), 10)
    await feeder
    assert found.seq == 3, "neither the other signer's record nor the forgery is taken"
    assert lookup.book.rejected["signature"] == 1
    assert verifies.calls == 2, "another signer's record costs no verification"


async def test_listened_replay_older_than_accepted_is_refused() -> None:
    book = RecordBook()
    book.accept(record(5), OWNER.fingerprint)
    dht = SlowGetDht([record(5)])
    lookup = PeerLookup(dht, book)
    feeder = asyncio.create_task(_fed(dht, record(2)))
    task = asyncio.create_task(lookup.first_record(OWNER.fingerprint))
    await feeder
    await eventually(lambda: book.rejected["stale"], what="the replay refused")
    assert not task.done(), "the replayed older record was not taken"
    dht.release.set()
    found = await asyncio.wait_for(task, 10)
    assert found.seq == 5 and lookup.first_by == {"get": 1}


async def test_listen_verifications_are_bounded(verifies: VerifyCounter) -> None:
    dht = SlowGetDht([record(1)])
    lookup = PeerLookup(dht, RecordBook(max_verifies=3))
    forgeries = [forged(10 + i) for i in range(6)]
    feeder = asyncio.create_task(_fed(dht, *forgeries))
    task = asyncio.create_task(lookup.first_record(OWNER.fingerprint))
    await feeder
    await eventually(lambda: lookup.book.rejected["verify_cap"] == 3, what="budget spent")
    assert verifies.calls == 3
    dht.release.set()
    assert (await asyncio.wait_for(task, 10)).seq == 1


async def test_a_failed_listen_leaves_the_get() -> None:
    dht = SlowGetDht([record(4)])
    lookup = PeerLookup(dht)
    feeder = asyncio.create_task(_fed(dht, DhtUnavailable("proxy gone")))
    task = asyncio.create_task(lookup.first_record(OWNER.fingerprint))
    await feeder
    await eventually(lambda: dht.closed_listens, what="the failed listen closed")
    dht.release.set()
    assert (await asyncio.wait_for(task, 10)).seq == 4
    assert lookup.first_by == {"get": 1}


async def test_nothing_valid_anywhere_is_not_found() -> None:
    dht = SlowGetDht([forged(2)])
    dht.release.set()
    lookup = PeerLookup(dht)
    with pytest.raises(PeerNotFound):
        await asyncio.wait_for(lookup.first_record(OWNER.fingerprint), 10)
    assert dht.closed_listens == 1


async def test_a_client_without_listen_uses_the_get() -> None:
    lookup = PeerLookup(GetOnlyDht([record(7)]))
    assert (await lookup.first_record(OWNER.fingerprint)).seq == 7
    assert not lookup.first_by
