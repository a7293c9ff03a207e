"""Candidate generation: known answers per source, the co-visitation scorer as an oracle,
in-memory signals against the batch bootstraps, and the training-set generator."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from featrec.core.candidates.config import CandidateConfig
from featrec.core.candidates.generation import context_categories, generate
from featrec.core.candidates.model import (
    COVISIT,
    DETAILS,
    HISTORY,
    POPULAR,
    SESSION,
    TRENDING,
    Candidate,
)
from featrec.core.candidates.point_generators import PredictionContext, SignalCandidates
from featrec.core.candidates.signals import InMemorySignals, SignalLookup
from featrec.core.events.generator import GeneratorConfig
from featrec.core.events.generator import generate as generate_events
from featrec.core.events.model import CART, PURCHASE, VIEW, Event
from featrec.core.items import covisit, trending
from featrec.core.items.session_scorer import ScorerConfig, recommend, score_session
from featrec.core.ranking.examples import build_examples, next_item_targets
from featrec.errors import ConfigError


class StaticSignals:
    """A :class:`SignalLookup` over fixed lists: the known answers below are computed by
    hand from them."""

    def __init__(
        self,
        neighbours: Mapping[str, list[tuple[str, float]]] | None = None,
        trending: Mapping[str | None, list[tuple[str, float]]] | None = None,
        history: Mapping[str, list[str]] | None = None,
        model: Mapping[str, list[tuple[str, float]]] | None = None,
    ) -> None:
        self._model = dict(model or {})
        self._neighbours = dict(neighbours or {})
        self._trending = dict(trending or {})
        self._history = dict(history or {})
        self.asked: list[list[str]] = []

    def neighbours(self, items: Sequence[str]) -> dict[str, Sequence[tuple[str, float]]]:
        self.asked.append(list(items))
        return {i: self._neighbours[i] for i in items if i in self._neighbours}

    def trending(self, category: str | None = None) -> Sequence[tuple[str, float]]:
        return self._trending.get(category, [])

    def user_history(self, user_id: str) -> Sequence[str]:
        return self._history.get(user_id, [])

    def model_neighbours(
        self, items: Sequence[str], session_id: str | None = None
    ) -> dict[str, Sequence[tuple[str, float]]]:
        return {i: self._model[i] for i in items if i in self._model}


SIGNALS = StaticSignals(
    neighbours={
        "A": [("X", 2.0), ("Y", 1.0)],
        "B": [("X", 4.0), ("Z", 4.0)],
        "H": [("W", 3.0), ("X", 1.0)],
    },
    trending={
        None: [("G1", 9.0), ("G2", 8.0), ("G3", 7.0), ("X", 6.0)],
        "c1": [("T1", 5.0), ("Z", 2.0)],
    },
    history={"u1": ["H"]},
)


def by_id(candidates: list[Candidate]) -> dict[str, Candidate]:
    return {c.item_id: c for c in candidates}


def test_known_answer_for_every_source() -> None:
    config = CandidateConfig(max_trending=1, min_total=9, max_popular=5)
    got = generate(["A", "B"], None, "u1", SIGNALS, config, categories=["c1"])
    # covisit (normalised by each anchor's max, anchor p weighs p**-2):
    #   A (p=1): X 2/2=1, Y 1/2=0.5;  B (p=2): X += 4/4/4=0.25, Z 0.25
    # session reminder 4 * p**-2: A 4, B 1;  history (H, p=1): W 1, X 1/3
    # trending: c1 list and the global head (G1); popular tops up to 9 candidates: G2
    assert [c.item_id for c in got] == ["A", "X", "B", "Y", "Z", "W", "G1", "T1", "G2"]
    c = by_id(got)
    assert c["X"].sources == (COVISIT, HISTORY)
    assert c["X"].scores == {COVISIT: 1.25, HISTORY: pytest.approx(1 / 3)}
    assert c["A"].sources == (SESSION,) and c["A"].scores == {SESSION: 4.0}
    # Per anchor (A newest, then B): normalised weight, raw weight and rank in A's list, the
    # weight from B, the best rank in any list, how many session items list a candidate.
    assert c["X"].details == {
        "covisit_last": 1.0,
        "covisit_last_raw": 2.0,
        "covisit_last_rank": 1.0,
        "covisit_second": 1.0,
        "covisit_best_rank": 1.0,
        "covisit_anchors": 2.0,
    }
    assert c["Y"].details == {
        "covisit_last": 0.5,
        "covisit_last_raw": 1.0,
        "covisit_last_rank": 2.0,
        "covisit_best_rank": 2.0,
        "covisit_anchors": 1.0,
    }
    assert c["Z"].details == {
        "covisit_second": 1.0,
        "covisit_best_rank": 2.0,
        "covisit_anchors": 1.0,
    }
    assert c["W"].details == {}
    assert {k for cand in got for k in cand.details} == set(DETAILS)
    assert c["B"].base_score == 1.0
    assert c["Z"].sources == (COVISIT, TRENDING) and c["Z"].scores[TRENDING] == 2.0
    assert c["W"].sources == (HISTORY,) and c["W"].score(HISTORY) == 1.0
    assert c["G1"].sources == (TRENDING,) and c["G2"].sources == (POPULAR,)
    assert "H" not in c  # re-buy across sessions is off by default
    # One neighbour lookup for the session's anchors and the history together.
    assert SIGNALS.asked[-1] == ["A", "B", "H"]
    assert c["X"].reasons()[0].startswith("often viewed with")


def test_caps_per_source_keep_scores_of_sources_that_did_not_admit() -> None:
    config = CandidateConfig(max_covisit=1, max_history=0, max_trending=0, min_total=0)
    got = by_id(generate(["A", "B"], None, "u1", SIGNALS, config, categories=["c1"]))
    assert set(got) == {"A", "B", "X", "T1", "Z"}
    assert got["X"].sources == (COVISIT,)
    assert got["Z"].sources == (TRENDING,)  # its covisit rank missed the cap of 1
    assert got["Z"].score(COVISIT) == 0.25
    assert "W" not in got and "G1" not in got


def test_switches_for_session_and_history_items() -> None:
    no_session = CandidateConfig(include_session_items=False, min_total=0, max_trending=0)
    got = by_id(generate(["A", "B"], None, None, SIGNALS, no_session))
    assert "A" not in got and "B" not in got
    rebuy = CandidateConfig(include_history_items=True, min_total=0, max_trending=0)
    got = by_id(generate(["A"], None, "u1", SIGNALS, rebuy))
    assert got["H"].sources == (HISTORY,) and got["H"].score(HISTORY) == 1.0


def test_event_types_weigh_anchors() -> None:
    config = CandidateConfig(min_total=0, max_trending=0)
    plain = by_id(generate(["A", "B"], None, None, SIGNALS, config))
    carted = by_id(generate(["A", "B"], [VIEW, CART], None, SIGNALS, config))
    assert carted["Z"].score(COVISIT) == 3 * plain["Z"].score(COVISIT)
    assert carted["B"].score(SESSION) == 3 * plain["B"].score(SESSION)
    with pytest.raises(ValueError, match="session_types has 1 entries for 2 items"):
        generate(["A", "B"], [VIEW], None, SIGNALS, config)


def test_empty_session_falls_back_to_trending_and_popular() -> None:
    got = generate([], None, None, SIGNALS, CandidateConfig(max_trending=2))
    assert [(c.item_id, c.sources) for c in got] == [
        ("G1", (TRENDING,)),
        ("G2", (TRENDING,)),
        ("G3", (POPULAR,)),
        ("X", (POPULAR,)),
    ]


def test_base_score_and_order_equal_the_tuned_covisit_scorer() -> None:
    """covisit + session is ``score_session`` (the RSC15-tuned scorer) up to float rounding
    (its terms are summed in another order), and the candidates with a base score come in
    ``recommend``'s order."""
    events = list(generate_events(GeneratorConfig(n_events=6000, n_items=300, seed=4)))
    index = covisit.bootstrap(events, covisit.CovisitConfig())
    signals = InMemorySignals(index)
    scoring = ScorerConfig()
    config = CandidateConfig(max_covisit=1000, max_total=1000)
    sessions: dict[str, list[str]] = {}
    for e in events:
        sessions.setdefault(e.session_id, []).insert(0, e.item_id)
    checked = 0
    for items in list(sessions.values())[:300]:
        recent = items[:10]
        got = generate(recent, None, None, signals, config)

        def lookup(a: str) -> list[tuple[str, float]]:
            return index.top(a, 50)

        expected = score_session(recent, lookup, scoring)
        bases = {c.item_id: c.base_score for c in got if c.base_score > 0}
        assert bases.keys() == {i for i, s in expected.items() if s > 0}
        for item, score in bases.items():
            assert math.isclose(score, expected[item], rel_tol=1e-12)
        ordered = [c.item_id for c in got if c.base_score > 0]
        top = recommend(recent, lookup, 20, scoring)
        assert set(ordered[:20]) == set(top) or _near_tie(ordered, top, expected)
        for a, b in itertools.pairwise(ordered):
            assert expected[a] >= expected[b] * (1 - 1e-12)
        checked += 1
    assert checked == 300


def _near_tie(ordered: list[str], top: list[str], scores: Mapping[str, float]) -> bool:
    """The two top lists differ only by items whose scores tie up to rounding."""
    differing = set(ordered[: len(top)]) ^ set(top)
    values = [scores[i] for i in differing]
    return max(values) - min(values) <= 1e-12 * max(values)


def test_generation_is_deterministic_and_round_trips() -> None:
    config = CandidateConfig(min_total=20)
    one = generate(["A", "B", "A"], None, "u1", SIGNALS, config, categories=["c1", "c1"])
    two = generate(["A", "B", "A"], None, "u1", SIGNALS, config, categories=["c1", "c1"])
    assert one == two
    for c in one:
        assert Candidate.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="sources"):
        Candidate.from_dict({"item_id": "x", "sources": ["magic"], "scores": {}})
    with pytest.raises(ValueError, match="item_id"):
        Candidate.from_dict({"item_id": "", "sources": [], "scores": {}})
    with pytest.raises(ValueError, match="details"):
        Candidate.from_dict({"item_id": "x", "sources": [], "scores": {}, "details": {"a": "b"}})
    assert Candidate.from_dict({"item_id": "x", "sources": [], "scores": {}}).details == {}


@pytest.mark.parametrize(
    "change",
    [{"max_covisit": -1}, {"max_total": 0}, {"min_total": 1.5}, {"max_categories": True}],
)
def test_config_is_validated(change: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="candidate"):
        CandidateConfig(**change)  # type: ignore[arg-type]


def test_context_categories() -> None:
    session = {"last_category": "c1"}
    user = {"top_categories": ["c2", "c1", None, "c3"]}
    assert context_categories(session, user) == ["c1", "c2", "c3"]
    assert context_categories(None, None) == []
    assert context_categories({"last_category": None}, {"top_categories": None}) == []


T0 = datetime(2024, 3, 1, tzinfo=UTC)


def test_in_memory_signals_learn_what_the_bootstraps_compute() -> None:
    events = list(generate_events(GeneratorConfig(n_events=5000, n_items=200, seed=9)))
    signals = InMemorySignals(trending_refresh_s=0)
    assert isinstance(signals, SignalLookup)
    for e in events:
        signals.observe(e)
    index = covisit.bootstrap(events, covisit.CovisitConfig())
    board = trending.bootstrap(events, trending.TrendingConfig())
    anchors = sorted(index.sketches)[:50]
    got = signals.neighbours([*anchors, "never-seen"])
    assert set(got) == set(anchors)
    for a in anchors:
        assert list(got[a]) == index.top(a, 50)
    assert list(signals.trending()) == board.top(50)
    category = events[0].category
    assert list(signals.trending(category)) == board.top(50, category=category)

    bought: dict[str, list[str]] = {}
    for e in events:
        if e.type == PURCHASE and e.user_id is not None:
            mine = bought.setdefault(e.user_id, [])
            if e.item_id in mine:
                mine.remove(e.item_id)
            mine.insert(0, e.item_id)
    assert bought  # the generator does produce purchases
    for user, items in bought.items():
        assert list(signals.user_history(user)) == items[:10]


def test_trending_lists_refresh_per_period_whenever_asked() -> None:
    def view(i: int, item: str, seconds: float) -> Event:
        return Event(f"e{i}", "s", item, VIEW, T0 + timedelta(seconds=seconds), category="c")

    stream = [view(0, "a", 0), view(1, "b", 30), view(2, "b", 31), view(3, "b", 61)]
    asked = InMemorySignals(trending_refresh_s=60)
    lists = []
    for event in stream:
        asked.observe(event)
        lists.append([i for i, _ in asked.trending()])
    # T0 is a multiple of 60 s: the periods are [0, 60) and [60, 120).
    assert lists == [["a"], ["a"], ["a"], ["b", "a"]]
    quiet = InMemorySignals(trending_refresh_s=60)
    for event in stream[:3]:
        quiet.observe(event)
    assert [i for i, _ in quiet.trending()] == ["a"]  # not asked before: the same list


def test_signal_candidates_serve_the_training_set_builder() -> None:
    events = list(generate_events(GeneratorConfig(n_events=4000, n_items=150, seed=3)))
    targets = next_item_targets(events)
    generator = SignalCandidates()
    examples = list(build_examples(events, targets, generator))
    points = {ex.point for ex in examples}
    assert len(points) == sum(t is not None for t in targets)
    hits = sum(ex.label for ex in examples)
    assert hits / len(points) > 0.5  # the next item is usually a candidate

    # The candidates of a point are what a fresh generator that saw the same prefix proposes.
    point = examples[len(examples) // 2].point
    rows = [ex for ex in examples if ex.point == point]
    cut = next(
        i for i, e in enumerate(events) if e.ts == rows[0].at and e.session_id == rows[0].session_id
    )
    fresh = SignalCandidates()
    for e in events[: cut + 1]:
        fresh.observe(e)
    session = [e for e in events[: cut + 1] if e.session_id == rows[0].session_id]
    context = PredictionContext(
        rows[0].session_id,
        rows[0].user_id,
        rows[0].at,
        tuple(e.item_id for e in session),
        tuple(e.type for e in session),
    )
    assert [ex.candidate for ex in rows] == fresh.candidates(context)


def test_signal_candidates_use_the_session_and_user_categories() -> None:
    generator = SignalCandidates(replace(CandidateConfig(), max_categories=3))
    for i, (item, category) in enumerate([("a", "c1"), ("b", "c1"), ("c", "c2")]):
        generator.observe(Event(f"e{i}", "old", item, VIEW, T0, "u", category=category))
    generator.observe(Event("e9", "new", "d", VIEW, T0, "u", category="c3"))
    assert generator.categories("new", "u") == ["c3", "c1", "c2"]
    assert generator.categories("new", None) == ["c3"]
