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
    subjects,
)
from featrec.core.bounded import drop_oldest
from featrec.core.ports.serving import LoggedRow, RequestRecord
from featrec.errors import StoreError

#: Entries written without subject columns (by an earlier version): read to know whom they
#: are about. New entries always have a session id (a request names its session).
_UNMARKED = "SELECT {} FROM requests WHERE user_id IS NULL AND session_id IS NULL"


def _chunks(values: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _marks(values: Sequence[str]) -> str:
    return ",".join("?" * len(values))


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
            self._create_or_upgrade()
            self._deletions = self._deletions_now()
            #: Whether every row reference here says what its key names (a file created by
            #: this version): forgetting then deletes rows by key, without reading entries.
            self._typed = self._meta("typed_refs") == 1

    def _create_or_upgrade(self) -> None:
        """The tables, in one transaction. A file of an earlier version gets the subject
        columns (its entries keep them empty: found by reading them, as before)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )
            fresh = (
                db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'"
                ).fetchone()
                is None
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS requests ("
                "request_id TEXT PRIMARY KEY, created_at_s REAL NOT NULL, entry BLOB NOT NULL, "
                "user_id TEXT, session_id TEXT)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS feature_rows (digest TEXT PRIMARY KEY, row BLOB)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS row_refs (id INTEGER PRIMARY KEY, view TEXT NOT NULL, "
                "key TEXT NOT NULL, digest TEXT NOT NULL, entity TEXT, UNIQUE (view, key, digest))"
            )
            columns = {name for _, name, *_ in db.execute("PRAGMA table_info(requests)")}
            for name in ("user_id", "session_id"):
                if name not in columns:
                    db.execute(f"ALTER TABLE requests ADD COLUMN {name} TEXT")
            if "entity" not in {name for _, name, *_ in db.execute("PRAGMA table_info(row_refs)")}:
                db.execute("ALTER TABLE row_refs ADD COLUMN entity TEXT")
            for index, on in (
                ("requests_by_time", "requests (created_at_s)"),
                ("requests_by_user", "requests (user_id)"),
                ("requests_by_session", "requests (session_id)"),
            ):
                db.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {on}")
            if fresh:
                db.execute("INSERT INTO log_meta (key, value) VALUES ('typed_refs', 1)")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _meta(self, key: str) -> int | None:
        found = self._db.execute("SELECT value FROM log_meta WHERE key = ?", (key,)).fetchone()
        return None if found is None else int(found[0])

    def _deletions_now(self) -> int:
        """How many deletions any process has committed to this log (``log_meta``)."""
        return self._meta("deletions") or 0

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
                    "INSERT OR REPLACE INTO requests "
                    "(request_id, created_at_s, entry, user_id, session_id) "
                    "VALUES (?, ?, ?, ?, ?)",
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
    ) -> tuple[
        list[tuple[str, float, bytes, str | None, str | None]],
        dict[str, bytes],
        list[tuple[LoggedRow, _Ref, int]],
    ]:
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
            entities = {ref: uses[0][2].entity for ref, uses in unknown.items()}
            for ref, row_id in self._resolve(entities).items():
                for n, i, logged in unknown[ref]:
                    ids_of[n][i] = row_id
                    known.append((logged, ref, row_id))
        entries = [
            (
                record.request_id,
                record.created_at_s,
                entry_with_ids(record, ids),  # type: ignore[arg-type]
                *subjects(record.body),
            )
            for record, ids in zip(records, ids_of, strict=True)
        ]
        return entries, new_rows, known

    def _resolve(self, refs: dict[_Ref, str | None]) -> dict[_Ref, int]:
        """The ``row_refs`` ids of ``refs`` (with what each key names), inserting those not
        stored (in the transaction): one upsert per reference, which returns its id whether it
        was there or not."""
        execute = self._db.execute
        out: dict[_Ref, int] = {}
        for ref, entity in refs.items():
            (row_id,) = execute(
                "INSERT INTO row_refs (view, key, digest, entity) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (view, key, digest) DO UPDATE SET view = excluded.view "
                "RETURNING id",
                (*ref, entity),
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
    def _deleting(self, action: str, *, drop_rows: bool = True) -> Iterator[None]:
        """One transaction that deletes entries, then (``drop_rows``) the row references and
        feature rows no remaining entry refers to, and counts itself (``log_meta``); the memos
        start afresh here, and in other processes at their next write (a deleted row may be
        stored again)."""
        with self._lock, translated(action):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                if drop_rows:
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
        (inside a transaction; reads every entry); entries of either form count."""
        used_ids: set[int] = set()
        used: set[str] = set()
        for (entry,) in self._db.execute("SELECT entry FROM requests"):
            raw = orjson.loads(entry)
            if "row_ids" in raw:
                used_ids.update(raw["row_ids"])
            else:
                used.update(ref for _, _, ref, *_ in raw["rows"] if ref is not None)
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

    def _drop_rows_about(self, user_id: str, sessions: Sequence[str]) -> None:
        """Delete the row references whose key is ``user_id`` (rows of users) or one of
        ``sessions`` (rows of sessions), rows of unknown entity either way, and the feature
        rows no remaining reference uses (inside a transaction). Only entries about the user
        or those sessions refer to such references, and they are gone. No entry is read: a
        few passes over ``row_refs`` (no index on it: one would cost every write ~70 µs at 200
        candidates)."""
        db = self._db
        digests = {
            d
            for (d,) in db.execute(
                "DELETE FROM row_refs WHERE key = ? AND (entity IS NULL OR entity = 'user') "
                "RETURNING digest",
                (user_id,),
            )
        }
        for chunk in _chunks(sessions):
            digests.update(
                d
                for (d,) in db.execute(
                    f"DELETE FROM row_refs WHERE key IN ({_marks(chunk)}) "
                    "AND (entity IS NULL OR entity = 'session') RETURNING digest",
                    chunk,
                )
            )
        digests.discard("")
        # A digest covers its row's view and key, but a row object logged under two keys is
        # digested once (RowDigests memoises by identity): keep what another reference uses.
        used: set[str] = set()
        for chunk in _chunks(sorted(digests)):
            used.update(
                d
                for (d,) in db.execute(
                    f"SELECT DISTINCT digest FROM row_refs WHERE digest IN ({_marks(chunk)})",
                    chunk,
                )
            )
        db.executemany(
            "DELETE FROM feature_rows WHERE digest = ?", [(d,) for d in sorted(digests - used)]
        )

    def _entries_about(self, user_id: str, sessions: Sequence[str]) -> list[str]:
        """Ids of the entries about ``user_id`` or one of ``sessions``: by the subject
        columns, and by reading the entries written without them (by an earlier version)."""
        db = self._db
        by_user = db.execute("SELECT request_id FROM requests WHERE user_id = ?", (user_id,))
        found = {r for (r,) in by_user}
        for chunk in _chunks(sessions):
            found.update(
                r
                for (r,) in db.execute(
                    f"SELECT request_id FROM requests WHERE session_id IN ({_marks(chunk)})", chunk
                )
            )
        wanted = set(sessions)
        found.update(
            request_id
            for request_id, entry in db.execute(_UNMARKED.format("request_id, entry"))
            if names(entry, user_id, wanted)
        )
        return sorted(found)

    def sessions_of(self, user_id: str) -> set[str]:
        """Session ids of the entries that name ``user_id`` (by the subject columns; the
        entries written without them are read)."""
        with self._lock, translated("scanning the request log"):
            found = {
                s
                for (s,) in self._db.execute(
                    "SELECT DISTINCT session_id FROM requests "
                    "WHERE user_id = ? AND session_id IS NOT NULL",
                    (user_id,),
                )
            }
            unmarked = [e for (e,) in self._db.execute(_UNMARKED.format("entry"))]
        return found | sessions_named(unmarked, user_id)

    def forget(self, user_id: str, session_ids: Collection[str]) -> int:
        """Delete the entries about ``user_id`` or one of ``session_ids``, then the rows that
        describe them; returns how many entries were deleted.

        In a file this version created, both are found by index (the rows by their key and
        entity), with no entry read. In an older file the rows no remaining entry refers to
        are found by reading every entry, as before."""
        sessions = sorted(set(session_ids))
        with self._deleting("forgetting in the request log", drop_rows=not self._typed):
            doomed = self._entries_about(user_id, sessions)
            self._db.executemany(
                "DELETE FROM requests WHERE request_id = ?", [(r,) for r in doomed]
            )
            if self._typed:
                self._drop_rows_about(user_id, sessions)
        return len(doomed)

    def close(self) -> None:
        with self._lock:
            self._db.close()
