"""Decoding raw records of the supported input formats into events (pure, no IO).

Sources (files, Redis Streams) hand over :class:`RawRecord` objects; :func:`decode` turns
each into events, or into :class:`DeadLetter` objects that say why a record was refused.
A record never raises: bad input is data about bad input.

Formats:

- ``featrec``     featrec's own schema, one JSON object per line (or a mapping from
                   Parquet/CSV readers). See :mod:`featrec.core.events.model`.
- ``otto``        OTTO recsys-dataset JSON lines: ``{"session": int, "events": [{"aid", "ts"
                   (unix ms), "type"}]}``; one line holds a whole session.
- ``session-rec`` session-rec/GRU4Rec TSV, header ``SessionId ItemId Time`` (unix seconds);
                   every row is a click.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from featrec.core.events.model import (
    CLICK,
    MIN_TS,
    Event,
    check_not_ahead,
    event_from_mapping,
    parse_timestamp,
    parse_type,
)
from featrec.errors import InvalidEvent

FORMATS: Final = ("featrec", "otto", "session-rec")

#: Longest raw record kept verbatim in a dead letter; longer ones are truncated (and say so).
MAX_DEAD_LETTER_PAYLOAD: Final = 4096
#: Longest featrec JSON line decoded: a valid event is well under 2 KB (ids of at most 128
#: characters, a category of at most 256), so longer lines are refused before parsing.
MAX_EVENT_CHARS: Final = 16_384
#: Ingestion times before this are not wall-clock readings (unset, or a test's placeholder).
_WALL_CLOCK_FROM: Final = MIN_TS.timestamp()


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A record as a source read it: ``payload`` is a text line or an already-parsed mapping."""

    fmt: str
    origin: str
    payload: str | Mapping[str, Any]
    ingested_at: float = 0.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refused record: where it came from, why, and (a bounded copy of) what it was."""

    origin: str
    reason: str
    payload: str

    def to_dict(self) -> dict[str, str]:
        return {"origin": self.origin, "reason": self.reason, "payload": self.payload}


def decode(record: RawRecord) -> list[Event | DeadLetter]:
    """Decode one raw record; never raises.

    When the record carries its ingestion time (``ingested_at`` on the wall clock, i.e. after
    2000; sources always set it, hand-built test records may leave it 0), events more than
    :data:`~featrec.core.events.model.MAX_FUTURE_SKEW_S` ahead of it are refused.
    """
    out = _decode(record)
    if record.ingested_at < _WALL_CLOCK_FROM:
        return out
    for i, item in enumerate(out):
        if isinstance(item, Event):
            try:
                check_not_ahead(item, record.ingested_at)
            except InvalidEvent as exc:
                out[i] = dead_letter(record, str(exc))
    return out


def _decode(record: RawRecord) -> list[Event | DeadLetter]:
    try:
        if record.fmt == "featrec":
            return [_decode_featrec(record.payload)]
        if record.fmt == "otto":
            return _decode_otto(record)
        if record.fmt == "session-rec":
            return [_decode_session_rec(record)]
        return [dead_letter(record, f"format: unknown format {record.fmt!r}")]
    except InvalidEvent as exc:
        return [dead_letter(record, str(exc))]
    except RecursionError:
        return [dead_letter(record, "payload: nested too deeply")]


def dead_letter(record: RawRecord, reason: str) -> DeadLetter:
    payload = record.payload
    if not isinstance(payload, str):
        try:
            payload = json.dumps(payload, default=str, allow_nan=True)
        except (TypeError, ValueError, RecursionError):
            payload = repr(payload)
    if len(payload) > MAX_DEAD_LETTER_PAYLOAD:
        payload = payload[:MAX_DEAD_LETTER_PAYLOAD] + f"...[truncated, {len(payload)} chars]"
    return DeadLetter(origin=record.origin, reason=reason, payload=payload)


def _loads(payload: str | Mapping[str, Any], *, fast: bool = False) -> Any:
    if not isinstance(payload, str):
        return payload
    if fast:
        # orjson is ~4x faster (one line per event, so it matters); it refuses some input json
        # accepts (NaN literals, deep nesting), so json decides those and words the reason.
        # It reads integers beyond 64 bits as floats, which validation then refuses as ids.
        try:
            return orjson.loads(payload)
        except (ValueError, UnicodeError):
            pass
    try:
        return json.loads(payload)
    # ValueError: JSONDecodeError, and integers beyond int()'s digit limit.
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(
            "json", f"invalid JSON: {exc.msg if hasattr(exc, 'msg') else exc}"
        ) from None


def _decode_featrec(payload: str | Mapping[str, Any]) -> Event:
    if isinstance(payload, str) and len(payload) > MAX_EVENT_CHARS:
        raise InvalidEvent(
            "json", f"a line of {len(payload)} characters (an event has at most {MAX_EVENT_CHARS})"
        )
    return event_from_mapping(_loads(payload, fast=True))


def _decode_otto(record: RawRecord) -> list[Event | DeadLetter]:
    raw = _loads(record.payload)
    if not isinstance(raw, Mapping):
        raise InvalidEvent("session", "expected a JSON object with 'session' and 'events'")
    session = raw.get("session")
    if isinstance(session, bool) or not isinstance(session, int | str) or session == "":
        raise InvalidEvent("session", "missing or not an integer")
    events = raw.get("events")
    if not isinstance(events, list):
        raise InvalidEvent("events", "missing or not a list")
    out: list[Event | DeadLetter] = []
    for i, ev in enumerate(events):
        try:
            if not isinstance(ev, Mapping):
                raise InvalidEvent("events", f"[{i}] is not an object")
            ts_ms = ev.get("ts")
            if isinstance(ts_ms, bool) or not isinstance(ts_ms, int | float):
                raise InvalidEvent("ts", f"[{i}] must be unix milliseconds")
            try:
                seconds = ts_ms / 1000.0
            except OverflowError:  # an int beyond float range
                seconds = math.inf
            if not math.isfinite(seconds):
                raise InvalidEvent("ts", f"[{i}] must be finite")
            out.append(
                event_from_mapping(
                    {
                        "event_id": f"otto-{session}-{i}",
                        "session_id": str(session),
                        "item_id": ev.get("aid"),
                        "type": ev.get("type"),
                        "ts": seconds,
                    }
                )
            )
        except InvalidEvent as exc:
            out.append(dead_letter(record, f"{exc} (event {i} of session {session})"))
    return out


def _decode_session_rec(record: RawRecord) -> Event:
    payload = record.payload
    cols: list[Any]
    if isinstance(payload, Mapping):
        cols = [payload.get("SessionId"), payload.get("ItemId"), payload.get("Time")]
    else:
        cols = payload.rstrip("\r\n").split("\t")
        if len(cols) != 3:
            raise InvalidEvent("row", f"expected 3 tab-separated columns, got {len(cols)}")
    session, item, time = cols
    try:
        seconds = float(time) if time is not None else None
    except ValueError:
        raise InvalidEvent("Time", f"{str(time)[:40]!r} is not unix seconds") from None
    ts = parse_timestamp(seconds)
    return Event(
        event_id=f"rsc-{session}-{record.origin.rsplit(':', 1)[-1]}",
        session_id=_required(session, "SessionId"),
        item_id=_required(item, "ItemId"),
        type=parse_type(CLICK),
        ts=ts,
    )


def _required(value: object, field: str) -> str:
    if value is None or str(value).strip() == "":
        raise InvalidEvent(field, "missing")
    text = str(value).strip()
    if len(text) > 128 or not text.isprintable():
        raise InvalidEvent(field, "not a printable id of at most 128 characters")
    return text
