"""The serving path's signal lookup: neighbour, trending and item-model lists decoded from the
rows the row cache hands out, once per row read (the in-memory store; no Redis needed here,
the Redis readers have their own contract tests)."""

from __future__ import annotations

from featrec.app.item_signals import trending_key
from featrec.app.serving.cache import RowCache
from featrec.app.serving.row_signals import PairsMemo, RowSignals
from featrec.core.candidates.signals import PrefetchingSignals
from featrec.core.features import catalog
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import Found, InMemoryRows, StampedRow, Wanted
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


class CountingRows(InMemoryRows):
    """The in-memory reader, recording what each call asked for (one call: one round trip)."""

    def __init__(self, store: InMemoryFeatureStore) -> None:
        super().__init__(store)
        self.calls: list[dict[str, list[str]]] = []

    def read_rows(self, wanted: Wanted) -> Found:
        self.calls.append({view: list(keys) for view, keys in wanted.items()})
        return super().read_rows(wanted)


def model_row(key: str, pairs: list[tuple[str, float]]) -> FeatureRow:
    values = {"model_ids": [i for i, _ in pairs], "model_weights": [w for _, w in pairs]}
    values |= {"model_version": "m1", "trained_at_s": T0 / 1e6}
    return FeatureRow(catalog.ITEM_MODEL.name, key, values, T0)


def test_prefetch_reads_every_list_in_one_call_and_the_reads_answer_from_it() -> None:
    store = InMemoryFeatureStore()
    store.write([*world_rows(), model_row("a1", [("b1", 0.5), ("a2", 0.25)])])
    reader = CountingRows(store)
    # max age 0: the cache holds nothing fresh, so every cache call would be a read
    lookup = RowSignals(RowCache(reader, max_age_s=0.0), None)
    assert isinstance(lookup, PrefetchingSignals)
    lookup.prefetch(["a1", "b1"], ["a1", "b1"], [None, "A"])
    assert reader.calls == [
        {
            catalog.ITEM_NEIGHBOURS.name: ["a1", "b1", trending_key(None), trending_key("A")],
            catalog.ITEM_MODEL.name: ["a1", "b1"],
        }
    ]
    neighbours = lookup.neighbours(["a1", "b1"])
    model = lookup.model_neighbours(["a1", "b1"])
    trending, category = lookup.trending(None), lookup.trending("A")
    assert len(reader.calls) == 1  # all from what the prefetch read
    plain = RowSignals(RowCache(InMemoryRows(store), max_age_s=0.0), None)  # no prefetch
    assert neighbours == plain.neighbours(["a1", "b1"]) and neighbours["a1"]
    assert model == plain.model_neighbours(["a1", "b1"]) == {"a1": (("b1", 0.5), ("a2", 0.25))}
    assert trending == plain.trending(None) and trending
    assert category == plain.trending("A") and category
    # a list not announced is read through the cache, as without a prefetch
    assert lookup.trending("B") == plain.trending("B")
    assert reader.calls[1:] == [{catalog.ITEM_NEIGHBOURS.name: [trending_key("B")]}]
    # nothing to read: no call
    RowSignals(RowCache(reader, max_age_s=0.0), None).prefetch([], [], [])
    assert len(reader.calls) == 2
