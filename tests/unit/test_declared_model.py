"""Declarations: each kind of bad declaration gets its own error naming it; the stream fold's
known answers and bounded state."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from featrec.core.events.model import Event
from featrec.core.features.declared.model import (
    AS_OF,
    DAY_US,
    HOUR_US,
    US,
    Aggregation,
    Declaration,
    DeclarationError,
    Filters,
    Function,
    parse_function,
    validate,
)
from featrec.core.features.declared.shard import DeclaredShard
from featrec.core.features.declared.skew import SkewReport, distance
from featrec.core.features.declared.state import DeclaredState

COUNT_1H = Aggregation("n_1h", "item_id", Function.COUNT, window_us=HOUR_US, hop_us=300 * US)


NO_FILTERS = Filters()


def decl(*aggs: Aggregation, entity: str = "user", filters: Filters = NO_FILTERS) -> Declaration:
    return Declaration("my_view", entity, aggs or (COUNT_1H,), filters)


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        (decl(Aggregation("x", "colour", Function.COUNT, window_us=HOUR_US)), "unknown column"),
        (decl(Aggregation("x", "item_id", Function.SUM, window_us=HOUR_US)), "numeric column"),
        (decl(Aggregation("x", "item_id", Function.COUNT)), "does not fit entity 'user'"),
        (
            decl(
                Aggregation("x", "item_id", Function.COUNT, window_us=7 * DAY_US), entity="session"
            ),
            "window 7d does not fit entity 'session'",
        ),
        (
            decl(
                Aggregation("x", "item_id", Function.COUNT, window_us=HOUR_US, hop_us=7 * 60 * US)
            ),
            "must divide",
        ),
        (
            decl(
                Aggregation("x", "item_id", Function.COUNT, window_us=30 * DAY_US, hop_us=60 * US)
            ),
            "bounded state",
        ),
        (decl(Aggregation("x", "item_id", Function.LAST_N, n=0, window_us=HOUR_US)), "last_N"),
        (decl(COUNT_1H, COUNT_1H), "two aggregations are named 'n_1h'"),
        (decl(Aggregation(AS_OF, "item_id", Function.COUNT, window_us=HOUR_US)), "identifier"),
        (decl(entity="shop"), "entity 'shop' is not one of"),
        (decl(filters=Filters(price_min=50, price_max=10)), "price range"),
        (decl(filters=Filters(event_types=())), "empty filter"),
    ],
)
def test_each_bad_declaration_gets_its_error(declaration: Declaration, message: str) -> None:
    with pytest.raises(DeclarationError, match=message) as info:
        validate(declaration)
    assert "declaration 'my_view'" in str(info.value)


def test_functions_parse_and_unknown_ones_do_not() -> None:
    assert parse_function("last_10") == (Function.LAST_N, 10)
    assert parse_function("count_distinct") == (Function.COUNT_DISTINCT, 0)
    for bad in ("median", "last_n", "last_x"):
        with pytest.raises(ValueError):
            parse_function(bad)


def test_filters_round_trip_through_tags() -> None:
    filters = Filters(event_types=("cart",), categories=("a", "b"), price_min=1.5, price_max=9)
    assert Filters.from_tags("v", filters.to_tags()) == Filters(
        event_types=("cart",), categories=("a", "b"), price_min=1.5, price_max=9.0
    )
    with pytest.raises(DeclarationError, match="must be a number"):
        Filters.from_tags("v", {"featrec.price_min": "cheap"})


BASE = datetime(2026, 1, 1, tzinfo=UTC)


def ev(i: int, minutes: float, **kw: object) -> Event:
    fields: dict[str, object] = {"user_id": "u", "type": "view"} | kw
    return Event(
        f"e{i:03d}",
        "s",
        str(fields.pop("item", "i")),
        ts=BASE + timedelta(minutes=minutes),
        **fields,
    )  # type: ignore[arg-type]


def test_known_answers_for_every_function() -> None:
    aggs = (
        Aggregation("n", "item_id", Function.COUNT, window_us=HOUR_US, hop_us=HOUR_US),
        Aggregation("total", "price", Function.SUM, window_us=HOUR_US, hop_us=HOUR_US),
        Aggregation("avg", "price", Function.MEAN, window_us=HOUR_US, hop_us=HOUR_US),
        Aggregation("low", "price", Function.MIN, window_us=HOUR_US, hop_us=HOUR_US),
        Aggregation("high", "price", Function.MAX, window_us=HOUR_US, hop_us=HOUR_US),
        Aggregation("newest", "item_id", Function.LAST, window_us=HOUR_US, hop_us=HOUR_US),
        Aggregation("items", "item_id", Function.COUNT_DISTINCT, window_us=HOUR_US, hop_us=HOUR_US),
        Aggregation("recent", "item_id", Function.LAST_N, n=2, window_us=HOUR_US, hop_us=HOUR_US),
    )
    state = DeclaredState(validate(decl(*aggs)), "u")
    for e in (ev(0, 1, item="a", price=10.0), ev(2, 3, item="c"), ev(1, 2, item="b", price=4.0)):
        state.update(e)
    values = state.values()
    assert values == {
        "n": 3, "total": 14.0, "avg": 7.0, "low": 4.0, "high": 10.0, "newest": "c",
        "items": 3, "recent": ["c", "b"], AS_OF: values[AS_OF],
    }  # fmt: skip
    assert values[AS_OF] == (
        BASE + timedelta(minutes=3) - datetime(1970, 1, 1, tzinfo=UTC)
    ) // timedelta(microseconds=1)


def test_an_empty_window_gives_zeros_and_nulls() -> None:
    aggs = (
        Aggregation("n", "item_id", Function.COUNT, window_us=HOUR_US, hop_us=HOUR_US),
        Aggregation("total", "price", Function.SUM, window_us=HOUR_US, hop_us=HOUR_US),
        Aggregation("avg", "price", Function.MEAN, window_us=HOUR_US, hop_us=HOUR_US),
        Aggregation("recent", "item_id", Function.LAST_N, n=2, window_us=HOUR_US, hop_us=HOUR_US),
    )
    state = DeclaredState(validate(decl(*aggs, filters=Filters(event_types=("cart",)))), "u")
    state.update(ev(0, 1))  # a view: filtered out, but the row is as of it
    assert {k: v for k, v in state.values().items() if k != AS_OF} == {
        "n": 0, "total": 0.0, "avg": None, "recent": [],
    }  # fmt: skip


def test_state_is_bounded_by_the_window() -> None:
    """A week of one event a minute keeps at most window/hop buckets; versions increase."""
    state = DeclaredState(validate(decl(COUNT_1H)), "u")
    versions = []
    for i in range(7 * 24 * 60):
        state.update(ev(i, i))
        versions.append(state.row().version)
    assert state.n_buckets() <= HOUR_US // (300 * US)
    # Newest at minute 10079 (hop bucket 10075..10079): the window is minutes 10020..10079.
    assert state.values()["n_1h"] == 60
    state.update(ev(99_999, 10_080))  # a new hop bucket: the window moves on by 5 minutes
    assert state.values()["n_1h"] == 56
    assert all(b > a for a, b in itertools.pairwise(versions))


def test_a_shard_drops_keys_past_their_retention_and_round_trips() -> None:
    shard = DeclaredShard([validate(decl(COUNT_1H))])
    for i in range(200):
        shard.fold([ev(i, i * 10, user_id=f"u{i}")])
    shard.sweep()
    assert len(shard.states) <= 7  # keys idle for more than the 1 h window are gone
    again = DeclaredShard.from_bytes(shard.to_bytes(), shard.declarations)
    assert {k: s.values() for k, s in again.states.items()} == {
        k: s.values() for k, s in shard.states.items()
    }
    changed = validate(decl(COUNT_1H, Aggregation("m", "price", Function.MAX, window_us=HOUR_US)))
    assert DeclaredShard.from_bytes(shard.to_bytes(), [changed]).states == {}


def test_skew_distance_and_report() -> None:
    assert distance(1.0, 1.0 + 1e-12) == 0
    assert distance(3, 5) == 2
    assert distance(["a"], ["b"]) == float("inf")
    assert distance(None, 0) == float("inf")
    report = SkewReport()
    report.compare("v", "k1", 1, {"n": 2}, {"n": 2}, ["n"])
    report.compare("v", "k2", 1, {"n": 9}, {"n": 2}, ["n"])
    skew = report.features[("v", "n")]
    assert (skew.checked, skew.mismatches, skew.rate) == (2, 1, 0.5)
    assert [e.key for e in skew.worst] == ["k2"]
    assert any("1/2 mismatched" in line for line in report.lines())
