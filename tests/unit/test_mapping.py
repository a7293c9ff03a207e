"""Event mappings (core/events/mapping.py): every timestamp form, nested JSON paths,
constants, the type vocabulary, bad mappings refused by key, bad rows refused by field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from featrec.core.events.formats import DeadLetter, RawRecord, decode
from featrec.core.events.mapping import (
    EventMapping,
    map_record,
    merge_tables,
    parse_mapping,
    parse_overrides,
)
from featrec.core.events.model import Event
from featrec.errors import ConfigError, InvalidEvent

T0 = datetime(2026, 11, 2, 13, 45, 30, 123456, tzinfo=UTC)
BASE_FIELDS = {"session_id": "sid", "item_id": "product", "type": {"const": "view"}}


def mapping(ts: Any, **extra: Any) -> EventMapping:
    return parse_mapping({"fields": BASE_FIELDS, "ts": ts, **extra})


def event(m: EventMapping, row: dict[str, Any]) -> Event:
    [out] = decode(RawRecord("featrec", "t:1", m.apply(row)))
    assert isinstance(out, Event), out
    return out


def row(**values: Any) -> dict[str, Any]:
    return {"sid": "s1", "product": "p1", **values}


@pytest.mark.parametrize(
    ("ts", "value", "expected"),
    [
        ({"column": "t", "unit": "iso"}, "2026-11-02T13:45:30.123456Z", T0),
        ({"column": "t", "unit": "iso"}, "2026-11-02T14:45:30.123456+01:00", T0),
        ({"column": "t", "unit": "s"}, str(T0.timestamp()), T0),
        ({"column": "t", "unit": "s"}, 1793627130, T0.replace(microsecond=0)),
        ({"column": "t", "unit": "ms"}, "1793627130123", T0.replace(microsecond=123000)),
        ({"column": "t", "unit": "us"}, 1793627130123456, T0),
        ({"column": "t", "unit": "us"}, "1793627130123456", T0),
        ({"column": "t", "unit": "%d.%m.%Y %H:%M:%S.%f"}, "02.11.2026 13:45:30.123456", T0),
        ({"column": "t"}, "2026-11-02 13:45:30.123456", T0),  # auto: text is ISO
        ({"column": "t"}, 1793627130.123456, T0),  # auto: a number is seconds
        ({"column": "t"}, "1793627130", T0.replace(microsecond=0)),  # auto: numeric text
        ("t", T0, T0),  # a Parquet timestamp column arrives as a datetime
    ],
)
def test_each_timestamp_form(ts: Any, value: Any, expected: datetime) -> None:
    got = event(mapping(ts), row(t=value)).ts
    assert abs((got - expected).total_seconds()) < 1e-6, got


def test_date_plus_offset_and_timezone() -> None:
    m = mapping({"column": "off", "unit": "ms", "date": "day"})
    assert event(m, row(day="2026-11-02", off="49530123")).ts == T0.replace(microsecond=123000)
    berlin = mapping(
        {
            "column": "off",
            "unit": "s",
            "date": "day",
            "date_format": "%d/%m/%Y",
            "timezone": "Europe/Berlin",
        }
    )
    # 14:45:30 in Berlin (CET, +01:00) is 13:45:30 UTC.
    assert event(berlin, row(day="02/11/2026", off=53130)).ts == T0.replace(microsecond=0)
    naive = mapping({"column": "t", "unit": "iso", "timezone": "Europe/Berlin"})
    assert event(naive, row(t="2026-11-02T14:45:30")).ts == T0.replace(microsecond=0)


@pytest.mark.parametrize(
    ("ts", "value", "reason"),
    [
        (
            {"column": "t", "unit": "ms"},
            "yesterday",
            "ts: column 't': 'yesterday' is not epoch milliseconds",
        ),
        ({"column": "t", "unit": "iso"}, "2026-13-02T00:00:00", "is not an ISO-8601 time"),
        ({"column": "t", "unit": "iso"}, 1793627130, "is not an ISO-8601 time"),
        (
            {"column": "t", "unit": "%d.%m.%Y"},
            "2026-11-02",
            "is not a time in the format '%d.%m.%Y'",
        ),
        ({"column": "t", "unit": "s"}, "", "ts: column 't': missing"),
        ({"column": "t", "unit": "s"}, "1e30", "ts:"),
        ({"column": "t", "unit": "s"}, "nan", "is not epoch seconds"),
        ({"column": "t", "unit": "ms"}, "1000", "outside 2000..2100"),
        ({"column": "off", "unit": "ms", "date": "day"}, "x", "is not a number of ms into the day"),
    ],
)
def test_unparseable_timestamps_name_field_and_column(ts: Any, value: Any, reason: str) -> None:
    m = mapping(ts)
    with pytest.raises(InvalidEvent) as info:
        event(m, row(t=value, off=value, day="2026-11-02"))
    assert info.value.field == "ts"
    assert reason in str(info.value)


def test_nested_json_paths_constants_and_literal_dotted_columns() -> None:
    m = parse_mapping(
        {
            "fields": {
                "session_id": "ctx.session.id",
                "user_id": "ctx.user",
                "item_id": "items.0.sku",
                "type": "name",
                "price": "items.0.price",
                "category": {"column": "cat.name"},
                "quantity": {"const": 2},
            },
            "ts": {"path": "ctx.at", "unit": "ms"},
        }
    )
    line = (
        '{"ctx": {"session": {"id": 77}, "user": "u9", "at": 1793627130123}, "name": "click",'
        ' "items": [{"sku": "A-1", "price": "19.9"}], "cat.name": "shoes"}'
    )
    out = map_record(m, RawRecord("featrec", "f:1", line))
    assert isinstance(out, RawRecord)
    [e] = decode(out)
    assert isinstance(e, Event)
    assert (e.session_id, e.user_id, e.item_id, e.type) == ("77", "u9", "A-1", "click")
    assert (e.price, e.category, e.quantity) == (19.9, "shoes", 2)
    assert e.event_id.startswith("m-")


def test_missing_path_and_object_value_are_dead_letters_with_field() -> None:
    m = parse_mapping(
        {"fields": {**BASE_FIELDS, "item_id": "item.sku"}, "ts": {"column": "t", "unit": "s"}}
    )
    missing = map_record(m, RawRecord("featrec", "f:3", '{"sid": "s", "item": {}, "t": 1.8e9}'))
    assert isinstance(missing, DeadLetter)
    assert missing.origin == "f:3"
    assert missing.reason.startswith("item_id: path 'item.sku' not found")
    nested = map_record(m, RawRecord("featrec", "f:4", '{"sid": {"a": 1}, "item": {"sku": 1}}'))
    assert isinstance(nested, DeadLetter) and nested.reason.startswith("session_id:")
    broken = map_record(m, RawRecord("featrec", "f:5", "{not json"))
    assert isinstance(broken, DeadLetter) and broken.reason.startswith("json: invalid JSON")


def test_type_vocabulary_keep_and_reject() -> None:
    table = {
        "fields": {**BASE_FIELDS, "type": "action"},
        "ts": {"column": "t", "unit": "s"},
        "types": {"addToCart": "cart", "checkoutDone": "purchase", "pdp": "view"},
    }
    keep = parse_mapping(table)
    at = 1793627130
    assert event(keep, row(action="addToCart", t=at)).type == "cart"
    assert event(keep, row(action="checkoutDone", t=at)).type == "purchase"
    assert event(keep, row(action="Wishlist", t=at)).type == "wishlist"  # outside: kept
    reject = parse_mapping({**table, "other_types": "reject"})
    assert event(reject, row(action="pdp", t=at)).type == "view"
    with pytest.raises(InvalidEvent, match=r"'Wishlist' is not in the mapping's types"):
        reject.apply(row(action="Wishlist", t=at))
    with pytest.raises(InvalidEvent, match=r"type: column 'action': .*not a lower-case"):
        keep.apply(row(action="add to cart!", t=at))


def test_event_id_is_stable_per_row_and_taken_when_mapped() -> None:
    m = mapping({"column": "t", "unit": "s"})
    a = m.apply(row(t=1793627130))
    assert a["event_id"] == m.apply(row(t=1793627130))["event_id"]
    assert a["event_id"] != m.apply(row(t=1793627131))["event_id"]
    with_id = parse_mapping(
        {"fields": {**BASE_FIELDS, "event_id": "id"}, "ts": {"column": "t", "unit": "s"}}
    )
    assert with_id.apply(row(t=1793627130, id="e-1"))["event_id"] == "e-1"


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"fields": BASE_FIELDS}, "[ts] is required"),
        ({"fields": {**BASE_FIELDS, "sesion": "x"}, "ts": "t"}, "fields.sesion is not a featrec"),
        ({"fields": {"session_id": "s", "type": "t"}, "ts": "t"}, "fields.item_id is required"),
        ({"fields": BASE_FIELDS, "ts": {"column": "t", "unit": "minutes"}}, "ts.unit must be"),
        ({"fields": BASE_FIELDS, "ts": {"column": "t", "unit": "iso", "date": "d"}}, "offset"),
        ({"fields": BASE_FIELDS, "ts": {"column": "t", "timezone": "Mars/Base"}}, "unknown"),
        ({"fields": BASE_FIELDS, "ts": {"colum": "t"}}, "unknown key 'colum'"),
        ({"fields": BASE_FIELDS, "ts": "t", "delimiter": ";;"}, "one character"),
        ({"fields": BASE_FIELDS, "ts": "t", "encoding": "klingon"}, "not a known text encoding"),
        ({"fields": BASE_FIELDS, "ts": "t", "format": "xml"}, "format must be one of"),
        ({"fields": BASE_FIELDS, "ts": "t", "types": {"x": "Add To Cart"}}, "types.x"),
        ({"fields": BASE_FIELDS, "ts": "t", "other_types": "reject"}, "needs a [types]"),
        ({"fields": BASE_FIELDS, "ts": "t", "delimeter": ";"}, "unknown key 'delimeter'"),
        ({"fields": {**BASE_FIELDS, "item_id": {"const": 1, "column": "x"}}, "ts": "t"}, "one of"),
    ],
)
def test_bad_mappings_are_refused_by_key(table: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_mapping(table, "featrec.toml [mappings.shop]")
    assert needle in str(info.value)
    assert str(info.value).startswith("featrec.toml [mappings.shop]")


def test_unknown_column_is_refused_against_a_header() -> None:
    m = mapping({"column": "ts_ms", "unit": "ms"})
    m.check_columns(["sid", "product", "ts_ms"], "clicks.csv")
    with pytest.raises(ConfigError, match=r"reads item_id from column 'product', which is not"):
        m.check_columns(["sid", "prodct", "ts_ms"], "clicks.csv")


def test_command_line_overrides_and_env_round_trip() -> None:
    flags = parse_overrides(
        [
            "fields.session_id=sid",
            "fields.item_id=product",
            "fields.type.const=view",
            "ts.column=ts_ms",
            "ts.unit=ms",
            "types.addToCart=cart",
            "delimiter=tab",
        ]
    )
    m = parse_mapping(flags)
    assert m.delimiter == "\t" and m.types == {"addToCart": "cart"}
    assert event(m, row(ts_ms="1793627130123")).ts == T0.replace(microsecond=123000)
    merged = merge_tables({"fields": BASE_FIELDS, "ts": "t"}, parse_overrides(["ts.unit=ms"]))
    assert merged["ts"] == {"column": "t", "unit": "ms"}
    assert merged["fields"]["session_id"] == "sid"
    # As a launcher hands it to a dataflow process (FlowSettings.source_mapping).
    import json

    from featrec.settings import FlowSettings

    table = FlowSettings.from_env({"FEATREC_SOURCE_MAPPING": json.dumps(flags)}).source_mapping
    assert table is not None and parse_mapping(table) == m
    assert FlowSettings.from_env({}).source_mapping is None
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["fields.session_id"])


def test_optional_fields_may_be_absent_required_ones_may_not() -> None:
    m = parse_mapping({"fields": {**BASE_FIELDS, "user_id": "user.id", "price": "p"}, "ts": "t"})
    mapped = m.apply({"sid": "s", "product": "x", "t": 1793627130})
    assert mapped["user_id"] is None and mapped["price"] is None
    with pytest.raises(InvalidEvent, match="session_id: column 'sid' not found"):
        m.apply({"product": "x", "t": 1793627130})
