"""Reading a shop's own files through an event mapping (:mod:`featrec.core.events.mapping`).

:class:`MappedFileReader` has :class:`~featrec.adapters.files.raw_records.RawFileReader`'s
interface (``read``, ``position``, ``exhausted``, resumable at a
:class:`~featrec.adapters.files.raw_records.FilePosition`), so the file source, ``log import``,
``publish`` and ``map check`` take either. It cuts CSV (any delimiter and encoding), JSON lines
or Parquet into rows and maps each: a row that maps becomes a ``featrec`` record (validated by
the core decoder like any other), one that does not becomes a dead letter naming the field.

A CSV or Parquet file whose columns lack one the mapping reads is refused when the reader
opens (a wrong mapping, not bad data); a JSON line without a path is a dead letter (JSON
records may legitimately differ).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, TypeAlias

from featrec.adapters.files.raw_records import (
    FilePosition,
    PositionedFile,
    RawFileReader,
    parquet_rows,
)
from featrec.core.events.formats import DeadLetter, RawRecord
from featrec.core.events.mapping import EventMapping, map_record
from featrec.errors import ConfigError

_BY_SUFFIX: Final = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}


def mapped_layout(path: Path, mapping: EventMapping) -> str:
    """The mapping's ``format``, else the one the suffix names."""
    if mapping.layout is not None:
        return mapping.layout
    layout = _BY_SUFFIX.get(path.suffix.lower())
    if layout is None:
        raise ConfigError(
            f"{path}: cannot tell csv, jsonl or parquet from the suffix "
            f"{path.suffix or '(none)'!r}; set format in the mapping"
        )
    return layout


class MappedFileReader(PositionedFile):
    """Reads one file's rows from a position and maps them (see the module doc)."""

    def __init__(
        self, path: Path | str, mapping: EventMapping, position: FilePosition | None = None
    ) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.mapping = mapping
        if not self.path.is_file():
            raise ConfigError(f"source file not found: {self.path}")
        self.layout = mapped_layout(self.path, mapping)
        self._offset, self._line = position or FilePosition()
        self._columns: list[str] = []
        self._undecodable: set[int] = set()
        if self.layout == "parquet":
            self._open_parquet()
        else:
            self._open_text()

    @property
    def columns(self) -> list[str]:
        """The file's columns (CSV header, Parquet schema; empty for JSON lines)."""
        return list(self._columns)

    def read(
        self, max_records: int, ingested_at: float | None = None
    ) -> list[RawRecord | DeadLetter]:
        """Up to ``max_records`` mapped records or dead letters (fewer only at the end)."""
        at = time.time() if ingested_at is None else ingested_at
        if self.layout == "parquet":
            return self._read_parquet(max_records, at)
        if self.layout == "csv":
            return self._read_csv(max_records, at)
        return self._read_jsonl(max_records, at)

    def _map(self, origin: str, row: str | dict[str, Any], at: float) -> RawRecord | DeadLetter:
        return map_record(self.mapping, RawRecord("featrec", origin, row, at))

    # text -------------------------------------------------------------------------------

    def _open_text(self) -> None:
        self._file = self.path.open("rb")
        if self.layout == "csv":
            header_raw = self._file.readline()
            header = self._decode(header_raw, 1).lstrip("\ufeff").rstrip("\r\n")
            delimiter = self.mapping.delimiter
            self._columns = [c.strip() for c in next(csv.reader([header], delimiter=delimiter), [])]
            self.mapping.check_columns(self._columns, self.name)
            if self._offset == 0:
                self._offset, self._line = len(header_raw), 1
        self._file.seek(self._offset)
        self._lines = self._iter_lines()
        self._csv = (
            csv.reader(self._lines, delimiter=self.mapping.delimiter)
            if self.layout == "csv"
            else None
        )

    def _decode(self, raw: bytes, line: int) -> str:
        try:
            return raw.decode(self.mapping.encoding)
        except UnicodeDecodeError:
            self._undecodable.add(line)
            return raw.decode(self.mapping.encoding, "replace")

    def _bad_encoding(self, first: int, last: int) -> str | None:
        bad = [n for n in range(first, last + 1) if n in self._undecodable]
        self._undecodable.difference_update(bad)
        if not bad:
            return None
        return f"encoding: line {bad[0]} is not valid {self.mapping.encoding} text"

    def _read_jsonl(self, max_records: int, at: float) -> list[RawRecord | DeadLetter]:
        out: list[RawRecord | DeadLetter] = []
        for text in self._lines:
            if not text.strip():
                continue
            origin = f"{self.name}:{self._line}"
            reason = self._bad_encoding(self._line, self._line)
            if reason is not None:
                out.append(DeadLetter(origin, reason, text[:4096]))
            else:
                out.append(self._map(origin, text.rstrip("\r\n"), at))
            if len(out) >= max_records:
                return out
        self._exhausted = True
        return out

    def _read_csv(self, max_records: int, at: float) -> list[RawRecord | DeadLetter]:
        out: list[RawRecord | DeadLetter] = []
        columns, n = self._columns, len(self._columns)
        for first_line, row in self._csv_rows(out, max_records):
            origin = f"{self.name}:{first_line}"
            payload = self.mapping.delimiter.join(row)[:4096]
            reason = self._bad_encoding(first_line, self._line)
            if reason is None and len(row) != n:
                reason = f"row: expected {n} columns, got {len(row)}"
            if reason is not None:
                out.append(DeadLetter(origin, reason, payload))
                continue
            out.append(self._map(origin, dict(zip(columns, row, strict=True)), at))
        return out

    # parquet ----------------------------------------------------------------------------

    def _open_parquet(self) -> None:
        self._columns, self._rows = parquet_rows(self.path, self._offset)
        self.mapping.check_columns(self._columns, self.name)

    def _read_parquet(self, max_records: int, at: float) -> list[RawRecord | DeadLetter]:
        return self._read_rows(max_records, lambda origin, row: self._map(origin, row, at))


FileReader: TypeAlias = "RawFileReader | MappedFileReader"


def open_file_reader(
    path: Path | str,
    fmt: str | None = None,
    position: FilePosition | None = None,
    mapping: EventMapping | None = None,
) -> FileReader:
    """The reader for ``path``: through ``mapping`` when given, else by featrec's formats."""
    if mapping is not None:
        if fmt is not None:
            raise ConfigError("give an input format or a mapping, not both")
        return MappedFileReader(path, mapping, position)
    return RawFileReader(path, fmt, position)


def iter_mapped_records(
    path: Path | str, mapping: EventMapping, batch: int = 1000
) -> Iterator[RawRecord | DeadLetter]:
    """Every row of a file, mapped, in order."""
    with MappedFileReader(path, mapping) as reader:
        while not reader.exhausted:
            yield from reader.read(batch)
