"""The event log streamed in time order, in Arrow batches, with each event's place in its session.

Training reads logs far larger than Python can hold as objects (10M events are ~5 GB of
:class:`~featrec.core.events.model.Event`). :class:`LogStream` loads the log into an in-process
DuckDB database (deduplicated by ``event_id``, first copy in file order kept, exactly as
:func:`~featrec.adapters.files.event_log.read_event_log`), where window queries add per event:

- ``position``: its 1-based place in its session (order ``ts, event_id``);
- ``next_item``: the item of the session's next event (null at the session's last event);
- ``last``: whether it is the session's last event (so a replay can forget the session).

:meth:`LogStream.batches` yields them ordered by ``(ts, event_id)`` (the order of
``read_event_log``) as record batches of bounded size; DuckDB spills to ``temp_dir`` when the
log outgrows ``memory_limit``. :func:`events_of` turns one batch into events.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featrec.adapters.duckdb.features import sql_string
from featrec.adapters.files.event_log import EVENT_SCHEMA, event_log_files
from featrec.core.events.model import Event
from featrec.errors import ConfigError

#: The event columns, in :class:`Event`'s field order.
EVENT_FIELDS = (
    "event_id",
    "session_id",
    "item_id",
    "type",
    "ts",
    "user_id",
    "price",
    "category",
    "quantity",
)

_EMPTY = (
    "(SELECT NULL::VARCHAR AS event_id, NULL::VARCHAR AS session_id, NULL::VARCHAR AS user_id, "
    "NULL::VARCHAR AS item_id, NULL::VARCHAR AS type, NULL::TIMESTAMPTZ AS ts, "
    "NULL::DOUBLE AS price, NULL::VARCHAR AS category, NULL::BIGINT AS quantity, "
    "0 AS file_index, 0 AS file_row_number WHERE false)"
)


class LogStream:
    """The event log in DuckDB, ready to stream (see the module doc)."""

    def __init__(
        self,
        log_dir: Path | str,
        *,
        temp_dir: Path | str | None = None,
        memory_limit: str = "2GB",
        threads: int | None = None,
    ) -> None:
        self._con = duckdb.connect()
        self._con.execute("SET TimeZone = 'UTC'")
        self._con.execute(f"SET memory_limit = {sql_string(memory_limit)}")
        if temp_dir is not None:
            Path(temp_dir).mkdir(parents=True, exist_ok=True)
            self._con.execute(f"SET temp_directory = {sql_string(str(temp_dir))}")
        if threads is not None:
            self._con.execute(f"SET threads = {int(threads)}")
        files = [str(f) for f in event_log_files(log_dir)]
        if files:
            self._con.register(
                "log_files",
                pa.table({"name": files, "file_index": list(range(len(files)))}),
            )
            columns = ", ".join(EVENT_SCHEMA.names)
            source = (
                f"(SELECT {columns}, f.file_index, r.file_row_number "
                f"FROM read_parquet([{', '.join(sql_string(f) for f in files)}], "
                "filename = true, file_row_number = true) r "
                "JOIN log_files f ON r.filename = f.name)"
            )
        else:
            source = _EMPTY
        self._con.execute(
            "CREATE TABLE log AS "
            "WITH dedup AS ("
            f"  SELECT * FROM {source} "
            "  QUALIFY row_number() OVER "
            "    (PARTITION BY event_id ORDER BY file_index, file_row_number) = 1) "
            "SELECT event_id, session_id, item_id, type, ts, user_id, price, category, quantity, "
            "  row_number() OVER s AS position, lead(item_id) OVER s AS next_item "
            "FROM dedup WINDOW s AS (PARTITION BY session_id ORDER BY ts, event_id)"
        )
        if files:
            self._con.unregister("log_files")

    def count(self) -> int:
        """Events in the log (after deduplication)."""
        return int(self._scalar("SELECT count(*) FROM log"))

    def count_points(
        self,
        *,
        collapse_repeats: bool = True,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> int:
        """Events that are prediction points (see :meth:`batches`' ``target``)."""
        where, params = _point_filter(collapse_repeats, start, end)
        return int(self._scalar(f"SELECT count(*) FROM log WHERE {where}", params))

    def batches(
        self,
        *,
        batch_rows: int = 65_536,
        collapse_repeats: bool = True,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Every event in ``(ts, event_id)`` order: :data:`EVENT_FIELDS` plus ``position``,
        ``last`` and ``target``, the next item when the event is a prediction point (the
        session has a next event, on another item with ``collapse_repeats``, and the event is
        in ``[start, end)``), else null."""
        where, params = _point_filter(collapse_repeats, start, end)
        reader = self._con.execute(
            f"SELECT {', '.join(EVENT_FIELDS)}, position, next_item IS NULL AS last, "
            f"CASE WHEN {where} THEN next_item END AS target "
            "FROM log ORDER BY ts, event_id",
            params,
        ).to_arrow_reader(batch_rows)
        yield from reader

    def _scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        row = self._con.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> LogStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _point_filter(
    collapse_repeats: bool, start: datetime | None, end: datetime | None
) -> tuple[str, list[Any]]:
    where = ["next_item IS NOT NULL"]
    params: list[Any] = []
    if collapse_repeats:
        where.append("next_item <> item_id")
    if start is not None:
        where.append("ts >= ?")
        params.append(start)
    if end is not None:
        where.append("ts < ?")
        params.append(end)
    return " AND ".join(where), params


def events_of(batch: pa.RecordBatch) -> list[Event]:
    """The events of one :meth:`LogStream.batches` batch, in its order."""
    columns = [batch.column(name).to_pylist() for name in EVENT_FIELDS]
    return [Event(*values) for values in zip(*columns, strict=True)]


class DatasetStream:
    """A training set (``featrec dataset build`` output) read point by point: its rows ordered
    by the point's time (its first candidate's ``event_timestamp``), ``point_id`` and
    ``candidate_rank``, in record batches, so a point's rows are consecutive (one point may
    straddle two batches)."""

    def __init__(
        self,
        path: Path | str,
        *,
        required: Sequence[str] = (),
        memory_limit: str = "2GB",
        temp_dir: Path | str | None = None,
    ) -> None:
        self._path = Path(path)
        self._con = duckdb.connect()
        self._con.execute("SET TimeZone = 'UTC'")
        self._con.execute(f"SET memory_limit = {sql_string(memory_limit)}")
        if temp_dir is not None:
            Path(temp_dir).mkdir(parents=True, exist_ok=True)
            self._con.execute(f"SET temp_directory = {sql_string(str(temp_dir))}")
        self._source = f"read_parquet({sql_string(str(path))})"
        try:
            query = self._con.execute(f"SELECT * FROM {self._source} LIMIT 0")
        except duckdb.Error as e:
            self._con.close()
            raise ConfigError(f"cannot read the training set {path}: {e}") from None
        names = [d[0] for d in query.description]
        missing = [c for c in required if c not in names]
        if missing:
            self._con.close()
            raise ConfigError(
                f"the training set lacks column(s) {', '.join(missing)}: build it with "
                "`featrec dataset build`"
            )

    def count(self) -> int:
        """Rows (examples) in the training set."""
        row = self._con.execute(f"SELECT count(*) FROM {self._source}").fetchone()
        return 0 if row is None else int(row[0])

    def points(self) -> pa.Table:
        """One row per point: ``point_id``, ``at`` (its time) and ``session_id``."""
        table: pa.Table = self._con.execute(
            "SELECT point_id, arg_min(event_timestamp, candidate_rank) AS at, "
            "arg_min(session_id, candidate_rank) AS session_id "
            f"FROM {self._source} GROUP BY point_id"
        ).to_arrow_table()
        return table

    def batches(self, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        if self.in_order():  # as `featrec dataset build` writes it: no sort needed
            yield from pq.ParquetFile(self._path).iter_batches(batch_size=batch_rows)
            return
        reader = self._con.execute(
            "SELECT * FROM ("
            "  SELECT *, first_value(event_timestamp) OVER "
            "    (PARTITION BY point_id ORDER BY candidate_rank) AS _at "
            f"  FROM {self._source}) "
            "ORDER BY _at, point_id, candidate_rank"
        ).to_arrow_reader(batch_rows)
        for batch in reader:
            yield batch.drop_columns(["_at"])

    def in_order(self) -> bool:
        """Whether the file's rows are already in :meth:`batches`' order with each point's
        rows on one time: point ids strictly increasing from one point to the next, times
        not decreasing, candidate ranks increasing within a point (one pass over 3 columns)."""
        columns = ["point_id", "candidate_rank", "event_timestamp"]
        previous: tuple[int, int, int] | None = None
        for batch in pq.ParquetFile(self._path).iter_batches(columns=columns):
            pid = batch.column("point_id").to_numpy(zero_copy_only=False)
            rank = batch.column("candidate_rank").to_numpy(zero_copy_only=False)
            ts = batch.column("event_timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)
            if len(pid) == 0:
                continue
            if previous is not None:
                pid = np.concatenate([[previous[0]], pid])
                rank = np.concatenate([[previous[1]], rank])
                ts = np.concatenate([[previous[2]], ts])
            same = pid[1:] == pid[:-1]
            ok_within = (rank[1:] > rank[:-1]) & (ts[1:] == ts[:-1])
            ok_across = (pid[1:] > pid[:-1]) & (ts[1:] >= ts[:-1])
            if not np.where(same, ok_within, ok_across).all():
                return False
            previous = (int(pid[-1]), int(rank[-1]), int(ts[-1]))
        return True

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> DatasetStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
