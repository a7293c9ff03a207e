"""Training: the replay computes what serving would compute at each point (oracle), training
sets are validated, and `featrec train` runs on real `featrec dataset build` output (Feast,
DuckDB offline store, point-in-time join) and writes a model that loads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from featrec.adapters.feast.repo import apply_repo, open_store
from featrec.adapters.files.event_log import EventLogWriter
from featrec.adapters.files.model_store import load_latest, models_dir, save_model
from featrec.app.training import (
    FeatureSet,
    LabelledPoint,
    TrainingConfig,
    fit_on_events,
    points_from_events,
    points_from_table,
    replay_features,
    split_by_time,
)
from featrec.cli.batch import batch_group, dataset_group
from featrec.cli.train import train
from featrec.core.candidates.model import Candidate
from featrec.core.candidates.point_generators import PredictionContext, SignalCandidates
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event
from featrec.core.features.rows import micros
from featrec.core.items.trending import trending_row
from featrec.core.ranking.ranker import item_row, ranking_matrix
from featrec.core.sessions.fold import SessionPolicy, SessionState, fold, session_row
from featrec.errors import ConfigError
from featrec.jobs.training_sets import TrainingSet, build_training_set, log_events
from featrec.settings import Settings
from featrec.testing.feast_repo import copy_feature_repo

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _served_features(
    signals: SignalCandidates, point: LabelledPoint, session_events: list[Event]
) -> tuple[list[Candidate], Any]:
    """What serving computes for ``point`` from ``signals`` and the session's events so far:
    its candidates and their ranking matrix."""
    state = SessionState(point.session_id)
    for e in session_events:
        fold(state, e, SessionPolicy())
    context = PredictionContext(
        point.session_id,
        point.user_id,
        point.at,
        tuple(e.item_id for e in session_events),
        tuple(e.type for e in session_events),
    )
    candidates = signals.generate(context)
    board = signals.signals.board
    items = {
        c.item_id: item_row(
            None, trending_row(c.item_id, board.items[c.item_id], board.config).values
        )
        for c in candidates
        if c.item_id in board.items
    }
    expected = ranking_matrix(
        candidates, session_row(state).values, None, items, micros(point.at) / 1e6
    )
    return candidates, expected


def test_replayed_features_equal_a_fresh_computation_at_each_point() -> None:
    """The batch oracle against training/serving skew: for sampled points, rebuild what the
    online store would hold from the prefix of the log alone and compute the features as
    serving does; the replay's rows must be bit-identical."""
    events = list(generate(GeneratorConfig(n_events=3000, n_items=120, n_users=50, seed=5)))
    points = points_from_events(events, max_points=400)
    features = replay_features(events, points)
    slices = features.point_slices()
    assert len(slices) == len(points) == 400
    for k in range(0, 400, 57):
        point = features.points[k]
        j, session_events = _prefix(events, point)
        signals = SignalCandidates()
        for e in events[: j + 1]:
            signals.observe(e)
        candidates, expected = _served_features(signals, point, session_events)
        got = features.X[slices[k]]
        assert got.tobytes() == expected.tobytes()
        assert features.item_ids[slices[k]] == [c.item_id for c in candidates]
        labels = features.y[slices[k]].tolist()
        assert labels == [int(c.item_id == point.target) for c in candidates]


def test_learning_after_the_session_hides_a_session_from_its_own_points() -> None:
    """With ``learn_after_session`` the signals at a point are exactly those learned from the
    sessions that ended before it, fed in the order they ended (the point's own session
    never among them)."""
    events = list(generate(GeneratorConfig(n_events=3000, n_items=120, n_users=50, seed=5)))
    points = points_from_events(events, max_points=300, seed=2)
    features = replay_features(events, points, learn_after_session=True)
    live = replay_features(events, points)
    assert features.X.tobytes() != live.X.tobytes()
    last = {e.session_id: j for j, e in enumerate(events)}
    slices = features.point_slices()
    for k in range(0, 300, 61):
        point = features.points[k]
        j, session_events = _prefix(events, point)
        ended = sorted((i, s) for s, i in last.items() if i <= j)
        assert point.session_id not in {s for _, s in ended}
        signals = SignalCandidates()
        for _, session in ended:
            for e in events:
                if e.session_id == session:
                    signals.observe(e)
        candidates, expected = _served_features(signals, point, session_events)
        assert features.X[slices[k]].tobytes() == expected.tobytes()
        assert features.item_ids[slices[k]] == [c.item_id for c in candidates]


def test_fit_on_events_trains_a_storable_ranker_from_events_alone(tmp_path: Path) -> None:
    events = list(generate(GeneratorConfig(n_events=3000, n_items=120, n_users=50, seed=4)))
    config = TrainingConfig(holdout=0.0, max_iter=15, learn_after_session=True)
    result = fit_on_events(events, config=config, max_points=300, since_fraction=0.2, seed=1)
    since = events[600].ts
    eligible = points_from_events(events, collapse_repeats=False, since=since)
    assert result.metrics["points"] == min(300, len(eligible)) == 300
    assert result.metrics["holdout_points"] == 0
    assert "holdout_model_hr@20" not in result.metrics
    again = fit_on_events(events, config=config, max_points=300, since_fraction=0.2, seed=1)
    features = replay_features(events, eligible[:50])
    scores = result.ranker.score_candidates(features.X)
    assert scores.tobytes() == again.ranker.score_candidates(features.X).tobytes()
    save_model(result.ranker, models_dir(tmp_path), metrics=result.metrics)
    loaded = load_latest(models_dir(tmp_path))
    assert loaded.ranker.score_candidates(features.X).tobytes() == scores.tobytes()
    with pytest.raises(ConfigError, match="since_fraction"):
        fit_on_events(events, since_fraction=1.0)
    with pytest.raises(ConfigError, match="no training events"):
        fit_on_events([])


@pytest.mark.parametrize(("holdout", "negatives"), [(0.0, None), (0.0, 5), (0.25, None), (0.25, 3)])
def test_fit_on_events_streams_to_the_in_memory_model_and_metrics(
    holdout: float, negatives: int | None
) -> None:
    """fit_on_events (through `train`) replays and fits as a stream; the in-memory path it
    replaced (replay_features + fit_ranker) gives the same model and metrics."""
    from featrec.app.training import fit_ranker

    events = list(generate(GeneratorConfig(n_events=3000, n_items=120, n_users=50, seed=5)))
    config = TrainingConfig(
        holdout=holdout, negatives_per_point=negatives, max_iter=15, learn_after_session=True
    )
    ticks: list[int] = []
    streamed = fit_on_events(
        events,
        config=config,
        max_points=250,
        since_fraction=0.2,
        seed=2,
        on_point=lambda: ticks.append(1),
    )
    points = points_from_events(
        events, collapse_repeats=False, since=events[600].ts, max_points=250, seed=2
    )
    in_memory = fit_ranker(replay_features(events, points, learn_after_session=True), config)
    assert len(ticks) == len(points) == 250
    assert streamed.metrics == in_memory.metrics
    assert (streamed.metrics["holdout_points"] > 0) == (holdout > 0)
    features = replay_features(events, points[:60])
    assert (
        streamed.ranker.score_candidates(features.X).tobytes()
        == in_memory.ranker.score_candidates(features.X).tobytes()
    )


def _prefix(events: list[Event], point: LabelledPoint) -> tuple[int, list[Event]]:
    """Index of the point's event, and its session's events up to it."""
    mine: list[Event] = []
    for j, e in enumerate(events):
        if e.session_id == point.session_id:
            mine.append(e)
            if len(mine) == point.position:
                return j, mine
    raise AssertionError("point not found")


def test_split_by_time_keeps_equal_times_together() -> None:
    def point(i: int, minutes: int) -> LabelledPoint:
        return LabelledPoint(i, f"s{i}", 1, T0 + timedelta(minutes=minutes), None, "x")

    points = [point(0, 5), point(1, 1), point(2, 3), point(3, 3), point(4, 9)]
    empty = np.zeros(0, dtype=np.int64)
    features = FeatureSet(np.zeros((0, 1)), empty, empty, [], points, 1.0)
    assert split_by_time(features, 0.4) == ([1, 2, 3], [0, 4])
    assert split_by_time(features, 0.6) == ([1], [2, 3, 0, 4])  # 2 and 3 share a time
    assert split_by_time(features, 0.0) == ([1, 2, 3, 0, 4], [])


def _table(rows: list[dict[str, object]]) -> pa.Table:
    return pa.Table.from_pylist(rows)


GOOD = {
    "point_id": 0,
    "session_id": "s",
    "user_id": "u",
    "event_timestamp": T0,
    "position": 1,
    "current_item_id": "a",
    "item_id": "b",
    "candidate_rank": 0,
    "label": 1,
    "user_features__n_sessions_90d": 3,
    "item_features__price": 9.5,
}


def test_points_from_a_training_set_table() -> None:
    table = _table(
        [
            {**GOOD, "item_id": "c", "candidate_rank": 1, "label": 0, "item_features__price": None},
            GOOD,
        ]
    )
    (point,) = points_from_table(table)
    assert point.items == ("b", "c") and point.target == "b"
    assert point.user_row == {"n_sessions_90d": 3}
    assert point.item_rows == {"b": {"price": 9.5}, "c": None}  # all-null: no snapshot


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{k: v for k, v in GOOD.items() if k != "label"}], "lacks column"),
        ([GOOD, {**GOOD, "candidate_rank": 1}], "lists a candidate twice"),
        ([GOOD, {**GOOD, "item_id": "c", "candidate_rank": 1}], "2 positive labels"),
    ],
)
def test_bad_training_sets_are_refused(rows: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        points_from_table(_table(rows))
    with pytest.raises(ConfigError, match="empty"):
        points_from_table(_table([GOOD]).slice(0, 0))


def test_points_without_events_are_refused() -> None:
    events = list(generate(GeneratorConfig(n_events=200, n_items=30, n_users=5, seed=1)))
    stray = LabelledPoint(0, "no-such-session", 1, T0, None, "x")
    with pytest.raises(ConfigError, match="no event in the log"):
        replay_features(events, [stray])


@dataclass
class World:
    settings: Settings
    events: list[Event]
    dataset: TrainingSet


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A generated log, daily batch snapshots, and a training set built by issue 4's
    builder with the serving candidates (Feast DuckDB offline store, SQLite online)."""
    root = tmp_path_factory.mktemp("training")
    settings = Settings(home=root / "home", repo=copy_feature_repo(root / "repo"))
    config = GeneratorConfig(
        n_events=12_000, n_users=120, n_items=150, concurrent_sessions=2, seed=3
    )
    events = list(generate(config))
    EventLogWriter(settings.event_log_dir).write(events)
    apply_repo(settings)
    result = CliRunner().invoke(batch_group, ["run", "--since", "2024-01-01"], obj=settings)
    assert result.exit_code == 0, result.output
    dataset = build_training_set(
        open_store(settings),
        settings.event_log_dir,
        settings.home / "datasets" / "training.parquet",
        generator=SignalCandidates(),
        max_points=1500,
    )
    yield World(settings, log_events(settings.event_log_dir), dataset)


def test_train_command_fits_and_stores_a_loadable_model(world: World) -> None:
    result = CliRunner().invoke(
        train, ["--holdout", "0.25", "--max-iter", "60"], obj=world.settings
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "100.0% of candidates also proposed by serving" in result.output
    loaded = load_latest(models_dir(world.settings.home))
    m = loaded.manifest.metrics
    data = world.dataset
    assert m["points"] == data.points == 1500
    assert m["rows"] == data.rows
    assert m["candidate_recall"] == pytest.approx(data.points_with_target / data.points)
    assert m["candidate_coverage"] == 1.0
    assert m["holdout_points"] >= 370
    assert m["holdout_model_mrr@20"] > m["holdout_candidate_order_mrr@20"]
    assert loaded.manifest.training["dataset_rows"] == data.rows
    assert f"model {loaded.version}" in result.output

    # Long-term features from the Feast join reach the model's input: some user rows exist.
    points = points_from_table(pq.read_table(data.path))
    assert any(p.user_row is not None for p in points)
    assert any(p.user_row is None for p in points)


def test_train_on_a_training_set_of_another_generator(world: World, tmp_path: Path) -> None:
    """`featrec dataset build --candidates simple` (session items + popular) still trains;
    the output says how many of them serving would not propose."""
    out = tmp_path / "simple.parquet"
    built = CliRunner().invoke(
        dataset_group,
        ["build", "--out", str(out), "--max-points", "400", "--candidates", "simple"],
        obj=world.settings,
    )
    assert built.exit_code == 0, built.output
    result = CliRunner().invoke(
        train, ["--dataset", str(out), "--max-iter", "20"], obj=world.settings
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    coverage = float(result.output.split("% of candidates also proposed")[0].split(", ")[-1])
    assert 0 < coverage < 100


def test_train_errors_are_one_line_with_a_non_zero_exit(world: World, tmp_path: Path) -> None:
    missing = CliRunner().invoke(
        train, ["--dataset", str(tmp_path / "none.parquet")], obj=world.settings
    )
    assert missing.exit_code == 1
    assert "no training set at" in missing.output and "featrec dataset build" in missing.output
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"point_id": [1]}), bad)
    result = CliRunner().invoke(train, ["--dataset", str(bad)], obj=world.settings)
    assert result.exit_code == 1 and "lacks column(s)" in result.output
