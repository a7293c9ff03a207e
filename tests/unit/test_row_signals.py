"""The serving path's signal lookup: neighbour, trending and item-model lists decoded from the
rows the row cache hands out, once per row read (the in-memory store; no Redis needed here,
the Redis readers have their own contract tests)."""

from __future__ import annotations

from featrec.app.item_signals import trending_key
from featrec.app.serving.cache import RowCache
from featrec.app.serving.row_signals import PairsMemo, RowSignals
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import InMemoryRows, StampedRow
from featrec.testing.shop import NEIGHBOURS, T0, neighbour_row, world_rows


def signals(memo: PairsMemo | None, clock: list[float]) -> tuple[RowSignals, InMemoryFeatureStore]:
    store = InMemoryFeatureStore()
    store.write(world_rows())
    cache = RowCache(InMemoryRows(store), max_age_s=5.0, monotonic=lambda: clock[0])
    return RowSignals(cache, None, pairs=memo), store


def test_lists_are_decoded_once_per_row_read_and_equal_the_rows() -> None:
    clock = [0.0]
    memo = PairsMemo(capacity=100)
    lookup, store = signals(memo, clock)
    plain, _ = signals(None, clock)
    first = lookup.neighbours(["a1", "b1", "nobody"])
    assert first == plain.neighbours(["a1", "b1", "nobody"]) and "nobody" not in first
    assert first["a1"] and all(isinstance(p, tuple) and len(p) == 2 for p in first["a1"])
    again = lookup.neighbours(["a1"])
    assert again["a1"] is first["a1"]  # the same decoded list while the cache holds the row
    trending = lookup.trending(None)
    assert trending and trending == plain.trending(None) and lookup.trending(None) is trending
    clock[0] = 6.0  # the cache re-reads the rows, unchanged: the same objects, not decoded
    assert lookup.neighbours(["a1"])["a1"] is first["a1"]
    pairs = [(item, weight * 2) for item, weight in NEIGHBOURS["a1"]]
    store.write([neighbour_row("a1", pairs, version=T0)])
    clock[0] = 12.0  # a changed row is a new object, decoded again
    fresh = lookup.neighbours(["a1"])
    assert fresh["a1"] is not first["a1"] and fresh["a1"] == tuple(pairs)


def test_an_entry_is_used_only_for_the_row_it_came_from() -> None:
    memo = PairsMemo(capacity=2)
    old = StampedRow({"neighbour_ids": ["x", "y"], "neighbour_weights": [2.0, 1.0]}, 1)
    new = StampedRow({"neighbour_ids": ["z"], "neighbour_weights": [5.0]}, 2)
    assert memo.neighbours("a", old) == (("x", 2.0), ("y", 1.0))
    assert memo.neighbours("a", new) == (("z", 5.0),)
    assert memo.neighbours("a", old) == (("x", 2.0), ("y", 1.0))
    model = StampedRow({"model_ids": ["m"], "model_weights": [0.5]}, 3)
    assert memo.model("a", model) == (("m", 0.5),)
    for n in range(5):  # bounded: starts over when full
        memo.neighbours(f"k{n}", old)
    assert len(memo._neighbours) <= 2
    assert memo.neighbours(trending_key("c1"), new) == (("z", 5.0),)
