"""Version guards: every writer skips a row that is not newer than the stored one.

The writer contract (:class:`featrec.core.ports.features.FeatureWriter`) says a row whose
``version``
is not newer than the stored one is skipped and ``write`` returns how many rows it wrote.
Feast's stores do not give that on their own:

- Redis: Feast skips a row whose event timestamp is not newer than ``_ts:<view>`` (nanosecond
  precision), but does not say which rows it skipped. The guard reads ``_ts:<view>`` first.
- SQLite: Feast stores event timestamps in whole seconds and overwrites unconditionally, so the
  stored timestamp cannot order two updates within one second. featrec keeps each entity's
  µs version in its own table next to Feast's, updated in the same transaction as Feast's
  rows (``BEGIN IMMEDIATE`` makes the read-compare-write atomic across processes).

Both reduce a batch the way :class:`~featrec.core.ports.features.InMemoryFeatureStore` would apply
it
row by row (:func:`accept_newer`), so every writer returns the same count.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from featrec.adapters.feast.layout import values as feast_wire
from featrec.core.features.catalog import View
from featrec.core.features.rows import FeatureRow
from featrec.errors import ConfigError

#: Rows per ``IN (...)`` query (well under SQLite's bound-variable limit).
_SQLITE_CHUNK = 500


def accept_newer(
    rows: Sequence[FeatureRow], stored_ns: Mapping[str, int]
) -> tuple[int, list[FeatureRow]]:
    """Apply ``rows`` in order against stored event times (ns, by key).

    Returns how many rows a row-by-row store would accept and, per key, the newest accepted
    row (in order of first appearance): writing only those gives the same final state.
    """
    latest = dict(stored_ns)
    newest: dict[str, FeatureRow] = {}
    accepted = 0
    for row in rows:
        current = latest.get(row.key)
        ns = row.version * 1000
        if current is None or ns > current:
            latest[row.key] = ns
            newest[row.key] = row
            accepted += 1
    return accepted, list(newest.values())


class Guard(Protocol):
    """Runs ``write`` on the rows of one view that are newer than what the store holds."""

    def guarded(
        self, view: View, rows: Sequence[FeatureRow], write: Callable[[list[FeatureRow]], None]
    ) -> int: ...


class RedisGuard:
    """Reads ``_ts:<view>`` of every key in one pipelined round trip (Feast's Redis layout)."""

    def __init__(self, client: Any, project: str) -> None:
        self._client = client
        self._project = project.encode()

    def stored_ns(self, view: View, keys: Sequence[str]) -> dict[str, int]:
        prefix = feast_wire.entity_key_prefix(view.entity.join_key)
        field = feast_wire.ts_field(view.name)
        with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                data = feast_wire.encode_entity_key_after(prefix, key)
                pipe.execute_command("HGET", data + self._project, field)
            replies = pipe.execute()
        return {
            key: feast_wire.decode_timestamp_ns(reply)
            for key, reply in zip(keys, replies, strict=True)
            if reply is not None
        }

    def guarded(
        self, view: View, rows: Sequence[FeatureRow], write: Callable[[list[FeatureRow]], None]
    ) -> int:
        accepted, newest = accept_newer(rows, self.stored_ns(view, _unique_keys(rows)))
        if newest:
            write(newest)
        return accepted


class SqliteGuard:
    """featrec's table of µs versions inside Feast's SQLite online database.

    ``conn`` must be the connection Feast's SQLite store writes with, so that the version
    update and Feast's rows commit (or roll back) together.
    """

    def __init__(self, conn: sqlite3.Connection, project: str) -> None:
        self._conn = conn
        self._table = f'"{project}__featrec_versions"'
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._table} (view TEXT NOT NULL, "
            "entity_key BLOB NOT NULL, version INTEGER NOT NULL, "
            "PRIMARY KEY (view, entity_key))"
        )
        conn.commit()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        conn = self._conn
        if conn.in_transaction:
            conn.commit()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        if conn.in_transaction:
            conn.commit()

    def stored_ns(self, view: View, keys: Sequence[str]) -> dict[str, int]:
        prefix = feast_wire.entity_key_prefix(view.entity.join_key)
        by_entity = {feast_wire.encode_entity_key_after(prefix, key): key for key in keys}
        entity_keys = list(by_entity)
        out: dict[str, int] = {}
        for start in range(0, len(entity_keys), _SQLITE_CHUNK):
            chunk = entity_keys[start : start + _SQLITE_CHUNK]
            cursor = self._conn.execute(
                f"SELECT entity_key, version FROM {self._table} "
                f"WHERE view = ? AND entity_key IN ({','.join('?' * len(chunk))})",
                [view.name, *chunk],
            )
            for entity_key, version in cursor:
                out[by_entity[entity_key]] = version * 1000
        return out

    def guarded(
        self, view: View, rows: Sequence[FeatureRow], write: Callable[[list[FeatureRow]], None]
    ) -> int:
        prefix = feast_wire.entity_key_prefix(view.entity.join_key)
        with self._transaction():
            accepted, newest = accept_newer(rows, self.stored_ns(view, _unique_keys(rows)))
            if newest:
                self._conn.executemany(
                    f"INSERT INTO {self._table} (view, entity_key, version) VALUES (?, ?, ?) "
                    "ON CONFLICT (view, entity_key) DO UPDATE SET version = excluded.version",
                    [
                        (view.name, feast_wire.encode_entity_key_after(prefix, r.key), r.version)
                        for r in newest
                    ],
                )
                write(newest)
        return accepted


def guard_for_store(store: Any) -> Guard:
    """The guard for a Feast ``FeatureStore``'s online store (Redis or SQLite).

    Uses the online store's own client/connection (a private Feast accessor: there is no
    public one), so the SQLite guard shares Feast's transaction.
    """
    config = store.config
    if config.entity_key_serialization_version != 3:
        raise ConfigError(
            "featrec writes entity keys in serialization version 3: set "
            "entity_key_serialization_version: 3 in feature_store.yaml"
        )
    online = store._get_provider().online_store
    kind = config.online_store.type
    if kind == "redis":
        return RedisGuard(online._get_client(config.online_store), config.project)
    if kind == "sqlite":
        return SqliteGuard(online._get_conn(config), config.project)
    raise ConfigError(f"featrec writers support the sqlite and redis online stores, not {kind!r}")


def _unique_keys(rows: Sequence[FeatureRow]) -> list[str]:
    return list(dict.fromkeys(row.key for row in rows))
