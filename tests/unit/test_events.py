"""Event validation: every field, with the offending field and the reason named."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from featrec.core.events.model import (
    KNOWN_TYPES,
    MAX_FUTURE_SKEW_S,
    MAX_ID_LENGTH,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_TEXT_LENGTH,
    Event,
    check_not_ahead,
    event_from_mapping,
    parse_timestamp,
    parse_type,
)
from featrec.errors import FeatrecError, InvalidEvent

BASE: dict[str, Any] = {
    "event_id": "e1",
    "session_id": "s1",
    "item_id": "i1",
    "type": "view",
    "ts": "2024-05-01T10:00:00+00:00",
}


def build(**changes: Any) -> Event:
    raw = {**BASE, **changes}
    return event_from_mapping({k: v for k, v in raw.items() if v is not _DROP})


_DROP = object()


def refused(field: str, reason_part: str, **changes: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        build(**changes)
    assert info.value.field == field
    assert reason_part in info.value.reason
    assert str(info.value) == f"{field}: {info.value.reason}"
    assert isinstance(info.value, FeatrecError)
    return info.value


def test_minimal_event() -> None:
    event = build()
    assert event == Event(
        event_id="e1",
        session_id="s1",
        item_id="i1",
        type="view",
        ts=datetime(2024, 5, 1, 10, tzinfo=UTC),
    )
    assert (event.user_id, event.price, event.category, event.quantity) == (None,) * 4


def test_full_event_round_trips_through_json() -> None:
    event = build(user_id="u7", price=19.99, category="shoes", quantity=2, type="cart")
    again = event_from_mapping(json.loads(json.dumps(event.to_dict())))
    assert again == event
    assert event.to_dict()["ts"] == "2024-05-01T10:00:00+00:00"


def test_to_dict_leaves_out_absent_optional_fields() -> None:
    assert set(build().to_dict()) == {"event_id", "session_id", "item_id", "type", "ts"}


def test_events_are_immutable() -> None:
    event = build()
    with pytest.raises(AttributeError):
        event.item_id = "other"  # type: ignore[misc]


# -- required fields -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["event_id", "session_id", "item_id", "type", "ts"])
@pytest.mark.parametrize("absent", [_DROP, None])
def test_missing_required_field(field: str, absent: object) -> None:
    refused(field, "missing", **{field: absent})


@pytest.mark.parametrize("field", ["event_id", "session_id", "item_id"])
def test_empty_identifier_is_missing(field: str) -> None:
    refused(field, "missing", **{field: ""})


def test_not_a_mapping() -> None:
    with pytest.raises(InvalidEvent) as info:
        event_from_mapping(["e1", "s1"])  # type: ignore[arg-type]
    assert info.value.field == "event"
    assert "expected a JSON object, got list" in info.value.reason


# -- identifiers -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["event_id", "session_id", "item_id", "user_id"])
@pytest.mark.parametrize("value", [1.5, True, ["a"], {"a": 1}])
def test_identifier_of_wrong_type(field: str, value: object) -> None:
    refused(field, "must be a string or integer", **{field: value})


@pytest.mark.parametrize("field", ["event_id", "session_id", "item_id", "user_id"])
def test_identifier_beyond_int_digit_limit(field: str) -> None:
    refused(field, f"longer than {MAX_ID_LENGTH}", **{field: 10**5000})


def test_integer_identifiers_become_strings() -> None:
    event = build(event_id=7, session_id=0, item_id=-3, user_id=12345678901234567890)
    assert (event.event_id, event.session_id, event.item_id) == ("7", "0", "-3")
    assert event.user_id == "12345678901234567890"


@pytest.mark.parametrize("field", ["event_id", "session_id", "item_id", "user_id"])
def test_identifier_length_bound(field: str) -> None:
    assert getattr(build(**{field: "x" * MAX_ID_LENGTH}), field) == "x" * MAX_ID_LENGTH
    refused(field, f"longer than {MAX_ID_LENGTH}", **{field: "x" * (MAX_ID_LENGTH + 1)})


@pytest.mark.parametrize("field", ["event_id", "session_id", "item_id", "user_id"])
@pytest.mark.parametrize(
    "value", ["a\x00b", "a\nb", "tab\there", "\x1b[31m", " padded", "end ", "zw\u200b"]
)
def test_identifier_with_control_characters_or_padding(field: str, value: str) -> None:
    refused(field, "control characters or surrounding whitespace", **{field: value})


def test_unicode_identifiers_and_text_are_kept_verbatim() -> None:
    event = build(item_id="Größe-商品-🙂", session_id="sitzung ä", category="Küche & Bad 🍳")
    assert event.item_id == "Größe-商品-🙂"
    assert event.session_id == "sitzung ä"
    assert event_from_mapping(json.loads(json.dumps(event.to_dict()))) == event
    assert event_from_mapping(json.loads(json.dumps(event.to_dict(), ensure_ascii=False))) == event


def test_user_id_is_optional() -> None:
    assert build(user_id=None).user_id is None
    assert build(user_id="").user_id is None
    assert build(user_id="u1").user_id == "u1"


# -- type ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("view", "view"),
        ("orders", "purchase"),
        ("order", "purchase"),
        ("transaction", "purchase"),
        ("clicks", "click"),
        ("carts", "cart"),
        ("add_to_cart", "cart"),
        ("addtocart", "cart"),
        ("views", "view"),
        (" Orders ", "purchase"),
        ("CLICK", "click"),
    ],
)
def test_type_aliases(raw: str, expected: str) -> None:
    assert build(type=raw).type == expected
    assert expected in KNOWN_TYPES


@pytest.mark.parametrize("raw", ["wishlist", "search", "Share", "rate_5", "x" * 32])
def test_types_are_extensible(raw: str) -> None:
    assert build(type=raw).type == raw.lower()


@pytest.mark.parametrize("raw", ["add to cart", "1click", "_x", "x" * 33, "kauf-ü", "a\x00", ""])
def test_type_must_be_a_lower_case_identifier(raw: str) -> None:
    refused("type", "is not a lower-case identifier", type=raw)


@pytest.mark.parametrize("raw", [1, 2.0, True, ["view"]])
def test_type_must_be_a_string(raw: object) -> None:
    refused("type", "must be a string", type=raw)


def test_parse_type_directly() -> None:
    assert parse_type("Orders") == "purchase"
    with pytest.raises(InvalidEvent, match="type: missing"):
        parse_type(None)


# -- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),  # naive: taken as UTC
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01 10:00:00.123456", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        (" 2024-05-01T10:00:00Z ", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        (1714557600, datetime(2024, 5, 1, 10, tzinfo=UTC)),
        (1714557600.5, datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        (datetime(2024, 5, 1, 10), datetime(2024, 5, 1, 10, tzinfo=UTC)),
        (
            datetime(2024, 5, 1, 5, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2024, 5, 1, 10, tzinfo=UTC),
        ),
    ],
)
def test_timestamps_become_tz_aware_utc(raw: object, expected: datetime) -> None:
    ts = build(ts=raw).ts
    assert ts == expected
    assert ts.tzinfo is UTC
    assert ts.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (math.nan, "must be finite"),
        (math.inf, "must be finite"),
        (-math.inf, "must be finite"),
        (True, "not a boolean"),
        ([2024], "unsupported type list"),
        ("yesterday", "cannot parse 'yesterday'"),
        ("2024-13-01T00:00:00", "cannot parse"),
        (1714557600000, "cannot parse"),  # milliseconds passed as seconds
        pytest.param(10**30, "cannot parse", id="int-1e30"),
        pytest.param(10**5000, "cannot parse <int too long to show>", id="int-5000-digits"),
        ("1999-12-31T23:59:59Z", "outside 2000..2100"),
        ("2100-01-01T00:00:00Z", "outside 2000..2100"),
        ("2099-12-31T23:00:00-02:00", "outside 2000..2100"),  # 2100 in UTC
        (0, "outside 2000..2100"),
        (4102444800, "outside 2000..2100"),  # 2100-01-01 in unix seconds
    ],
)
def test_bad_timestamps_are_refused(raw: object, reason: str) -> None:
    refused("ts", reason, ts=raw)


def test_timestamp_bounds_are_inclusive_below_exclusive_above() -> None:
    assert parse_timestamp("2000-01-01T00:00:00Z") == datetime(2000, 1, 1, tzinfo=UTC)
    last = parse_timestamp("2099-12-31T23:59:59.999999Z")
    assert last == datetime(2100, 1, 1, tzinfo=UTC) - timedelta(microseconds=1)


def test_an_event_may_be_ahead_of_its_ingestion_by_at_most_the_skew() -> None:
    event = build()
    at = event.ts.timestamp()
    assert check_not_ahead(event, at - MAX_FUTURE_SKEW_S) is event
    assert check_not_ahead(event, at + 3600) is event  # the past is the fold's business
    with pytest.raises(InvalidEvent) as info:
        check_not_ahead(event, at - MAX_FUTURE_SKEW_S - 1)
    assert info.value.field == "ts"
    assert "is 301 s ahead of its ingestion time" in info.value.reason


# -- price -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(19.99, 19.99), (0, 0.0), ("12.50", 12.5), (MAX_PRICE, MAX_PRICE), (None, None), ("", None)],
)
def test_valid_prices(raw: object, expected: float | None) -> None:
    assert build(price=raw).price == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (math.nan, "not a finite price"),
        (math.inf, "not a finite price"),
        ("nan", "not a finite price"),
        ("-inf", "not a finite price"),
        (-0.01, "not a finite price"),
        (MAX_PRICE * 10, "not a finite price"),
        pytest.param(10**400, "not a finite price", id="int-beyond-float"),
        ("12,50", "is not a number"),
        ("free", "is not a number"),
        (True, "must be a number, got bool"),
        ([1.0], "must be a number, got list"),
    ],
)
def test_bad_prices(raw: object, reason: str) -> None:
    refused("price", reason, price=raw)


# -- quantity --------------------------------------------------------------------------------


def test_quantity_accepts_any_decimal_digits() -> None:
    assert build(quantity="\u0663").quantity == 3  # ARABIC-INDIC DIGIT THREE; int() reads it


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(1, 1), (3.0, 3), (" 7 ", 7), (MAX_QUANTITY, MAX_QUANTITY), (None, None), ("", None)],
)
def test_valid_quantities(raw: object, expected: int | None) -> None:
    assert build(quantity=raw).quantity == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (0, "is not in [1, "),
        (-2, "is not in [1, "),
        (MAX_QUANTITY + 1, "is not in [1, "),
        pytest.param(10**40, "is not in [1, ", id="int-1e40"),
        pytest.param(10**5000, "<int too long to show> is not in [1, ", id="int-5000-digits"),
        (2.5, "is not an integer"),
        (math.nan, "is not an integer"),
        (math.inf, "is not an integer"),
        ("2.5", "is not an integer"),
        ("-1", "is not an integer"),
        pytest.param("³", "is not an integer", id="superscript-3"),  # isdigit() but not int()
        pytest.param("1" * 5000, "is not in [1, ", id="str-5000-digits"),
        (True, "not a boolean"),
        ([1], "is not an integer"),
    ],
)
def test_bad_quantities(raw: object, reason: str) -> None:
    refused("quantity", reason, quantity=raw)


# -- category and unknown fields ----------------------------------------------------------------


def test_category_bounds() -> None:
    assert build(category="x" * MAX_TEXT_LENGTH).category == "x" * MAX_TEXT_LENGTH
    assert build(category="").category is None
    refused("category", f"longer than {MAX_TEXT_LENGTH}", category="x" * (MAX_TEXT_LENGTH + 1))
    refused("category", "contains control characters", category="shoes\r\n")
    refused("category", "must be a string, got int", category=5)


def test_unknown_fields_are_refused_by_name() -> None:
    refused("sesion_id", "unknown field", sesion_id="typo")
    # Several unknown fields: the first in sorted order is named.
    with pytest.raises(InvalidEvent) as info:
        event_from_mapping({**BASE, "zzz": 1, "aaa": 2})
    assert info.value.field == "aaa"


def test_unknown_field_is_named_before_other_problems() -> None:
    with pytest.raises(InvalidEvent) as info:
        event_from_mapping({"colour": "red"})
    assert (info.value.field, info.value.reason) == ("colour", "unknown field")
