"""The replay evaluation's pure parts: protocol, figures, external lists, the lock-step gate."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from featrec.app.evaluation.replay import (
    BATCH_ONLY,
    FULL,
    POLICIES,
    POPULARITY,
    SESSION_ONLY,
    PointAnswer,
    Policies,
    ReplayClock,
    ReplayGate,
    SessionHistory,
    SessionView,
    evaluation_config,
    most_popular,
    parse_policies,
)
from featrec.app.serving.config import ServingConfig
from featrec.core.candidates.config import CandidateConfig
from featrec.core.evaluation.protocol import (
    PredictionPoint,
    align_external,
    hit_rate_curve,
    parse_external_list,
    percentiles,
    prediction_points,
    score_policy,
    split_by_session_start,
    time_ordered,
)
from featrec.core.events.model import CLICK, Event
from featrec.core.features.catalog import SESSION_FEATURES
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import InMemoryRows, StampedRow
from featrec.core.ranking.rerank import RerankConfig
from featrec.errors import ConfigError, FeatrecError

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def ev(n: int, session: str, item: str, seconds: float) -> Event:
    return Event(f"e{n}", session, item, CLICK, T0 + timedelta(seconds=seconds))


def test_points_are_every_event_but_each_sessions_last_with_repeats_kept() -> None:
    events = time_ordered(
        [
            ev(0, "s1", "a", 0),
            ev(1, "s2", "x", 1),
            ev(2, "s1", "a", 2),  # a repeat: its own target is b; the previous target is a
            ev(3, "s1", "b", 3),
            ev(4, "s2", "y", 4),
            ev(5, "s3", "z", 5),  # a one-event session: no point
        ]
    )
    points = prediction_points(events)
    got = [(p.session_id, p.position, p.target) if p else None for p in points]
    assert got == [("s1", 1, "a"), ("s2", 1, "y"), ("s1", 2, "b"), None, None, None]
    assert points[0] is not None and points[0].event_index == 0
    assert points[2] is not None and points[2].at_s == (T0 + timedelta(seconds=2)).timestamp()


def test_time_order_is_stable_for_ties() -> None:
    events = [ev(0, "s", "b", 5), ev(1, "s", "a", 1), ev(2, "s", "c", 5)]
    assert [e.item_id for e in time_ordered(events)] == ["a", "b", "c"]


def test_percentiles_by_hand() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    p = percentiles(values)
    assert (p["p50"], p["p90"], p["p95"], p["p99"], p["max"]) == (50.0, 90.0, 95.0, 99.0, 100.0)
    assert p["mean"] == 50.5
    assert percentiles([7.0])["p99"] == 7.0
    assert math.isnan(percentiles([])["p50"])


def test_hit_rate_curve_by_hand() -> None:
    lists = [["a", "b", "c"], ["b", "c", "a"], ["c", "d", "e"]]
    targets = ["a", "a", "b"]
    assert hit_rate_curve(lists, targets, 3) == [1 / 3, 1 / 3, 2 / 3]
    with pytest.raises(ValueError):
        hit_rate_curve(lists, targets[:2], 3)


def test_score_policy_by_hand() -> None:
    lists = [["a", "b"], ["b", "new"], ["c", "a"]]
    targets = ["a", "new", "d"]
    popularity = {"a": 10.0, "b": 5.0, "c": 1.0, "d": 1.0}
    s = score_policy("p", lists, targets, popularity, 2, latencies_ms=[1.0, 2.0, 3.0], degraded=1)
    assert s.hr == 2 / 3  # "new" is a hit even though training never saw it
    assert s.mrr == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert s.coverage == 3 / 4  # a, b, c of the 4 training items; "new" is not catalogue
    # percentiles: a 100, b 66.7, b, c 16.7 (c and d tie: mean rank), a -> mean of 5 items
    pct = {"a": 100.0, "b": 200 / 3, "c": 100 * 0.5 / 3}
    expected = (pct["a"] + pct["b"] + pct["b"] + pct["c"] + pct["a"]) / 5
    assert s.popularity_percentile == pytest.approx(expected)
    assert s.latency_ms["p50"] == 2.0
    assert s.degraded_share == pytest.approx(1 / 3)
    assert s.to_dict()["hr@2"] == s.hr


def test_external_lists_are_aligned_to_the_same_points() -> None:
    points = [
        PredictionPoint(0, "s1", 1, 0.0, "a"),
        PredictionPoint(1, "s1", 2, 1.0, "b"),
        PredictionPoint(2, "s2", 1, 2.0, "c"),
    ]
    key, items = parse_external_list({"session_id": 7, "position": 2, "items": ["b", 3]}, 1)
    assert key == ("7", 2) and items == ["b", "3"]
    lists = {("s1", 1): ["a"], ("s2", 1): ["x", "c"]}
    aligned, missing = align_external(points, lists)
    assert aligned == [["a"], [], ["x", "c"]] and missing == 1


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"position": 1, "items": []}, "session_id"),
        ({"session_id": "s", "position": 0, "items": []}, "position"),
        ({"session_id": "s", "position": True, "items": []}, "position"),
        ({"session_id": "s", "position": 1, "items": "abc"}, "items"),
        ({"session_id": "s", "position": 1, "items": [None]}, "items"),
    ],
)
def test_bad_external_lines_name_the_line_and_field(
    record: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=f"line 3: {message}"):
        parse_external_list(record, 3)


def test_parse_policies() -> None:
    assert parse_policies("all") == list(POLICIES)
    assert parse_policies("full, popularity,full") == [FULL, POPULARITY]
    with pytest.raises(ConfigError, match="unknown policy bogus"):
        parse_policies("full,bogus")
    with pytest.raises(ConfigError):
        parse_policies(" , ")


def test_session_history_and_delayed_views() -> None:
    history = SessionHistory()
    r1, r2 = StampedRow({"n": 1}, 1), StampedRow({"n": 2}, 2)
    history.record("s", 100.0, r1)
    history.record("s", 130.0, r2)
    assert history.as_of("s", 99.9) is None
    assert history.as_of("s", 100.0) is r1
    assert history.as_of("s", 129.0) is r1
    assert history.as_of("s", 500.0) is r2
    assert history.as_of("other", 500.0) is None

    store = InMemoryFeatureStore()
    store.write([FeatureRow(SESSION_FEATURES.name, "s", {"n": 9}, 9)])
    clock = ReplayClock()
    clock.now_s = 130.5  # 1 s earlier the second row (readable at 130) was not there yet
    delayed = SessionView(InMemoryRows(store), history, clock, 1.0)
    assert delayed.read_rows({SESSION_FEATURES.name: ["s"]})[SESSION_FEATURES.name] == [r1]
    hidden = SessionView(InMemoryRows(store), history, clock, None)
    assert hidden.read_rows({SESSION_FEATURES.name: ["s"]})[SESSION_FEATURES.name] == [None]


def _gate(
    events: list[Event], clock: list[float]
) -> tuple[ReplayGate, InMemoryFeatureStore, list[PointAnswer]]:
    store = InMemoryFeatureStore()
    rows = InMemoryRows(store)
    popular = most_popular(events, 5)
    policies = Policies([POPULARITY, BATCH_ONLY, SESSION_ONLY], rows, None, popular, 5)
    answers: list[PointAnswer] = []
    gate = ReplayGate(
        events,
        prediction_points(events),
        rows,
        policies,
        answers.append,
        timeout_s=10.0,
        monotonic=lambda: clock[0],
    )
    return gate, store, answers


def _row(event: Event, n: int) -> FeatureRow:
    return FeatureRow(
        SESSION_FEATURES.name,
        event.session_id,
        {"session_id": event.session_id, "last_items": [event.item_id], "n_events": n},
        int(event.ts.timestamp() * 1_000_000),
    )


def test_gate_releases_one_event_at_a_time_and_answers_after_the_write() -> None:
    events = [ev(0, "s1", "a", 0), ev(1, "s1", "b", 1), ev(2, "s2", "c", 2)]
    clock = [0.0]
    gate, store, answers = _gate(events, clock)
    first = gate.release()
    assert first is events[0]
    assert gate.release() is False  # in flight: the source waits
    clock[0] = 0.004
    row = _row(events[0], 1)
    store.write([row])
    gate.rows_written([row])
    assert answers == []  # written: read back and answered at the next settle
    with pytest.raises(FeatrecError, match="not in lock-step"):
        gate.rows_written([row])  # the same session's row twice before it settled
    assert gate.settle() == 1 and gate.settle() == 0
    assert len(answers) == 1 and answers[0].point.target == "b"
    assert answers[0].freshness_ms == pytest.approx(4.0)
    assert answers[0].degraded[BATCH_ONLY] and not answers[0].degraded[SESSION_ONLY]
    assert answers[0].lists[POPULARITY] == most_popular(events, 5)

    second = gate.release()
    assert second is events[1]
    # A row of another session while s1's event is in flight means the replay lost lock-step.
    with pytest.raises(FeatrecError, match="not in lock-step"):
        gate.rows_written([_row(events[2], 1)])
    gate.dead_lettered()  # a refused event settles too (no point answered for it)
    assert gate.release() is events[2]
    clock[0] = 100.0
    with pytest.raises(FeatrecError, match="neither a row nor a dead letter"):
        gate.release()


def test_gate_finishes_once() -> None:
    events = [ev(0, "s1", "a", 0)]
    clock = [0.0]
    gate, store, answers = _gate(events, clock)
    finished = []
    gate._on_finish = finished.append
    assert gate.release() is events[0]
    row = _row(events[0], 1)
    store.write([row])
    gate.rows_written([row])
    assert answers == []  # the session's last event is no prediction point
    assert gate.release() is None and gate.done
    assert gate.release() is None
    assert len(finished) == 1 and finished[0].rows_written == 1


def test_variants_answer_beside_the_policies_with_their_own_config() -> None:
    events = [ev(0, "s1", "a", 0), ev(1, "s1", "b", 1), ev(2, "s2", "c", 2), ev(3, "s2", "a", 3)]
    clock = [0.0]
    gate, store, answers = _gate(events, clock)
    # No model: the candidate order, which here is session-only's (no item model rows).
    gate.policies.add_variant("same", None)
    small = ServingConfig(candidates=replace(CandidateConfig(), max_total=1, min_total=0))
    gate.policies.add_variant("small", None, small)
    for name in ("same", SESSION_ONLY, POPULARITY):
        with pytest.raises(ConfigError, match="already answering"):
            gate.policies.add_variant(name, None)
    assert gate.release() is events[0]
    row = _row(events[0], 1)
    store.write([row])
    gate.rows_written([row])
    gate.settle()
    (answer,) = answers
    assert answer.lists["same"] == answer.lists[SESSION_ONLY]
    assert not answer.degraded["same"]
    assert answer.lists["small"] == answer.lists[SESSION_ONLY][:1] == ["a"]


def test_a_replay_keeps_the_accuracy_knobs_and_drops_the_experience_ones() -> None:
    rerank = RerankConfig(max_per_category=5, stability_window=2, popularity_damping=0.2)
    base = ServingConfig(rerank=rerank, rank_top=20)
    cfg = evaluation_config(base)
    assert cfg.rerank == RerankConfig(drop_purchased=True, popularity_damping=0.2)
    assert cfg.rank_top == 20 and cfg.candidates == base.candidates
    assert evaluation_config().rerank == RerankConfig(drop_purchased=True)


def test_policies_that_need_a_model_refuse_to_run_without_one() -> None:
    with pytest.raises(ConfigError, match="need a model"):
        Policies([FULL], InMemoryRows(InMemoryFeatureStore()), None, [], 5)


def test_a_time_split_keeps_sessions_whole() -> None:
    events = time_ordered(
        [
            ev(0, "a", "x", 0),
            ev(1, "b", "x", 10),
            ev(2, "a", "y", 20),  # a started before the split: stays in training
            ev(3, "c", "z", 30),  # the split time: 3 of 4 events happened before it (share 0.25)
        ]
    )
    train, test, cut = split_by_session_start(events, 0.25)
    assert cut == events[3].ts
    assert [e.event_id for e in train] == ["e0", "e1", "e2"] and [e.event_id for e in test] == [
        "e3"
    ]
    with pytest.raises(ConfigError, match="test share"):
        split_by_session_start(events, 1.0)
