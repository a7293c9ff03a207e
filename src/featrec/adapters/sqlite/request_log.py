"""The request log on SQLite: one file (``<home>/requests.db``, the default), WAL mode.

Entries are kept until :meth:`SqliteRequestLog.prune` removes them; each distinct feature row
is stored once (see :mod:`featrec.adapters.request_entries`). ``iter_records`` lists the
entries without their feature rows (the A/B analysis reads the bodies). Store errors become
:mod:`featrec.errors` (the recommender counts a failed append and still answers).

Forgetting a user: ``sessions_of`` finds the sessions the log ties to a user; ``forget``
deletes every entry naming the user or one of those sessions, with the feature rows no
remaining entry refers to.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from featrec.adapters.errors import translated
from featrec.adapters.request_entries import (
    PAGE,
    RowDigests,
    body_only,
    entry_from_json,
    entry_json,
    names,
    row_refs,
    sessions_named,
)
from featrec.core.ports.serving import RequestRecord


class SqliteRequestLog:
    """The request log in one SQLite file (safe to share between threads of one process)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._digests = RowDigests()
        with translated(f"opening the request log {path}"):
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS requests ("
                "request_id TEXT PRIMARY KEY, created_at_s REAL NOT NULL, entry BLOB NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS feature_rows (digest TEXT PRIMARY KEY, row BLOB)"
            )
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS requests_by_time ON requests (created_at_s)"
            )

    def append(self, record: RequestRecord) -> None:
        self.append_many([record])

    def append_many(self, records: Sequence[RequestRecord]) -> None:
        """Write ``records`` in one transaction."""
        with self._lock, translated("writing the request log"):
            entries, new_rows = self._encode(records)
            self._write(entries, new_rows)

    def encode_entries(
        self, records: Sequence[RequestRecord]
    ) -> tuple[list[tuple[str, float, bytes]], dict[str, bytes]]:
        """The entries' stored form and the rows not stored yet (:meth:`append_many`'s first
        half; with :meth:`write_entries`, its second, for timing them apart)."""
        with self._lock, translated("writing the request log"):
            return self._encode(records)

    def write_entries(
        self, entries: Sequence[tuple[str, float, bytes]], new_rows: dict[str, bytes]
    ) -> None:
        with self._lock, translated("writing the request log"):
            self._write(entries, new_rows)

    def _encode(
        self, records: Sequence[RequestRecord]
    ) -> tuple[list[tuple[str, float, bytes]], dict[str, bytes]]:
        new_rows: dict[str, bytes] = {}
        entries: list[tuple[str, float, bytes]] = []
        self._digests.start_batch()
        for record in records:
            refs = self._digests.refs(record.rows, new_rows)
            entry = entry_json(record, refs)
            entries.append((record.request_id, record.created_at_s, entry))
        return entries, new_rows

    def _write(
        self, entries: Sequence[tuple[str, float, bytes]], new_rows: dict[str, bytes]
    ) -> None:
        self._db.execute("BEGIN")
        try:
            if new_rows:
                self._db.executemany(
                    "INSERT OR IGNORE INTO feature_rows (digest, row) VALUES (?, ?)",
                    new_rows.items(),
                )
            self._db.executemany(
                "INSERT OR REPLACE INTO requests (request_id, created_at_s, entry) "
                "VALUES (?, ?, ?)",
                entries,
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._digests.remember(new_rows, time.monotonic())

    def get(self, request_id: str) -> RequestRecord | None:
        with self._lock, translated("reading the request log"):
            found = self._db.execute(
                "SELECT entry FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
            if found is None:
                return None
            refs = sorted(set(row_refs(found[0])))
            rows: dict[str, bytes | None] = {}
            for start in range(0, len(refs), 500):
                chunk = refs[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows.update(
                    self._db.execute(
                        f"SELECT digest, row FROM feature_rows WHERE digest IN ({marks})", chunk
                    ).fetchall()
                )
        return entry_from_json(found[0], rows)

    def iter_records(self, since_s: float | None = None) -> Iterator[RequestRecord]:
        """Every entry created at or after ``since_s`` (all if None), oldest first, *without*
        its feature rows (``rows`` is empty: an analysis of outcomes reads bodies only).
        Pages of :data:`PAGE` entries; entries appended meanwhile may or may not be seen."""
        after: tuple[float, str] = (-math.inf if since_s is None else since_s, "")
        while True:
            with self._lock, translated("reading the request log"):
                page = self._db.execute(
                    "SELECT request_id, created_at_s, entry FROM requests "
                    "WHERE created_at_s > ? OR (created_at_s = ? AND request_id >= ?) "
                    "ORDER BY created_at_s, request_id LIMIT ?",
                    (after[0], after[0], after[1], PAGE + 1),
                ).fetchall()
            for row in page[:PAGE]:
                yield body_only(row[2])
            if len(page) <= PAGE:
                return
            after = (page[PAGE][1], page[PAGE][0])

    def prune(self, older_than_s: float) -> int:
        """Delete entries created before ``older_than_s`` (unix seconds) and the rows no
        remaining entry refers to; returns how many entries were deleted."""
        with self._deleting("pruning the request log"):
            n = self._db.execute(
                "DELETE FROM requests WHERE created_at_s < ?", (older_than_s,)
            ).rowcount
        return int(n)

    @contextlib.contextmanager
    def _deleting(self, action: str) -> Iterator[None]:
        """One transaction that deletes entries, then the feature rows no remaining entry
        refers to; the digest memo starts afresh (a deleted row may be stored again)."""
        with self._lock, translated(action):
            self._db.execute("BEGIN")
            try:
                yield
                self._drop_unreferenced_rows()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._digests = RowDigests()

    def _drop_unreferenced_rows(self) -> None:
        """Delete the stored feature rows no remaining entry refers to (inside a transaction)."""
        used: set[str] = set()
        for (entry,) in self._db.execute("SELECT entry FROM requests"):
            used.update(row_refs(entry))
        stored = [d for (d,) in self._db.execute("SELECT digest FROM feature_rows")]
        unused = [(d,) for d in stored if d not in used]
        self._db.executemany("DELETE FROM feature_rows WHERE digest = ?", unused)

    def sessions_of(self, user_id: str) -> set[str]:
        """Session ids of the entries that name ``user_id`` (a full scan)."""
        with self._lock, translated("scanning the request log"):
            entries = [e for (e,) in self._db.execute("SELECT entry FROM requests")]
        return sessions_named(entries, user_id)

    def forget(self, user_id: str, session_ids: Collection[str]) -> int:
        """Delete the entries naming ``user_id`` or one of ``session_ids``, then every row no
        remaining entry refers to; returns how many entries were deleted."""
        sessions = set(session_ids)
        with self._deleting("forgetting in the request log"):
            doomed = [
                (request_id,)
                for request_id, entry in self._db.execute(
                    "SELECT request_id, entry FROM requests"
                ).fetchall()
                if names(entry, user_id, sessions)
            ]
            self._db.executemany("DELETE FROM requests WHERE request_id = ?", doomed)
        return len(doomed)

    def close(self) -> None:
        with self._lock:
            self._db.close()
