"""Event files in featrec's own schema: JSON lines, CSV or Parquet, chosen by the suffix.

:func:`write_events` streams (Parquet in row groups), so a generator of ten million events
never sits in memory; the file appears atomically (written under a dot-name, then renamed).
:func:`read_events` is the convenience reader for batch code and tests: the raw file reader
(:mod:`featrec.adapters.files.raw_records`) cuts the file into records and the core decoder
validates
them, so a bad row comes back as a :class:`~featrec.core.events.formats.DeadLetter`, never silently
lost.

Layouts (columns in :data:`~featrec.adapters.files.event_log.EVENT_SCHEMA` order):

- ``.jsonl``   one ``Event.to_dict()`` object per line (absent optional fields left out)
- ``.csv``     a header row; empty cell for an absent value; ``ts`` as ISO-8601 UTC
- ``.parquet`` the event log's Arrow schema (``ts`` as timestamp[us, UTC])
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final, TextIO

from featrec.adapters.files.atomic import atomic_path
from featrec.adapters.files.event_log import EVENT_SCHEMA, events_to_table
from featrec.adapters.files.layouts import CSV, FILE_FORMATS, JSONL, PARQUET, READ_FORMATS
from featrec.adapters.files.raw_records import iter_raw_records
from featrec.core.events.formats import FORMATS, DeadLetter, decode
from featrec.core.events.model import Event
from featrec.errors import ConfigError

COLUMNS: Final = tuple(EVENT_SCHEMA.names)
#: Rows per Parquet row group: also how many events are held in memory while writing.
ROW_GROUP_ROWS: Final = 65_536

_SUFFIXES: Final = {".jsonl": JSONL, ".csv": CSV, ".parquet": PARQUET}


def file_format(path: Path | str, fmt: str | None = None) -> str:
    """``fmt`` if given (checked against a known suffix), else the format named by the suffix."""
    path = Path(path)
    by_suffix = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        if by_suffix is None:
            raise ConfigError(
                f"{path}: cannot tell the event file format from the suffix "
                f"{path.suffix or '(none)'!r}; use .jsonl, .csv or .parquet, or pass fmt"
            )
        return by_suffix
    if fmt not in FILE_FORMATS:
        raise ConfigError(
            f"unknown event file format {fmt!r}: use one of {', '.join(FILE_FORMATS)}"
        )
    if by_suffix is not None and by_suffix != fmt:
        raise ConfigError(f"{path}: the suffix says {by_suffix} but fmt={fmt!r}; make them agree")
    return fmt


def write_events(
    path: Path | str,
    events: Iterable[Event],
    fmt: str | None = None,
    *,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> int:
    """Write ``events`` to ``path`` (parents created, replaced atomically); returns the count."""
    path = Path(path)
    layout = file_format(path, fmt)
    if row_group_rows < 1:
        raise ConfigError(f"row_group_rows must be >= 1, got {row_group_rows}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if layout == PARQUET:
            count = _write_parquet(tmp, events, row_group_rows)
        else:
            with tmp.open("w", encoding="utf-8", newline="") as out:
                count = _write_jsonl(out, events) if layout == JSONL else _write_csv(out, events)
    return count


def read_events(path: Path | str, fmt: str | None = None) -> Iterator[Event | DeadLetter]:
    """Every event of a file, in file order, with a dead letter for each refused record.

    ``fmt`` is a file format of this module (checked against the suffix) or a decoder of
    :mod:`featrec.core.events.formats` (``featrec``, ``otto``, ``session-rec``); ``None`` goes by
    the
    suffix (and content, for OTTO lines). Raises ``ConfigError`` for a missing file or a
    wrong header.
    """
    if fmt in FILE_FORMATS:
        file_format(path, fmt)
        fmt = "featrec"
    elif fmt is not None and fmt not in FORMATS:
        names = ", ".join(READ_FORMATS)
        raise ConfigError(f"unknown event file format {fmt!r}: use one of {names}")
    for record in iter_raw_records(path, fmt):
        if isinstance(record, DeadLetter):
            yield record
        else:
            yield from decode(record)


def _write_jsonl(out: TextIO, events: Iterable[Event]) -> int:
    count = 0
    dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
    for event in events:
        out.write(dumps(event.to_dict()))
        out.write("\n")
        count += 1
    return count


def _write_csv(out: TextIO, events: Iterable[Event]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    for e in events:
        writer.writerow(
            (
                e.event_id,
                e.session_id,
                _cell(e.user_id),
                e.item_id,
                e.type,
                e.ts.isoformat(),
                # repr() is the shortest text that reads back as the same float.
                "" if e.price is None else repr(e.price),
                _cell(e.category),
                "" if e.quantity is None else str(e.quantity),
            )
        )
        count += 1
    return count


def _write_parquet(tmp: Path, events: Iterable[Event], row_group_rows: int) -> int:
    import pyarrow.parquet as pq

    count = 0
    with pq.ParquetWriter(tmp, EVENT_SCHEMA) as writer:
        iterator = iter(events)
        while batch := list(itertools.islice(iterator, row_group_rows)):
            writer.write_table(events_to_table(batch), row_group_size=row_group_rows)
            count += len(batch)
    return count


def _cell(value: str | None) -> str:
    return "" if value is None else value
