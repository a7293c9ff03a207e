"""The item columns of the ranking matrix: computed once per row (known answers), kept by slot
in an :class:`ItemTable` that grows and clears, gathered per request in candidate order."""

from __future__ import annotations

import math

import numpy as np
import pytest

from featrec.core.ranking.item_table import (
    ITEM_COLUMNS,
    ITEM_WIDTH,
    ItemColumns,
    ItemTable,
    item_category,
    item_values,
)
from featrec.testing.ranking import DAY, HOUR, ITEMS, NOW


def named(values: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(ITEM_COLUMNS, values, strict=True))


def test_known_answer_values() -> None:
    got = named(item_values(ITEMS["X"]))
    assert got["price"] == 20.0
    assert got["log_price"] == math.log1p(20.0)
    assert got["trend_purchase_share"] == 0.5
    assert (got["views_7d"], got["purchases_30d"], got["conversion_30d"]) == (5.0, 1.0, 0.1)
    assert got["first_seen_s"] == NOW - 2 * DAY
    assert got["as_of_s"] == NOW - 6 * HOUR
    assert (got["trend_view"], got["trend_purchase"], got["trend_cart"]) == (2.0, 1.0, 0.0)
    assert item_category(ITEMS["X"]) == "c1"


def test_missing_values_are_nan_and_bools_are_not_numbers() -> None:
    assert all(math.isnan(v) for v in item_values(None))
    got = named(item_values({"price": True, "trend_view": 0, "trend_purchase": 3, "category": 5}))
    assert math.isnan(got["price"]) and math.isnan(got["log_price"])
    assert math.isnan(got["trend_purchase_share"])  # no views: no share
    assert got["trend_view"] == 0.0 and got["trend_purchase"] == 3.0
    assert math.isnan(named(item_values({"price": -1.0}))["log_price"])
    assert item_category({"category": 5}) is None and item_category({"category": ""}) == ""
    assert item_category(None) is None


def test_table_grows_gathers_by_slot_and_clears() -> None:
    table = ItemTable(initial=1)
    rows = [{"price": float(p), "category": f"c{p}"} for p in range(5)]
    slots = [table.add(row) for row in rows]
    assert slots == [0, 1, 2, 3, 4] and len(table) == 5
    ids = ["b", "a", "e"]
    picked = [rows[1], rows[0], rows[4]]
    columns = table.gather(ids, picked, [1, 0, 4])
    assert columns.values.shape == (3, ITEM_WIDTH)
    assert columns.values[:, 0].tolist() == [1.0, 0.0, 4.0]
    assert list(columns.categories) == ["c1", "c0", "c4"]
    assert columns.mapping() == {"b": rows[1], "a": rows[0], "e": rows[4]}
    # A gather is a copy: later slots do not change it.
    table.clear()
    assert len(table) == 0 and table.add({"price": 9.0}) == 0
    assert columns.values[1, 0] == 0.0
    same = ItemColumns.of(ids, dict(zip(ids, picked, strict=True)))
    assert np.array_equal(same.values, columns.values, equal_nan=True)


def test_columns_refuse_misaligned_parts() -> None:
    with pytest.raises(ValueError, match="item columns of 2 ids"):
        ItemColumns(["a", "b"], [None], np.zeros((1, ITEM_WIDTH)), [None])


def test_put_replaces_a_slot_in_place() -> None:
    table = ItemTable()
    first, second = table.add({"price": 1.0, "category": "a"}), table.add({"price": 2.0})
    table.put(first, {"price": 5.0, "category": "b"})
    columns = table.gather(["x", "y"], [None, None], [first, second])
    assert columns.values[:, 0].tolist() == [5.0, 2.0]
    assert list(columns.categories) == ["b", None]
    with pytest.raises(IndexError):
        table.put(2, None)
