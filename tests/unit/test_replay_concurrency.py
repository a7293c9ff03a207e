"""The concurrent replay gate: sessions in flight together, each in lock-step, and answers
that do not depend on the concurrency (only on each session's own events)."""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from featrec.app.evaluation.answer_pool import AnswerPool
from featrec.app.evaluation.replay import (
    BATCH_ONLY,
    ITEM_MODEL,
    POLICIES,
    POPULARITY,
    SESSION_ONLY,
    FrozenRows,
    PointAnswer,
    Policies,
    ReplayGate,
    most_popular,
)
from featrec.app.item_signals import trending_key
from featrec.core.evaluation.protocol import prediction_points, time_ordered
from featrec.core.events.model import CLICK, Event
from featrec.core.features.catalog import ITEM_MODEL as ITEM_MODEL_VIEW
from featrec.core.features.catalog import ITEM_NEIGHBOURS, ITEM_TRENDING, SESSION_FEATURES
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import Found, InMemoryRows, Wanted
from featrec.core.sessions.fold import SessionPolicy, SessionState, fold, session_row
from featrec.errors import ConfigError, FeatrecError
from featrec.testing.shop import full, toy_model

pytestmark = pytest.mark.unit

T0 = datetime(2024, 1, 1, tzinfo=UTC)
ITEMS = [f"i{n}" for n in range(12)]
POLICY = SessionPolicy()


def _events(seed: int, sessions: int = 30) -> list[Event]:
    rng = random.Random(seed)
    out = []
    n = 0
    for s in range(sessions):
        start = rng.uniform(0, 600)
        for p in range(rng.randint(1, 7)):
            item = rng.choice(ITEMS)
            out.append(Event(f"e{n}", f"s{s}", item, CLICK, T0 + timedelta(seconds=start + 5 * p)))
            n += 1
    return time_ordered(out)


def _neighbours() -> list[FeatureRow]:
    return (
        [
            FeatureRow(
                ITEM_NEIGHBOURS.name,
                item,
                {
                    "neighbour_ids": [ITEMS[(k + j) % 12] for j in (1, 2, 5)],
                    "neighbour_weights": [3.0, 2.0, 1.0],
                    "as_of_s": 0.0,
                },
                1,
            )
            for k, item in enumerate(ITEMS)
        ]
        + [
            FeatureRow(
                ITEM_MODEL_VIEW.name,
                item,
                {
                    "model_ids": [ITEMS[(k + j) % 12] for j in (3, 1, 7)],
                    "model_weights": [0.5, 0.4, 0.1],
                    "model_version": "v",
                    "trained_at_s": 0.0,
                },
                1,
            )
            for k, item in enumerate(ITEMS)
        ]
        + _trending()
    )


def _trending() -> list[FeatureRow]:
    """A trending list at the cutoff and each item's decayed scores (what a degraded answer
    ranks by: its order depends on the time of the point)."""
    as_of = T0.timestamp()
    scores = {item: float((7 * k) % 12 + 1) for k, item in enumerate(ITEMS)}
    ranked = sorted(scores, key=lambda i: -scores[i])
    rows = [
        FeatureRow(
            ITEM_NEIGHBOURS.name,
            trending_key(None),
            {
                "neighbour_ids": ranked[:8],
                "neighbour_weights": [scores[i] for i in ranked[:8]],
                "as_of_s": as_of,
            },
            1,
        )
    ]
    for k, item in enumerate(ITEMS):
        view, click = scores[item] * (k % 3), scores[item]
        values = full(
            ITEM_TRENDING,
            trend_view=view,
            trend_click=click,
            trend_cart=0.0,
            trend_purchase=0.0,
            trend_score=view + click,
            category=None,
            as_of_s=as_of - 600.0 * (k % 4),
        )
        rows.append(FeatureRow(ITEM_TRENDING.name, item, values, 1))
    return rows


class _JsonLines:
    """An answering worker's output in a test: JSON lines in its own file."""

    def __init__(self, path: Path) -> None:
        self.f = path.open("w")

    def write(self, answer: PointAnswer) -> None:
        self.f.write(json.dumps(answer.to_dict()) + "\n")

    def close(self) -> None:
        self.f.close()


def _replay(
    events: list[Event],
    concurrency: int,
    seed: int,
    every_policy: bool = False,
    workers: int = 1,
    out_dir: Path | None = None,
    share_degraded: bool = True,
    built: list[Policies] | None = None,
) -> list[dict[str, Any]]:
    """Run the gate against a flow stand-in that folds each released event with the real
    session fold and writes the rows in a shuffled order, a few at a time, settling (reading
    back, answering) after a random number of writes. ``every_policy``: the full policy and
    the stale views too, with a real fitted ranker. ``workers`` > 1: the points are answered
    by an :class:`AnswerPool` of that many forked processes, each writing its answers to its
    own file in ``out_dir``. ``share_degraded``: see :meth:`Policies.answer`; ``built``
    receives the policies. Returns the answers as dicts, in event order."""
    store = InMemoryFeatureStore()
    store.write(_neighbours())
    rows = InMemoryRows(store)
    policies = Policies(
        list(POLICIES) if every_policy else [POPULARITY, BATCH_ONLY, SESSION_ONLY, ITEM_MODEL],
        rows,
        toy_model() if every_policy else None,
        most_popular(events, 5),
        5,
        share_degraded=share_degraded,
    )
    if built is not None:
        built.append(policies)
    answers: list[PointAnswer] = []
    pool = None
    if workers > 1:
        assert out_dir is not None
        out = out_dir
        # Each worker reads the frozen rows through a reader of its own, as in a real replay.
        pool = AnswerPool(
            policies,
            lambda i: _JsonLines(out / f"w{i}.jsonl"),
            workers,
            reopen=lambda: InMemoryRows(store),
        ).start()
    gate = ReplayGate(
        events,
        prediction_points(events),
        rows,
        policies,
        answers.append,
        concurrency=concurrency,
        answering=pool,
    )
    states: dict[str, SessionState] = {}
    rng = random.Random(seed)
    pending: list[Event] = []
    while True:
        batch = gate.release_batch()
        if batch is None:
            break
        assert len(batch) + len(pending) <= concurrency
        assert len({e.session_id for e in [*batch, *pending]}) == len(batch) + len(pending)
        pending.extend(batch)
        rng.shuffle(pending)
        cut = rng.randint(1, len(pending))
        settle, pending = pending[:cut], pending[cut:]
        _settle(settle, states, store, gate)
        if rng.random() < 0.5:
            gate.settle()
    assert gate.done and not pending
    if pool is None:
        found = [a.to_dict() for a in answers]
    else:
        assert out_dir is not None and not answers
        files = sorted(out_dir.glob("w*.jsonl"))
        assert len(files) == workers
        found = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    return sorted(found, key=lambda a: int(a["point"]["event_index"]))


def _settle(
    events: list[Event],
    states: dict[str, SessionState],
    store: InMemoryFeatureStore,
    gate: ReplayGate,
) -> None:
    """What the sessions flow does with released events: fold them, write their sessions'
    rows, and tell the gate."""
    rows_out = []
    for event in events:
        state = states.setdefault(event.session_id, SessionState(event.session_id))
        fold(state, event, POLICY)
        rows_out.append(session_row(state))
    store.write(rows_out)
    gate.rows_written(rows_out)


def _figures(answers: list[dict[str, Any]]) -> list[tuple[object, ...]]:
    return [
        (a["point"], sorted(a["lists"].items()), sorted(a["degraded"].items())) for a in answers
    ]


@pytest.mark.parametrize("seed", [1, 2])
def test_answers_do_not_depend_on_the_concurrency(seed: int) -> None:
    events = _events(seed)
    baseline = _figures(_replay(events, 1, seed))
    assert len(baseline) == sum(p is not None for p in prediction_points(events))
    for concurrency in (2, 7, 64):
        assert _figures(_replay(events, concurrency, seed + concurrency)) == baseline


def test_every_policy_answers_the_same_at_any_concurrency() -> None:
    """The full policy (a real ranker) and the stale views too: their inputs are the session
    rows read back at each point and the history before it, whatever else is in flight."""
    events = _events(3, sessions=20)
    answers = _replay(events, 1, 3, every_policy=True)
    assert all(set(a["lists"]) == set(POLICIES) for a in answers)
    # the live row matters: full differs from batch-only somewhere
    assert any(a["lists"]["full"] != a["lists"][BATCH_ONLY] for a in answers)
    baseline = _figures(answers)
    for concurrency in (3, 64):
        assert _figures(_replay(events, concurrency, 5, every_policy=True)) == baseline


def _with_users(events: list[Event]) -> list[Event]:
    """Half of the sessions name a user (with no user row: the degraded answer reads it)."""
    return [
        replace(e, user_id=f"u{int(e.session_id[1:]) % 3}") if int(e.session_id[1:]) % 2 else e
        for e in events
    ]


@pytest.mark.parametrize("seed", [3, 6])
def test_a_shared_no_session_answer_is_the_one_computed(seed: int) -> None:
    """Policies without a session row at a point (batch-only; the stale views early in a
    session) take the no-session answer computed there by a policy with the same config:
    every list and degraded flag is what each policy computes on its own."""
    events = _with_users(_events(seed, sessions=20))
    built: list[Policies] = []
    shared = _replay(events, 7, seed, every_policy=True, built=built)
    alone = _replay(events, 7, seed, every_policy=True, share_degraded=False, built=built)
    assert _figures(shared) == _figures(alone)
    assert built[0].shared > len(shared) and built[1].shared == 0
    # the degraded list is not empty (the trending rows), and the stale views do see session
    # rows at some points: not everything was shared
    assert all(a["lists"][BATCH_ONLY] for a in shared)
    assert any(not a["degraded"]["stale-1s"] for a in shared)


@pytest.mark.parametrize(("concurrency", "workers"), [(1, 2), (7, 3), (64, 2)])
def test_answering_processes_answer_the_same(
    tmp_path: Path, concurrency: int, workers: int
) -> None:
    """Points answered by forked worker processes, each owning whole sessions: every policy's
    list at every point is the serial replay's, whatever the number of workers and the
    interleaving, and each worker answered some of them."""
    events = _events(4, sessions=24)
    baseline = _figures(_replay(events, 1, 4, every_policy=True))
    assert len(baseline) == sum(p is not None for p in prediction_points(events))
    out = tmp_path / f"c{concurrency}w{workers}"
    out.mkdir()
    pooled = _replay(
        events, concurrency, 9 + workers, every_policy=True, workers=workers, out_dir=out
    )
    assert _figures(pooled) == baseline
    assert all((out / f"w{i}.jsonl").stat().st_size > 0 for i in range(workers))
    # a session's points all come from one worker
    owners: dict[str, int] = {}
    for i in range(workers):
        for line in (out / f"w{i}.jsonl").read_text().splitlines():
            session = json.loads(line)["point"]["session_id"]
            assert owners.setdefault(session, i) == i


class _Failing(_JsonLines):
    def write(self, answer: PointAnswer) -> None:
        if answer.point.position == 3:
            os._exit(3)  # the worker dies mid-replay
        super().write(answer)


def test_a_failed_answering_worker_fails_the_replay(tmp_path: Path) -> None:
    events = _events(5, sessions=12)
    store = InMemoryFeatureStore()
    store.write(_neighbours())
    rows = InMemoryRows(store)
    policies = Policies([POPULARITY, SESSION_ONLY], rows, None, most_popular(events, 5), 5)
    pool = AnswerPool(policies, lambda i: _Failing(tmp_path / f"w{i}.jsonl"), 2).start()
    gate = ReplayGate(
        events,
        prediction_points(events),
        rows,
        policies,
        lambda a: None,
        concurrency=4,
        answering=pool,
    )
    states: dict[str, SessionState] = {}
    with pytest.raises(FeatrecError, match="answering worker"):
        while (batch := gate.release_batch()) is not None:
            _settle(batch, states, store, gate)
    pool.terminate()


def test_a_non_session_row_written_during_the_replay_is_refused() -> None:
    """The policies keep the item rows they read (frozen at the cutoff): a write of one
    during the replay would make that wrong, so the gate refuses it."""
    e = [Event("a", "s1", "i1", CLICK, T0)]
    rows = InMemoryRows(InMemoryFeatureStore())
    policies = Policies([POPULARITY], rows, None, ["i1"], 1)
    gate = ReplayGate(e, prediction_points(e), rows, policies, lambda a: None)
    assert gate.release_batch() == [e[0]]
    with pytest.raises(FeatrecError, match="frozen"):
        gate.rows_written([_neighbours()[0]])


def test_two_events_of_one_session_are_never_in_flight_together() -> None:
    e = [
        Event("a", "s1", "i1", CLICK, T0),
        Event("b", "s1", "i2", CLICK, T0 + timedelta(seconds=1)),
        Event("c", "s2", "i3", CLICK, T0 + timedelta(seconds=2)),
    ]
    store = InMemoryFeatureStore()
    rows = InMemoryRows(store)
    policies = Policies([POPULARITY], rows, None, ["i1"], 1)
    gate = ReplayGate(e, prediction_points(e), rows, policies, lambda a: None, concurrency=3)
    # s1's second event waits; s2's event goes ahead of it
    assert gate.release_batch() == [e[0], e[2]]
    assert gate.release_batch() == []
    with pytest.raises(FeatrecError, match="not known"):
        gate.dead_lettered(1)  # two sessions in flight: which one?
    state = SessionState("s1")
    fold(state, e[0], POLICY)
    gate.rows_written([session_row(state)])
    assert gate.release_batch() == [e[1]]
    gate.dead_lettered(2, ["s1", "s2"])
    assert gate.release_batch() is None and gate.done


def test_concurrency_is_validated() -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        ReplayGate([], [], InMemoryRows(InMemoryFeatureStore()), None, print, concurrency=0)  # type: ignore[arg-type]


class _CountingRows(InMemoryRows):
    """The in-memory store's reader, counting the keys it was asked for."""

    asked = 0

    def read_rows(self, wanted: Wanted) -> Found:
        self.asked += sum(len(keys) for keys in wanted.values())
        return super().read_rows(wanted)


def test_frozen_rows_are_read_once_and_session_rows_every_time() -> None:
    store = InMemoryFeatureStore()
    store.write(_neighbours())
    counting = _CountingRows(store)
    frozen = FrozenRows(counting)
    found = frozen.prefetch({ITEM_NEIGHBOURS.name: [*ITEMS, "nope"]}, chunk=5)
    assert found == len(ITEMS) and counting.asked == len(ITEMS) + 1
    again = frozen.read_rows({ITEM_NEIGHBOURS.name: ["i3", "nope", "i3"]})
    assert counting.asked == len(ITEMS) + 1  # kept, the missing row too
    assert (
        again[ITEM_NEIGHBOURS.name]
        == InMemoryRows(store).read_rows({ITEM_NEIGHBOURS.name: ["i3", "nope", "i3"]})[
            ITEM_NEIGHBOURS.name
        ]
    )
    state = SessionState("s1")
    fold(state, Event("a", "s1", "i1", CLICK, T0), POLICY)
    store.write([session_row(state)])
    for _ in range(2):
        assert frozen.read_rows({SESSION_FEATURES.name: ["s1"]})[SESSION_FEATURES.name][0]
    assert counting.asked == len(ITEMS) + 3
    with pytest.raises(ValueError, match="not frozen"):
        frozen.prefetch({SESSION_FEATURES.name: ["s1"]})
