"""The serving path's signal lookup: neighbour, trending and item-model lists decoded from the
rows the row cache hands out, once per row read (the in-memory store; no Redis needed here,
the Redis readers have their own contract tests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from _lanes import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from featrec.app.item_signals import trending_key
from featrec.app.serving.cache import RowCache
from featrec.app.serving.row_signals import Pairs, PairsMemo, RowSignals
from featrec.core.candidates.config import CandidateConfig
from featrec.core.candidates.generation import generate
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import InMemoryRows, StampedRow
from featrec.testing.shop import world_rows


def signals(memo: PairsMemo | None, clock: list[float]) -> tuple[RowSignals, InMemoryFeatureStore]:
    store = InMemoryFeatureStore()
    store.write(world_rows())
    cache = RowCache(InMemoryRows(store), max_age_s=5.0, monotonic=lambda: clock[0])
    return RowSignals(cache, None, pairs=memo), store


def test_lists_are_decoded_once_per_row_read_and_equal_the_rows() -> None:
    clock = [0.0]
    memo = PairsMemo(capacity=100)
    lookup, _ = signals(memo, clock)
    plain, _ = signals(None, clock)
    first = lookup.neighbours(["a1", "b1", "nobody"])
    assert first == plain.neighbours(["a1", "b1", "nobody"]) and "nobody" not in first
    assert first["a1"] and all(isinstance(p, tuple) and len(p) == 2 for p in first["a1"])
    again = lookup.neighbours(["a1"])
    assert again["a1"] is first["a1"]  # the same decoded list while the cache holds the row
    trending = lookup.trending(None)
    assert trending and trending == plain.trending(None) and lookup.trending(None) is trending
    clock[0] = 6.0  # the cache re-reads the rows: new row objects, decoded again (equal)
    fresh = lookup.neighbours(["a1"])
    assert fresh["a1"] is not first["a1"] and fresh["a1"] == first["a1"]


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


ITEMS = [f"i{n}" for n in range(20)]
columns = st.tuples(
    st.lists(st.sampled_from(ITEMS), max_size=12),
    st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]) | st.floats(0, 5), max_size=12),
)


@settings(max_examples=examples(200), deadline=None)
@given(
    cols=columns,
    index=st.integers(-14, 14),
    start=st.integers(-14, 14) | st.none(),
    stop=st.integers(-14, 14) | st.none(),
    step=st.sampled_from([None, 1, 2, -1]),
)
def test_pairs_read_as_the_tuple_of_zipped_columns(
    cols: tuple[list[str], list[float]],
    index: int,
    start: int | None,
    stop: int | None,
    step: int | None,
) -> None:
    """What the memo now keeps (the columns, a pair made when read) reads as the tuple of
    pairs it kept before: length, truth, iteration, indexing, slicing, equality."""
    ids, weights = cols
    pairs = Pairs(ids, weights)
    plain = tuple(zip(ids, weights, strict=False))
    assert len(pairs) == len(plain) and bool(pairs) == bool(plain)
    assert tuple(pairs) == plain and list(pairs) == list(plain)
    assert pairs == plain and plain == pairs and pairs == list(plain)
    assert pairs[start:stop:step] == plain[start:stop:step]
    if -len(plain) <= index < len(plain):
        assert pairs[index] == plain[index]
    if plain:
        assert pairs != plain[:-1] and pairs != (*plain[:-1], ("other", -1.0))


class _Lists:
    """Signals whose lists are given as tuples of pairs or as :class:`Pairs` (wrap)."""

    def __init__(
        self,
        lists: dict[str, list[tuple[str, float]]],
        trending: dict[str | None, list[tuple[str, float]]],
        wrap: bool,
    ) -> None:
        def made(pairs: list[tuple[str, float]]) -> Sequence[tuple[str, float]]:
            if not wrap:
                return tuple(pairs)
            return Pairs([i for i, _ in pairs], [w for _, w in pairs])

        self._lists = {k: made(v) for k, v in lists.items()}
        self._trending = {k: made(v) for k, v in trending.items()}

    def neighbours(self, items: Sequence[str]) -> dict[str, Sequence[tuple[str, float]]]:
        return {i: self._lists[i] for i in items if i in self._lists}

    def trending(self, category: str | None = None) -> Sequence[tuple[str, float]]:
        return self._trending.get(category, ())

    def user_history(self, user_id: str) -> Sequence[str]:
        return ["i3", "i7"]

    def model_neighbours(
        self, items: Sequence[str], session_id: str | None = None
    ) -> dict[str, Sequence[tuple[str, float]]]:
        return {i: self._lists[i] for i in items if i in self._lists}


pair_lists = st.lists(
    st.tuples(st.sampled_from(ITEMS), st.sampled_from([0.0, 1.0, 2.5])), max_size=10
)


@settings(max_examples=examples(100), deadline=None)
@given(
    lists=st.dictionaries(st.sampled_from(ITEMS), pair_lists, max_size=10),
    trending=st.dictionaries(st.sampled_from([None, "c0", "c1"]), pair_lists, max_size=3),
    session=st.lists(st.sampled_from(ITEMS), max_size=10),
    caps=st.tuples(*[st.integers(0, 8)] * 3, st.integers(1, 30)),
)
def test_generation_reads_pairs_as_it_reads_tuples(
    lists: dict[str, list[tuple[str, float]]],
    trending: dict[str | None, list[tuple[str, float]]],
    session: list[str],
    caps: tuple[int, int, int, int],
) -> None:
    """The serving path's lists (:class:`Pairs`) give the very candidates tuples give."""
    trending_n, category_n, popular, total = caps
    config = replace(
        CandidateConfig(),
        max_trending=trending_n,
        max_category_trending=category_n,
        max_popular=popular,
        min_total=total,
        max_total=total,
        max_model=5,
    )
    args = (session, None, "u1")
    kw = {"categories": ["c0", "c1"], "session_id": "s1"}
    old = generate(*args, _Lists(lists, trending, wrap=False), config, **kw)
    new = generate(*args, _Lists(lists, trending, wrap=True), config, **kw)
    assert new == old
    assert [(list(c.scores), list(c.details)) for c in new] == [
        (list(c.scores), list(c.details)) for c in old
    ]
