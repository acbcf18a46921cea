"""The offline tier's SQLite file: opening it durably, schema versions, the store base class.

The sender's :mod:`~tierlink.offline.outbox` and the receiver's
:mod:`~tierlink.offline.delivered` log share one file.

The file (stdlib :mod:`sqlite3`) is opened in WAL mode with
``synchronous=FULL`` by default.

Why FULL and not NORMAL: in WAL mode both survive a crash of *the process* (SIGKILL, OOM):
a commit is in the WAL file as soon as ``execute`` returns, the OS keeps it. NORMAL skips
the fsync at commit, so a power cut or kernel crash may roll back the last few commits
(never corrupting the file). For an outbox that loss is silent: the application was told
"queued" and the message is gone; for the delivered log it means a duplicate delivery.
Writes here are human-rate (one per send, one per state change, one re-put stamp every few
minutes per pending message), so one fsync per commit costs nothing that matters next to
a DHT round trip. Pass ``synchronous="NORMAL"`` where that trade is wrong (bulk tests).

Every mutating call is a single autocommitted statement (or an explicit transaction) that
is committed before the call returns: a SIGKILL right after :meth:`Outbox.add` returns
cannot lose the message.

Threading: a store object belongs to the thread that created it (sqlite3's
``check_same_thread``); use it from the event loop's thread. Calls are short indexed
statements (well under a millisecond, plus the commit fsync), so they are made directly
from coroutines rather than through a thread pool. Another process may open the same file
(WAL readers do not block the writer; writers wait up to ``busy_timeout``).

The file holds plaintext payloads, so it is created with mode 0600 (SQLite gives its
``-wal`` and ``-shm`` files the same mode).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from tierlink.errors import TierlinkError

SCHEMA_VERSION = 1

STORE_FILE = "tierlink.db"
"""The name of a node's SQLite state file in its data directory."""


class StoreError(TierlinkError):
    """The offline store file cannot be opened or is not a tierlink store."""


def connect(path: str | os.PathLike[str], synchronous: str = "FULL") -> sqlite3.Connection:
    """Open (creating with mode 0600) a SQLite file in WAL mode and autocommit."""
    if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
        raise ValueError("synchronous must be NORMAL, FULL or EXTRA")
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            # Only to create it with mode 0600: closing a second descriptor of a file this
            # process already has open drops every POSIX lock SQLite holds on it, and another
            # process could then checkpoint and delete the WAL under our connections.
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o600))
        conn = sqlite3.connect(p, isolation_level=None, timeout=5.0)
    except OSError as exc:
        raise StoreError(f"cannot open offline store {p}: {exc.strerror or exc}") from None
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS tierlink_schema "
            "(name TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{p} is not a usable tierlink store: {exc}") from None
    if str(mode).lower() != "wal":
        conn.close()
        raise StoreError(f"{p}: the file system does not support SQLite WAL mode ({mode})")
    return conn


def ensure_table(conn: sqlite3.Connection, name: str, ddl: Iterable[str]) -> None:
    """Create ``name``'s schema once; refuse a file written by a newer tierlink."""
    conn.execute("BEGIN IMMEDIATE")  # another process may be creating it right now
    try:
        row = conn.execute("SELECT version FROM tierlink_schema WHERE name=?", (name,)).fetchone()
        if row is not None and row[0] > SCHEMA_VERSION:
            raise StoreError(
                f"the {name} table has schema version {row[0]}; this tierlink reads "
                f"{SCHEMA_VERSION} (upgrade tierlink)"
            )
        if row is None:
            for stmt in ddl:
                conn.execute(stmt)
            conn.execute("INSERT INTO tierlink_schema VALUES (?, ?)", (name, SCHEMA_VERSION))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def claim_owner(path: str | os.PathLike[str], fingerprint: str) -> None:
    """Bind the state file at ``path`` to the identity ``fingerprint`` (the first node that
    opens it names it) and refuse any other: its node would send the messages waiting there
    under its own name and take the other identity's delivered log for its own."""
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conn = connect(path)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS tierlink_owner (fingerprint TEXT NOT NULL)")
        conn.execute("BEGIN IMMEDIATE")  # two nodes starting at once: one names the owner
        row = conn.execute("SELECT fingerprint FROM tierlink_owner").fetchone()
        if row is None:
            conn.execute("INSERT INTO tierlink_owner VALUES (?)", (fingerprint,))
        conn.execute("COMMIT")
    finally:
        conn.close()
    if row is not None and row[0] != fingerprint:
        raise StoreError(f"{Path(path).parent} holds the messages of another identity "
                         f"({str(row[0])[:16]}…); give each identity its own data directory")


class SqliteStore:
    """One table family in a tierlink SQLite file: opened, schema checked, closed."""

    _NAME = ""
    _DDL: tuple[str, ...] = ()

    def __init__(self, path: str | os.PathLike[str], synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.conn = connect(path, synchronous)
        try:
            ensure_table(self.conn, self._NAME, self._DDL)
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        """Close the database connection."""
        self.conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
