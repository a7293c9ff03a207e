"""Hostile records for fuzzing the decoder and the dataflows, each with the field it must be
refused on (hypothesis strategies, shared by tests/test_fuzz_events.py and
benchmarks/fuzz_events.py).

Every :class:`Hostile` is invalid by construction: wrong types, missing fields, NaN and
infinities, negative, pre-2000, post-2100 and ahead-of-ingestion timestamps, ids with NUL,
lone surrogates, bidi overrides, zero-width joiners or 10,000 characters, unknown fields,
invalid JSON, nesting beyond the parser, and 1 MB lines, in all three input formats. Its
``field`` is what the dead letter's reason must start with (``"<field>: "``).

:func:`odd_valid_events` is the other side: strange but valid events (emoji, right-to-left
scripts, CJK, 128-character ids) that must decode unchanged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from hypothesis import strategies as st

from featrec.core.events.formats import MAX_EVENT_CHARS, RawRecord
from featrec.core.events.model import (
    MAX_FUTURE_SKEW_S,
    MAX_ID_LENGTH,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_TEXT_LENGTH,
    MAX_TS,
    MIN_TS,
    TYPE_ALIASES,
)

ID_FIELDS = ("event_id", "session_id", "item_id")
KNOWN_FIELDS = (*ID_FIELDS, "user_id", "type", "ts", "price", "category", "quantity")
MEGABYTE = 1_000_000


class Hostile(NamedTuple):
    """A record that must be refused, and the field its dead letter must name."""

    record: RawRecord
    field: str
    kind: str  # what was wrong, for counting


# -- values ------------------------------------------------------------------------------------

#: Characters str.isprintable() refuses: NUL, other C0/C1 controls, a lone surrogate, bidi
#: overrides and marks, zero-width joiner, BOM, line/paragraph separators, a private-use char.
NON_PRINTABLE = "\x00\x07\x1b\x7f\x85\ud800\udfff\u202e\u200f\u200d\ufeff\u2028\u2029\ue000"

non_json_numbers = st.sampled_from([math.nan, math.inf, -math.inf])
containers = st.lists(st.integers(), max_size=3) | st.dictionaries(
    st.text(max_size=3), st.integers(), max_size=2
)
not_str_or_int = (
    containers | st.booleans() | st.floats(allow_nan=True, allow_infinity=True) | non_json_numbers
)


def _long(n: int) -> st.SearchStrategy[str]:
    return st.sampled_from("x0é€😀").map(lambda c: c * n)


def printable_text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """Printable ids without surrounding whitespace: letters of any script, digits,
    punctuation, symbols (emoji included)."""
    return st.text(
        st.characters(categories=["L", "N", "P", "S"]), min_size=min_size, max_size=max_size
    )


#: Ids that must be refused: a non-printable character somewhere, surrounding whitespace, too
#: long (129 characters up to 10,000), or an integer of more than 128 digits.
bad_ids = (
    st.tuples(printable_text(0, 8), st.sampled_from(NON_PRINTABLE), printable_text(0, 8)).map(
        "".join
    )
    | printable_text(1, 8).map(lambda s: f" {s}")
    | printable_text(1, 8).map(lambda s: f"{s}\t")
    | st.integers(MAX_ID_LENGTH + 1, 10_000).flatmap(_long)
    | st.integers(min_value=10**MAX_ID_LENGTH, max_value=10**300)
)

_TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _is_bad_type(text: str) -> bool:
    name = text.strip().lower()
    return not _TYPE_RE.fullmatch(TYPE_ALIASES.get(name, name))


bad_types = (
    st.text(max_size=40).filter(_is_bad_type)
    | st.sampled_from(["", "1view", "page view", "view!", "x" * 33, "VIEW\x00"])
    | st.integers()
    | not_str_or_int
)


def bad_timestamps(now: float) -> st.SearchStrategy[object]:
    """Timestamps to refuse for an event ingested at ``now``."""
    min_s, max_s = MIN_TS.timestamp(), MAX_TS.timestamp()
    ahead = now + MAX_FUTURE_SKEW_S + 1
    return st.one_of(
        non_json_numbers,
        st.floats(max_value=min_s - 1e-3, allow_nan=False, allow_infinity=False),  # negative too
        st.integers(max_value=int(min_s) - 1),
        st.floats(min_value=max_s, allow_nan=False, allow_infinity=False),
        st.integers(min_value=int(max_s)),
        st.floats(min_value=ahead, max_value=max_s - 1),  # far future, before 2100
        st.datetimes(
            min_value=datetime.fromtimestamp(ahead, UTC).replace(tzinfo=None),  # naive is UTC
            max_value=datetime(2099, 12, 31),
        ).map(lambda d: d.isoformat()),
        st.datetimes(max_value=datetime(1999, 12, 31)).map(lambda d: d.isoformat() + "Z"),
        st.sampled_from(["yesterday", "2024-13-01T00:00:00", "1e400", "", "  ", "NaN"]),
        st.booleans(),
        containers,
    )


bad_prices = st.one_of(
    non_json_numbers,
    st.floats(max_value=-1e-9, allow_nan=False),
    st.floats(min_value=MAX_PRICE * 1.0001, allow_nan=False),
    st.sampled_from(["abc", "12,50", "NaN", "-1", "1e10", "inf", "€3"]),
    st.booleans(),
    containers,
)
bad_quantities = st.one_of(
    non_json_numbers,
    st.integers(max_value=0),
    st.integers(min_value=MAX_QUANTITY + 1),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    st.sampled_from(["1.5", "x", "-3", "0", "٣٣٣٣٣٣٣٣"]),  # Arabic-Indic digits: 33 million
    st.booleans(),
    containers,
)
bad_categories = st.one_of(
    st.tuples(printable_text(0, 8), st.sampled_from(NON_PRINTABLE)).map("".join),
    st.integers(MAX_TEXT_LENGTH + 1, 2000).flatmap(_long),
    st.integers(),
    st.booleans(),
    containers,
    non_json_numbers,
)


# -- featrec records ---------------------------------------------------------------------------


def valid_mappings(sessions: list[str], now: float) -> st.SearchStrategy[dict[str, Any]]:
    """Valid events in featrec's schema, in the given sessions, at most a day before ``now``."""
    return st.fixed_dictionaries(
        {
            "event_id": printable_text(1, 12),
            "session_id": st.sampled_from(sessions),
            "item_id": printable_text(1, 12) | st.integers(0, 2**63),
            "type": st.sampled_from(["view", "click", "cart", "purchase", "orders", "wishlist"]),
            "ts": st.floats(now - 86_400, now),
        },
        optional={
            "user_id": printable_text(1, 12),
            "price": st.floats(0, 1000),
            "category": printable_text(1, 12),
            "quantity": st.integers(1, 5),
        },
    )


def _encode(value: object, ensure_ascii: bool) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=True)


@st.composite
def hostile_featrec(draw: st.DrawFn, sessions: list[str], now: float) -> Hostile:
    """A featrec-format record (a JSON line, or a mapping as Parquet/CSV readers give)."""
    base = draw(valid_mappings(sessions, now))
    kind = draw(
        st.sampled_from(
            [
                "missing field",
                "bad id",
                "wrong-type id",
                "bad user id",
                "bad type",
                "bad ts",
                "bad price",
                "bad quantity",
                "bad category",
                "unknown field",
                "not an object",
                "invalid JSON",
                "deep nesting",
                "1 MB line",
            ]
        )
    )
    field: str
    value: object = base
    if kind == "missing field":
        field = draw(st.sampled_from([*ID_FIELDS, "type", "ts"]))
        del base[field]
    elif kind in ("bad id", "wrong-type id"):
        field = draw(st.sampled_from(ID_FIELDS))
        base[field] = draw(bad_ids if kind == "bad id" else not_str_or_int)
    elif kind == "bad user id":
        field = "user_id"
        base[field] = draw(bad_ids | not_str_or_int)
    elif kind == "unknown field":
        field = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in KNOWN_FIELDS))
        base[field] = draw(st.none() | st.integers() | st.text(max_size=5))
    elif kind == "not an object":
        field = "event"
        value = _encode(
            draw(st.lists(st.integers(), max_size=2) | st.integers() | st.text() | st.none()),
            draw(st.booleans()),
        )
    else:
        field, value = _featrec_value_or_line(draw, kind, base, now)
    if isinstance(value, str):  # already a line
        return Hostile(RawRecord("featrec", "", value, now), field, kind)
    as_mapping = isinstance(value, dict) and draw(st.booleans())
    payload = value if as_mapping else _encode(value, draw(st.booleans()))
    if isinstance(payload, str) and len(payload) > MAX_EVENT_CHARS:
        field = "json"  # a long bad value made a line too long: refused before parsing
    return Hostile(RawRecord("featrec", "", payload, now), field, kind)  # type: ignore[arg-type]


def _featrec_value_or_line(
    draw: st.DrawFn, kind: str, base: dict[str, Any], now: float
) -> tuple[str, object]:
    field = {
        "bad type": "type",
        "bad ts": "ts",
        "bad price": "price",
        "bad quantity": "quantity",
        "bad category": "category",
    }.get(kind)
    if field is not None:
        strategy = {
            "type": bad_types,
            "ts": bad_timestamps(now),
            "price": bad_prices,
            "quantity": bad_quantities,
            "category": bad_categories,
        }[field]
        base[field] = draw(strategy)
        return field, base
    if kind == "invalid JSON":
        line = _encode(base, ensure_ascii=False)
        cut = draw(st.integers(0, len(line) - 1))  # a strict prefix never closes the object
        junk = draw(st.sampled_from(["", "\x00", "\ufeff"]))
        return "json", junk + line[:cut] if junk == "\ufeff" else line[:cut] + junk
    if kind == "deep nesting":
        depth = draw(st.integers(2_000, 3_000))  # deeper than the parsers go, under 16 KB
        return "payload", draw(st.sampled_from(["[", '{"a":'])) * depth
    assert kind == "1 MB line"
    size = draw(st.sampled_from([MEGABYTE, MEGABYTE // 4, 20_000]))
    if draw(st.booleans()):
        base[draw(st.sampled_from(ID_FIELDS))] = "x" * size
        return "json", _encode(base, ensure_ascii=True)
    return "json", draw(st.sampled_from(["x", "{", "\x00", "😀"])) * size


# -- OTTO and session-rec records --------------------------------------------------------------


@st.composite
def hostile_otto(draw: st.DrawFn, now: float) -> Hostile:
    """An OTTO line holding one session with exactly one bad event (or a bad session)."""
    ts_ms = draw(st.integers(int((now - 86_400) * 1000), int(now * 1000)))
    event: dict[str, object] = {"aid": draw(st.integers(0, 2**40)), "ts": ts_ms, "type": "clicks"}
    line: dict[str, object] = {"session": draw(st.integers(0, 2**40)), "events": [event]}
    kind = draw(st.sampled_from(["session", "events", "event", "aid", "ts", "type"]))
    field = kind
    if kind == "session":
        line["session"] = draw(st.sampled_from([None, True, "", [1], 1.5, {"a": 1}]))
        if line["session"] is None and draw(st.booleans()):
            del line["session"]
    elif kind == "events":
        line["events"] = draw(st.sampled_from([None, {}, "x", 3]))
    elif kind == "event":
        field = "events"
        line["events"] = [draw(st.integers() | st.text(max_size=3) | st.none())]
    elif kind == "aid":
        field = "item_id"
        event["aid"] = draw(not_str_or_int | bad_ids | st.none())
    elif kind == "ts":
        seconds_as_ms = ts_ms // 1000  # seconds passed as milliseconds: 1970
        ahead = int((now + MAX_FUTURE_SKEW_S + 1) * 1000)
        event["ts"] = draw(
            st.sampled_from([seconds_as_ms, -1, None, True, "123"])
            | non_json_numbers
            | st.integers(ahead, int(MAX_TS.timestamp() * 1000) * 10)
        )
    else:
        event["type"] = draw(bad_types)
    return Hostile(RawRecord("otto", "", _encode(line, draw(st.booleans())), now), field, kind)


@st.composite
def hostile_session_rec(draw: st.DrawFn, now: float) -> Hostile:
    """A session-rec TSV row (``SessionId ItemId Time``)."""
    session = str(draw(st.integers(1, 10**9)))
    item = str(draw(st.integers(1, 10**9)))
    time = repr(draw(st.floats(now - 86_400, now)))
    kind = draw(st.sampled_from(["columns", "Time", "ts", "SessionId", "ItemId", "1 MB line"]))
    field = kind
    if kind == "columns":
        field = "row"
        cols = draw(st.sampled_from([[session, item], [session, item, time, "x"], [session]]))
        return Hostile(RawRecord("session-rec", "", "\t".join(cols), now), field, kind)
    if kind == "Time":
        time = draw(st.sampled_from(["soon", "", "12abc", "0x10", "1,5", "\x00"]))
    elif kind == "ts":
        ahead = now + MAX_FUTURE_SKEW_S + 1
        value = draw(
            st.sampled_from(["nan", "inf", "-inf", "-1", "86400", "1e20"])
            | st.floats(ahead, MAX_TS.timestamp() - 1).map(repr)
        )
        time = value
    elif kind in ("SessionId", "ItemId"):
        bad = draw(
            st.sampled_from(["", " ", "\x00", "a\x00b", "\u202eabc", "\ud800"])
            | st.integers(MAX_ID_LENGTH + 1, 10_000).map(lambda n: "9" * n)
        )
        session, item = (bad, item) if kind == "SessionId" else (session, bad)
    else:
        field = "SessionId"
        session = "7" * MEGABYTE
    return Hostile(RawRecord("session-rec", "", f"{session}\t{item}\t{time}", now), field, kind)


def hostile_records(sessions: list[str], now: float) -> st.SearchStrategy[Hostile]:
    """Any hostile record, in any of the three formats (featrec the most often)."""
    return st.one_of(
        hostile_featrec(sessions, now),
        hostile_featrec(sessions, now),
        hostile_otto(now),
        hostile_session_rec(now),
    )


# -- strange but valid -------------------------------------------------------------------------


def odd_valid_events(now: float) -> st.SearchStrategy[dict[str, Any]]:
    """Valid events with strange but printable ids and categories, up to the length limits."""
    ids = st.one_of(
        printable_text(1, MAX_ID_LENGTH),
        st.sampled_from(["😀", "👍🏽", "مرحبا", "שלום", "数据", "x" * MAX_ID_LENGTH, "a b"]),
        st.integers(0, 2**63 - 1),
    )
    return st.fixed_dictionaries(
        {
            "event_id": ids,
            "session_id": ids,
            "item_id": ids,
            "type": st.sampled_from(["view", " CLICKS ", "Orders", "add_to_cart", "wishlist_2"]),
            "ts": st.floats(MIN_TS.timestamp(), now)
            | st.sampled_from(["2024-05-01T10:00:00+14:00", "2024-05-01T10:00:00.123456Z"]),
        },
        optional={
            "user_id": ids | st.none() | st.just(""),
            "price": st.floats(0, MAX_PRICE) | st.sampled_from(["12.50", "1e3", 0]),
            "category": printable_text(1, MAX_TEXT_LENGTH),
            "quantity": st.integers(1, MAX_QUANTITY) | st.sampled_from(["7", 3.0, "٣"]),
        },
    )


def expected_ids(raw: Mapping[str, Any]) -> dict[str, str | None]:
    """The ids an odd valid event must decode to (integers become their decimal text)."""
    user = raw.get("user_id")
    return {
        "event_id": str(raw["event_id"]),
        "session_id": str(raw["session_id"]),
        "item_id": str(raw["item_id"]),
        "user_id": None if user in (None, "") else str(user),
    }
