"""Long-term user and item features: DuckDB SQL over the event log, as of an instant.

:class:`EventLogDB` loads the log once (deduplicated by ``event_id``: replays write identical
copies, so which copy is kept does not matter) with timestamps as integer microseconds ``t``,
then computes one snapshot per call. Definitions (windows, tie-breaks, nulls) are those of
the catalog's descriptions (:data:`featrec.core.features.catalog.USER_FEATURES` and
``ITEM_FEATURES``);
``tests/test_batch_features.py`` checks every value against a plain-Python recomputation.

All bounds are integers computed in Python and inlined: no time-zone arithmetic in SQL.

Events of forgotten users and sessions (the deny-list next to the log, see
:mod:`featrec.adapters.files.deny_list`) are removed as the log is loaded, so a snapshot never
describes them even if an old copy of their events found its way back into the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from featrec.adapters.files.event_log import event_log_files
from featrec.core.events.model import KNOWN_TYPES, PURCHASE, VIEW
from featrec.core.features import catalog
from featrec.core.features.rows import micros
from featrec.core.features.snapshot_days import DAY_US, window_start_us
from featrec.core.privacy import DenySet
from featrec.errors import ConfigError

_DAYS = f"{DAY_US}.0"


def _counts(as_of: datetime) -> str:
    """``count(*) FILTER (...) AS n_<type>_<d>d`` for every type and window of the catalog."""
    return ",\n    ".join(
        f"count(*) FILTER (WHERE type = '{t}' AND t >= {window_start_us(as_of, d)}) "
        f"AS {catalog.count_feature(t, d)}"
        for t in KNOWN_TYPES
        for d in catalog.BATCH_WINDOWS_DAYS
    )


def _count_names() -> str:
    return ", ".join(
        catalog.count_feature(t, d) for t in KNOWN_TYPES for d in catalog.BATCH_WINDOWS_DAYS
    )


def user_features_sql(as_of: datetime) -> str:
    """One row per user with an event before ``as_of``, columns in catalog order."""
    end = micros(as_of)
    long = window_start_us(as_of, catalog.LONG_WINDOW_DAYS)
    return f"""
WITH ev AS (
  SELECT * FROM events WHERE user_id IS NOT NULL AND t < {end}
),
base AS (
  SELECT user_id,
    {_counts(as_of)},
    count(DISTINCT session_id) FILTER (WHERE t >= {long}) AS n_sessions_90d,
    count(DISTINCT session_id) FILTER (WHERE t >= {long} AND type = '{PURCHASE}')
      AS n_buying_sessions_90d,
    max(t) AS last_t,
    max(t) FILTER (WHERE type = '{PURCHASE}') AS last_purchase_t,
    avg(price) FILTER (WHERE t >= {long} AND type = '{VIEW}') AS avg_price_viewed_90d,
    avg(price) FILTER (WHERE t >= {long} AND type = '{PURCHASE}') AS avg_price_bought_90d
  FROM ev GROUP BY user_id
),
by_category AS (
  SELECT user_id, category, count(*) AS n FROM ev
  WHERE t >= {long} AND category IS NOT NULL GROUP BY user_id, category
),
top AS (
  SELECT user_id,
    list(category ORDER BY n DESC, category)[1:{catalog.TOP_CATEGORIES_N}] AS top_categories,
    list(n ORDER BY n DESC, category)[1:{catalog.TOP_CATEGORIES_N}] AS top_n,
    sum(n) AS total
  FROM by_category GROUP BY user_id
),
bought AS (
  SELECT user_id, item_id, max(t) AS last_t, count(DISTINCT session_id) AS n_sessions
  FROM ev WHERE type = '{PURCHASE}' GROUP BY user_id, item_id
),
purchases AS (
  SELECT user_id,
    avg(CASE WHEN n_sessions >= 2 THEN 1.0 ELSE 0.0 END) AS repeat_purchase_rate,
    list(item_id ORDER BY last_t DESC, item_id)[1:{catalog.RECENT_PURCHASES_N}]
      AS recent_purchases
  FROM bought GROUP BY user_id
)
SELECT base.user_id, {_count_names()},
  n_sessions_90d,
  coalesce(top.top_categories, []::VARCHAR[]) AS top_categories,
  coalesce(list_transform(top.top_n, lambda x: x / top.total), []::DOUBLE[])
    AS top_category_shares,
  ({end} - last_t) / {_DAYS} AS days_since_last_event,
  ({end} - last_purchase_t) / {_DAYS} AS days_since_last_purchase,
  avg_price_viewed_90d,
  avg_price_bought_90d,
  n_buying_sessions_90d / nullif(n_sessions_90d, 0)::DOUBLE AS purchase_rate_90d,
  purchases.repeat_purchase_rate,
  coalesce(purchases.recent_purchases, []::VARCHAR[]) AS recent_purchases
FROM base LEFT JOIN top USING (user_id) LEFT JOIN purchases USING (user_id)
ORDER BY base.user_id
"""


def item_features_sql(as_of: datetime) -> str:
    """One row per item with an event before ``as_of``, columns in catalog order."""
    end = micros(as_of)
    conv = window_start_us(as_of, catalog.CONVERSION_WINDOW_DAYS)
    return f"""
SELECT item_id,
  {_counts(as_of)},
  (count(*) FILTER (WHERE type = '{PURCHASE}' AND t >= {conv}))
    / nullif(count(*) FILTER (WHERE type = '{VIEW}' AND t >= {conv}), 0)::DOUBLE
    AS conversion_rate_30d,
  arg_max(price, row(t, event_id)) FILTER (WHERE price IS NOT NULL) AS price,
  arg_max(category, row(t, event_id)) FILTER (WHERE category IS NOT NULL) AS category,
  min(t) / 1e6 AS first_seen_s,
  ({end} - min(t)) / {_DAYS} AS days_since_first_seen
FROM events WHERE t < {end}
GROUP BY item_id
ORDER BY item_id
"""


_SQL = {
    catalog.USER_FEATURES.name: user_features_sql,
    catalog.ITEM_FEATURES.name: item_features_sql,
}


class EventLogDB:
    """The event log in an in-process DuckDB database, ready for snapshot queries.

    ``temp_dir`` is where DuckDB spills when the log outgrows memory; ``threads`` bounds its
    parallelism (default: DuckDB's, one per core). ``deny`` is the deny-list of forgotten
    users (default: the one guarding ``log_dir``); :attr:`forgotten` counts the events it
    removed.
    """

    def __init__(
        self,
        log_dir: Path | str,
        *,
        temp_dir: Path | str | None = None,
        threads: int | None = None,
        deny: DenySet | None = None,
    ) -> None:
        self._con = duckdb.connect()
        self._con.execute("SET TimeZone = 'UTC'")
        if temp_dir is not None:
            Path(temp_dir).mkdir(parents=True, exist_ok=True)
            self._con.execute(f"SET temp_directory = {sql_string(str(temp_dir))}")
        if threads is not None:
            self._con.execute(f"SET threads = {int(threads)}")
        files = [str(f) for f in event_log_files(log_dir)]
        if files:
            source = f"read_parquet({sql_file_list(files)})"
        else:
            source = (
                "(SELECT NULL::VARCHAR AS event_id, NULL::VARCHAR AS session_id, "
                "NULL::VARCHAR AS user_id, NULL::VARCHAR AS item_id, NULL::VARCHAR AS type, "
                "NULL::TIMESTAMPTZ AS ts, NULL::DOUBLE AS price, NULL::VARCHAR AS category "
                "WHERE false)"
            )
        self._con.execute(
            "CREATE TABLE events AS SELECT DISTINCT ON (event_id) event_id, session_id, "
            "user_id, item_id, type, epoch_us(ts) AS t, price, category "
            f"FROM {source}"
        )
        if deny is None:
            from featrec.adapters.files.deny_list import load_log_deny_set

            deny = load_log_deny_set(log_dir)
        self.forgotten = self._drop_denied(deny) if deny else 0

    def _drop_denied(self, deny: DenySet) -> int:
        """Delete the events of denied users, and the anonymous events of denied sessions.

        The ids are hashed in Python (keyed BLAKE2b has no SQL twin), once per distinct id.
        """
        users = self._distinct("SELECT DISTINCT user_id FROM events WHERE user_id IS NOT NULL")
        sessions = self._distinct("SELECT DISTINCT session_id FROM events WHERE user_id IS NULL")
        denied_users = pa.table(
            {"id": pa.array([u for u in users if deny.contains("user", u)], pa.string())}
        )
        denied_sessions = pa.table(
            {"id": pa.array([s for s in sessions if deny.contains("session", s)], pa.string())}
        )
        if not denied_users.num_rows and not denied_sessions.num_rows:
            return 0
        before = self.count()
        self._con.register("denied_users", denied_users)
        self._con.register("denied_sessions", denied_sessions)
        self._con.execute(
            "DELETE FROM events WHERE user_id IN (SELECT id FROM denied_users) "
            "OR session_id IN (SELECT id FROM denied_sessions)"
        )
        self._con.unregister("denied_users")
        self._con.unregister("denied_sessions")
        return before - self.count()

    def _distinct(self, sql: str) -> list[str]:
        return [str(v) for v in self._con.execute(sql).to_arrow_table().column(0).to_pylist()]

    def count(self) -> int:
        """Events in the log (after deduplication)."""
        return int(self._scalar("SELECT count(*) FROM events"))

    def time_range(self) -> tuple[int, int] | None:
        """``(first, last)`` event times in µs, or None for an empty log."""
        row = self._con.execute("SELECT min(t), max(t) FROM events").fetchone()
        if row is None or row[0] is None:
            return None
        return int(row[0]), int(row[1])

    def snapshot(self, view: str, as_of: datetime) -> pa.Table:
        """The view's snapshot as of ``as_of``: catalog columns (join key first), no timestamp."""
        sql = _SQL.get(view)
        if sql is None:
            raise ConfigError(
                f"{view!r} is not a batch view (batch views: {', '.join(catalog.BATCH_VIEWS)})"
            )
        table: pa.Table = self._con.execute(sql(as_of)).to_arrow_table()
        expected = [catalog.VIEWS[view].entity.join_key, *catalog.VIEWS[view].feature_names]
        if table.column_names != expected:  # the SQL and the catalog drifted apart
            raise AssertionError(f"{view} SQL returned {table.column_names}, want {expected}")
        return table

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Any query over ``events`` (for tools and tests)."""
        result: pa.Table = self._con.execute(sql, params).to_arrow_table()
        return result

    def _scalar(self, sql: str) -> Any:
        row = self._con.execute(sql).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> EventLogDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sql_string(text: str) -> str:
    """``text`` as a quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def sql_file_list(files: Sequence[str]) -> str:
    """A SQL list literal of file names (for ``read_parquet``)."""
    return "[" + ", ".join(sql_string(f) for f in files) + "]"
