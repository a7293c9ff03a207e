"""Prediction points, candidate generators and labelled examples (core, no IO)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from featrec.core.candidates.point_generators import (
    CandidateGenerator,
    Combined,
    EventObserver,
    PopularItems,
    PredictionContext,
    SessionItems,
    default_generator,
)
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event
from featrec.core.features.freshness import BATCH_MAX_AGE, Freshness, freshness
from featrec.core.ranking.examples import build_examples, choose_points, next_item_targets
from featrec.errors import ConfigError

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def ev(i: int, session: str, item: str, type_: str = "view", user: str | None = None) -> Event:
    return Event(f"e{i:03d}", session, item, type_, T0 + timedelta(seconds=i), user)


# Two interleaved sessions: a: A A(click) B A C ; b: X Y Y
EVENTS = [
    ev(0, "a", "A", user="u1"),
    ev(1, "b", "X"),
    ev(2, "a", "A", "click"),
    ev(3, "b", "Y"),
    ev(4, "a", "B"),
    ev(5, "b", "Y", "cart"),
    ev(6, "a", "A"),
    ev(7, "a", "C"),
]


def test_next_item_targets_known_answer() -> None:
    assert next_item_targets(EVENTS) == [None, "Y", "B", None, "A", None, "C", None]
    assert next_item_targets(EVENTS, collapse_repeats=False) == [
        "A",
        "Y",
        "B",
        "Y",
        "A",
        None,
        "C",
        None,
    ]


def test_session_items_are_distinct_newest_first() -> None:
    context = PredictionContext("a", None, T0, ("A", "B", "A", "C", "B"), ("view",) * 5)
    assert SessionItems().candidates(context) == ["B", "C", "A"]
    assert SessionItems(limit=2).candidates(context) == ["B", "C"]
    with pytest.raises(ConfigError):
        SessionItems(limit=0)


def test_popular_items_equal_a_recount_after_every_event() -> None:
    events = list(generate(GeneratorConfig(n_events=3000, n_items=40, seed=2)))
    popular = PopularItems(k=5)
    counts: Counter[str] = Counter()
    for event in events:
        popular.observe(event)
        counts[event.item_id] += 1
        expected = sorted(counts, key=lambda item: (-counts[item], item))[:5]
        assert popular.top() == expected
    assert popular.count(events[0].item_id) == counts[events[0].item_id]


def test_combined_keeps_order_drops_repeats_and_forwards_events() -> None:
    generator = Combined([SessionItems(), PopularItems(k=3)], limit=4)
    assert isinstance(generator, EventObserver)
    assert isinstance(generator, CandidateGenerator)
    for event in [ev(0, "s", "P"), ev(1, "s", "P"), ev(2, "s", "Q"), ev(3, "s", "R")]:
        generator.observe(event)
    context = PredictionContext("t", None, T0, ("R", "Z"), ("view", "view"))
    assert generator.candidates(context) == ["Z", "R", "P", "Q"]
    with pytest.raises(ConfigError):
        Combined([])


class Spy:
    """A generator that checks it is only ever asked about the past."""

    def __init__(self) -> None:
        self.seen: list[Event] = []

    def observe(self, event: Event) -> None:
        self.seen.append(event)

    def candidates(self, context: PredictionContext) -> list[str]:
        assert self.seen[-1].ts == context.at  # the point's own event is the newest seen
        assert all(e.ts <= context.at for e in self.seen)
        return ["A", "B", "Y"]


def test_examples_known_answer_and_only_the_past_is_observed() -> None:
    spy = Spy()
    examples = list(build_examples(EVENTS, next_item_targets(EVENTS), spy))
    points = [(x.point, x.session_id, x.current_item, x.position) for x in examples if x.rank == 0]
    assert points == [(0, "b", "X", 1), (1, "a", "A", 2), (2, "a", "B", 3), (3, "a", "A", 4)]
    labels = {(x.point, x.candidate): x.label for x in examples}
    assert [(p, c) for (p, c), label in labels.items() if label] == [(0, "Y"), (1, "B"), (2, "A")]
    assert sum(labels[(3, c)] for c in "ABY") == 0  # target C is not a candidate: all 0
    assert {x.user_id for x in examples if x.session_id == "a"} == {"u1"}
    assert {x.at for x in examples if x.point == 1} == {EVENTS[2].ts}
    assert len(spy.seen) == len(EVENTS)


def test_default_generator_on_generated_traffic() -> None:
    events = list(generate(GeneratorConfig(n_events=4000, n_items=200, seed=4)))
    targets = next_item_targets(events)
    examples = list(build_examples(events, targets, default_generator(5, 10)))
    by_point: dict[int, list[int]] = {}
    for x in examples:
        by_point.setdefault(x.point, []).append(x.label)
        assert x.rank < 15
    assert len(by_point) == sum(t is not None for t in targets)
    assert all(sum(labels) <= 1 for labels in by_point.values())
    recall = sum(map(sum, by_point.values())) / len(by_point)
    assert 0.2 < recall < 1.0  # the session and popular items catch a good share


def test_out_of_order_events_are_refused() -> None:
    events = [EVENTS[1], EVENTS[0]]
    with pytest.raises(ValueError, match="out of time order"):
        list(build_examples(events, [None, None], SessionItems()))
    with pytest.raises(ValueError, match="2 targets for 1 events"):
        list(build_examples(events[:1], [None, None], SessionItems()))


class Timed:
    def __init__(self, event_time: datetime) -> None:
        self.event_time = event_time


def test_freshness_flags_values_older_than_the_limit() -> None:
    now = T0 + timedelta(days=10)
    values = [Timed(now - timedelta(days=1)), None, Timed(now - timedelta(days=2, seconds=1))]
    assert freshness(values, BATCH_MAX_AGE, now) == [
        Freshness(timedelta(days=1), False),
        Freshness(None, False),
        Freshness(timedelta(days=2, seconds=1), True),
    ]
    assert freshness(values, BATCH_MAX_AGE, now)[1].missing
    with pytest.raises(ConfigError, match="tz-aware"):
        freshness(values, BATCH_MAX_AGE, now.replace(tzinfo=None))


def test_choose_points_by_day_and_by_seeded_sample() -> None:
    day = timedelta(days=1)
    events = [ev(i, f"s{i}", "A") for i in range(6)]
    events = [replace(e, ts=T0 + i * day) for i, e in enumerate(events)]
    targets: list[str | None] = ["B", None, "B", "B", "B", "B"]
    window = choose_points(events, targets, since=(T0 + day).date(), until=(T0 + 3 * day).date())
    assert window == [None, None, "B", "B", None, None]
    sample = choose_points(events, targets, max_points=2, seed=7)
    assert sum(t is not None for t in sample) == 2
    assert sample == choose_points(events, targets, max_points=2, seed=7)
    assert all(t is None or targets[i] == t for i, t in enumerate(sample))
    assert choose_points(events, targets, max_points=10) == targets
    with pytest.raises(ConfigError):
        choose_points(events, targets, max_points=0)
