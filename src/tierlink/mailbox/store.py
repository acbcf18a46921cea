"""Mailbox storage (SQLite, WAL, synchronous=FULL via :class:`~tierlink.offline.store.SqliteStore`).

:class:`MailboxStore` is the mailbox's side: registrations, deposited envelopes and the
receipts (acks, expiry notices) held for depositors. A deposit is committed before the
mailbox answers ``ok``, so a mailbox killed afterwards keeps it; a deposit repeated after a
lost answer is recognised by (depositor, message id) and not stored twice.
:class:`SenderStore` is a node's side: which mailboxes hold which of its messages, and the
descriptors it verified (so a sender finds mailboxes after the DHT forgot them).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import cbor2

from tierlink.offline.store import SqliteStore

_MAILBOX_DDL = (
    """CREATE TABLE mb_registration (
        recipient     TEXT PRIMARY KEY,
        descriptor    BLOB NOT NULL,
        allow         BLOB,
        registered_ms INTEGER NOT NULL,
        expires_ms    INTEGER NOT NULL
    )""",
    """CREATE TABLE mb_deposit (
        handle       INTEGER PRIMARY KEY AUTOINCREMENT,
        recipient    TEXT NOT NULL,
        depositor    TEXT NOT NULL,
        message_id   BLOB NOT NULL,
        envelope     BLOB NOT NULL,
        deposited_ms INTEGER NOT NULL,
        expires_ms   INTEGER NOT NULL,
        UNIQUE (depositor, message_id)
    )""",
    "CREATE INDEX mb_deposit_recipient ON mb_deposit (recipient, handle)",
    """CREATE TABLE mb_receipt (
        depositor  TEXT NOT NULL,
        message_id BLOB NOT NULL,
        ack        BLOB,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (depositor, message_id)
    ) WITHOUT ROWID""",
)


@dataclass(frozen=True)
class Deposit:
    """One envelope held for a recipient."""

    handle: int
    recipient: str
    depositor: str
    message_id: bytes
    envelope: bytes
    expires_ms: int


class MailboxStore(SqliteStore):
    """The mailbox's durable state; every mutating call is committed on return."""

    _NAME = "mailbox"
    _DDL = _MAILBOX_DDL

    def __enter__(self) -> MailboxStore:
        return self

    # -- registrations -------------------------------------------------------------------
    def register(self, recipient: str, descriptor: bytes, allow: set[str] | None,
                 now: int, expires: int) -> None:
        """Create or replace ``recipient``'s registration."""
        blob = None if allow is None else cbor2.dumps(sorted(allow))
        self.conn.execute("INSERT OR REPLACE INTO mb_registration VALUES (?, ?, ?, ?, ?)",
                          (recipient, descriptor, blob, now, expires))

    def revoke(self, recipient: str, now: int) -> int:
        """Drop a registration and every envelope held for it, leaving each depositor an
        undelivered notice (as on expiry), in one transaction; returns envelopes dropped."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("DELETE FROM mb_registration WHERE recipient=?", (recipient,))
            rows = self.conn.execute("DELETE FROM mb_deposit WHERE recipient=?"
                                     " RETURNING depositor, message_id", (recipient,)).fetchall()
            self.conn.executemany("INSERT OR REPLACE INTO mb_receipt VALUES (?, ?, NULL, ?)",
                                  [(r[0], r[1], now) for r in rows])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return len(rows)

    def registration(self, recipient: str, now: int) -> tuple[bool, set[str] | None]:
        """(registered and unexpired, its allow-list or None)."""
        row = self.conn.execute(
            "SELECT allow FROM mb_registration WHERE recipient=? AND expires_ms > ?",
            (recipient, now)).fetchone()
        if row is None:
            return False, None
        return True, None if row[0] is None else set(cbor2.loads(row[0]))

    def registrations(self, now: int) -> int:
        """Unexpired registrations."""
        row = self.conn.execute("SELECT count(*) FROM mb_registration WHERE expires_ms > ?",
                                (now,)).fetchone()
        return int(row[0])

    def descriptors(self, now: int) -> list[tuple[str, bytes]]:
        """(recipient, descriptor) of every unexpired registration."""
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT recipient, descriptor FROM mb_registration WHERE expires_ms > ?", (now,))]

    # -- deposits ------------------------------------------------------------------------
    def held_bytes(self, recipient: str | None = None, depositor: str | None = None) -> int:
        """Envelope bytes held: for every recipient, for ``recipient``, or for ``recipient``
        from ``depositor``."""
        sql, args = "SELECT coalesce(sum(length(envelope)), 0) FROM mb_deposit", []
        if recipient is not None:
            sql += " WHERE recipient=?"
            args.append(recipient)
            if depositor is not None:
                sql += " AND depositor=?"
                args.append(depositor)
        return int(self.conn.execute(sql, args).fetchone()[0])

    def add(self, recipient: str, depositor: str, message_id: bytes, envelope: bytes,
            now: int, expires: int) -> bool:
        """Store a deposit (durable on return); False if it was already held."""
        try:
            self.conn.execute(
                "INSERT INTO mb_deposit (recipient, depositor, message_id, envelope,"
                " deposited_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (recipient, depositor, message_id, envelope, now, expires))
        except sqlite3.IntegrityError:
            return False
        return True

    def has(self, depositor: str, message_id: bytes) -> bool:
        """Whether this deposit is held or was already settled (a receipt waits)."""
        for table in ("mb_deposit", "mb_receipt"):
            if self.conn.execute(f"SELECT 1 FROM {table} WHERE depositor=? AND message_id=?",
                                 (depositor, message_id)).fetchone():
                return True
        return False

    def held(self, recipient: str, after: int = 0, limit: int = 64) -> list[Deposit]:
        """Envelopes held for ``recipient`` with a handle above ``after``, oldest first."""
        rows = self.conn.execute(
            "SELECT handle, recipient, depositor, message_id, envelope, expires_ms"
            " FROM mb_deposit WHERE recipient=? AND handle > ? ORDER BY handle LIMIT ?",
            (recipient, after, limit)).fetchall()
        return [Deposit(*r) for r in rows]

    def take(self, recipient: str, handle: int, ack: bytes | None, now: int) -> bool:
        """The recipient took deposit ``handle``: delete it and hold ``ack`` (if any) for
        its depositor, in one transaction; False if no such deposit is held for it."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = self.conn.execute(
                "DELETE FROM mb_deposit WHERE handle=? AND recipient=?"
                " RETURNING depositor, message_id", (handle, recipient)).fetchone()
            if row is not None and ack is not None:
                self.conn.execute("INSERT OR REPLACE INTO mb_receipt VALUES (?, ?, ?, ?)",
                                  (row[0], row[1], ack, now))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return row is not None

    def expire(self, now: int) -> list[Deposit]:
        """Delete expired deposits, leaving an expiry receipt for each depositor."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            rows = self.conn.execute(
                "DELETE FROM mb_deposit WHERE expires_ms <= ? RETURNING handle, recipient,"
                " depositor, message_id, envelope, expires_ms", (now,)).fetchall()
            for r in rows:
                self.conn.execute("INSERT OR REPLACE INTO mb_receipt VALUES (?, ?, NULL, ?)",
                                  (r[2], r[3], now))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return [Deposit(*r) for r in rows]

    # -- receipts ------------------------------------------------------------------------
    def receipts(self, depositor: str, limit: int) -> list[tuple[bytes, bytes | None]]:
        """(message id, ack or None for expired) held for ``depositor``."""
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT message_id, ack FROM mb_receipt WHERE depositor=? LIMIT ?",
            (depositor, limit))]

    def forget_receipts(self, depositor: str, ids: list[bytes]) -> None:
        """The depositor has its receipts: drop them."""
        self.conn.executemany("DELETE FROM mb_receipt WHERE depositor=? AND message_id=?",
                              [(depositor, m) for m in ids])

    def status(self) -> list[dict[str, object]]:
        """Per registered recipient: messages and bytes held (``tierlink mailbox status``)."""
        rows = self.conn.execute(
            "SELECT r.recipient, r.expires_ms, r.allow IS NOT NULL, count(d.handle),"
            " coalesce(sum(length(d.envelope)), 0) FROM mb_registration r"
            " LEFT JOIN mb_deposit d ON d.recipient = r.recipient GROUP BY r.recipient"
            " ORDER BY r.recipient").fetchall()
        return [{"recipient": r[0], "expires_ms": r[1], "allow_list": bool(r[2]),
                 "messages": r[3], "bytes": r[4]} for r in rows]


_SENDER_DDL = (
    """CREATE TABLE mb_sent (
        message_id BLOB NOT NULL,
        mailbox    TEXT NOT NULL,
        recipient  TEXT NOT NULL,
        PRIMARY KEY (message_id, mailbox)
    ) WITHOUT ROWID""",
    """CREATE TABLE mb_descriptor (
        recipient  TEXT PRIMARY KEY,
        descriptor BLOB NOT NULL,
        expires_ms INTEGER NOT NULL
    )""",
)


class SenderStore(SqliteStore):
    """A node's record of its deposits and of the descriptors it verified."""

    _NAME = "mailbox_sender"
    _DDL = _SENDER_DDL

    def __enter__(self) -> SenderStore:
        return self

    def deposited(self, message_id: bytes, mailbox: str, recipient: str) -> None:
        """``mailbox`` holds ``message_id`` for ``recipient``."""
        self.conn.execute("INSERT OR IGNORE INTO mb_sent VALUES (?, ?, ?)",
                          (message_id, mailbox, recipient))

    def mailboxes_of(self, message_id: bytes) -> list[str]:
        """The mailboxes holding ``message_id``."""
        return [r[0] for r in self.conn.execute(
            "SELECT mailbox FROM mb_sent WHERE message_id=?", (message_id,))]

    def holding(self) -> dict[str, dict[bytes, str]]:
        """Per mailbox, the message ids it holds for us and their recipients."""
        out: dict[str, dict[bytes, str]] = {}
        rows = self.conn.execute("SELECT message_id, mailbox, recipient FROM mb_sent")
        for mid, box, who in rows:
            out.setdefault(box, {})[mid] = who
        return out

    def settled(self, message_id: bytes, mailbox: str) -> None:
        """Forget the deposit of ``message_id`` with ``mailbox``."""
        self.conn.execute("DELETE FROM mb_sent WHERE message_id=? AND mailbox=?",
                          (message_id, mailbox))

    def cache_descriptor(self, recipient: str, value: bytes, expires: int) -> None:
        """Keep a verified descriptor."""
        self.conn.execute("INSERT OR REPLACE INTO mb_descriptor VALUES (?, ?, ?)",
                          (recipient, value, expires))

    def cached_descriptor(self, recipient: str, now: int) -> bytes | None:
        """The cached descriptor of ``recipient`` if unexpired."""
        row = self.conn.execute(
            "SELECT descriptor FROM mb_descriptor WHERE recipient=? AND expires_ms > ?",
            (recipient, now)).fetchone()
        return None if row is None else bytes(row[0])
