"""The callee's durable list of answered offer sessions, so a restart forgets none of them.

An offer stays valid for up to 600 s and stays in the DHT for 10 minutes, and a node's
listen on its offers key hands over every stored offer when it starts. An in-memory replay
cache therefore forgets, at each restart, the sessions it answered: the same offer value
(the node's own old offers, or one an attacker captured and puts again) would be answered a
second time, and the node would send ICE checks to the real dialer's addresses.

Why a durable list and not a start-time floor (refusing offers created before the node
started): a floor would also refuse the genuine offers made just before or while the node
starts, which are exactly the dials a restart should still complete (the listen hands them
over at start), and it would trust the dialer's clock. A list refuses exactly what was
answered: after a restart every session answered in the last 600 s is refused as
``replay`` (counted) whatever its times say, and every offer never answered is answered
once. Each accepted session is committed (one fsync) before its answer is built, so a crash
in between costs that one dial an answer and never yields a second one. The list lives in
the node's state file (``tierlink.db`` in :meth:`NodeConfig.state_dir`); wiping that
directory, or running one identity from two state directories, reopens the window.
"""

from __future__ import annotations

import sqlite3

from tierlink.offline.store import SqliteStore, StoreError

_DDL = (
    """CREATE TABLE answered_offers (
        session_id BLOB PRIMARY KEY,
        expires_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX answered_offers_expiry ON answered_offers (expires_ms)",
)


class AnsweredSessions(SqliteStore):
    """Session ids of accepted offers with their expiry on the receiver's clock."""

    _NAME = "answered_offers"
    _DDL = _DDL

    def load(self, now_ms: int, limit: int) -> list[tuple[bytes, int]]:
        """Forget expired sessions; the ``limit`` latest-expiring others as (id, expiry)."""
        try:
            self.conn.execute("DELETE FROM answered_offers WHERE expires_ms < ?", (now_ms,))
            rows = self.conn.execute(
                "SELECT session_id, expires_ms FROM answered_offers "
                "ORDER BY expires_ms DESC LIMIT ?", (limit,),
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read answered offers from {self.path}: {exc}") from None
        return [(bytes(sid), int(exp)) for sid, exp in rows]

    def remember(
        self, session_id: bytes, expires_ms: int, now_ms: int, dropped: list[bytes]
    ) -> None:
        """Commit one accepted session, forgetting the expired and the ``dropped`` ones, in one
        transaction (one fsync)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute("DELETE FROM answered_offers WHERE expires_ms < ?", (now_ms,))
                self.conn.executemany(
                    "DELETE FROM answered_offers WHERE session_id = ?", [(d,) for d in dropped]
                )
                self.conn.execute(
                    "INSERT OR REPLACE INTO answered_offers VALUES (?, ?)",
                    (bytes(session_id), expires_ms),
                )
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record an answered offer in {self.path}: {exc}") from None
