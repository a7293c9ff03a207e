"""The batch engine of declared features: the same declarations as DuckDB SQL over the event log.

One query per declaration computes every feature for a table of *points* ``(key, as_of_us)``:
the events of each key up to its as-of time, filtered, then each aggregation over its own
window (``FILTER (WHERE t >= lower bound)``, the bound of
:meth:`featrec.core.features.declared.model.Aggregation.lower_bound`). Points are either each
key's newest event (materialization into the online store: what the stream holds), every
event time of every key (the offline history Feast's point-in-time joins read), or given
(a training set's entity rows, a skew sample).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import duckdb
import pyarrow as pa

from featrec.adapters.duckdb.features import sql_file_list, sql_string
from featrec.adapters.files.event_log import EVENT_SCHEMA, event_log_files
from featrec.core.features.declared.model import (
    AS_OF,
    COLUMNS,
    Aggregation,
    Declaration,
    Filters,
    Function,
)

#: The columns of the ``events`` table the queries read (``t``: event time in µs).
_EVENT_COLUMNS = (
    "event_id, session_id, user_id, item_id, type, epoch_us(ts) AS t, price, category, quantity"
)
POINTS_SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field(AS_OF, pa.int64())])


def filter_sql(filters: Filters, alias: str = "e") -> str:
    """The filters as a SQL condition on ``alias`` (``TRUE`` when there are none)."""
    parts = []
    if filters.event_types is not None:
        parts.append(f"{alias}.type IN ({', '.join(map(sql_string, filters.event_types))})")
    if filters.categories is not None:
        parts.append(f"{alias}.category IN ({', '.join(map(sql_string, filters.categories))})")
    if filters.price_min is not None:
        parts.append(f"{alias}.price >= {float(filters.price_min)!r}")
    if filters.price_max is not None:
        parts.append(f"{alias}.price < {float(filters.price_max)!r}")
    return " AND ".join(parts) or "TRUE"


#: Each function as a SQL aggregate: ``{v}`` the value, ``{w}`` its FILTER clause, ``{o}``
#: the newest-first order, ``{n}`` the list length. Empty windows give what the stream gives.
_AGGREGATES: Final[Mapping[Function, str]] = {
    Function.COUNT: "count(*) {w}",
    Function.SUM: "coalesce(sum({v}) {w}, 0.0)",
    Function.MEAN: "avg({v}) {w}",
    Function.MIN: "min({v}) {w}",
    Function.MAX: "max({v}) {w}",
    Function.LAST: "first({v} {o}) {w}",
    Function.COUNT_DISTINCT: "count(DISTINCT {v}) {w}",
    Function.LAST_N: "coalesce(list({v} {o}) {w}, [])[1:{n}]",
}


def aggregation_sql(agg: Aggregation) -> str:
    """One aggregation as a SQL aggregate over the joined ``e`` rows of a point ``p``."""
    col = f"e.{agg.column}"
    cond = f"{col} IS NOT NULL"
    if agg.window_us is not None:
        hop = agg.hop_us or agg.window_us
        cond += f" AND e.t >= (p.{AS_OF} // {hop} + 1) * {hop} - {agg.window_us}"
    sql = _AGGREGATES[agg.function].format(
        v=f"{col}::DOUBLE" if COLUMNS[agg.column] else col,
        w=f"FILTER (WHERE {cond})",
        o="ORDER BY e.t DESC, e.event_id DESC",
        n=agg.n,
    )
    return f"{sql} AS {agg.name}"


def declaration_sql(decl: Declaration, points: str = "points") -> str:
    """The query computing ``decl`` at every row of the ``points`` table."""
    widest = max((a.window_us or 0) for a in decl.aggregations)
    session = any(a.window_us is None for a in decl.aggregations)
    lower = "" if session else f" AND e.t > p.{AS_OF} - {widest}"
    features = ",\n  ".join(aggregation_sql(a) for a in decl.aggregations)
    return (
        f"SELECT p.key AS {decl.join_key}, p.{AS_OF},\n  {features}\n"
        f"FROM {points} p LEFT JOIN events e ON e.{decl.join_key} = p.key "
        f"AND e.t <= p.{AS_OF}{lower} AND {filter_sql(decl.filters)}\n"
        f"GROUP BY p.key, p.{AS_OF} ORDER BY p.key, p.{AS_OF}"
    )


class DeclaredBatch:
    """The event log (or an Arrow table of events) in DuckDB, computing declarations.

    Events are deduplicated by ``event_id`` as the log's readers do (the flow's output is
    at-least-once). ``threads`` bounds DuckDB's parallelism.
    """

    def __init__(self, events: pa.Table | Path | str, *, threads: int | None = None) -> None:
        self._con = duckdb.connect()
        self._con.execute("SET TimeZone = 'UTC'")
        if threads is not None:
            self._con.execute(f"SET threads = {int(threads)}")
        files = [] if isinstance(events, pa.Table) else [str(f) for f in event_log_files(events)]
        if files:
            source = f"read_parquet({sql_file_list(files)})"
        else:  # an Arrow table, or an empty log
            table = events if isinstance(events, pa.Table) else EVENT_SCHEMA.empty_table()
            self._con.register("raw_events", table)
            source = "raw_events"
        self._con.execute(
            f"CREATE TABLE events AS SELECT DISTINCT ON (event_id) {_EVENT_COLUMNS} FROM {source}"
        )
        self._con.execute("CREATE INDEX IF NOT EXISTS events_t ON events (t)")

    def count(self) -> int:
        row = self._con.execute("SELECT count(*) FROM events").fetchone()
        return int(row[0]) if row else 0

    def compute(self, decl: Declaration, points: pa.Table) -> pa.Table:
        """``decl`` at each ``(key, as_of_us)`` of ``points`` (schema :data:`POINTS_SCHEMA`)."""
        self._con.register("points", points)
        try:
            return self._con.execute(declaration_sql(decl)).to_arrow_table()
        finally:
            self._con.unregister("points")

    def latest_points(self, decl: Declaration, until_us: int | None = None) -> pa.Table:
        """Each key's newest event time (at or before ``until_us``): what the stream holds."""
        return self._points(decl, f"max(t) AS {AS_OF}", until_us, group=True)

    def history_points(self, decl: Declaration, until_us: int | None = None) -> pa.Table:
        """Every distinct event time of every key: the rows the stream wrote over time."""
        return self._points(decl, f"t AS {AS_OF}", until_us, group=False)

    def _points(
        self, decl: Declaration, as_of: str, until_us: int | None, *, group: bool
    ) -> pa.Table:
        until = "" if until_us is None else f" AND t <= {int(until_us)}"
        sql = (
            f"SELECT {'' if group else 'DISTINCT '}{decl.join_key} AS key, {as_of} FROM events "
            f"WHERE {decl.join_key} IS NOT NULL{until}{' GROUP BY 1' if group else ''}"
        )
        return self._con.execute(sql).to_arrow_table().cast(POINTS_SCHEMA)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        return self._con.execute(sql, params or []).to_arrow_table()

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> DeclaredBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
