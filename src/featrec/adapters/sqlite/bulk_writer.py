"""Bulk writes of Arrow tables into Feast's SQLite online store: the fast path on SQLite.

Feast's SQLite store keeps one SQL row per entity *and feature* (``entity_key``,
``feature_name``, serialized ``Value``, ``value_text``, ``event_ts``, ``created_ts``) and writes
them with one ``execute`` each. This writer fills the same rows with one ``executemany`` per
feature and chunk, the values serialized by Arrow kernels (:mod:`featrec.adapters.
feast_wire_arrow`), ``value_text`` and ``event_ts`` as Feast derives them. A row is written
only if its event time is newer than the stored one (the upsert's ``WHERE``), the rule of
Feast's Redis store and of the featrec writers (Feast's SQLite store itself overwrites).

Only the plain layout: :func:`supports` refuses configurations that add columns (vectors,
``value_num``) or version table names; the caller then uses the provider's writer.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from featrec.adapters.errors import translated
from featrec.adapters.feast.bulk_rows import EVENT_TIMESTAMP, checked_newest_rows
from featrec.adapters.feast.layout import arrow as feast_wire_arrow
from featrec.core.features.catalog import Dtype, View
from featrec.errors import ConfigError

CHUNK_ROWS: Final = 20_000
_COLUMNS: Final = ("entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts")


def supports(config: Any) -> bool:
    """Whether ``config`` (a Feast ``RepoConfig``) uses the plain SQLite layout."""
    online = config.online_store
    return (
        online.type == "sqlite"
        and not getattr(online, "vector_enabled", False)
        and not getattr(online, "enable_openai_compatible_store", False)
        and not getattr(config.registry, "enable_online_feature_view_versioning", False)
    )


class SqliteBulkWriter:
    """Writes tables of ``(join key, features..., event_timestamp)`` for one view at a time,
    on the connection Feast's SQLite store uses (``conn``) into its table ``table``."""

    def __init__(self, conn: sqlite3.Connection, table: str) -> None:
        found = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
        if not found:
            raise ConfigError(f"no SQLite table {table}: apply the feature repo first")
        if not set(_COLUMNS) <= found:
            raise ConfigError(f"SQLite table {table} lacks Feast's columns {sorted(_COLUMNS)}")
        self._conn = conn
        self._sql = (
            f'INSERT INTO "{table}" ({", ".join(_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?) '
            "ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
            "value_text = excluded.value_text, event_ts = excluded.event_ts, "
            "created_ts = excluded.created_ts WHERE excluded.event_ts > event_ts"
        )

    def write_table(self, view: View, table: pa.Table, chunk_rows: int = CHUNK_ROWS) -> int:
        """Write the newest row per key of ``table`` where it is newer than the stored one;
        returns how many entities were written."""
        table = checked_newest_rows(view, table)
        written = 0
        with translated(f"writing {view.name} to SQLite"):
            for start in range(0, table.num_rows, chunk_rows):
                written += self._write_chunk(view, table.slice(start, chunk_rows))
        return written

    def _write_chunk(self, view: View, chunk: pa.Table) -> int:
        keys = feast_wire_arrow.entity_keys(
            view.entity.join_key, chunk.column(view.entity.join_key)
        )
        # In primary-key order (entity key, feature name): SQLite's B-trees fill sequentially.
        order = pc.sort_indices(keys)
        chunk, keys = chunk.take(order), keys.take(order)
        stamps = _event_ts(chunk.column(EVENT_TIMESTAMP))
        features = sorted(view.features, key=lambda f: f.name)
        columns = []
        for feature in features:
            column = chunk.column(feature.name)
            values = feast_wire_arrow.encode_column(feature.dtype, column).to_pylist()
            columns.append((feature.name, values, _value_text(feature.dtype, column, values)))
        rows = (
            (key, name, values[i], texts[i], stamps[i], None)
            for i, key in enumerate(keys.to_pylist())
            for name, values, texts in columns
        )
        with self._conn:
            changed = self._conn.executemany(self._sql, rows).rowcount
        # Every feature of a row shares its timestamp: all are written, or none.
        return int(changed) // len(features)


def _event_ts(column: pa.ChunkedArray) -> list[int]:
    """``event_ts`` as Feast stores it: the datetime adapter Feast registers with sqlite3
    turns the naive UTC time into ``int(datetime.timestamp())`` (whole seconds)."""
    micros = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64()).to_pylist()
    seconds: dict[int, int] = {}
    out = []
    for us in micros:
        value = seconds.get(us)
        if value is None:
            naive = datetime.fromtimestamp(us / 1e6, tz=UTC).replace(tzinfo=None)
            value = seconds[us] = int(naive.timestamp())
        out.append(value)
    return out


def _value_text(dtype: Dtype, column: pa.ChunkedArray, encoded: list[bytes]) -> list[str | None]:
    """Feast's ``value_text``: the string, or ``str()`` of the number; None for lists and
    nulls (``encoded`` tells nulls, NaN included, apart)."""
    if dtype is Dtype.STRING:
        return [v if e else None for v, e in zip(column.to_pylist(), encoded, strict=True)]
    if dtype in (Dtype.INT64, Dtype.FLOAT64):
        return [str(v) if e else None for v, e in zip(column.to_pylist(), encoded, strict=True)]
    return [None] * len(encoded)
