"""Parsing an event mapping from its table (``featrec.toml``, a TOML file, ``--map`` flags),
checked key by key: a :class:`~featrec.errors.ConfigError` names the offending key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from featrec.core.events.mapping.rules import (
    EPOCH_UNITS,
    LAYOUTS,
    REQUIRED_TARGETS,
    TARGET_FIELDS,
    TIME_UNITS,
    EventMapping,
    Source,
    TimeRule,
    show,
)
from featrec.core.events.model import parse_type
from featrec.errors import ConfigError, InvalidEvent

_TOP_KEYS: Final = frozenset(
    {"format", "delimiter", "encoding", "other_types", "fields", "ts", "types"}
)
_TS_KEYS: Final = frozenset({"column", "path", "unit", "date", "date_format", "timezone"})


def parse_mapping(raw: Mapping[str, Any], where: str = "mapping") -> EventMapping:
    """Check a mapping table and build it; ConfigError names the offending key (``where``
    says which mapping, e.g. ``featrec.toml [mappings.clicks]``)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: a mapping is a table of keys")
    _no_unknown(raw, _TOP_KEYS, where)
    layout = raw.get("format")
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"{where}: format must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    delimiter = _delimiter(raw.get("delimiter", ","), where)
    encoding = str(raw.get("encoding", "utf-8"))
    try:
        "".encode(encoding)
    except LookupError:
        raise ConfigError(f"{where}: encoding {encoding!r} is not a known text encoding") from None
    other = raw.get("other_types", "keep")
    if other not in ("keep", "reject"):
        raise ConfigError(f"{where}: other_types must be 'keep' or 'reject', got {other!r}")

    table = raw.get("fields", {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: fields must be a table (featrec field = column)")
    fields_: dict[str, Source] = {}
    for target, spec in table.items():
        if target == "ts":
            raise ConfigError(f"{where}: the event time is configured under [ts], not fields.ts")
        if target not in TARGET_FIELDS:
            raise ConfigError(
                f"{where}: fields.{target} is not a featrec event field "
                f"(fields: {', '.join(TARGET_FIELDS)}, and [ts])"
            )
        fields_[target] = _source(spec, f"{where}: fields.{target}")
    missing = [t for t in REQUIRED_TARGETS if t not in fields_]
    if missing:
        raise ConfigError(
            f"{where}: fields.{missing[0]} is required (a column, a path or {{ const = ... }})"
        )

    types = raw.get("types", {})
    if not isinstance(types, Mapping):
        raise ConfigError(f"{where}: types must be a table (their name = featrec's)")
    vocabulary: dict[str, str] = {}
    for name, target in types.items():
        try:
            vocabulary[str(name)] = parse_type(target)
        except InvalidEvent as exc:
            raise ConfigError(f"{where}: types.{name}: {exc.reason}") from None
    if other == "reject" and not vocabulary:
        raise ConfigError(f"{where}: other_types = 'reject' needs a [types] table")

    return EventMapping(
        fields=fields_,
        ts=_time_rule(raw.get("ts"), where),
        types=vocabulary,
        reject_other_types=other == "reject",
        layout=layout,
        delimiter=delimiter,
        encoding=encoding,
    )


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``--map`` flags (``fields.session_id=sid``, ``ts.unit=ms``, ``types.addToCart=cart``,
    ``fields.type.const=view``) as the nested table they stand for."""
    table: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--map {pair!r}: write KEY=VALUE, e.g. fields.session_id=sid")
        node = table
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--map {pair!r}: {part} is already set to a value")
            node = child
        node[parts[-1]] = value
    return table


def merge_tables(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: the ``fields``, ``ts`` and ``types`` tables are merged key by
    key (a field given in both takes ``override``'s source), everything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        current = out.get(key)
        if key == "ts" and isinstance(current, str):
            current = {"column": current}
        if key in ("fields", "ts", "types") and isinstance(value, Mapping):
            out[key] = {**(current if isinstance(current, Mapping) else {}), **value}
        else:
            out[key] = value
    return out


def _source(spec: Any, where: str) -> Source:
    if isinstance(spec, str):
        if not spec.strip():
            raise ConfigError(f"{where}: an empty column name")
        return Source(path=tuple(spec.split(".")))
    if isinstance(spec, Mapping):
        _no_unknown(spec, frozenset({"column", "path", "const"}), where)
        if len(spec) != 1:
            raise ConfigError(f"{where}: give one of column, path or const")
        if "const" in spec:
            const = spec["const"]
            if isinstance(const, bool) or not isinstance(const, str | int | float):
                raise ConfigError(f"{where}: const must be a string or a number")
            return Source(const=const)
        if "column" in spec:
            return Source(path=(str(spec["column"]),))
        return _source(str(spec["path"]), where)
    raise ConfigError(f"{where}: expected a column name or a table, got {show(spec)}")


def _time_rule(spec: Any, where: str) -> TimeRule:
    if spec is None:
        raise ConfigError(f"{where}: [ts] is required (column = ..., unit = ...)")
    if isinstance(spec, str):
        spec = {"column": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: ts must be a column name or a table")
    _no_unknown(spec, _TS_KEYS, f"{where}: ts")
    columns = [k for k in ("column", "path") if k in spec]
    if len(columns) != 1:
        raise ConfigError(f"{where}: ts needs a column (or path) that holds the time")
    source = _source(str(spec[columns[0]]), f"{where}: ts.{columns[0]}")
    unit = str(spec.get("unit", "auto"))
    if unit not in TIME_UNITS and "%" not in unit:
        raise ConfigError(
            f"{where}: ts.unit must be one of {', '.join(TIME_UNITS)} or a strptime format "
            f"such as '%Y-%m-%d %H:%M:%S', got {unit!r}"
        )
    date = None
    if "date" in spec:
        date = _source(str(spec["date"]), f"{where}: ts.date")
        if unit not in EPOCH_UNITS:
            raise ConfigError(
                f"{where}: with ts.date, ts.column is an offset into the day: set ts.unit to "
                f"s, ms or us (got {unit!r})"
            )
    date_format = str(spec.get("date_format", "%Y-%m-%d"))
    zone: tzinfo = UTC
    if "timezone" in spec:
        try:
            zone = ZoneInfo(str(spec["timezone"]))
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{where}: ts.timezone {spec['timezone']!r} is unknown") from None
    return TimeRule(source=source, unit=unit, date=date, date_format=date_format, timezone=zone)


def _delimiter(value: Any, where: str) -> str:
    text = str(value)
    text = {"tab": "\t", "\\t": "\t"}.get(text, text)
    if len(text) != 1:
        raise ConfigError(f"{where}: delimiter must be one character (or 'tab'), got {value!r}")
    return text


def _no_unknown(raw: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
