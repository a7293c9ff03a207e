"""The sessions flow's store of idle sessions: session states kept on disk, out of snapshots.

A shard of the sessions dataflow holds its sessions in memory, and bytewax snapshots the whole
shard at every epoch it is active in. With the default TTL (the 30-minute session gap) most of
those sessions are idle, yet each costs ~0.6 µs per snapshot and its bytes in the recovery
store. A shard therefore *cools* sessions idle for a while: their state moves here (a directory
beside the recovery store, one SQLite file per shard), and comes back (*revives*) when the
session's next event arrives. Snapshots then hold only the recently active sessions.

Exactly-once under recovery. A shard counts its snapshots, and every write here is tagged with
that count (:attr:`~featrec.core.sessions.shard.SessionShard.snapshots`): a session cooled
between snapshots ``k-1`` and ``k`` has ``tag = k``, one revived then has ``revived = k``.
A resumed shard says which snapshot it came from, and :meth:`ColdSessions.rollback` undoes
everything tagged after it: rows cooled later are deleted, rows revived later are cold again.
What the store holds for a shard is then exactly what it held when that snapshot was taken.
Re-cooling a revived session writes a new row and keeps the revived one (a rollback may need
it); revived rows are deleted once :data:`HISTORY` snapshots old (a resume never goes further
back than bytewax's last committed epoch, one or two snapshots).

Privacy: :meth:`ColdSessions.forget` deletes every row of a session, history included.
Expiry: :meth:`ColdSessions.expire` deletes the rows of sessions idle past the TTL.

The items flow's pair step keeps its idle sessions in a store of its own (another directory),
with the same tags and rollback: its states are a session's recent items, with no user id.

One file and one connection per shard (:meth:`ColdSessions.shard`), used by the worker that
owns the shard: a file never has two writers, so the directory may sit on the recovery store's
shared volume like bytewax's own partitions. WAL mode: writes survive a killed process.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

from featrec.core.sessions.shard import Cooled

#: Revived rows are kept this many of their shard's snapshots for a rollback, then deleted.
HISTORY: Final = 50
#: SQLite's bound on host parameters is 32,766; lookups go in chunks well below it.
_CHUNK: Final = 500

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS cold (
    session_id TEXT NOT NULL,
    tag INTEGER NOT NULL,
    revived INTEGER,
    user_id TEXT,
    touched_at REAL NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (session_id, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cold_touched ON cold (touched_at);
CREATE INDEX IF NOT EXISTS cold_revived ON cold (revived) WHERE revived IS NOT NULL;
"""
_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")


class ColdSessions:
    """A directory of idle session states, one file per shard (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def shard(self, key: str) -> ColdShard:
        """The store of one shard (its file is created on first use)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        return ColdShard(self.directory / f"shard-{_SAFE.sub('_', key)}.sqlite")

    def count(self) -> int:
        """Sessions held cold (not revived), in all shards."""
        return sum(shard.count() for shard in self._each())

    def session_ids(self) -> list[str]:
        """Every session with a row (history included), in all shards: for privacy scans."""
        return sorted({sid for shard in self._each() for sid in shard.session_ids()})

    def _each(self) -> Iterator[ColdShard]:
        for path in sorted(self.directory.glob("shard-*.sqlite")):
            shard = ColdShard(path)
            try:
                yield shard
            finally:
                shard.close()


class ColdShard:
    """One shard's idle sessions: one SQLite file, one connection (the owning worker's)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Used by one worker at a time, though bytewax may build a step's logic on another
        # thread than the one that runs it.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def put(self, sessions: Sequence[Cooled], tag: int) -> None:
        """Keep cooled sessions (a session cooled twice under one tag keeps the newer)."""
        if not sessions:
            return
        with _transaction(self.db):
            self.db.executemany(
                "INSERT OR REPLACE INTO cold VALUES (?, ?, NULL, ?, ?, ?)",
                [(c.session_id, tag, c.user_id, c.touched_at, c.state) for c in sessions],
            )

    def take(self, session_ids: Sequence[str], tag: int, horizon: float) -> list[bytes]:
        """The states of those sessions held cold and touched after ``horizon`` (the TTL's),
        marked revived under ``tag``."""
        if not session_ids:
            return []
        db = self.db
        found: list[tuple[str, int, bytes]] = []
        # Most lookups are of new sessions and find nothing: read first, write only if found.
        for start in range(0, len(session_ids), _CHUNK):
            chunk = session_ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found += db.execute(
                "SELECT session_id, tag, state FROM cold WHERE revived IS NULL"
                f" AND touched_at > ? AND session_id IN ({marks})",
                (horizon, *chunk),
            ).fetchall()
        if found:
            with _transaction(db):
                db.executemany(
                    "UPDATE cold SET revived = ? WHERE session_id = ? AND tag = ?",
                    [(tag, sid, row_tag) for sid, row_tag, _ in found],
                )
        return [state for _, _, state in found]

    def rollback(self, taken: int) -> tuple[int, int]:
        """Undo what was written after the shard's snapshot number ``taken`` (-1: all of it):
        (rows deleted, rows cold again)."""
        with _transaction(self.db):
            deleted = self.db.execute("DELETE FROM cold WHERE tag > ?", (taken,)).rowcount
            restored = self.db.execute(
                "UPDATE cold SET revived = NULL WHERE revived > ?", (taken,)
            ).rowcount
        return deleted, restored

    def expire(self, horizon: float, tag: int) -> int:
        """Delete the sessions untouched since ``horizon``, and revived rows older than
        :data:`HISTORY` snapshots before ``tag``; how many sessions expired."""
        with _transaction(self.db):
            gone = self.db.execute("DELETE FROM cold WHERE touched_at <= ?", (horizon,)).rowcount
            self.db.execute(
                "DELETE FROM cold WHERE revived IS NOT NULL AND revived <= ?", (tag - HISTORY,)
            )
        return gone

    def forget(self, session_id: str) -> int:
        """Delete every row of a session, history included; how many."""
        with _transaction(self.db):
            return self.db.execute("DELETE FROM cold WHERE session_id = ?", (session_id,)).rowcount

    def forget_where(self, denied: Callable[[str, str | None], bool]) -> int:
        """Forget every session for which ``denied(session_id, user_id)``; how many."""
        rows = self.db.execute("SELECT DISTINCT session_id, user_id FROM cold").fetchall()
        gone = {sid for sid, user in rows if denied(sid, user)}
        for sid in gone:
            self.forget(sid)
        return len(gone)

    def count(self) -> int:
        """Sessions held cold (not revived)."""
        return int(self.db.execute("SELECT COUNT(*) FROM cold WHERE revived IS NULL").fetchone()[0])

    def session_ids(self) -> list[str]:
        """Every session with a row, history included."""
        return [sid for (sid,) in self.db.execute("SELECT DISTINCT session_id FROM cold")]


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
