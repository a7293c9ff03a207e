"""The event log as integer-coded click arrays for the item model (no Python object per event).

DuckDB codes the session and item ids (dense ranks in id order) and sorts the events by
(session, time, event id); only the coded columns and the distinct ids cross into Python, as
numpy arrays and lists, so 10M events cost a few hundred MB, not a Python object each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from featrec.adapters.duckdb.features import EventLogDB


@dataclass(frozen=True, slots=True)
class ClickArrays:
    sessions: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    #: Event times in unix seconds.
    times: npt.NDArray[np.float64]
    item_ids: list[str]
    session_ids: list[str]


def click_arrays(db: EventLogDB, until_us: int | None = None) -> ClickArrays:
    """Every event of the (deduplicated, deny-list filtered) log before ``until_us``."""
    where = "" if until_us is None else f"WHERE t < {int(until_us)}"
    columns = "session_id, item_id, t, event_id"
    db.query(f"CREATE OR REPLACE TEMP TABLE _clicks AS SELECT {columns} FROM events {where}")
    item_ids = db.query("SELECT DISTINCT item_id FROM _clicks ORDER BY item_id").column(0)
    session_ids = db.query("SELECT DISTINCT session_id FROM _clicks ORDER BY session_id").column(0)
    coded = db.query(
        """
        WITH i AS (SELECT item_id, (row_number() OVER (ORDER BY item_id) - 1)::BIGINT AS ic
                   FROM (SELECT DISTINCT item_id FROM _clicks)),
             s AS (SELECT session_id, (row_number() OVER (ORDER BY session_id) - 1)::BIGINT AS sc
                   FROM (SELECT DISTINCT session_id FROM _clicks))
        SELECT s.sc, i.ic, _clicks.t FROM _clicks
        JOIN i USING (item_id) JOIN s USING (session_id)
        ORDER BY s.sc, _clicks.t, _clicks.event_id
        """
    )
    db.query("DROP TABLE _clicks")
    return ClickArrays(
        sessions=coded.column(0).to_numpy().astype(np.int64),
        items=coded.column(1).to_numpy().astype(np.int64),
        times=coded.column(2).to_numpy().astype(np.float64) / 1e6,
        item_ids=[str(v) for v in item_ids.to_pylist()],
        session_ids=[str(v) for v in session_ids.to_pylist()],
    )
