"""Candidate generation equals the version it replaced, candidate for candidate (ids, sources,
every source score and co-visitation detail, order), on random signals: neighbour lists with
repeated items and ties, trending lists that share items, users with and without history, pools
of any size and the session's own items on or off."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from _lanes import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from featrec.core.candidates.config import CandidateConfig
from featrec.core.candidates.generation import _top, generate
from tests.unit.generation_reference import generate as reference_generate

ITEMS = [f"i{n}" for n in range(30)]
weights = st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.25]) | st.floats(0, 10)
pairs = st.lists(st.tuples(st.sampled_from(ITEMS), weights), max_size=12)


class Signals:
    def __init__(
        self,
        neighbours: dict[str, list[tuple[str, float]]],
        trending: dict[str | None, list[tuple[str, float]]],
        history: list[str],
        model: dict[str, list[tuple[str, float]]] | None = None,
    ) -> None:
        self._neighbours, self._trending, self._history = neighbours, trending, history
        self._model = model or {}

    def neighbours(self, items: Sequence[str]) -> dict[str, Sequence[tuple[str, float]]]:
        return {i: self._neighbours[i] for i in items if i in self._neighbours}

    def trending(self, category: str | None = None) -> Sequence[tuple[str, float]]:
        return self._trending.get(category, ())

    def user_history(self, user_id: str) -> Sequence[str]:
        return self._history

    def model_neighbours(
        self, items: Sequence[str], session_id: str | None = None
    ) -> dict[str, Sequence[tuple[str, float]]]:
        return {i: self._model[i] for i in items if i in self._model}


class Announced(Signals):
    """:class:`~featrec.core.candidates.signals.PrefetchingSignals`: generation must announce
    every list it reads, once, before its first read."""

    announced: tuple[set[str], set[str], set[str | None]] | None = None

    def prefetch(
        self, items: Sequence[str], model: Sequence[str], trending: Sequence[str | None]
    ) -> None:
        assert self.announced is None, "announced twice"
        self.announced = (set(items), set(model), set(trending))

    def neighbours(self, items: Sequence[str]) -> dict[str, Sequence[tuple[str, float]]]:
        assert self.announced is not None and set(items) <= self.announced[0]
        return super().neighbours(items)

    def trending(self, category: str | None = None) -> Sequence[tuple[str, float]]:
        assert self.announced is not None and category in self.announced[2]
        return super().trending(category)

    def model_neighbours(
        self, items: Sequence[str], session_id: str | None = None
    ) -> dict[str, Sequence[tuple[str, float]]]:
        assert self.announced is not None and set(items) <= self.announced[1]
        return super().model_neighbours(items, session_id)


@settings(max_examples=examples(100), deadline=None)
@given(
    neighbours=st.dictionaries(st.sampled_from(ITEMS), pairs, max_size=12),
    model=st.dictionaries(st.sampled_from(ITEMS), pairs, max_size=12),
    model_n=st.integers(0, 15),
    model_order=st.booleans(),
    trending=st.dictionaries(st.sampled_from([None, "c0", "c1", "c2"]), pairs, max_size=4),
    history=st.lists(st.sampled_from(ITEMS), max_size=5),
    session=st.lists(st.sampled_from(ITEMS), max_size=10),  # types: at most last_n
    types=st.booleans(),
    user=st.sampled_from([None, "u1"]),
    categories=st.lists(st.sampled_from(["c0", "c1", "c2", "c3"]), max_size=4),
    caps=st.tuples(*[st.integers(0, 15)] * 6, st.integers(1, 40)),
    own=st.booleans(),
    rebuy=st.booleans(),
)
def test_generation_equals_the_replaced_version(
    neighbours: dict[str, list[tuple[str, float]]],
    model: dict[str, list[tuple[str, float]]],
    model_n: int,
    model_order: bool,
    trending: dict[str | None, list[tuple[str, float]]],
    history: list[str],
    session: list[str],
    types: bool,
    user: str | None,
    categories: list[str],
    caps: tuple[int, ...],
    own: bool,
    rebuy: bool,
) -> None:
    covisit, history_n, trending_n, category_n, popular, min_total, total = caps
    config = replace(
        CandidateConfig(),
        max_covisit=covisit,
        max_history=history_n,
        max_trending=trending_n,
        max_category_trending=category_n,
        max_popular=popular,
        min_total=min_total,
        max_total=total,
        include_session_items=own,
        include_history_items=rebuy,
        max_model=model_n,
        order="model" if model_order else "covisit",
    )
    signals = Signals(neighbours, trending, history, model)
    kinds = ["view", "click", "cart", "purchase"]
    event_types = [kinds[n % 4] for n in range(len(session))] if types else None
    new = generate(session, event_types, user, signals, config, categories=categories)
    old = reference_generate(session, event_types, user, signals, config, categories=categories)
    assert new == old
    assert [c.details for c in new] == [c.details for c in old]
    assert [list(c.scores) for c in new] == [list(c.scores) for c in old]  # key order too
    assert [list(c.details) for c in new] == [list(c.details) for c in old]  # (the log's order)
    # told up front what it will read, the lookup answers the same candidates
    announced = Announced(neighbours, trending, history, model)
    assert generate(session, event_types, user, announced, config, categories=categories) == new
    assert announced.announced is not None


def _top_reference(scores: dict[str, float], n: int) -> list[str]:
    """The ``n`` best positive scores, ties by item id, as the tuples sort them."""
    best = sorted((-score, item) for item, score in scores.items())[: max(n, 0)]
    return [item for negated, item in best if -negated > 0]


@settings(max_examples=examples(300), deadline=None)
@given(
    scores=st.dictionaries(
        st.sampled_from(ITEMS),
        st.sampled_from([-1.0, 0.0, -0.0, 0.5, 1.0, 2.0]) | st.floats(-1, 3, allow_nan=False),
    ),
    n=st.integers(-1, 35),
)
def test_top_admits_the_sorted_tuples_best(scores: dict[str, float], n: int) -> None:
    """``_top`` (array selection) admits exactly the items of the tuple sort it replaced:
    heavy ties at the cut, zero and negative scores, ``n`` below, at and above the pool."""
    top = _top(scores, n)
    assert len(top) == len(set(top))
    assert sorted(top) == sorted(_top_reference(scores, n))
