"""The SQLite outbox and delivered log: states, re-put schedule, durability across SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierlink.errors import MessageTooLarge
from tierlink.offline.delivered import DeliveredLog
from tierlink.offline.outbox import (
    DELIVERED,
    EXPIRED,
    PENDING,
    QUEUED_DHT,
    Outbox,
)
from tierlink.offline.store import STORE_FILE, StoreError, claim_owner
from tierlink.wire.envelope import MAX_PAYLOAD

BOB = "b" * 128
CAROL = "c" * 128
T0 = 1_800_000_000_000  # a fixed "now" in ms
MIN = 60_000


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "offline.sqlite"


@pytest.fixture
def outbox(db: Path) -> Iterator[Outbox]:
    ob = Outbox(db)
    yield ob
    ob.close()


def test_add_get_defaults(outbox: Outbox) -> None:
    mid = outbox.add(BOB, b"hello", now_ms=T0)
    e = outbox.get(mid)
    assert e is not None
    assert (e.recipient, e.payload, e.state, e.attempts) == (BOB, b"hello", PENDING, 0)
    assert e.created_ms == T0 and e.expires_ms == T0 + 7 * 24 * 3600 * 1000
    assert e.envelope is None and e.last_put_ms is None and e.tier is None
    assert outbox.get(b"\x00" * 16) is None


def test_add_rejects_bad_input(outbox: Outbox) -> None:
    mid = outbox.add(BOB, b"x", message_id=b"\x01" * 16)
    with pytest.raises(ValueError):
        outbox.add(BOB, b"y", message_id=mid)
    with pytest.raises(ValueError):
        outbox.add("not-a-fingerprint", b"y")
    with pytest.raises(ValueError):
        outbox.add(BOB, b"y", ttl_s=0)
    with pytest.raises(ValueError):
        outbox.add(BOB, b"y", ttl_s=31 * 24 * 3600)  # longer than an envelope may live
    with pytest.raises(MessageTooLarge):
        outbox.add(BOB, bytes(MAX_PAYLOAD + 1))
    assert outbox.get(mid) is not None and outbox.get(mid).payload == b"x"  # type: ignore[union-attr]


def test_file_is_private_and_wal(db: Path, outbox: Outbox) -> None:
    outbox.add(BOB, b"secret")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert outbox.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert outbox.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_persists_across_reopen(db: Path) -> None:
    with Outbox(db) as ob:
        mid = ob.add(BOB, b"one", now_ms=T0)
        ob.mark_queued(mid, b"envelope-bytes", now_ms=T0 + 1)
    with Outbox(db) as ob:
        e = ob.get(mid)
        assert e is not None and e.state == QUEUED_DHT and e.envelope == b"envelope-bytes"
        assert e.attempts == 1 and e.last_put_ms == T0 + 1


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from tierlink.offline.outbox import Outbox
    ob = Outbox(sys.argv[1])
    for i in range(int(sys.argv[2])):
        mid = ob.add("b" * 128, b"msg %d" % i)
        # add() returned: report it, then (on the last one) die without any cleanup.
        sys.stdout.write(mid.hex() + "\\n")
        sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_survives_sigkill_right_after_add(db: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(db), "1"], capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    mid = bytes.fromhex(proc.stdout.decode().strip())
    with Outbox(db) as ob:
        e = ob.get(mid)
        assert e is not None and e.payload == b"msg 0" and e.state == PENDING


def test_survives_sigkill_from_outside_mid_stream(db: Path) -> None:
    # The parent kills the child at an arbitrary point while it adds messages: every id
    # the child reported (i.e. add() had returned) must be in the file.
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), "200"], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        reported = [proc.stdout.readline() for _ in range(5)]
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ids = [bytes.fromhex(x.decode()) for x in [*reported, *rest.splitlines()] if x.strip()]
    assert len(ids) >= 5
    with Outbox(db) as ob:
        for mid in ids:
            assert ob.get(mid) is not None


def test_mark_queued_reuses_envelope(outbox: Outbox) -> None:
    mid = outbox.add(BOB, b"x", now_ms=T0)
    assert outbox.mark_queued(mid, b"E1", now_ms=T0 + 1)
    assert outbox.mark_queued(mid, b"E1", now_ms=T0 + 2)
    with pytest.raises(ValueError):
        outbox.mark_queued(mid, b"E2", now_ms=T0 + 3)
    e = outbox.get(mid)
    assert e is not None and e.attempts == 2 and e.last_put_ms == T0 + 2 and e.envelope == b"E1"
    assert not outbox.mark_queued(b"\x09" * 16, b"E1")


def test_due_for_reput(outbox: Outbox) -> None:
    a = outbox.add(BOB, b"a", ttl_s=3600, now_ms=T0)
    b = outbox.add(BOB, b"b", ttl_s=3600, now_ms=T0)
    c = outbox.add(CAROL, b"c", ttl_s=600, now_ms=T0)
    outbox.add(CAROL, b"never put", now_ms=T0)  # pending: not a re-put candidate
    outbox.mark_queued(a, b"A", now_ms=T0)
    outbox.mark_queued(b, b"B", now_ms=T0 + 4 * MIN)
    outbox.mark_queued(c, b"C", now_ms=T0)

    def due(t: int) -> list[bytes]:
        return [e.message_id for e in outbox.due_for_reput(t, interval_s=300)]

    assert due(T0 + 5 * MIN - 1) == []
    assert due(T0 + 5 * MIN) == [a, c]  # exactly one interval old counts
    assert due(T0 + 9 * MIN) == [a, c, b]  # least recently put first
    outbox.mark_queued(a, b"A", now_ms=T0 + 9 * MIN)
    assert due(T0 + 9 * MIN) == [c, b]
    outbox.mark_delivered(b, "dht", now_ms=T0 + 9 * MIN)
    assert due(T0 + 10 * MIN - 1) == [c]  # b delivered: no more re-puts
    assert due(T0 + 10 * MIN) == []  # c's TTL (10 min) has passed
    assert due(T0 + 14 * MIN) == [a]


def test_mark_delivered_idempotent_and_states(outbox: Outbox) -> None:
    mid = outbox.add(BOB, b"x", now_ms=T0)
    assert outbox.mark_delivered(mid, "direct", now_ms=T0 + 5)
    assert not outbox.mark_delivered(mid, "dht", now_ms=T0 + 6)
    e = outbox.get(mid)
    assert e is not None and (e.state, e.tier, e.delivered_ms) == (DELIVERED, "direct", T0 + 5)
    assert not outbox.mark_queued(mid, b"E")
    assert outbox.get(mid).state == DELIVERED  # type: ignore[union-attr]


def test_expire_and_pending(outbox: Outbox) -> None:
    short = outbox.add(BOB, b"short", ttl_s=60, now_ms=T0)
    long_ = outbox.add(BOB, b"long", ttl_s=3600, now_ms=T0 + 1)
    other = outbox.add(CAROL, b"other", ttl_s=3600, now_ms=T0 + 2)
    done = outbox.add(BOB, b"done", ttl_s=60, now_ms=T0 + 3)
    outbox.mark_queued(long_, b"L", now_ms=T0 + 10)
    outbox.mark_delivered(done, "relay", now_ms=T0 + 20)
    assert [e.message_id for e in outbox.pending(now_ms=T0 + 30)] == [short, long_, other]
    assert [e.message_id for e in outbox.pending(BOB, now_ms=T0 + 30)] == [short, long_]
    assert [e.message_id for e in outbox.pending(now_ms=T0 + MIN)] == [long_, other]
    assert outbox.expire(now_ms=T0 + MIN) == [short]
    assert outbox.expire(now_ms=T0 + MIN) == []
    assert outbox.get(short).state == EXPIRED  # type: ignore[union-attr]
    assert outbox.get(done).state == DELIVERED  # type: ignore[union-attr]
    # A late ack still records the delivery.
    assert outbox.mark_delivered(short, "dht", now_ms=T0 + 2 * MIN)


def test_prune(outbox: Outbox) -> None:
    old = outbox.add(BOB, b"old", ttl_s=60, now_ms=T0)
    gone = outbox.add(BOB, b"gone", ttl_s=60, now_ms=T0)
    live = outbox.add(BOB, b"live", ttl_s=3600, now_ms=T0)
    outbox.mark_delivered(old, "dht", now_ms=T0 + 1)
    outbox.expire(now_ms=T0 + 2 * MIN)
    assert outbox.prune(now_ms=T0 + 1, keep_s=0) == 0
    assert outbox.prune(now_ms=T0 + 3 * MIN, keep_s=60) == 2
    assert outbox.get(old) is None and outbox.get(gone) is None and outbox.get(live) is not None


def test_to_json(outbox: Outbox) -> None:
    mid = outbox.add(BOB, b"private words", now_ms=T0)
    outbox.add(CAROL, b"y", now_ms=T0 + 1)
    outbox.mark_delivered(mid, "dht", now_ms=T0 + 2)
    doc = json.loads(json.dumps(outbox.to_json()))
    assert [d["state"] for d in doc] == [DELIVERED, PENDING]
    assert doc[0]["message_id"] == mid.hex() and doc[0]["tier"] == "dht"
    assert doc[0]["payload_size"] == len(b"private words")
    assert "private words" not in json.dumps(doc)
    assert len(outbox.to_json([PENDING])) == 1
    with pytest.raises(ValueError):
        outbox.entries(["bogus"])


def test_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "junk.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        Outbox(bad)


def test_newer_schema_refused(db: Path) -> None:
    Outbox(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE tierlink_schema SET version=99 WHERE name='outbox'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="upgrade"):
        Outbox(db)


def test_delivered_log(db: Path) -> None:
    with DeliveredLog(db) as log:
        assert not log.seen(BOB, b"\x01" * 16)
        assert log.remember(BOB, b"\x01" * 16, expires_ms=T0 + MIN, now_ms=T0)
        assert not log.remember(BOB, b"\x01" * 16, expires_ms=T0 + MIN, now_ms=T0)
        assert log.seen(BOB, b"\x01" * 16)
        assert not log.seen(CAROL, b"\x01" * 16)  # ids are per sender
        log.remember(CAROL, b"\x02" * 16, expires_ms=T0 + 60 * MIN, now_ms=T0)
        assert len(log) == 2
    with DeliveredLog(db) as log, Outbox(db) as ob:  # same file, both tables
        assert log.seen(BOB, b"\x01" * 16)
        ob.add(BOB, b"x")
        # Pruning keeps a grace period after expiry (clock steps back).
        assert log.prune(now_ms=T0 + 2 * MIN, grace_s=3600) == 0
        assert log.prune(now_ms=T0 + 2 * MIN, grace_s=0) == 1
        assert not log.seen(BOB, b"\x01" * 16) and log.seen(CAROL, b"\x02" * 16)


def test_a_state_file_belongs_to_the_first_identity_that_claims_it(tmp_path: Path) -> None:
    """Another identity's node would send the messages waiting there under its own name."""
    db = tmp_path / "shared" / STORE_FILE
    mine, other = "ab" * 64, "cd" * 64
    claim_owner(db, mine)
    claim_owner(db, mine)  # its own again
    with pytest.raises(StoreError, match=r"holds the messages of another identity \(abab"):
        claim_owner(db, other)
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700


async def test_a_node_refuses_another_identitys_data_dir_before_joining_the_dht(
    tmp_path: Path,
) -> None:
    from tierlink.identity import Identity
    from tierlink.node import Node, NodeConfig

    first, second = Identity.generate(), Identity.generate()
    claim_owner(tmp_path / STORE_FILE, first.fingerprint)
    config = NodeConfig(identity=second, data_dir=tmp_path, dht_proxy="http://127.0.0.1:9/")
    with pytest.raises(StoreError, match="another identity"):
        await Node(config).start()  # no DHT is reached: the proxy address is a dead one
