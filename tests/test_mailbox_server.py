"""The mailbox service's policy as an attacker meets it: strangers, Sybils, quotas, replays,
forged registrations, expiry on an injected clock, and a restart that keeps everything."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tierlink.errors import ConnectionClosed, RecordError
from tierlink.identity import Identity
from tierlink.mailbox import (
    MailboxServer,
    MailboxSettings,
    MailboxStore,
    SenderStore,
    create_descriptor,
)
from tierlink.mailbox.codec import (
    COLLECT,
    RECEIPTS_REQ,
    REVOKE,
    TAKEN,
    Frame,
    decode_frame,
    deposit_frame,
    encode_frame,
    open_descriptor,
    read_dropped,
    read_receipts,
    read_result,
    register_frame,
)
from tierlink.offline import Outbox, create_envelope
from tierlink.offline.outbox import IN_MAILBOX
from tierlink.wire.ack import create_ack

T0 = 1_900_000_000_000


class FakeConn:
    """A secure connection's interface: frames in, frames out, the authenticated peer."""

    def __init__(self, remote: str, frames: list[bytes]) -> None:
        self.remote_fingerprint = remote
        self.closed = False
        self.sent: list[bytes] = []
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        for f in frames:
            self.incoming.put_nowait(f)

    async def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    async def recv(self, timeout: float | None = None) -> bytes | None:
        data = await self.incoming.get()
        if data is None:
            raise ConnectionClosed("closed")
        return data

    async def close(self) -> None:
        self.closed = True


class NullDht:
    async def put(self, key: str, value: bytes) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def server_at(tmp_path: Path, clock: Clock, **kw: Any) -> tuple[MailboxServer, Identity]:
    me = Identity.generate()
    settings = MailboxSettings(clock=clock, **kw)
    return MailboxServer(NullDht(), me.fingerprint, MailboxStore(tmp_path / "mb.db"),
                         settings), me


async def ask(server: MailboxServer, who: Identity, *frames: bytes) -> list[Frame]:
    """Serve one connection from ``who`` carrying ``frames``; its replies, decoded."""
    conn = FakeConn(who.fingerprint, [*frames, None])  # type: ignore[list-item]
    await server.handle(conn)  # type: ignore[arg-type]
    return [decode_frame(d) for d in conn.sent]


def envelope(sender: Identity, to: Identity, size: int = 100, ttl_s: float = 3600) -> tuple[
        bytes, bytes]:
    return create_envelope(sender, to.fingerprint, to.kem_public_key, b"x" * size, ttl_s,
                           created_at_ms=T0)


async def register(server: MailboxServer, box: Identity, who: Identity,
                   allow: set[str] | None = None) -> tuple[bool, str]:
    desc = create_descriptor(who, [box.fingerprint], 7 * 86400, now=T0)
    (reply,) = await ask(server, who, register_frame(desc, allow))
    return read_result(reply)


async def deposit(server: MailboxServer, sender: Identity, to: Identity, value: bytes,
                  mid: bytes) -> tuple[bool, str]:
    (reply,) = await ask(server, sender, deposit_frame(to.fingerprint, mid, value))
    return read_result(reply)


async def test_stranger_deposit_for_an_unregistered_recipient_is_refused(
    tmp_path: Path, clock: Clock
) -> None:
    server, box = server_at(tmp_path, clock)
    a, b, c = (Identity.generate() for _ in range(3))
    assert await register(server, box, b) == (True, "")
    value, mid = envelope(a, c)
    assert await deposit(server, a, c, value, mid) == (False, "not-registered")
    value, mid = envelope(a, b)
    assert await deposit(server, a, b, value, mid) == (True, "")
    assert server.refusals == {"not-registered": 1} and server.deposits == 1


async def test_allow_list_keeps_strangers_and_sybils_out(tmp_path: Path, clock: Clock) -> None:
    server, box = server_at(tmp_path, clock, recipient_quota=10_000, per_sender_quota=10_000)
    a, b = Identity.generate(), Identity.generate()
    assert await register(server, box, b, allow={a.fingerprint}) == (True, "")
    for _ in range(3):  # fresh identities, each within the per-sender quota
        sybil = Identity.generate()
        value, mid = envelope(sybil, b)
        assert await deposit(server, sybil, b, value, mid) == (False, "not-allowed")
    value, mid = envelope(a, b)
    assert await deposit(server, a, b, value, mid) == (True, "")
    (row,) = server.store.status()
    assert row["messages"] == 1 and row["allow_list"]


async def test_quotas_refuse_clearly(tmp_path: Path, clock: Clock) -> None:
    a, b, c, d = (Identity.generate() for _ in range(4))
    size = len(envelope(a, b)[0])
    server, box = server_at(tmp_path, clock, per_sender_quota=size + 10,
                            recipient_quota=2 * size + 10)
    await register(server, box, b)
    results = []
    for sender in (a, a, c, d):
        value, mid = envelope(sender, b)
        results.append(await deposit(server, sender, b, value, mid))
    assert results == [(True, ""), (False, "sender-quota"), (True, ""), (False, "quota")]
    assert server.refusals == {"sender-quota": 1, "quota": 1}


async def test_sybil_recipients_cannot_fill_an_open_mailbox_past_its_total_quota(
    tmp_path: Path, clock: Clock
) -> None:
    """Anyone may register with an open mailbox, each registration with its own
    per-recipient quota: the total quota bounds the disk however many register."""
    a = Identity.generate()
    size = len(envelope(a, a)[0])
    server, box = server_at(tmp_path, clock, total_quota=2 * size + 10,
                            recipient_quota=10 * size, per_sender_quota=10 * size)
    sybils = [Identity.generate() for _ in range(3)]
    results = []
    for who in sybils:
        assert await register(server, box, who) == (True, "")
        value, mid = envelope(who, who)  # each fills its own registration
        results.append(await deposit(server, who, who, value, mid))
    assert results == [(True, ""), (True, ""), (False, "full")]
    assert server.refusals == {"full": 1} and server.store.held_bytes() == 2 * size
    value, mid = envelope(a, sybils[2])
    assert await deposit(server, a, sybils[2], value, mid) == (False, "full")
    (held,) = server.store.held(sybils[0].fingerprint)  # one is collected: room again
    await ask(server, sybils[0], encode_frame(TAKEN, {1: held.handle}))
    assert await deposit(server, a, sybils[2], value, mid) == (True, "")


async def test_a_deposit_repeated_after_a_lost_answer_is_stored_once(
    tmp_path: Path, clock: Clock
) -> None:
    server, box = server_at(tmp_path, clock)
    a, b = Identity.generate(), Identity.generate()
    await register(server, box, b)
    value, mid = envelope(a, b)
    assert await deposit(server, a, b, value, mid) == (True, "")
    assert await deposit(server, a, b, value, mid) == (True, "duplicate")
    assert server.deposits == 1 and server.store.status()[0]["messages"] == 1
    assert server.duplicates == 1


async def test_forged_and_foreign_registrations_are_refused(tmp_path: Path, clock: Clock) -> None:
    server, box = server_at(tmp_path, clock)
    b, x = Identity.generate(), Identity.generate()
    b_desc = create_descriptor(b, [box.fingerprint], 86400, now=T0)
    # X replays B's descriptor to take over B's mailbox (and its allow-list).
    (reply,) = await ask(server, x, register_frame(b_desc, {x.fingerprint}))
    assert read_result(reply) == (False, "fingerprint")
    # A descriptor with its signature broken.
    forged = b_desc[:-1] + bytes([b_desc[-1] ^ 1])
    (reply,) = await ask(server, b, register_frame(forged, None))
    assert read_result(reply) == (False, "signature")
    # A descriptor that does not name this mailbox.
    other = create_descriptor(b, [x.fingerprint], 86400, now=T0)
    (reply,) = await ask(server, b, register_frame(other, None))
    assert read_result(reply) == (False, "not-named")
    assert server.store.status() == []
    # Collecting without a registration gets nothing.
    (reply,) = await ask(server, b, encode_frame(COLLECT))
    assert read_result(reply) == (False, "not-registered")


def test_descriptor_checks() -> None:
    b, box = Identity.generate(), Identity.generate()
    value = create_descriptor(b, [box.fingerprint], 86400, now=T0)
    desc = open_descriptor(value, owner=b.fingerprint, now=T0 + 1000)
    assert desc.mailboxes == (box.fingerprint,) and desc.kem_public_key == b.kem_public_key
    for bad, reason, kw in (
        (value, "expired", {"now": T0 + 86400_000}),
        (value, "fingerprint", {"owner": box.fingerprint, "now": T0}),
        (value[:-1] + bytes([value[-1] ^ 1]), "signature", {"now": T0}),
        (bytes([1, 5]) + value[2:], "kind", {"now": T0}),
    ):
        with pytest.raises(RecordError) as err:
            open_descriptor(bad, **kw)
        assert err.value.reason == reason


async def test_expired_envelope_is_deleted_and_reported_to_its_depositor(
    tmp_path: Path, clock: Clock
) -> None:
    server, box = server_at(tmp_path, clock, retention_s=60)
    a, b = Identity.generate(), Identity.generate()
    await register(server, box, b)
    value, mid = envelope(a, b, ttl_s=3600)
    assert await deposit(server, a, b, value, mid) == (True, "")
    assert server.expire_now() == 0
    clock.now += 61_000  # past the retention (the envelope itself lives an hour)
    assert server.expire_now() == 1
    assert server.store.status()[0]["messages"] == 0
    (reply,) = await ask(server, a, encode_frame(RECEIPTS_REQ))
    assert read_receipts(reply) == [(mid, None)]
    (reply,) = await ask(server, b, encode_frame(RECEIPTS_REQ))  # only the depositor's own
    assert read_receipts(reply) == []


async def test_restart_keeps_registrations_deposits_and_receipts(
    tmp_path: Path, clock: Clock
) -> None:
    server, box = server_at(tmp_path, clock)
    a, b = Identity.generate(), Identity.generate()
    await register(server, box, b, allow={a.fingerprint})
    values = [envelope(a, b) for _ in range(2)]
    for value, mid in values:
        await deposit(server, a, b, value, mid)
    held = server.store.held(b.fingerprint)
    ack = create_ack(bytes(32), [values[0][1]])
    assert await ask(server, b, encode_frame(TAKEN, {1: held[0].handle, 2: ack})) == []
    server.store.close()

    again = MailboxServer(NullDht(), box.fingerprint, MailboxStore(tmp_path / "mb.db"),
                          MailboxSettings(clock=clock))
    (row,) = again.store.status()
    assert (row["recipient"], row["messages"], row["allow_list"]) == (b.fingerprint, 1, True)
    assert [d.envelope for d in again.store.held(b.fingerprint)] == [values[1][0]]
    (reply,) = await ask(again, a, encode_frame(RECEIPTS_REQ))
    assert read_receipts(reply) == [(values[0][1], ack)]
    stranger = Identity.generate()
    value, mid = envelope(stranger, b)
    assert await deposit(again, stranger, b, value, mid) == (False, "not-allowed")


def test_an_older_outbox_file_accepts_the_in_mailbox_state(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with Outbox(path) as box:
        mid = box.add(Identity.generate().fingerprint, b"hi")
        box.mark_queued(mid, b"envelope")
    conn = sqlite3.connect(path)  # the table as files before the mailbox state have it
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='outbox'").fetchone()[0]
    conn.executescript(
        "ALTER TABLE outbox RENAME TO o; DROP INDEX outbox_state; DROP INDEX outbox_recipient;"
        + sql.replace("'in_mailbox', ", "") + "; INSERT INTO outbox SELECT * FROM o;"
        "DROP TABLE o; CREATE INDEX outbox_state ON outbox (state, expires_ms);"
        "CREATE INDEX outbox_recipient ON outbox (recipient, created_ms);")
    conn.close()
    with Outbox(path) as box:
        assert box.mark_in_mailbox(mid)
        entry = box.get(mid)
        assert entry is not None and entry.state == IN_MAILBOX and entry.envelope == b"envelope"


def test_another_process_reading_the_file_loses_none_of_our_writes(tmp_path: Path) -> None:
    """A node holds several connections to its file (outbox, delivered log, mailbox deposits)
    while ``tierlink outbox`` reads it from another process: our writes must stay visible."""
    path = tmp_path / "tierlink.db"
    peek = [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "print(c.execute('SELECT state FROM outbox').fetchall()[0][0]); c.close()", path]
    with Outbox(path) as box, SenderStore(path) as sent:
        mid = box.add(Identity.generate().fingerprint, b"hi")
        assert subprocess.run(peek, capture_output=True, text=True).stdout.strip() == "pending"
        box.mark_delivered(mid, "mailbox")
        sent.deposited(mid, "m" * 128, "r" * 128)
        assert subprocess.run(peek, capture_output=True, text=True).stdout.strip() == "delivered"
    with Outbox(path) as box:
        entry = box.get(mid)
        assert entry is not None and entry.state == "delivered"


async def test_a_recipient_revokes_its_registration(tmp_path: Path, clock: Clock) -> None:
    server, box = server_at(tmp_path, clock)
    a, b = Identity.generate(), Identity.generate()
    await register(server, box, b)
    value, mid = envelope(a, b)
    await deposit(server, a, b, value, mid)
    (reply,) = await ask(server, a, encode_frame(REVOKE))  # A has no registration to drop
    assert read_result(reply) == (True, "") and server.store.status()[0]["messages"] == 1
    (reply,) = await ask(server, b, encode_frame(REVOKE))
    assert read_result(reply) == (True, "") and read_dropped(reply) == 1
    assert server.store.status() == []
    (reply,) = await ask(server, a, encode_frame(RECEIPTS_REQ))  # A is told: not delivered
    assert read_receipts(reply) == [(mid, None)]
    value, mid = envelope(a, b)
    assert await deposit(server, a, b, value, mid) == (False, "not-registered")


async def test_a_mailbox_serving_named_recipients_refuses_others(
    tmp_path: Path, clock: Clock
) -> None:
    b, x = Identity.generate(), Identity.generate()
    server, box = server_at(tmp_path, clock, recipients=frozenset({b.fingerprint}))
    assert await register(server, box, x) == (False, "not-served")
    assert await register(server, box, b) == (True, "")


async def test_a_deposit_that_is_not_an_envelope_is_refused(tmp_path: Path, clock: Clock) -> None:
    server, box = server_at(tmp_path, clock)
    a, b = Identity.generate(), Identity.generate()
    await register(server, box, b)
    value, mid = envelope(a, b)
    record_kind = bytes([1, 1]) + value[2:]
    assert await deposit(server, a, b, record_kind, mid) == (False, "kind")
    assert await deposit(server, a, b, value[:100], mid) == (False, "malformed")
    assert server.store.status()[0]["messages"] == 0


async def test_an_open_mailbox_takes_at_most_max_registrations_and_renews_the_registered(
    tmp_path: Path, clock: Clock
) -> None:
    """Fresh identities cannot make an open mailbox re-put descriptors without bound: past
    ``max_registrations`` a new recipient is refused, a registered one still renews, and a
    revoked place is free again."""
    a, b, c = (Identity.generate() for _ in range(3))
    server, box = server_at(tmp_path, clock, max_registrations=2)
    assert await register(server, box, a) == (True, "")
    assert await register(server, box, b) == (True, "")
    assert await register(server, box, c) == (False, "registrations-full")
    assert await register(server, box, a) == (True, "")  # a renewal, not a new place
    assert [r["recipient"] for r in server.store.status()] == sorted(
        [a.fingerprint, b.fingerprint])
    (reply,) = await ask(server, b, encode_frame(REVOKE))
    assert read_result(reply) == (True, "")
    assert await register(server, box, c) == (True, "")


def test_max_registrations_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_registrations"):
        MailboxSettings(max_registrations=0)
