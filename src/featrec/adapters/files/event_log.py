"""The event log: every valid event, as Parquet partitioned by UTC date (the offline record).

Layout: ``<dir>/date=YYYY-MM-DD/part-<writer>-<uuid>.parquet`` in featrec's event schema
(:data:`EVENT_SCHEMA`). Each :meth:`EventLogWriter.write` call writes one file per date it
touches, so callers batch (the sessions dataflow buffers with a size and deadline bound).
Files appear atomically (written under a dot-name, then renamed), so a reader never sees a
half-written file.

The dataflow's output is at-least-once (bytewax recovery replays the last epoch), so the log
may hold an event twice; :func:`read_event_log` deduplicates by ``event_id``.

Forgetting a user (:func:`remove_events`) rewrites only the files holding their events, each
replaced atomically by a copy without them (a file left empty is deleted).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featrec.adapters.files.atomic import atomic_path
from featrec.core.events.model import Event
from featrec.core.features.rows import micros

EVENT_SCHEMA: Final = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("price", pa.float64()),
        pa.field("category", pa.string()),
        pa.field("quantity", pa.int64()),
    ]
)


class EventLogWriter:
    """Appends batches of events under ``directory``; ``writer`` names the files' producer."""

    def __init__(self, directory: Path | str, writer: str = "0") -> None:
        self.directory = Path(directory)
        self.writer = writer

    def write(self, events: Iterable[Event]) -> list[Path]:
        """Write one Parquet file per UTC date present in ``events``; returns the files."""
        by_date: dict[date, list[Event]] = defaultdict(list)
        for event in events:
            by_date[event.ts.date()].append(event)
        written = []
        for day, batch in sorted(by_date.items()):
            part_dir = self.directory / f"date={day.isoformat()}"
            part_dir.mkdir(parents=True, exist_ok=True)
            name = f"part-{self.writer}-{uuid.uuid4().hex}.parquet"
            final = part_dir / name
            with atomic_path(final) as tmp:
                pq.write_table(events_to_table(batch), tmp)
            written.append(final)
        return written


def events_to_table(events: Sequence[Event]) -> pa.Table:
    """Events as a table in :data:`EVENT_SCHEMA` (column order and types fixed)."""
    # Timestamps as integer µs: pyarrow converts ints far faster than datetime objects.
    columns = [
        pa.array([e.event_id for e in events], pa.string()),
        pa.array([e.session_id for e in events], pa.string()),
        pa.array([e.user_id for e in events], pa.string()),
        pa.array([e.item_id for e in events], pa.string()),
        pa.array([e.type for e in events], pa.string()),
        pa.array([micros(e.ts) for e in events], pa.int64()).cast(EVENT_SCHEMA.field("ts").type),
        pa.array([e.price for e in events], pa.float64()),
        pa.array([e.category for e in events], pa.string()),
        pa.array([e.quantity for e in events], pa.int64()),
    ]
    return pa.Table.from_arrays(columns, schema=EVENT_SCHEMA)


def event_log_files(directory: Path | str) -> list[Path]:
    """The log's finished files, in (date, name) order; temporary files are not included."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("date=*/part-*.parquet") if not p.name.startswith("."))


def read_event_log(directory: Path | str) -> pa.Table:
    """The whole log, one row per ``event_id`` (first copy kept), ordered by (ts, event_id).

    An empty or missing directory gives an empty table with the event schema.
    """
    files = event_log_files(directory)
    if not files:
        return EVENT_SCHEMA.empty_table()
    table = pa.concat_tables(pq.read_table(f, schema=EVENT_SCHEMA) for f in files)
    table = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    first = table.group_by("event_id", use_threads=False).aggregate([("_row", "min")])
    table = table.take(first["_row_min"])
    table = table.drop_columns(["_row"])
    order = pc.sort_indices(table, sort_keys=[("ts", "ascending"), ("event_id", "ascending")])
    return table.take(order)


def sessions_of_user(directory: Path | str, user_id: str) -> set[str]:
    """Every session id the log records for ``user_id``."""
    found: set[str] = set()
    for path in event_log_files(directory):
        table = pq.read_table(path, columns=["session_id", "user_id"])
        mine = table.filter(pc.equal(table["user_id"], user_id))
        found.update(mine["session_id"].to_pylist())
    return found


def remove_events(
    directory: Path | str, user_id: str, session_ids: Collection[str]
) -> tuple[int, int]:
    """Rewrite the log without the events of ``user_id`` or of ``session_ids``; returns
    ``(events removed, files rewritten)``."""
    removed = files = 0
    sessions = pa.array(sorted(session_ids), pa.string())
    for path in event_log_files(directory):
        table = pq.read_table(path, schema=EVENT_SCHEMA)
        drop = pc.or_(
            pc.fill_null(pc.equal(table["user_id"], user_id), False),
            pc.is_in(table["session_id"], value_set=sessions),
        )
        n = pc.sum(drop).as_py() or 0
        if not n:
            continue
        kept = table.filter(pc.invert(drop))
        if kept.num_rows:
            with atomic_path(path) as tmp:
                pq.write_table(kept, tmp)
        else:
            path.unlink()
        removed += n
        files += 1
    return removed, files
