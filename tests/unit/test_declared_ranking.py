"""Declared features as ranker columns: chosen by name (each bad choice gets its error), turned
into numbers the same way for training and serving, and a model's forgetting of declared state
in the stream fold (``DeclaredShard.forget``)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from featrec.core.events.model import Event
from featrec.core.features.declared.model import (
    DAY_US,
    HOUR_US,
    Aggregation,
    Declaration,
    Function,
    validate,
)
from featrec.core.features.declared.ranking import (
    DeclaredColumn,
    column_value,
    declared_columns,
    declared_matrix,
    parse_names,
    wanted_rows,
)
from featrec.core.features.declared.shard import DeclaredShard
from featrec.errors import ConfigError

SESSION = validate(
    Declaration(
        "sb",
        "session",
        (
            Aggregation("mean_price", "price", Function.MEAN),
            Aggregation("recent", "item_id", Function.LAST_N, 3),
            Aggregation("last_cat", "category", Function.LAST),
        ),
    )
)
USER = validate(
    Declaration("uc", "user", (Aggregation("n", "item_id", Function.COUNT, 0, DAY_US, HOUR_US),))
)
ITEM = validate(
    Declaration(
        "ip",
        "item",
        (
            Aggregation("n_1h", "item_id", Function.COUNT, 0, HOUR_US),
            Aggregation("buyers", "user_id", Function.LAST_N, 2, DAY_US),
        ),
    )
)
DECLS = [SESSION, USER, ITEM]


def test_columns_are_chosen_by_name_in_order() -> None:
    columns = declared_columns([("ip", "n_1h"), ("sb", "recent"), ("uc", "n")], DECLS)
    assert [c.name for c in columns] == ["ip__n_1h", "sb__recent", "uc__n"]
    assert [c.entity for c in columns] == ["item", "session", "user"]
    assert parse_names([c.name for c in columns]) == [("ip", "n_1h"), ("sb", "recent"), ("uc", "n")]


@pytest.mark.parametrize(
    ("wanted", "message"),
    [
        ([("nope", "n")], "nope:n is not in a declared view"),
        ([("uc", "colour")], "has no feature 'colour'"),
        ([("sb", "last_cat")], "a text value has no order"),
        ([("sb", "as_of_us")], "cannot be a ranker column"),
        ([("uc", "n"), ("uc", "n")], "list one twice"),
    ],
)
def test_each_bad_choice_gets_its_error(wanted: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        declared_columns(wanted, DECLS)


def test_a_model_column_name_must_name_view_and_feature() -> None:
    with pytest.raises(ConfigError, match="view__feature"):
        parse_names(["plain"])


def test_values_numbers_lists_by_length_nulls_nan() -> None:
    assert column_value(3) == 3.0 and column_value(2.5) == 2.5 and column_value(True) == 1.0
    assert column_value(["a", "b"]) == 2.0 and column_value([]) == 0.0
    assert math.isnan(column_value(None)) and math.isnan(column_value("x"))


def test_matrix_session_and_user_columns_repeat_item_columns_per_candidate() -> None:
    columns = (
        DeclaredColumn("sb", "mean_price", "session"),
        DeclaredColumn("uc", "n", "user"),
        DeclaredColumn("ip", "buyers", "item"),
    )
    rows = {
        ("sb", "s1"): {"mean_price": 12.5},
        ("uc", "u1"): {"n": 4},
        ("ip", "a"): {"buyers": ["u1", "u2"]},
        ("ip", "b"): None,
    }
    assert wanted_rows(columns, "s1", "u1", ["a", "b", "c"]) == {
        "sb": ["s1"],
        "uc": ["u1"],
        "ip": ["a", "b", "c"],
    }
    m = declared_matrix(columns, rows, "s1", "u1", ["a", "b", "c"])
    expected = np.array([[12.5, 4.0, 2.0], [12.5, 4.0, np.nan], [12.5, 4.0, np.nan]])
    np.testing.assert_array_equal(m, expected)
    anonymous = declared_matrix(columns, rows, "s1", None, ["a"])
    assert math.isnan(anonymous[0, 1]) and wanted_rows(columns, "s1", None, [])["uc"] == []


def _event(i: int, user: str, session: str, item: str) -> Event:
    at = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
    return Event(f"e{i}", session, item, "view", at, user, 10.0, "c", 1)


def test_forget_drops_keys_of_the_user_and_states_that_keep_their_ids() -> None:
    shard_user = DeclaredShard([USER])
    shard_item = DeclaredShard([ITEM])
    events = [_event(1, "gone", "s-g", "a"), _event(2, "kept", "s-k", "b")]
    for shard in (shard_user, shard_item):
        shard.fold(events)

    def denied(kind: str, identifier: str) -> bool:
        return (kind, identifier) in {("user", "gone"), ("session", "s-g")}

    assert shard_user.forget(denied) == 1
    assert [key for _, key in shard_user.states] == ["kept"]
    # Item "a" kept "gone" in its buyers: its state goes; item "b" stays.
    assert shard_item.forget(denied) == 1
    assert [key for _, key in shard_item.states] == ["b"]
    assert shard_item.forget(denied) == 0
