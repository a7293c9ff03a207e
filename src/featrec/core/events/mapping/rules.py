"""An event mapping as values: where each featrec field comes from and how a row becomes an
event (see the package docstring for the configuration keys)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final

from featrec.core.events.formats import DeadLetter, RawRecord, dead_letter
from featrec.core.events.model import parse_timestamp, parse_type
from featrec.errors import ConfigError, InvalidEvent

LAYOUTS: Final = ("csv", "jsonl", "parquet")
TARGET_FIELDS: Final = (
    "event_id",
    "session_id",
    "user_id",
    "item_id",
    "type",
    "price",
    "category",
    "quantity",
)
#: Fields every row must yield; the others (and event_id, derived) may be absent from a row.
REQUIRED_TARGETS: Final = ("session_id", "item_id", "type")
#: Seconds per unit of an epoch or offset number.
EPOCH_UNITS: Final = {"s": 1, "ms": 1_000, "us": 1_000_000}
TIME_UNITS: Final = ("auto", "iso", *EPOCH_UNITS)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Source:
    """Where one value comes from: a path of keys into the row, or a constant."""

    path: tuple[str, ...] = ()
    const: str | int | float | None = None

    @property
    def is_const(self) -> bool:
        return not self.path

    @property
    def column(self) -> str | None:
        """The top-level column the value is read from (``None`` for a constant)."""
        return self.path[0] if self.path else None

    def describe(self) -> str:
        if self.is_const:
            return f"constant {self.const!r}"
        if len(self.path) == 1:
            return f"column {self.path[0]!r}"
        return f"path {'.'.join(self.path)!r}"

    def get(self, row: Mapping[str, Any]) -> Any:
        """The value in ``row`` (``None`` if an empty cell); InvalidEvent if absent."""
        if self.is_const:
            return self.const
        value: Any = row
        for depth, key in enumerate(self.path):
            if isinstance(value, Mapping) and key in value:
                value = value[key]
            elif isinstance(value, list) and key.isdecimal() and int(key) < len(value):
                value = value[int(key)]
            else:
                where = ".".join(self.path[: depth + 1])
                raise LookupError(f"{self.describe()} not found (no {where!r} in the record)")
        return value


@dataclass(frozen=True, slots=True)
class TimeRule:
    """How the event time is read: a value in ``unit``, or a date plus an offset."""

    source: Source
    unit: str = "auto"
    date: Source | None = None
    date_format: str = "%Y-%m-%d"
    timezone: tzinfo = UTC

    def get(self, row: Mapping[str, Any]) -> datetime:
        raw = _lookup(self.source, row, "ts")
        if raw is None:
            raise InvalidEvent("ts", f"{self.source.describe()}: missing")
        if self.date is not None:
            day = _lookup(self.date, row, "ts")
            try:
                midnight = datetime.strptime(str(day).strip(), self.date_format)
            except ValueError:
                raise InvalidEvent(
                    "ts",
                    f"{self.date.describe()}: {show(day)} is not a date ({self.date_format})",
                ) from None
            offset = self._epoch_number(raw)
            per_second = EPOCH_UNITS[self.unit]
            start = midnight.replace(tzinfo=self.timezone)
            return parse_timestamp(start + timedelta(seconds=offset / per_second))
        if self.unit in EPOCH_UNITS:
            number = self._epoch_number(raw)
            if isinstance(number, int):  # exact: no float rounding of microseconds
                micros = number * (1_000_000 // EPOCH_UNITS[self.unit])
                try:
                    return parse_timestamp(_EPOCH + timedelta(microseconds=micros))
                except OverflowError:
                    raise InvalidEvent("ts", f"{self._what(raw)} is out of range") from None
            return parse_timestamp(number / EPOCH_UNITS[self.unit])
        if self.unit == "auto":
            if isinstance(raw, str):
                number_or_text: Any = _number(raw.strip())
                raw = raw if number_or_text is None else number_or_text
            if isinstance(raw, str | datetime):
                return self._text_time(raw, iso=True)
            return _time(raw, self.source)
        if self.unit == "iso":
            if not isinstance(raw, str | datetime):
                raise InvalidEvent("ts", f"{self._what(raw)} is not an ISO-8601 time")
            return self._text_time(raw, iso=True)
        return self._text_time(raw, iso=False)

    def _text_time(self, raw: Any, *, iso: bool) -> datetime:
        if isinstance(raw, datetime):
            value = raw
        else:
            text = str(raw).strip()
            try:
                value = (
                    datetime.fromisoformat(text.replace("Z", "+00:00"))
                    if iso
                    else datetime.strptime(text, self.unit)
                )
            except ValueError:
                expected = "an ISO-8601 time" if iso else f"a time in the format {self.unit!r}"
                raise InvalidEvent("ts", f"{self._what(raw)} is not {expected}") from None
        if value.tzinfo is None:
            value = value.replace(tzinfo=self.timezone)
        return _time(value, self.source)

    def _epoch_number(self, raw: Any) -> int | float:
        if raw is None:
            raise InvalidEvent("ts", f"{self.source.describe()}: missing")
        if isinstance(raw, bool):
            raise InvalidEvent("ts", f"{self._what(raw)} is not a number")
        if isinstance(raw, int | float):
            number: int | float | None = raw
        else:
            number = _number(str(raw).strip())
        if number is None or (isinstance(number, float) and not math.isfinite(number)):
            expected = (
                f"a number of {self.unit} into the day"
                if self.date is not None
                else _unit_words(self.unit)
            )
            raise InvalidEvent("ts", f"{self._what(raw)} is not {expected}")
        return number

    def _what(self, raw: Any) -> str:
        return f"{self.source.describe()}: {show(raw)}"


@dataclass(frozen=True)
class EventMapping:
    """A parsed, checked mapping (see the module doc)."""

    fields: Mapping[str, Source]
    ts: TimeRule
    types: Mapping[str, str] = field(default_factory=dict)
    reject_other_types: bool = False
    layout: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8"

    @property
    def columns(self) -> dict[str, str]:
        """Top-level column -> the first featrec field that reads it (to check a header)."""
        used: dict[str, str] = {}
        sources = [*self.fields.items(), ("ts", self.ts.source)]
        if self.ts.date is not None:
            sources.append(("ts", self.ts.date))
        for target, source in sources:
            if source.column is not None:
                used.setdefault(source.column, target)
        return used

    def check_columns(self, available: Sequence[str], where: str) -> None:
        """ConfigError if a field reads a column ``where`` (a file) does not have."""
        present = set(available)
        for column, target in self.columns.items():
            if column not in present:
                raise ConfigError(
                    f"{where}: the mapping reads {target} from column {column!r}, which is not "
                    f"there (columns: {', '.join(available) or 'none'})"
                )

    def apply(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """``row`` as a mapping in featrec's schema; InvalidEvent names the field and source."""
        if not isinstance(row, Mapping):
            raise InvalidEvent("record", f"expected an object, got {type(row).__name__}")
        out: dict[str, Any] = {}
        for target, source in self.fields.items():
            try:
                value = _lookup(source, row, target)
            except InvalidEvent:
                # Optional fields may be absent from a record (JSON objects differ).
                if target in REQUIRED_TARGETS:
                    raise
                value = None
            if isinstance(value, Mapping | list):
                raise InvalidEvent(
                    target, f"{source.describe()} holds a {type(value).__name__}, not a value"
                )
            if target == "type":
                value = self._type(value, source)
            out[target] = value
        out["ts"] = self.ts.get(row)
        if out.get("event_id") in (None, ""):
            out["event_id"] = row_id(row)
        return out

    def _type(self, value: Any, source: Source) -> Any:
        if value is None:
            return value
        name = str(value).strip()
        if name in self.types:
            return self.types[name]
        if self.reject_other_types:
            known = ", ".join(sorted(self.types))
            raise InvalidEvent(
                "type",
                f"{source.describe()}: {show(value)} is not in the mapping's types ({known})",
            )
        try:
            return parse_type(name)
        except InvalidEvent as exc:
            raise InvalidEvent("type", f"{source.describe()}: {exc.reason}") from None


def row_id(row: Mapping[str, Any]) -> str:
    """A stable event id for a row without one: a hash of the whole row, so that importing a
    file twice logs its events once (two identical rows are one event)."""
    canonical = json.dumps(row, sort_keys=True, default=str, ensure_ascii=False)
    return (
        "m-"
        + hashlib.blake2b(canonical.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()
    )


def map_record(mapping: EventMapping, record: RawRecord) -> RawRecord | DeadLetter:
    """``record`` (a JSON text line or a parsed row) mapped into featrec's schema; never
    raises: a record that does not map is a dead letter naming the field and the reason."""
    try:
        row = record.payload
        if isinstance(row, str):
            try:
                row = json.loads(row)
            except ValueError as exc:
                raise InvalidEvent("json", f"invalid JSON: {getattr(exc, 'msg', exc)}") from None
        mapped = mapping.apply(row)
    except InvalidEvent as exc:
        return dead_letter(record, str(exc))
    except RecursionError:
        return dead_letter(record, "payload: nested too deeply")
    return RawRecord("featrec", record.origin, mapped, record.ingested_at)


def _lookup(source: Source, row: Mapping[str, Any], target: str) -> Any:
    try:
        value = source.get(row)
    except LookupError as exc:
        raise InvalidEvent(target, str(exc)) from None
    return None if value == "" else value


def _time(value: Any, source: Source) -> datetime:
    try:
        return parse_timestamp(value)
    except InvalidEvent as exc:
        raise InvalidEvent("ts", f"{source.describe()}: {exc.reason}") from None


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def _unit_words(unit: str) -> str:
    return {"s": "epoch seconds", "ms": "epoch milliseconds", "us": "epoch microseconds"}[unit]


def show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
