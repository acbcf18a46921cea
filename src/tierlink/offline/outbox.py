"""The sender's outbox: every outgoing message and its delivery state, durable.

A message is committed here before ``send`` returns and stays until an acknowledgement (or
its TTL) settles it; storage and its durability: :mod:`tierlink.offline.store`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tierlink.errors import MessageTooLarge, TierlinkError
from tierlink.identity import is_fingerprint
from tierlink.offline.store import SqliteStore
from tierlink.wire.envelope import (
    DEFAULT_TTL_S,
    MAX_PAYLOAD,
    MAX_TTL_S,
    MESSAGE_ID_SIZE,
    new_message_id,
)
from tierlink.wire.records import now_ms as _now_ms

PENDING = "pending"
QUEUED_DHT = "queued_dht"
IN_MAILBOX = "in_mailbox"
DELIVERED = "delivered"
EXPIRED = "expired"
STATES = (PENDING, QUEUED_DHT, IN_MAILBOX, DELIVERED, EXPIRED)
UNDELIVERED = (PENDING, QUEUED_DHT, IN_MAILBOX)
QUEUED = (QUEUED_DHT, IN_MAILBOX)
"""States whose envelope is in the DHT (and, for ``in_mailbox``, held by a mailbox too)."""

REPUT_INTERVAL_S = 300.0
"""Re-put a queued envelope this often: OpenDHT drops values 10 minutes after a put."""


#: Shortest message id prefix :meth:`Outbox.remove` takes (hex digits).
MIN_ID_PREFIX = 8


class OutboxError(TierlinkError):
    """An outbox entry asked for by id cannot be had: ``reason`` is ``bad_id``, ``unknown``,
    ``ambiguous`` or ``settled`` (delivered or expired)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_OUTBOX_DDL = (
    """CREATE TABLE outbox (
        message_id   BLOB PRIMARY KEY CHECK (length(message_id) = 16),
        recipient    TEXT NOT NULL,
        payload      BLOB NOT NULL,
        created_ms   INTEGER NOT NULL,
        expires_ms   INTEGER NOT NULL,
        state        TEXT NOT NULL
                     CHECK (state IN ('pending', 'queued_dht', 'in_mailbox', 'delivered',
                                      'expired')),
        tier         TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_put_ms  INTEGER,
        envelope     BLOB,
        delivered_ms INTEGER
    )""",
    "CREATE INDEX outbox_state ON outbox (state, expires_ms)",
    "CREATE INDEX outbox_recipient ON outbox (recipient, created_ms)",
)
_COLUMNS = (
    "message_id, recipient, payload, created_ms, expires_ms, state, tier, attempts, "
    "last_put_ms, envelope, delivered_ms"
)


@dataclass(frozen=True)
class OutboxEntry:
    """One outgoing message as stored."""

    message_id: bytes
    recipient: str
    payload: bytes
    created_ms: int
    expires_ms: int
    state: str
    tier: str | None
    attempts: int
    last_put_ms: int | None
    envelope: bytes | None
    delivered_ms: int | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary for ``tierlink outbox --json`` (no payload content)."""
        return {
            "message_id": self.message_id.hex(),
            "recipient": self.recipient,
            "state": self.state,
            "tier": self.tier,
            "payload_size": len(self.payload),
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "attempts": self.attempts,
            "last_put_ms": self.last_put_ms,
            "delivered_ms": self.delivered_ms,
        }


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    return OutboxEntry(*row)


class Outbox(SqliteStore):
    """Outgoing messages and their delivery state; see the module docstring.

    States: ``pending`` (accepted, not yet in the DHT) → ``queued_dht`` (an envelope was
    put; re-put every :data:`REPUT_INTERVAL_S`) → ``in_mailbox`` (a mailbox of the recipient
    holds it durably too; still re-put) → ``delivered`` (by some tier: an ack, or a
    direct connection) or ``expired`` (its TTL passed undelivered). Times are Unix ms.
    """

    _NAME = "outbox"
    _DDL = _OUTBOX_DDL

    def __init__(self, path: str | os.PathLike[str], synchronous: str = "FULL") -> None:
        super().__init__(path, synchronous)
        self._allow_in_mailbox()

    def _allow_in_mailbox(self) -> None:
        """Widen an older file's state CHECK to admit ``in_mailbox`` (rebuilds the table)."""
        row = self.conn.execute(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name='outbox'").fetchone()
        if row is None or IN_MAILBOX in row[0]:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("ALTER TABLE outbox RENAME TO outbox_old")
            self.conn.execute("DROP INDEX outbox_state")
            self.conn.execute("DROP INDEX outbox_recipient")
            for stmt in _OUTBOX_DDL:
                self.conn.execute(stmt)
            self.conn.execute(f"INSERT INTO outbox ({_COLUMNS}) SELECT {_COLUMNS} FROM outbox_old")
            self.conn.execute("DROP TABLE outbox_old")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def __enter__(self) -> Outbox:
        return self

    def add(
        self,
        recipient: str,
        payload: bytes,
        ttl_s: float = DEFAULT_TTL_S,
        message_id: bytes | None = None,
        now_ms: int | None = None,
    ) -> bytes:
        """Store a new pending message durably (committed on return); returns its id.

        Raises MessageTooLarge above the envelope limit (the DHT tier must be able to carry
        every queued message), ValueError on a bad recipient, TTL or duplicate id.
        """
        if not is_fingerprint(recipient):
            raise ValueError(f"not a fingerprint: {recipient!r}")
        if len(payload) > MAX_PAYLOAD:
            raise MessageTooLarge(
                f"offline message of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit"
            )
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"ttl_s must be in (0, {MAX_TTL_S:.0f}] seconds, got {ttl_s}")
        mid = new_message_id() if message_id is None else bytes(message_id)
        if len(mid) != MESSAGE_ID_SIZE:
            raise ValueError(f"message id must be {MESSAGE_ID_SIZE} bytes")
        t = _now_ms() if now_ms is None else now_ms
        try:
            self.conn.execute(
                "INSERT INTO outbox (message_id, recipient, payload, created_ms, expires_ms,"
                " state) VALUES (?, ?, ?, ?, ?, ?)",
                (mid, recipient, bytes(payload), t, t + int(ttl_s * 1000), PENDING),
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"message id {mid.hex()} is already in the outbox") from None
        return mid

    def get(self, message_id: bytes) -> OutboxEntry | None:
        """The entry for ``message_id``, or None."""
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE message_id=?", (bytes(message_id),)
        ).fetchone()
        return None if row is None else _entry(row)

    def find(self, id_prefix: str) -> OutboxEntry:
        """The one entry whose hex message id starts with ``id_prefix`` (at least
        :data:`MIN_ID_PREFIX` hex digits, as ``tierlink outbox`` shows them)."""
        prefix = id_prefix.lower()
        if (not MIN_ID_PREFIX <= len(prefix) <= 2 * MESSAGE_ID_SIZE
                or any(c not in "0123456789abcdef" for c in prefix)):
            raise OutboxError("bad_id", f"a message id is {MIN_ID_PREFIX} to "
                                        f"{2 * MESSAGE_ID_SIZE} hex digits, not {id_prefix!r}")
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE substr(lower(hex(message_id)), 1, ?) = ?"
            " LIMIT 2", (len(prefix), prefix)).fetchall()
        if not rows:
            raise OutboxError("unknown", f"no message {prefix} in the outbox")
        if len(rows) > 1:
            raise OutboxError("ambiguous", f"more than one message id starts with {prefix}: "
                                           "give more of it")
        return _entry(rows[0])

    def remove(self, id_prefix: str) -> OutboxEntry:
        """Delete the undelivered message :meth:`find` names, so no tier sends it (again);
        returns it as it was. :class:`OutboxError` ``settled`` for a delivered or expired
        one (it stays, as the record of what happened)."""
        entry = self.find(id_prefix)
        cur = self.conn.execute(
            "DELETE FROM outbox WHERE message_id=? AND state IN (?, ?, ?)",
            (entry.message_id, *UNDELIVERED))
        if cur.rowcount == 0:  # settled meanwhile, or before
            now = self.get(entry.message_id)
            state = now.state if now is not None else "removed"
            raise OutboxError("settled", f"message {entry.message_id.hex()} is {state}: "
                                         "only an undelivered message can be removed")
        return entry

    def pending(self, recipient: str | None = None, now_ms: int | None = None) -> list[OutboxEntry]:
        """Undelivered, unexpired messages (pending or queued_dht), oldest first."""
        t = _now_ms() if now_ms is None else now_ms
        sql = f"SELECT {_COLUMNS} FROM outbox WHERE state IN (?, ?, ?) AND expires_ms > ?"
        args: list[Any] = [*UNDELIVERED, t]
        if recipient is not None:
            sql += " AND recipient=?"
            args.append(recipient)
        rows = self.conn.execute(sql + " ORDER BY created_ms, rowid", args).fetchall()
        return [_entry(r) for r in rows]

    def recipients(self, now_ms: int | None = None, limit: int | None = None) -> list[str]:
        """Recipients with undelivered, unexpired messages, the longest waiting first."""
        t = _now_ms() if now_ms is None else now_ms
        rows = self.conn.execute(
            "SELECT recipient FROM outbox WHERE state IN (?, ?, ?) AND expires_ms > ?"
            " GROUP BY recipient ORDER BY min(created_ms), recipient LIMIT ?",
            (*UNDELIVERED, t, -1 if limit is None else limit),
        ).fetchall()
        return [r[0] for r in rows]

    def mark_queued(self, message_id: bytes, envelope: bytes, now_ms: int | None = None) -> bool:
        """Record a DHT put of ``envelope``: state queued_dht, attempts+1, last_put = now.

        The first call stores the envelope; later calls (re-puts) must pass the same bytes
        so every put is the same signed value (ValueError otherwise). Returns False (and
        changes nothing) if the message is unknown, delivered or expired.
        """
        t = _now_ms() if now_ms is None else now_ms
        mid, env = bytes(message_id), bytes(envelope)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            row = self.conn.execute(
                "SELECT state, envelope FROM outbox WHERE message_id=?", (mid,)
            ).fetchone()
            if row is None or row[0] not in UNDELIVERED:
                self.conn.execute("COMMIT")
                return False
            if row[1] is not None and row[1] != env:
                raise ValueError("a re-put must reuse the stored envelope of this message")
            self.conn.execute(
                "UPDATE outbox SET state=?, envelope=?, attempts=attempts+1, last_put_ms=?"
                " WHERE message_id=?",
                (IN_MAILBOX if row[0] == IN_MAILBOX else QUEUED_DHT, env, t, mid),
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return True

    def mark_delivered(self, message_id: bytes, tier: str, now_ms: int | None = None) -> bool:
        """Record delivery by ``tier`` (e.g. "direct", "relay", "offline"); True if it changed.

        Idempotent: a second call keeps the first tier. A late ack after expiry still
        marks the message delivered (it did arrive).
        """
        t = _now_ms() if now_ms is None else now_ms
        cur = self.conn.execute(
            "UPDATE outbox SET state=?, tier=?, delivered_ms=? WHERE message_id=? AND state!=?",
            (DELIVERED, tier, t, bytes(message_id), DELIVERED),
        )
        return cur.rowcount > 0

    def mark_in_mailbox(self, message_id: bytes) -> bool:
        """A mailbox holds the (already queued) envelope durably; True if the state changed."""
        cur = self.conn.execute("UPDATE outbox SET state=? WHERE message_id=? AND state=?",
                                (IN_MAILBOX, bytes(message_id), QUEUED_DHT))
        return cur.rowcount > 0

    def mark_expired(self, message_id: bytes) -> bool:
        """A mailbox reported the message expired undelivered; True if the state changed."""
        cur = self.conn.execute(
            "UPDATE outbox SET state=? WHERE message_id=? AND state IN (?, ?, ?)",
            (EXPIRED, bytes(message_id), *UNDELIVERED))
        return cur.rowcount > 0

    def due_for_reput(
        self, now_ms: int | None = None, interval_s: float = REPUT_INTERVAL_S
    ) -> list[OutboxEntry]:
        """Queued, unexpired messages whose last put is at least ``interval_s`` old."""
        t = _now_ms() if now_ms is None else now_ms
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE state IN (?, ?) AND expires_ms > ?"
            " AND last_put_ms <= ? ORDER BY last_put_ms, rowid",
            (*QUEUED, t, t - int(interval_s * 1000)),
        ).fetchall()
        return [_entry(r) for r in rows]

    def expire(self, now_ms: int | None = None) -> list[bytes]:
        """Mark undelivered messages past their expiry as expired; returns their ids."""
        t = _now_ms() if now_ms is None else now_ms
        rows = self.conn.execute(
            "UPDATE outbox SET state=? WHERE state IN (?, ?, ?) AND expires_ms <= ?"
            " RETURNING message_id",
            (EXPIRED, *UNDELIVERED, t),
        ).fetchall()
        return [r[0] for r in rows]

    def prune(self, now_ms: int | None = None, keep_s: float = DEFAULT_TTL_S) -> int:
        """Delete delivered or expired entries older than ``keep_s``; returns the count."""
        cutoff = (_now_ms() if now_ms is None else now_ms) - int(keep_s * 1000)
        cur = self.conn.execute(
            "DELETE FROM outbox WHERE (state=? AND delivered_ms < ?)"
            " OR (state=? AND expires_ms < ?)",
            (DELIVERED, cutoff, EXPIRED, cutoff),
        )
        return cur.rowcount

    def entries(self, states: Iterable[str] | None = None) -> list[OutboxEntry]:
        """Every entry (optionally only in ``states``), oldest first."""
        wanted = tuple(STATES if states is None else states)
        if any(s not in STATES for s in wanted):
            raise ValueError(f"unknown state in {wanted}; states are {STATES}")
        marks = ", ".join("?" * len(wanted))
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE state IN ({marks}) ORDER BY created_ms, rowid",
            wanted,
        ).fetchall()
        return [_entry(r) for r in rows]

    def to_json(self, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """What ``tierlink outbox --json`` prints: one summary object per entry."""
        return [e.to_json() for e in self.entries(states)]
