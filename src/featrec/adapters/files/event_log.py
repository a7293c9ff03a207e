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

import queue
import threading
import time
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


def items_of(directory: Path | str, user_id: str, session_ids: Collection[str]) -> set[str]:
    """Every item id the log records for ``user_id`` or ``session_ids``."""
    found: set[str] = set()
    sessions = pa.array(sorted(session_ids), pa.string())
    for path in event_log_files(directory):
        table = pq.read_table(path, columns=["session_id", "user_id", "item_id"])
        mine = table.filter(
            pc.or_(
                pc.fill_null(pc.equal(table["user_id"], user_id), False),
                pc.is_in(table["session_id"], value_set=sessions),
            )
        )
        found.update(mine["item_id"].to_pylist())
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


class BackgroundEventLog:
    """An :class:`EventLogWriter` on its own thread, fed through a bounded queue.

    :meth:`append` hands a batch over and returns at once, unless ``max_pending`` batches
    are already waiting: then it blocks until there is room (backpressure, nothing dropped).
    The thread buffers events and writes a file set when ``max_rows`` are buffered,
    ``max_delay_s`` after the first buffered event, or when :meth:`drain` asks. ``drain``
    blocks until everything appended before it is on disk: a caller that must not lose
    events on a crash (a dataflow's snapshot, before its epoch is committed) calls it.
    A write error is raised from the next ``append`` or ``drain``.
    """

    def __init__(
        self,
        writer: EventLogWriter,
        *,
        max_pending: int = 256,
        max_rows: int = 20_000,
        max_delay_s: float = 1.0,
    ) -> None:
        self.writer = writer
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self._queue: queue.Queue[list[Event] | int | None] = queue.Queue(maxsize=max_pending)
        self._done = threading.Condition()
        self._appended = 0  # batches handed over
        self._written = 0  # batches on disk
        self._drains = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="featrec-event-log", daemon=True)
        self._thread.start()

    def append(self, events: list[Event]) -> None:
        self._check()
        if events:
            self._appended += 1
            self._queue.put(events)

    def drain(self) -> None:
        """Block until every batch appended so far is written."""
        self._check()
        target = self._appended
        if target == self._written:
            return
        self._queue.put(target)
        with self._done:
            while self._written < target and self._error is None:
                self._done.wait(0.1)
        self._check()

    def close(self) -> None:
        self.drain()
        self._queue.put(None)
        self._thread.join()

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"event log writer failed: {self._error}") from self._error

    def _run(self) -> None:
        buffer: list[Event] = []
        batches = 0
        first_at = 0.0
        while True:
            timeout = (
                None if not buffer else max(0.0, first_at + self.max_delay_s - time.monotonic())
            )
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = 0  # the deadline passed: write what is buffered
            if isinstance(item, list):
                if not buffer:
                    first_at = time.monotonic()
                buffer.extend(item)
                batches += 1
                if len(buffer) < self.max_rows:
                    continue
            if buffer or batches:
                try:
                    if buffer:
                        self.writer.write(buffer)
                except BaseException as exc:  # surfaced to the flow by append/drain
                    with self._done:
                        self._error = exc
                        self._done.notify_all()
                    return
                buffer = []
                with self._done:
                    self._written += batches
                    self._done.notify_all()
                batches = 0
            if item is None:
                return
