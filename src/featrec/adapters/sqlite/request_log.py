"""The request log on SQLite (local, the default) and on Redis, behind one port.

Both keep a record's body as JSON and each distinct feature row once, addressed by a digest of
its content: two hundred item rows are shared by every request that used them, so an entry
costs the size of its candidates and scores, not of its features. JSON keeps floats exact
(shortest round-trip representation), so a record reads back bit for bit.

- :class:`SqliteRequestLog`: one file (``<home>/requests.db``), WAL mode; entries are kept
  until :meth:`SqliteRequestLog.prune` removes them.
- :class:`RedisRequestLog`: ``<prefix>req:<id>`` and ``<prefix>row:<digest>`` strings with a
  ttl; rows live longer than any entry that refers to them (see ``_ROW_TTL_FACTOR``).
- :class:`BackgroundRequestLog`: either of them written from a thread of its own, in batches,
  so the request path only queues a record (serving uses it).

``iter_records`` lists the entries without their feature rows (the A/B analysis reads the
bodies: arm, session, time, recommended items). Store errors become :mod:`featrec.errors`
(the recommender counts a failed append and still answers).

Forgetting a user: ``sessions_of`` finds the sessions the log ties to a user; ``forget``
deletes every entry naming the user or one of those sessions, with the session and user
feature rows they logged (item rows hold no one's data).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import orjson
import redis

from featrec.adapters.errors import translated
from featrec.core.ports.serving import LoggedRow, RequestLog, RequestRecord, StampedRow
from featrec.errors import ConfigError, FeatrecError, StoreError

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
#: Row digests remembered per process (rows already stored need not be sent again).
_MEMO_SIZE = 200_000
#: A row's ttl is this times the entry ttl and it is rewritten after half an entry ttl, so it
#: always outlives the entries written while it was remembered as stored.
_ROW_TTL_FACTOR = 1.5
#: Entries read per page (SQLite query, Redis SCAN + MGET) when iterating the log.
_PAGE = 1000


def _dumps(value: object) -> bytes:
    return orjson.dumps(value, option=_JSON_OPTIONS)


class _RowDigests:
    """Content digests of rows, memoised by object identity (cached rows are shared objects),
    and which digests this process has stored, and when."""

    def __init__(self, size: int = _MEMO_SIZE) -> None:
        self._size = size
        self._by_id: dict[int, tuple[StampedRow, str, bytes]] = {}
        self.stored: dict[str, float] = {}

    def encode(self, logged: LoggedRow) -> tuple[str, bytes]:
        """``(digest, json)`` of a row (the row must not be None)."""
        row = logged.row
        assert row is not None
        found = self._by_id.get(id(row))
        if found is not None and found[0] is row:
            return found[1], found[2]
        data = _dumps({"ts_us": row.ts_us, "values": row.values})
        digest = hashlib.blake2b(
            logged.view.encode() + b"\0" + logged.key.encode() + b"\0" + data, digest_size=16
        ).hexdigest()
        self._by_id[id(row)] = (row, digest, data)
        if len(self._by_id) > self._size:
            for _ in range(len(self._by_id) // 4):
                del self._by_id[next(iter(self._by_id))]
        return digest, data

    def remember(self, digests: Iterable[str], now: float) -> None:
        for digest in digests:
            self.stored[digest] = now
        if len(self.stored) > self._size:
            for _ in range(len(self.stored) // 4):
                del self.stored[next(iter(self.stored))]


def _entry_json(record: RequestRecord, refs: Sequence[str | None]) -> bytes:
    return _dumps(
        {
            "request_id": record.request_id,
            "created_at_s": record.created_at_s,
            "body": record.body,
            "rows": [
                [logged.view, logged.key, ref]
                for logged, ref in zip(record.rows, refs, strict=True)
            ],
        }
    )


def _entry_from_json(data: bytes, rows: dict[str, bytes | None]) -> RequestRecord:
    raw = orjson.loads(data)
    logged: list[LoggedRow] = []
    for view, key, ref in raw["rows"]:
        if ref is None:
            logged.append(LoggedRow(view, key, None))
            continue
        row_data = rows.get(ref)
        if row_data is None:
            raise StoreError(
                f"request {raw['request_id']}: the logged {view} row of {key!r} ({ref}) is "
                "no longer in the request log"
            )
        row = orjson.loads(row_data)
        logged.append(LoggedRow(view, key, StampedRow(row["values"], row["ts_us"])))
    return RequestRecord(raw["request_id"], raw["created_at_s"], raw["body"], logged)


def _body_only(data: bytes) -> RequestRecord:
    """An entry without its feature rows (they are not read)."""
    raw = orjson.loads(data)
    return RequestRecord(raw["request_id"], raw["created_at_s"], raw["body"], [])


def _refs(data: bytes) -> list[str]:
    return [ref for _, _, ref in orjson.loads(data)["rows"] if ref is not None]


#: Views whose logged rows describe one person: they go with the entry when forgetting.
_PERSONAL_VIEWS = {"session_features": "session", "user_features": "user"}


def _names(data: bytes, user_id: str, session_ids: Collection[str]) -> bool:
    """Whether an entry is about ``user_id`` or one of ``session_ids``."""
    body = orjson.loads(data)["body"]
    return body.get("user_id") == user_id or body.get("session_id") in session_ids


def _personal_refs(data: bytes, user_id: str, session_ids: Collection[str]) -> list[str]:
    """Digests of the entry's logged rows of ``user_id`` or of ``session_ids``."""
    out = []
    for view, key, ref in orjson.loads(data)["rows"]:
        kind = _PERSONAL_VIEWS.get(view)
        if ref is not None and (
            (kind == "user" and key == user_id) or (kind == "session" and key in session_ids)
        ):
            out.append(ref)
    return out


def _sessions_named(entries: Iterable[bytes], user_id: str) -> set[str]:
    found: set[str] = set()
    for data in entries:
        body = orjson.loads(data)["body"]
        if body.get("user_id") == user_id and isinstance(body.get("session_id"), str):
            found.add(body["session_id"])
    return found


class SqliteRequestLog:
    """The request log in one SQLite file (safe to share between threads of one process)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._digests = _RowDigests()
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
            new_rows: dict[str, bytes] = {}
            entries: list[tuple[str, float, bytes]] = []
            for record in records:
                refs: list[str | None] = []
                for logged in record.rows:
                    if logged.row is None:
                        refs.append(None)
                        continue
                    digest, data = self._digests.encode(logged)
                    refs.append(digest)
                    if digest not in self._digests.stored:
                        new_rows[digest] = data
                entry = _entry_json(record, refs)
                entries.append((record.request_id, record.created_at_s, entry))
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
            refs = sorted(set(_refs(found[0])))
            rows: dict[str, bytes | None] = {}
            for start in range(0, len(refs), 500):
                chunk = refs[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows.update(
                    self._db.execute(
                        f"SELECT digest, row FROM feature_rows WHERE digest IN ({marks})", chunk
                    ).fetchall()
                )
        return _entry_from_json(found[0], rows)

    def iter_records(self, since_s: float | None = None) -> Iterator[RequestRecord]:
        """Every entry created at or after ``since_s`` (all if None), oldest first, *without*
        its feature rows (``rows`` is empty: an analysis of outcomes reads bodies only).
        Pages of :data:`_PAGE` entries; entries appended meanwhile may or may not be seen."""
        after: tuple[float, str] = (-math.inf if since_s is None else since_s, "")
        while True:
            with self._lock, translated("reading the request log"):
                page = self._db.execute(
                    "SELECT request_id, created_at_s, entry FROM requests "
                    "WHERE created_at_s > ? OR (created_at_s = ? AND request_id >= ?) "
                    "ORDER BY created_at_s, request_id LIMIT ?",
                    (after[0], after[0], after[1], _PAGE + 1),
                ).fetchall()
            for row in page[:_PAGE]:
                yield _body_only(row[2])
            if len(page) <= _PAGE:
                return
            after = (page[_PAGE][1], page[_PAGE][0])

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
            self._digests = _RowDigests()

    def _drop_unreferenced_rows(self) -> None:
        """Delete the stored feature rows no remaining entry refers to (inside a transaction)."""
        used: set[str] = set()
        for (entry,) in self._db.execute("SELECT entry FROM requests"):
            used.update(_refs(entry))
        stored = [d for (d,) in self._db.execute("SELECT digest FROM feature_rows")]
        unused = [(d,) for d in stored if d not in used]
        self._db.executemany("DELETE FROM feature_rows WHERE digest = ?", unused)

    def sessions_of(self, user_id: str) -> set[str]:
        """Session ids of the entries that name ``user_id`` (a full scan)."""
        with self._lock, translated("scanning the request log"):
            entries = [e for (e,) in self._db.execute("SELECT entry FROM requests")]
        return _sessions_named(entries, user_id)

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
                if _names(entry, user_id, sessions)
            ]
            self._db.executemany("DELETE FROM requests WHERE request_id = ?", doomed)
        return len(doomed)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisRequestLog:
    """The request log in Redis: every entry expires after ``ttl_s``; rows outlive them."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        *,
        prefix: str = "featrec:reqlog:",
        ttl_s: int = 7 * 86_400,
        owns_client: bool = False,
    ) -> None:
        if ttl_s < 1:
            raise ConfigError(f"request log ttl must be >= 1 s, got {ttl_s}")
        # redis-py's stubs leave pipeline commands untyped.
        self._client: Any = client
        self._prefix = prefix.encode()
        self._ttl = ttl_s
        self._row_ttl = int(ttl_s * _ROW_TTL_FACTOR) + 1
        self._owns_client = owns_client
        self._digests = _RowDigests()
        self._lock = threading.Lock()

    def _req_key(self, request_id: str) -> bytes:
        return self._prefix + b"req:" + request_id.encode()

    def _row_key(self, digest: str) -> bytes:
        return self._prefix + b"row:" + digest.encode()

    def append(self, record: RequestRecord) -> None:
        self.append_many([record])

    def append_many(self, records: Sequence[RequestRecord]) -> None:
        """Write ``records`` in one pipelined round trip."""
        now = time.monotonic()
        refresh_before = now - self._ttl / 2
        new_rows: dict[str, bytes] = {}
        entries: list[tuple[str, bytes]] = []
        with self._lock:
            for record in records:
                refs: list[str | None] = []
                for logged in record.rows:
                    if logged.row is None:
                        refs.append(None)
                        continue
                    digest, data = self._digests.encode(logged)
                    refs.append(digest)
                    stored_at = self._digests.stored.get(digest)
                    if stored_at is None or stored_at < refresh_before:
                        new_rows[digest] = data
                entries.append((record.request_id, _entry_json(record, refs)))
        with translated("writing the request log to Redis"):
            pipe = self._client.pipeline(transaction=False)
            for digest, data in new_rows.items():
                pipe.execute_command("SET", self._row_key(digest), data, "EX", self._row_ttl)
            for request_id, entry in entries:
                pipe.execute_command("SET", self._req_key(request_id), entry, "EX", self._ttl)
            pipe.execute()
        with self._lock:
            self._digests.remember(new_rows, now)

    def get(self, request_id: str) -> RequestRecord | None:
        with translated("reading the request log from Redis"):
            data = self._client.execute_command("GET", self._req_key(request_id))
            if data is None:
                return None
            refs = sorted(set(_refs(data)))
            values = self._client.execute_command("MGET", *map(self._row_key, refs)) if refs else []
        return _entry_from_json(data, dict(zip(refs, values, strict=True)))

    def iter_records(self, since_s: float | None = None) -> Iterator[RequestRecord]:
        """Every entry (not yet expired) created at or after ``since_s``, *without* its feature
        rows (``rows`` is empty), in no particular order: a ``SCAN`` over the entry keys."""
        pattern = self._prefix + b"req:*"
        cursor = 0
        while True:
            with translated("reading the request log from Redis"):
                cursor, keys = self._client.execute_command(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", _PAGE
                )
                entries = self._client.execute_command("MGET", *keys) if keys else []
            for entry in entries:
                if entry is None:  # expired between SCAN and MGET
                    continue
                record = _body_only(entry)
                if since_s is None or record.created_at_s >= since_s:
                    yield record
            if int(cursor) == 0:
                return

    def _entries(self) -> Iterator[tuple[bytes, bytes]]:
        """``(key, entry)`` of every entry not yet expired (SCAN, then MGET per page)."""
        keys = list(self._client.scan_iter(match=self._prefix + b"req:*", count=_PAGE))
        for start in range(0, len(keys), _PAGE):
            chunk = keys[start : start + _PAGE]
            values = self._client.execute_command("MGET", *chunk)
            yield from ((k, v) for k, v in zip(chunk, values, strict=True) if v is not None)

    def sessions_of(self, user_id: str) -> set[str]:
        """Session ids of the entries that name ``user_id`` (scans every entry)."""
        with translated("scanning the request log in Redis"):
            return _sessions_named((entry for _, entry in self._entries()), user_id)

    def forget(self, user_id: str, session_ids: Collection[str]) -> int:
        """Delete the entries naming ``user_id`` or one of ``session_ids`` and the session and
        user rows they logged; returns how many entries were deleted."""
        sessions = set(session_ids)
        entries: list[bytes] = []
        rows: set[bytes] = set()
        with translated("forgetting in the request log in Redis"):
            for key, entry in self._entries():
                if _names(entry, user_id, sessions):
                    entries.append(key)
                    rows.update(map(self._row_key, _personal_refs(entry, user_id, sessions)))
            doomed = [*entries, *rows]
            for start in range(0, len(doomed), _PAGE):
                self._client.execute_command("DEL", *doomed[start : start + _PAGE])
        with self._lock:
            self._digests = _RowDigests()
        return len(entries)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


class BatchRequestLog(RequestLog, Protocol):
    """A request log that can write several records at once (one transaction or round trip)."""

    def append_many(self, records: Sequence[RequestRecord]) -> None: ...


class BackgroundRequestLog:
    """Takes request records off the request path: ``append`` queues, a thread of its own
    writes them in order, in batches (one transaction per batch on SQLite).

    A full queue (the store is slow or down) refuses the record with a
    :class:`~featrec.errors.StoreError` instead of blocking the request. A batch that fails
    to write is reported to ``on_error(count, message)``. ``get`` first waits for the records
    queued before it, so a request can be explained as soon as it was answered.
    """

    def __init__(
        self,
        inner: BatchRequestLog,
        *,
        max_pending: int = 10_000,
        max_batch: int = 256,
        on_error: Callable[[int, str], None] | None = None,
    ) -> None:
        if max_pending < 1 or max_batch < 1:
            raise ConfigError("max_pending and max_batch must be >= 1")
        self.inner = inner
        self.max_batch = max_batch
        self.on_error = on_error
        self.failed = 0
        self.last_error: str | None = None
        self._queue: queue.Queue[RequestRecord | None] = queue.Queue(max_pending)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="featrec-request-log", daemon=True)
        self._thread.start()

    def append(self, record: RequestRecord) -> None:
        if self._closed:
            raise StoreError("the request log is closed")
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            raise StoreError(
                f"request log queue full ({self._queue.maxsize} records pending): the log "
                f"store is too slow or down (last error: {self.last_error})"
            ) from None

    def flush(self) -> None:
        """Wait until every record queued so far is written (or has failed)."""
        self._queue.join()

    def get(self, request_id: str) -> RequestRecord | None:
        self.flush()
        return self.inner.get(request_id)

    def iter_records(self, since_s: float | None = None) -> Iterator[RequestRecord]:
        """The inner log's :meth:`SqliteRequestLog.iter_records` (or Redis's), after the
        records queued so far are written."""
        self.flush()
        inner: Any = self.inner
        return cast(Iterator[RequestRecord], inner.iter_records(since_s))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        self.inner.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if r is not None]
            try:
                if records:
                    self.inner.append_many(records)
            except FeatrecError as e:
                self.failed += len(records)
                self.last_error = str(e)
                if self.on_error is not None:
                    self.on_error(len(records), str(e))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(records) < len(batch):
                return
