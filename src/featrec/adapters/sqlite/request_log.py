"""The request log on SQLite: one file (``<home>/requests.db``, the default), WAL mode.

Entries are kept until :meth:`SqliteRequestLog.prune` removes them; each distinct feature row
is stored once (see :mod:`featrec.adapters.request_entries`). An entry refers to its rows by
short ids (``"row_ids"``): each distinct reference ``(view, key, digest)`` is a row of the
``row_refs`` table, written once, so an entry at 200 candidates carries 400 small integers
instead of 400 ``[view, key, digest]`` lists (~25 KB). Entries written before (``"rows"``:
the lists themselves) read as they are. ``iter_records`` lists the
entries without their feature rows (the A/B analysis reads the bodies). Store errors become
:mod:`featrec.errors` (the recommender counts a failed append and still answers).

Forgetting a user: ``sessions_of`` finds the sessions the log ties to a user; ``forget``
deletes every entry naming the user or one of those sessions, with the feature rows and row
references (they name a user or a session: ``view`` and ``key``) no remaining entry refers to.

A writer remembers which rows and references it has stored, so as not to store them again.
A deletion (``forget``, ``prune``) may run in another process (``featrec forget`` beside a
running server) and delete some of them: it counts itself in ``log_meta`` (``deletions``), and
every write transaction reads that count first and forgets what it remembered when it moved,
so no entry ever refers to a row that is gone.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from featrec.adapters.errors import translated
from featrec.adapters.request_entries import (
    PAGE,
    IdentityMemo,
    RowDigests,
    body_only,
    entry_with_ids,
    names,
    record_from,
    sessions_named,
)
from featrec.core.bounded import drop_oldest
from featrec.core.ports.serving import LoggedRow, RequestRecord
from featrec.errors import StoreError

#: A row reference as the ``row_refs`` table keeps it: ``(view, key, digest)``, digest ``""``
#: for no row.
_Ref = tuple[str, str, str]


class _RowIds:
    """The ``row_refs`` id of each logged row, memoised by the identity of its
    :class:`LoggedRow` once its reference is stored, and the id of each reference stored."""

    def __init__(self, size: int = 200_000) -> None:
        self._size = size
        self.by_logged: IdentityMemo[int] = IdentityMemo(size)
        self.by_ref: dict[_Ref, int] = {}

    def memoise(self, logged: LoggedRow, ref: _Ref, row_id: int) -> None:
        self.by_logged.put(logged, row_id)
        self.by_ref[ref] = row_id
        if len(self.by_ref) > self._size:
            drop_oldest(self.by_ref, len(self.by_ref) // 4)


class SqliteRequestLog:
    """The request log in one SQLite file (safe to share between threads of one process)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._digests = RowDigests()
        self._ids = _RowIds()
        #: ``log_meta.deletions`` when the memos above were last known to be right.
        self._deletions = 0
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
                "CREATE TABLE IF NOT EXISTS row_refs (id INTEGER PRIMARY KEY, view TEXT NOT NULL, "
                "key TEXT NOT NULL, digest TEXT NOT NULL, UNIQUE (view, key, digest))"
            )
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS requests_by_time ON requests (created_at_s)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )
            self._deletions = self._deletions_now()

    def _deletions_now(self) -> int:
        """How many deletions any process has committed to this log (``log_meta``)."""
        found = self._db.execute("SELECT value FROM log_meta WHERE key = 'deletions'").fetchone()
        return 0 if found is None else int(found[0])

    def _forget_stored(self) -> None:
        """Forget which rows and references were stored (a deletion may have removed some)."""
        self._digests = RowDigests()
        self._ids = _RowIds()

    def append(self, record: RequestRecord) -> None:
        self.append_many([record])

    def append_many(self, records: Sequence[RequestRecord]) -> None:
        """Write ``records`` in one transaction."""
        with self._lock, translated("writing the request log"):
            # IMMEDIATE: no other process's deletion can commit between the count read here
            # and this transaction's writes.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deletions = self._deletions_now()
                if deletions != self._deletions:
                    self._forget_stored()
                    self._deletions = deletions
                entries, new_rows, known = self._encode(records)
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
            for logged, ref, row_id in known:
                self._ids.memoise(logged, ref, row_id)

    def _encode(
        self, records: Sequence[RequestRecord]
    ) -> tuple[list[tuple[str, float, bytes]], dict[str, bytes], list[tuple[LoggedRow, _Ref, int]]]:
        """The entries' stored form, the rows not stored yet and the references met for the
        first time with their ids (memoised once the transaction commits). Inside the
        transaction: new references are inserted into ``row_refs`` to get their ids."""
        new_rows: dict[str, bytes] = {}
        known: list[tuple[LoggedRow, _Ref, int]] = []
        # per record, its row ids (None: not known yet) and where the unknown ones go
        ids_of: list[list[int | None]] = []
        unknown: dict[_Ref, list[tuple[int, int, LoggedRow]]] = {}
        memo = self._ids.by_logged.values.get
        by_ref = self._ids.by_ref
        digests = self._digests
        stored = digests.stored
        for n, record in enumerate(records):
            rows = record.rows
            ids: list[int | None] = list(map(memo, map(id, rows)))
            ids_of.append(ids)
            if all(ids):  # ids start at 1
                continue
            for i, found in enumerate(ids):
                if found is not None:
                    continue
                logged = rows[i]
                if logged.row is None:
                    ref = (logged.view, logged.key, "")
                else:
                    digest, data = digests.encode(logged)
                    if digest not in stored:
                        new_rows[digest] = data
                    ref = (logged.view, logged.key, digest)
                row_id = by_ref.get(ref)
                if row_id is None:
                    unknown.setdefault(ref, []).append((n, i, logged))
                else:
                    ids[i] = row_id
                    known.append((logged, ref, row_id))
        if unknown:
            for ref, row_id in self._resolve(list(unknown)).items():
                for n, i, logged in unknown[ref]:
                    ids_of[n][i] = row_id
                    known.append((logged, ref, row_id))
        entries = [
            (record.request_id, record.created_at_s, entry_with_ids(record, ids))  # type: ignore[arg-type]
            for record, ids in zip(records, ids_of, strict=True)
        ]
        return entries, new_rows, known

    def _resolve(self, refs: list[_Ref]) -> dict[_Ref, int]:
        """The ``row_refs`` ids of ``refs``, inserting those not stored (in the transaction):
        one upsert per reference, which returns its id whether it was there or not."""
        execute = self._db.execute
        out: dict[_Ref, int] = {}
        for ref in refs:
            (row_id,) = execute(
                "INSERT INTO row_refs (view, key, digest) VALUES (?, ?, ?) "
                "ON CONFLICT (view, key, digest) DO UPDATE SET view = excluded.view "
                "RETURNING id",
                ref,
            ).fetchone()
            out[ref] = row_id
        return out

    def get(self, request_id: str) -> RequestRecord | None:
        with self._lock, translated("reading the request log"):
            found = self._db.execute(
                "SELECT entry FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
            if found is None:
                return None
            raw = orjson.loads(found[0])
            refs = raw["rows"] if "row_ids" not in raw else self._refs_of(raw["row_ids"], raw)
            digests = sorted({ref[2] for ref in refs if ref[2] is not None})
            rows: dict[str, bytes | None] = {}
            for start in range(0, len(digests), 500):
                chunk = digests[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows.update(
                    self._db.execute(
                        f"SELECT digest, row FROM feature_rows WHERE digest IN ({marks})", chunk
                    ).fetchall()
                )
        return record_from(raw, refs, rows)

    def _refs_of(self, row_ids: list[int], raw: dict[str, Any]) -> list[list[str | None]]:
        """``[view, key, digest]`` (digest None: no row) of each of an entry's ``row_ids``."""
        wanted = sorted(set(row_ids))
        refs: dict[int, list[str | None]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row_id, view, key, digest in self._db.execute(
                f"SELECT id, view, key, digest FROM row_refs WHERE id IN ({marks})", chunk
            ):
                refs[row_id] = [view, key, digest or None]
        lost = [row_id for row_id in wanted if row_id not in refs]
        if lost:
            raise StoreError(
                f"request {raw['request_id']}: {len(lost)} logged row reference(s) (ids "
                f"{lost[:3]}) are no longer in the request log"
            )
        return [refs[row_id] for row_id in row_ids]

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

    def count(self) -> int:
        """How many entries the log holds."""
        with self._lock, translated("reading the request log"):
            (n,) = self._db.execute("SELECT COUNT(*) FROM requests").fetchone()
        return int(n)

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
        """One transaction that deletes entries, then the row references and feature rows no
        remaining entry refers to, and counts itself (``log_meta``); the memos start afresh
        here, and in other processes at their next write (a deleted row may be stored
        again)."""
        with self._lock, translated(action):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._drop_unreferenced_rows()
                self._db.execute(
                    "INSERT INTO log_meta (key, value) VALUES ('deletions', 1) "
                    "ON CONFLICT (key) DO UPDATE SET value = value + 1"
                )
                self._deletions = self._deletions_now()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._forget_stored()

    def _drop_unreferenced_rows(self) -> None:
        """Delete the row references and stored feature rows no remaining entry refers to
        (inside a transaction); entries of either form count."""
        used_ids: set[int] = set()
        used: set[str] = set()
        for (entry,) in self._db.execute("SELECT entry FROM requests"):
            raw = orjson.loads(entry)
            if "row_ids" in raw:
                used_ids.update(raw["row_ids"])
            else:
                used.update(ref for _, _, ref in raw["rows"] if ref is not None)
        unused_ids = [
            (row_id,)
            for (row_id,) in self._db.execute("SELECT id FROM row_refs")
            if row_id not in used_ids
        ]
        self._db.executemany("DELETE FROM row_refs WHERE id = ?", unused_ids)
        used.update(d for (d,) in self._db.execute("SELECT digest FROM row_refs") if d)
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
