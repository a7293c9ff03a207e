"""Reading raw records from event files, from any position (shared by dataflows, CLI, batch).

A :class:`RawFileReader` turns one file into :class:`~featrec.core.events.formats.RawRecord` objects
(decoding into events is the core's job) and can resume exactly at a :class:`FilePosition`.

Supported files (``fmt`` = the decoder in :mod:`featrec.core.events.formats`; ``None`` = by
extension):

==================  ====================  ===========================================
extension           fmt                   payload of each record
==================  ====================  ===========================================
``.jsonl .json``    ``featrec``           one JSON object per line (the line)
``.jsonl .json``    ``otto``              one OTTO session per line (the line); found
                                          by sniffing the first line when ``fmt=None``
``.csv``            ``featrec``           header row of featrec field names; a row as a
                                          dict of strings (numeric ``ts`` = unix seconds)
``.parquet``        ``featrec``           columns named like featrec fields; row as dict
``.txt .tsv``       ``session-rec``       header ``SessionId<TAB>ItemId<TAB>Time``; the line
==================  ====================  ===========================================

Origins are ``"<file>:<line>"`` (1-based line of the record's first line) for text files and
``"<file>:<row>"`` (0-based row) for Parquet. Blank lines are not records. A wrong header,
unknown extension or unknown format raises :class:`~featrec.errors.ConfigError` when the
reader opens, naming the file and what to do; a bad row becomes a record (or a
:class:`~featrec.core.events.formats.DeadLetter` for a CSV row with the wrong number of columns) so
the decoder can say what is wrong with it, and the flow goes on.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any, Final, NamedTuple, Self

from featrec.adapters.files.layouts import CSV, JSONL, PARQUET, TSV
from featrec.core.events.formats import FORMATS, DeadLetter, RawRecord
from featrec.core.events.model import Event, parse_timestamp
from featrec.errors import ConfigError, InvalidEvent

SESSION_REC_HEADER: Final = ("SessionId", "ItemId", "Time")
EVENT_FIELDS: Final = frozenset(f.name for f in fields(Event))
REQUIRED_FIELDS: Final = ("event_id", "session_id", "item_id", "type", "ts")

_BY_EXTENSION: Final = {
    ".jsonl": ("featrec", JSONL),
    ".json": ("featrec", JSONL),
    ".csv": ("featrec", CSV),
    ".parquet": ("featrec", PARQUET),
    ".txt": ("session-rec", TSV),
    ".tsv": ("session-rec", TSV),
}
_PARQUET_BATCH_ROWS: Final = 4096


class FilePosition(NamedTuple):
    """Where the next read starts: byte offset and lines consumed (text), or rows (Parquet).

    A plain named tuple so that it pickles into bytewax's recovery store stably.
    """

    offset: int = 0
    line: int = 0


@dataclass(frozen=True, slots=True)
class FileFormat:
    """How a file is read: the decoder name (a core format) and the physical layout."""

    decoder: str
    layout: str


def resolve_format(path: Path, fmt: str | None = None) -> FileFormat:
    """The format of ``path``: ``fmt`` if given (checked), else from the extension and content."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"unknown source format {fmt!r}: use one of {', '.join(FORMATS)}")
    suffix = path.suffix.lower()
    known = _BY_EXTENSION.get(suffix)
    if fmt == "otto":
        return FileFormat("otto", JSONL)
    if fmt == "session-rec":
        return FileFormat("session-rec", TSV)
    if fmt == "featrec":
        if known is None or known[0] != "featrec":
            raise ConfigError(
                f"{path}: featrec files must end in .jsonl, .json, .csv or .parquet, "
                f"got {suffix or 'no extension'!r}"
            )
        return FileFormat("featrec", known[1])
    if known is None:
        raise ConfigError(
            f"{path}: cannot tell the format from the extension {suffix or '(none)'!r}; "
            f"use .jsonl/.json/.csv/.parquet (featrec), .txt/.tsv (session-rec), "
            f"or give the format explicitly ({', '.join(FORMATS)})"
        )
    if known[1] == JSONL and _looks_like_otto(path):
        return FileFormat("otto", JSONL)
    return FileFormat(*known)


class PositionedFile:
    """What both file readers share (this module's and
    :class:`~featrec.adapters.files.mapped_records.MappedFileReader`): a position to resume
    at, end of file, closing, and cutting the bytes into lines, CSV rows or Parquet rows."""

    name: str
    _offset: int
    _line: int
    _exhausted: bool = False
    _file: IO[bytes] | None = None
    _rows: Iterator[dict[str, Any]] | None = None
    _lines: Iterator[str]
    _csv: Iterator[list[str]] | None = None

    @property
    def position(self) -> FilePosition:
        """Position after the last record returned by ``read``."""
        return FilePosition(self._offset, self._line)

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._rows = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decode(self, raw: bytes, line: int) -> str:
        """One line's text (``line``: its 1-based number)."""
        return raw.decode("utf-8", "surrogateescape")

    def _iter_lines(self) -> Iterator[str]:
        assert self._file is not None
        readline = self._file.readline
        while True:
            raw = readline()
            if not raw:
                return
            self._offset += len(raw)
            self._line += 1
            yield self._decode(raw, self._line)

    def _csv_rows(
        self, out: list[RawRecord | DeadLetter], max_records: int
    ) -> Iterator[tuple[int, list[str]]]:
        """The next non-blank CSV rows with the line each starts on, while ``out`` (which the
        caller fills) holds fewer than ``max_records``; a row the csv module cannot parse
        becomes a dead letter in ``out``."""
        assert self._csv is not None
        while len(out) < max_records:
            first_line = self._line + 1
            try:
                row = next(self._csv)
            except StopIteration:
                self._exhausted = True
                return
            except csv.Error as exc:
                out.append(DeadLetter(f"{self.name}:{first_line}", f"row: {exc}", ""))
                continue
            if row and (len(row) > 1 or row[0].strip()):
                yield first_line, row

    def _read_rows(
        self, max_records: int, record: Callable[[str, dict[str, Any]], RawRecord | DeadLetter]
    ) -> list[RawRecord | DeadLetter]:
        """Up to ``max_records`` Parquet rows, each turned into a record by ``record(origin,
        row)`` (origin: ``<file>:<row>``)."""
        assert self._rows is not None
        out: list[RawRecord | DeadLetter] = []
        for row in self._rows:
            out.append(record(f"{self.name}:{self._offset}", row))
            self._offset += 1
            self._line += 1
            if len(out) >= max_records:
                return out
        self._exhausted = True
        return out


class RawFileReader(PositionedFile):
    """Reads one file's raw records from a position. Validates the file when opened."""

    def __init__(
        self, path: Path | str, fmt: str | None = None, position: FilePosition | None = None
    ) -> None:
        self.path = Path(path)
        self.name = str(path)
        if not self.path.is_file():
            raise ConfigError(f"source file not found: {self.path}")
        self.format = resolve_format(self.path, fmt)
        self._offset, self._line = position or FilePosition()
        self._columns: list[str] = []
        if self.format.layout == PARQUET:
            self._open_parquet()
        else:
            self._open_text()

    def read(
        self, max_records: int, ingested_at: float | None = None
    ) -> list[RawRecord | DeadLetter]:
        """Up to ``max_records`` records (fewer only at end of file, then ``exhausted``)."""
        at = time.time() if ingested_at is None else ingested_at
        if self.format.layout == PARQUET:
            return self._read_parquet(max_records, at)
        if self.format.layout == CSV:
            return self._read_csv(max_records, at)
        return self._read_lines(max_records, at)

    # text files -------------------------------------------------------------------------

    def _open_text(self) -> None:
        self._file = self.path.open("rb")
        if self.format.layout in (CSV, TSV):
            header_raw = self._file.readline()
            header = header_raw.decode("utf-8", "replace").rstrip("\r\n")
            if self.format.layout == TSV:
                self._check_session_rec_header(header)
            else:
                self._columns = self._check_csv_header(header)
            if self._offset == 0:
                self._offset, self._line = len(header_raw), 1
        self._file.seek(self._offset)
        self._lines = self._iter_lines()
        self._csv = csv.reader(self._lines) if self.format.layout == CSV else None

    def _read_lines(self, max_records: int, at: float) -> list[RawRecord | DeadLetter]:
        out: list[RawRecord | DeadLetter] = []
        decoder, name = self.format.decoder, self.name
        for text in self._lines:
            if not text.strip():
                continue
            out.append(RawRecord(decoder, f"{name}:{self._line}", text.rstrip("\r\n"), at))
            if len(out) >= max_records:
                return out
        self._exhausted = True
        return out

    def _read_csv(self, max_records: int, at: float) -> list[RawRecord | DeadLetter]:
        out: list[RawRecord | DeadLetter] = []
        columns, n = self._columns, len(self._columns)
        for first_line, row in self._csv_rows(out, max_records):
            origin = f"{self.name}:{first_line}"
            if len(row) != n:
                payload = ",".join(row)[:4096]
                reason = f"row: expected {n} columns, got {len(row)}"
                out.append(DeadLetter(origin, reason, payload))
                continue
            values: dict[str, Any] = dict(zip(columns, row, strict=True))
            ts = values.get("ts")
            if ts:
                values["ts"] = _number_or_text(ts)
            out.append(RawRecord("featrec", origin, values, at))
        return out

    def _check_session_rec_header(self, header: str) -> None:
        cols = tuple(header.split("\t"))
        if cols != SESSION_REC_HEADER:
            raise ConfigError(
                f"{self.path}: a session-rec file needs the tab-separated header "
                f"{' '.join(SESSION_REC_HEADER)!r}, found {header[:80]!r}"
            )

    def _check_csv_header(self, header: str) -> list[str]:
        columns = [c.strip() for c in next(csv.reader([header]), [])]
        _check_columns(self.path, columns)
        return columns

    # parquet ----------------------------------------------------------------------------

    def _open_parquet(self) -> None:
        columns, self._rows = parquet_rows(self.path, self._offset)
        _check_columns(self.path, columns)

    def _read_parquet(self, max_records: int, at: float) -> list[RawRecord | DeadLetter]:
        return self._read_rows(max_records, lambda origin, row: _record(origin, row, at))


def _record(origin: str, row: dict[str, Any], at: float) -> RawRecord:
    return RawRecord("featrec", origin, row, at)


def iter_raw_records(
    path: Path | str, fmt: str | None = None, batch: int = 1000
) -> Iterator[RawRecord | DeadLetter]:
    """Every record of a file, in order (for the CLI and batch jobs)."""
    with RawFileReader(path, fmt) as reader:
        while not reader.exhausted:
            yield from reader.read(batch)


def record_time(record: RawRecord) -> float | None:
    """Best-effort event time (unix seconds) of a raw record, for paced replay.

    ``None`` when the record has no readable time (the decoder will dead-letter it anyway).
    For an OTTO line (a whole session) it is the time of the session's first event.
    """
    try:
        payload = record.payload
        if record.fmt == "session-rec":
            if isinstance(payload, str):
                return float(payload.split("\t")[2])
            return float(payload["Time"])
        raw = json.loads(payload) if isinstance(payload, str) else payload
        if record.fmt == "otto":
            return float(raw["events"][0]["ts"]) / 1000.0
        return parse_timestamp(raw["ts"]).timestamp()
    except (ValueError, TypeError, KeyError, IndexError, InvalidEvent):
        return None


def _looks_like_otto(path: Path) -> bool:
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    first = json.loads(raw)
                except ValueError:
                    return False
                return isinstance(first, dict) and "session" in first and "events" in first
    return False


def _check_columns(path: Path, columns: list[str]) -> None:
    unknown = [c for c in columns if c not in EVENT_FIELDS]
    missing = [c for c in REQUIRED_FIELDS if c not in columns]
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"unknown columns {unknown}")
        if missing:
            problems.append(f"missing columns {missing}")
        raise ConfigError(
            f"{path}: not a featrec event file ({'; '.join(problems)}); columns must be "
            f"featrec fields {sorted(EVENT_FIELDS)} (pass fmt='otto' or 'session-rec' for those)"
        )


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def parquet_rows(path: Path, offset: int) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """A Parquet file's column names, and its rows from row ``offset`` on as dicts. Whole row
    groups before the offset are skipped from the metadata, then rows inside the first one
    read. Raises ``ConfigError`` for a file that is not readable Parquet."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError subclasses
        raise ConfigError(f"{path}: not a readable Parquet file ({exc})") from None
    skip, first_group = offset, 0
    meta = pf.metadata
    while first_group < meta.num_row_groups and skip >= meta.row_group(first_group).num_rows:
        skip -= meta.row_group(first_group).num_rows
        first_group += 1
    groups = list(range(first_group, meta.num_row_groups))
    return list(pf.schema_arrow.names), _iter_parquet(pf, groups, skip)


def _iter_parquet(pf: Any, groups: list[int], skip: int) -> Iterator[dict[str, Any]]:
    if not groups:
        return
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=groups):
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        rows = batch.slice(skip).to_pylist() if skip else batch.to_pylist()
        skip = 0
        yield from rows
