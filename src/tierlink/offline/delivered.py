"""The receiver's delivered log: (sender, message id) pairs already handed to the application,
so a message re-sent after a lost acknowledgement (by any tier) is delivered once.

The log is bounded and never evicts. An entry is kept until its message could no longer be
accepted (its expiry, capped on the receiver's clock at :data:`MAX_KEEP_MS` after the
delivery, plus :data:`PRUNE_GRACE_S`); forgetting it sooner would let a re-put copy be
delivered twice. So when the log holds ``capacity`` entries, the inbox holds new messages back
(:meth:`DeliveredLog.free` is 0): they stay unacknowledged in the DHT, their senders keep
re-putting them, and a later fetch delivers them once entries expire. A flood of valid
envelopes from fresh identities can delay delivery that way, but cannot make a message
arrive twice or be lost.
"""

from __future__ import annotations

import os

from tierlink.offline.store import SqliteStore
from tierlink.wire.envelope import MAX_TTL_S
from tierlink.wire.records import MAX_CLOCK_SKEW_MS
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
MAX_KEEP_MS = int(MAX_TTL_S * 1000) + MAX_CLOCK_SKEW_MS
"""Latest expiry an entry keeps, after its delivery on the receiver's clock: the longest
envelope lifetime a receiver accepts from a sender clock running ahead by the allowed skew."""
MAX_DELIVERED = 100_000
"""Default capacity: entries (about 200 bytes each) the log holds before holding messages back."""


class DeliveredLog(SqliteStore):
    """Receiver side: (sender, message id) pairs already handed to the application.

    A re-sent envelope (the sender missed our ack) is acked again but not delivered twice.
    An id must be remembered until its envelope expires: after that :func:`open_envelope`
    rejects the envelope itself, so :meth:`prune` may forget it. Admission is the inbox's
    job (:meth:`free` before the hand-off); :meth:`remember` records every delivery it is
    told about, so the log passes ``capacity`` by at most the messages in flight.
    """

    _NAME = "delivered"
    _DDL = _DELIVERED_DDL

    def __init__(
        self,
        path: str | os.PathLike[str],
        synchronous: str = "FULL",
        *,
        capacity: int = MAX_DELIVERED,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        super().__init__(path, synchronous)
        self.capacity = capacity

    def __enter__(self) -> DeliveredLog:
        return self

    def remember(
        self, sender: str, message_id: bytes, expires_ms: int, now_ms: int | None = None
    ) -> bool:
        """Record a delivery (committed on return); False if it was already remembered.

        ``expires_ms`` is the message's expiry as its sender stated it; the entry is kept
        until at most :data:`MAX_KEEP_MS` after ``now_ms`` whatever the sender claimed.
        """
        t = _now_ms() if now_ms is None else now_ms
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO delivered VALUES (?, ?, ?, ?)",
            (sender, bytes(message_id), min(expires_ms, t + MAX_KEEP_MS), t),
        )
        return cur.rowcount > 0

    def seen(self, sender: str, message_id: bytes) -> bool:
        """True if this sender's message id was delivered before."""
        row = self.conn.execute(
            "SELECT 1 FROM delivered WHERE sender=? AND message_id=?", (sender, bytes(message_id))
        ).fetchone()
        return row is not None

    def free(self, now_ms: int | None = None) -> int:
        """How many new entries fit before ``capacity``; prunes expired ones first when full."""
        left = self.capacity - len(self)
        if left <= 0 and self.prune(now_ms):
            left = self.capacity - len(self)
        return max(0, left)

    def prune(self, now_ms: int | None = None, grace_s: float = PRUNE_GRACE_S) -> int:
        """Forget ids whose envelopes expired more than ``grace_s`` ago; returns the count."""
        t = _now_ms() if now_ms is None else now_ms
        cur = self.conn.execute(
            "DELETE FROM delivered WHERE expires_ms < ?", (t - int(grace_s * 1000),)
        )
        return cur.rowcount

    def __len__(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM delivered").fetchone()[0])
