"""Fill the event log from an event file, idempotently: an ``event_id`` is logged once.

Valid events are staged in a Parquet file next to the log; DuckDB then keeps those whose
``event_id`` is neither in the log already nor earlier in the same file (first copy wins) and
writes them into the log's date partitions (``date=YYYY-MM-DD/part-import-<uuid>.parquet``,
each file renamed into place when complete). Importing the same file twice adds nothing the
second time; an import that died halfway is finished by running it again.

Refused records are appended to the dead-letter file (JSON lines: origin, reason, payload, at),
as the dataflow does, and counted in the result: nothing is dropped silently.

Events of forgotten users or sessions (the deny-list guarding the log, see
:mod:`featrec.adapters.files.deny_list`) are not imported, only counted (``forgotten``): importing
an
old copy of the log cannot bring a forgotten user back.
"""

from __future__ import annotations

import itertools
import json
import operator
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from featrec.adapters.duckdb.features import sql_file_list, sql_string
from featrec.adapters.files.atomic import atomic_path
from featrec.adapters.files.event_log import EVENT_SCHEMA, event_log_files, events_to_table
from featrec.core.events.formats import DeadLetter
from featrec.core.events.model import Event
from featrec.core.features.snapshot_days import DAY_US
from featrec.core.privacy import DenySet, is_denied_payload, keep_allowed

#: Events staged per Parquet row group (and held in memory while staging).
STAGE_ROWS: Final = 65_536
_EPOCH_DAY: Final = date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """``read`` valid events, of which ``imported`` were new; ``duplicates`` were already
    logged or repeated in the file; ``dead_letters`` records were refused; ``forgotten``
    events (not in ``read``) belong to forgotten users or sessions and were skipped."""

    read: int
    imported: int
    duplicates: int
    dead_letters: int
    first_dead_letter: DeadLetter | None
    files: list[Path]
    forgotten: int = 0


def import_events(
    log_dir: Path | str,
    records: Iterable[Event | DeadLetter],
    *,
    dead_letter_file: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    deny: DenySet | None = None,
) -> ImportResult:
    """Add the events of ``records`` that the log does not hold yet; see the module doc.

    ``on_progress(n)`` is called as records are staged (n records since the last call).
    ``deny`` defaults to the deny-list guarding ``log_dir``.
    """
    log = Path(log_dir)
    log.mkdir(parents=True, exist_ok=True)
    if deny is None:
        from featrec.adapters.files.deny_list import load_log_deny_set

        deny = load_log_deny_set(log)
    staging = log / f".import-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        staged = staging / "incoming.parquet"
        staged_counts = _stage(records, staged, dead_letter_file, on_progress, deny)
        read, n_dead, first_dead, forgotten = staged_counts
        files = _write_new(log, staged) if read else []
        imported = sum(pq.read_metadata(f).num_rows for f in files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportResult(read, imported, read - imported, n_dead, first_dead, files, forgotten)


def _stage(
    records: Iterable[Event | DeadLetter],
    path: Path,
    dead_letter_file: Path | None,
    on_progress: Callable[[int], None] | None,
    deny: DenySet,
) -> tuple[int, int, DeadLetter | None, int]:
    schema = EVENT_SCHEMA.append(pa.field("_seq", pa.int64(), nullable=False))
    read = n_dead = forgotten = 0
    first_dead: DeadLetter | None = None
    iterator = iter(records)
    with pq.ParquetWriter(path, schema) as writer:
        while chunk := list(itertools.islice(iterator, STAGE_ROWS)):
            events, dropped = keep_allowed([r for r in chunk if isinstance(r, Event)], deny)
            forgotten += dropped
            dead = [r for r in chunk if isinstance(r, DeadLetter)]
            if deny:
                allowed = [d for d in dead if not is_denied_payload(d.payload, deny)]
                forgotten += len(dead) - len(allowed)
                dead = allowed
            if dead:
                first_dead = first_dead or dead[0]
                n_dead += len(dead)
                if dead_letter_file is not None:
                    _append_dead_letters(dead_letter_file, dead)
            if events:
                table = events_to_table(events)
                seq = pa.array(range(read, read + len(events)), pa.int64())
                writer.write_table(table.append_column(schema.field("_seq"), seq))
                read += len(events)
            if on_progress is not None:
                on_progress(len(chunk))
    return read, n_dead, first_dead, forgotten


def _write_new(log: Path, staged: Path) -> list[Path]:
    """Write the staged events the log lacks into its partitions; returns the new files."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        logged = [str(f) for f in event_log_files(log)]
        anti = (
            f"ANTI JOIN read_parquet({sql_file_list(logged)}) l ON l.event_id = i.event_id"
            if logged
            else ""
        )
        columns = ", ".join(f"i.{name}" for name in EVENT_SCHEMA.names)
        reader = con.execute(
            f"SELECT {columns}, epoch_us(i.ts) // {DAY_US} AS _day "
            f"FROM read_parquet({sql_string(str(staged))}) i {anti} "
            "QUALIFY row_number() OVER (PARTITION BY i.event_id ORDER BY i._seq) = 1 "
            "ORDER BY _day, i.ts, i.event_id"
        ).to_arrow_reader(STAGE_ROWS)
        return _write_partitions(log, iter(reader))
    finally:
        con.close()


def _write_partitions(log: Path, batches: Iterator[pa.RecordBatch]) -> list[Path]:
    """Batches sorted by ``_day`` -> one file per day, renamed into the log when complete."""
    name = f"part-import-{uuid.uuid4().hex}.parquet"
    done: list[Path] = []
    for day, tables in itertools.groupby(_by_day(batches), key=operator.itemgetter(0)):
        part = log / f"date={(_EPOCH_DAY + timedelta(days=day)).isoformat()}"
        part.mkdir(parents=True, exist_ok=True)
        final = part / name
        with atomic_path(final) as tmp, pq.ParquetWriter(tmp, EVENT_SCHEMA) as writer:
            for _, table in tables:
                writer.write_table(table)
        done.append(final)
    return done


def _by_day(batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[int, pa.Table]]:
    """``(day, rows of that day)`` per batch and day, in the batches' order."""
    for batch in batches:
        days = batch.column("_day").to_numpy()
        for day in sorted(set(days.tolist())):
            rows = batch.filter(pa.array(days == day))
            yield day, pa.Table.from_batches([rows.drop_columns(["_day"])]).cast(EVENT_SCHEMA)


def _append_dead_letters(path: Path, letters: list[DeadLetter]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    at = datetime.now(UTC).isoformat()
    text = "".join(json.dumps({**d.to_dict(), "at": at}) + "\n" for d in letters)
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
