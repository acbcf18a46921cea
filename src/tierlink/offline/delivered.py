"""The receiver's delivered log: (sender, message id) pairs already handed to the application,
so a message re-sent after a lost acknowledgement (by any tier) is delivered once."""

from __future__ import annotations

from tierlink.offline.store import SqliteStore
from tierlink.wire.records import now_ms as _now_ms

_DELIVERED_DDL = (
    """CREATE TABLE delivered (
        sender       TEXT NOT NULL,
        message_id   BLOB NOT NULL,
        expires_ms   INTEGER NOT NULL,
        delivered_ms INTEGER NOT NULL,
        PRIMARY KEY (sender, message_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX delivered_expiry ON delivered (expires_ms)",
)

PRUNE_GRACE_S = 24 * 3600.0
"""Keep ids this long past their envelope's expiry, in case the clock steps back."""


class DeliveredLog(SqliteStore):
    """Receiver side: (sender, message id) pairs already handed to the application.

    A re-sent envelope (the sender missed our ack) is acked again but not delivered twice.
    An id must be remembered until its envelope expires: after that :func:`open_envelope`
    rejects the envelope itself, so :meth:`prune` may forget it.
    """

    _NAME = "delivered"
    _DDL = _DELIVERED_DDL

    def __enter__(self) -> DeliveredLog:
        return self

    def remember(
        self, sender: str, message_id: bytes, expires_ms: int, now_ms: int | None = None
    ) -> bool:
        """Record a delivery (committed on return); False if it was already remembered."""
        t = _now_ms() if now_ms is None else now_ms
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO delivered VALUES (?, ?, ?, ?)",
            (sender, bytes(message_id), expires_ms, t),
        )
        return cur.rowcount > 0

    def seen(self, sender: str, message_id: bytes) -> bool:
        """True if this sender's message id was delivered before."""
        row = self.conn.execute(
            "SELECT 1 FROM delivered WHERE sender=? AND message_id=?", (sender, bytes(message_id))
        ).fetchone()
        return row is not None

    def prune(self, now_ms: int | None = None, grace_s: float = PRUNE_GRACE_S) -> int:
        """Forget ids whose envelopes expired more than ``grace_s`` ago; returns the count."""
        t = _now_ms() if now_ms is None else now_ms
        cur = self.conn.execute(
            "DELETE FROM delivered WHERE expires_ms < ?", (t - int(grace_s * 1000),)
        )
        return cur.rowcount

    def __len__(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM delivered").fetchone()[0])
