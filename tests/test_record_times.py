"""A peer record tells no publish time finer than the republish period, and its sequence
still grows: across periods, within one period, and across a restart of the publisher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tierlink.identity import Identity
from tierlink.node.config import NodeConfig
from tierlink.node.presence import Presence
from tierlink.wire.records import (
    MAX_RECORD_LIFETIME_S,
    PeerRecord,
    next_seq,
    record_times,
    republish_period_s,
)

ALICE = Identity.generate()
PERIOD_MS = 200_000  # lifetime 600 s
T = 1_767_225_600_000 + 7 * PERIOD_MS  # the start of a period


@pytest.mark.parametrize("offset", [0, 1, 61_234, PERIOD_MS - 1])
def test_record_times_are_the_period_not_the_moment(offset: int) -> None:
    rec = PeerRecord.create(ALICE, 1, 600.0, now=T + offset)
    assert (rec.issued_at_ms, rec.expires_at_ms) == (T, T + PERIOD_MS + 600_000)
    assert rec.expires_at_ms - (T + offset) > 600_000  # valid a lifetime after the put
    back = PeerRecord.decode(rec.encode(ALICE), now=T + offset)
    assert (back.issued_at_ms, back.expires_at_ms) == (T, T + PERIOD_MS + 600_000)


def test_the_longest_lifetime_stays_within_the_readers_bound() -> None:
    issued, expires = record_times(T + 5, MAX_RECORD_LIFETIME_S)
    assert expires - issued <= MAX_RECORD_LIFETIME_S * 1000
    rec = PeerRecord.create(ALICE, 1, MAX_RECORD_LIFETIME_S, now=T + 5)
    assert PeerRecord.decode(rec.encode(ALICE), now=T + 5).expires_at_ms == expires


def test_sequence_grows_by_period_and_within_one() -> None:
    seqs, previous = [], 0
    moments = [T + 10, T + 20, T + 30, T + PERIOD_MS + 5, T + 3 * PERIOD_MS + 1]
    for moment in moments:
        previous = next_seq(previous, record_times(moment, 600.0)[0])
        seqs.append(previous)
    assert seqs == [T, T + 1, T + 2, T + PERIOD_MS, T + 3 * PERIOD_MS]
    assert republish_period_s(600.0) * 1000 == PERIOD_MS


class PutLog:
    """A DHT that keeps what is put."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, bytes]] = []

    async def put(self, key: str, value: bytes, **kw: Any) -> None:
        self.puts.append((key, value))


def presence(data_dir: Path) -> Presence:
    config = NodeConfig(identity=ALICE, data_dir=data_dir, dht_proxy="http://127.0.0.1:9")
    return Presence(PutLog(), ALICE, config, None, None)  # type: ignore[arg-type]


async def test_sequence_grows_across_a_restart_within_one_period(tmp_path: Path) -> None:
    first = presence(tmp_path)
    seqs = [(await first.publish()).seq for _ in range(3)]
    assert seqs == sorted(set(seqs))
    again = presence(tmp_path)  # a restart: a new process, the same state dir
    assert (await again.publish()).seq > seqs[-1]


async def test_an_unreadable_saved_sequence_restarts_by_period(tmp_path: Path) -> None:
    first = presence(tmp_path)
    first.seq_path.write_text("not a number\n")
    rec = await first.publish()
    assert rec.seq == rec.issued_at_ms
    assert first.saved_seq() == rec.seq
