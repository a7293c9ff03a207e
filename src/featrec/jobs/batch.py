"""The batch job: daily snapshots of the batch views, computed from the event log.

``run_batch`` loads the log into DuckDB once (:class:`~featrec.adapters.duckdb.features.
EventLogDB`) and writes one snapshot file per view and day
(:mod:`featrec.adapters.files.snapshots`),
where the views' Feast batch sources read them. Re-running a day replaces its files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa

from featrec.adapters.duckdb.features import EventLogDB
from featrec.adapters.files.snapshots import snapshot_dir, write_snapshot
from featrec.core.features import catalog
from featrec.core.features.snapshot_days import default_as_of, midnight, snapshot_dates
from featrec.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SnapshotWritten:
    view: str
    as_of: datetime
    rows: int
    path: Path


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What a run will compute: the days, and how many events the log holds."""

    days: list[date]
    n_events: int


def plan_batch(db: EventLogDB, as_of: date | None, since: date | None, now: datetime) -> BatchPlan:
    """The days to compute: ``since..as_of``; ``as_of`` defaults to :func:`default_as_of`."""
    span = db.time_range()
    newest = None if span is None else datetime.fromtimestamp(span[1] / 1e6, tz=UTC)
    day = as_of if as_of is not None else default_as_of(newest, now)
    return BatchPlan(days=snapshot_dates(day, since), n_events=db.count())


def snapshot_table(db: EventLogDB, view: str, as_of: datetime) -> pa.Table:
    """The view's snapshot in its batch-source schema (event timestamp = ``as_of``)."""
    from featrec.adapters.feast.types import EVENT_TIMESTAMP, arrow_schema

    table = db.snapshot(view, as_of)
    stamp = pa.array([as_of] * table.num_rows, pa.timestamp("us", tz="UTC"))
    table = table.append_column(EVENT_TIMESTAMP, stamp)
    return table.cast(arrow_schema(catalog.VIEWS[view]))


def run_batch(
    db: EventLogDB,
    data_dir: Path,
    days: Sequence[date],
    *,
    views: Sequence[str] = tuple(catalog.BATCH_VIEWS),
    on_snapshot: Callable[[SnapshotWritten], None] | None = None,
) -> list[SnapshotWritten]:
    """Write the snapshot of every view as of the midnight starting each day."""
    unknown = [v for v in views if v not in catalog.BATCH_VIEWS]
    if unknown:
        raise ConfigError(
            f"not a batch view: {', '.join(unknown)} (batch views: "
            f"{', '.join(catalog.BATCH_VIEWS)})"
        )
    written = []
    for day in days:
        as_of = midnight(day)
        for view in views:
            table = snapshot_table(db, view, as_of)
            path = write_snapshot(snapshot_dir(data_dir, view), as_of, table)
            done = SnapshotWritten(view, as_of, table.num_rows, path)
            written.append(done)
            if on_snapshot is not None:
                on_snapshot(done)
    return written
