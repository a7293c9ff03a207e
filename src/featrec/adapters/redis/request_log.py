"""The request log on Redis (``--request-log redis``: shared by every server process).

``<prefix>req:<id>`` and ``<prefix>row:<digest>`` strings with a ttl: every entry expires after
``ttl_s`` (7 days by default); each distinct feature row is stored once (see
:mod:`featrec.adapters.request_entries`) and outlives the entries that refer to it
(``_ROW_TTL_FACTOR``). ``iter_records`` lists the
entries without their feature rows. Store errors become :mod:`featrec.errors`.

Forgetting a user deletes the entries naming the user or one of their sessions, with the session
and user rows they logged (item rows hold no one's data).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from featrec.adapters.errors import translated
from featrec.adapters.redis.cluster import is_cluster
from featrec.adapters.request_entries import (
    PAGE,
    RowDigests,
    body_only,
    entry_from_json,
    entry_json,
    names,
    personal_refs,
    row_refs,
    sessions_named,
)
from featrec.core.ports.serving import RequestRecord
from featrec.errors import ConfigError

#: A row's ttl is this times the entry ttl and it is rewritten after half an entry ttl, so it
#: always outlives the entries written while it was remembered as stored.
_ROW_TTL_FACTOR = 1.5


class RedisRequestLog:
    """The request log in Redis: every entry expires after ``ttl_s``; rows outlive them."""

    def __init__(
        self,
        client: redis.Redis[bytes] | RedisCluster[bytes],
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
        self._digests = RowDigests(created_at=time.monotonic())
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
            if self._digests.created_at < refresh_before:
                # every row referred to from now on is sent (again) at least once: a row
                # outlives the entries written until the memo is renewed (half an entry ttl)
                self._digests = RowDigests(created_at=now)
            self._digests.start_batch()
            for record in records:
                refs = self._digests.refs(record.rows, new_rows, refresh_before)
                entries.append((record.request_id, entry_json(record, refs)))
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
            refs = sorted(set(row_refs(data)))
            values = self._mget([self._row_key(r) for r in refs]) if refs else []
        return entry_from_json(data, dict(zip(refs, values, strict=True)))

    def _mget(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """``MGET`` on a single server; on a Redis Cluster one ``MGET`` per slot, as redis-py's
        ``mget_nonatomic`` does (the keys spread over every node)."""
        if is_cluster(self._client):
            return list(self._client.mget_nonatomic(list(keys)))
        return list(self._client.execute_command("MGET", *keys))

    def iter_records(self, since_s: float | None = None) -> Iterator[RequestRecord]:
        """Every entry (not yet expired) created at or after ``since_s``, *without* its feature
        rows (``rows`` is empty), in no particular order: a ``SCAN`` over the entry keys (of
        every node of a Redis Cluster)."""
        for _, entry in self._entries():
            record = body_only(entry)
            if since_s is None or record.created_at_s >= since_s:
                yield record

    def _entries(self) -> Iterator[tuple[bytes, bytes]]:
        """``(key, entry)`` of every entry not yet expired (SCAN, then MGET a page at a time)."""
        page: list[bytes] = []
        with translated("reading the request log from Redis"):
            keys = self._client.scan_iter(match=self._prefix + b"req:*", count=PAGE)
        while True:
            with translated("reading the request log from Redis"):
                page = list(itertools.islice(keys, PAGE))
                values = self._mget(page) if page else []
            # None: expired between SCAN and MGET
            yield from ((k, v) for k, v in zip(page, values, strict=True) if v is not None)
            if len(page) < PAGE:
                return

    def sessions_of(self, user_id: str) -> set[str]:
        """Session ids of the entries that name ``user_id`` (scans every entry)."""
        with translated("scanning the request log in Redis"):
            return sessions_named((entry for _, entry in self._entries()), user_id)

    def forget(self, user_id: str, session_ids: Collection[str]) -> int:
        """Delete the entries naming ``user_id`` or one of ``session_ids`` and the session and
        user rows they logged; returns how many entries were deleted."""
        sessions = set(session_ids)
        entries: list[bytes] = []
        rows: set[bytes] = set()
        with translated("forgetting in the request log in Redis"):
            for key, entry in self._entries():
                if names(entry, user_id, sessions):
                    entries.append(key)
                    rows.update(map(self._row_key, personal_refs(entry, user_id, sessions)))
            doomed = [*entries, *rows]
            for start in range(0, len(doomed), PAGE):
                # redis-py's cluster client splits a DEL of many keys per slot
                self._client.delete(*doomed[start : start + PAGE])
        with self._lock:
            self._digests = RowDigests(created_at=time.monotonic())
        return len(entries)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()
