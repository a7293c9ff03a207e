"""The streaming training path equals the in-memory one it replaced (the oracle,
``tests/unit/training_reference.py``, kept verbatim): the same training examples from the
event log (DuckDB stream vs every event as an object), the same replayed rows and the same
model and metrics (replay_points + fit_stream vs replay_features + fit_ranker)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featrec.adapters.duckdb.event_stream import DatasetStream, LogStream, events_of
from featrec.adapters.files.event_log import EventLogWriter
from featrec.app.training import (
    DATASET_COLUMNS,
    TrainingConfig,
    fit_ranker,
    fit_stream,
    holdout_start,
    points_from_events,
    points_from_table,
    replay_features,
    replay_points,
    stream_points,
)
from featrec.core.candidates.point_generators import SignalCandidates, default_generator
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event
from featrec.core.ranking.examples import stream_examples
from featrec.errors import ConfigError
from featrec.jobs.training_sets import label_examples
from tests.unit import training_reference as reference


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated events over 3 days in several files, some written twice (at-least-once):
    the log readers keep one copy of each."""
    root = tmp_path_factory.mktemp("stream") / "events"
    config = GeneratorConfig(n_events=6_000, n_users=80, n_items=120, concurrent_sessions=1, seed=5)
    events = list(generate(config))
    writer = EventLogWriter(root)
    rng = random.Random(1)
    for start in range(0, len(events), 700):
        part = events[start : start + 700]
        writer.write(part)
        writer.write(rng.sample(part, 40))  # duplicates, in later files
    return root


@pytest.mark.parametrize(
    ("collapse", "since", "until", "max_points", "serving"),
    [
        (True, None, None, None, False),
        (False, None, None, 500, True),
        (True, date(2024, 1, 2), date(2024, 1, 2), 300, True),
        (False, date(2024, 1, 2), None, None, False),
    ],
)
def test_streamed_examples_equal_the_in_memory_ones(
    log_dir: Path,
    tmp_path: Path,
    collapse: bool,
    since: date | None,
    until: date | None,
    max_points: int | None,
    serving: bool,
) -> None:
    events = reference.log_events(log_dir)
    targets = reference.choose_points(
        events,
        reference.next_item_targets(events, collapse),
        since=since,
        until=until,
        max_points=max_points,
        seed=3,
    )
    expected, hits = reference.examples_table(
        events, targets, SignalCandidates() if serving else default_generator()
    )
    out = tmp_path / "examples.parquet"
    labelled = label_examples(
        log_dir,
        out,
        generator=SignalCandidates() if serving else default_generator(),
        collapse_repeats=collapse,
        since=since,
        until=until,
        max_points=max_points,
        seed=3,
        chunk_rows=1_000,  # many chunks
    )
    got = pq.read_table(out)
    assert expected.num_rows > 1_000
    assert got.equals(expected)
    assert (labelled.rows, labelled.hits, labelled.events) == (got.num_rows, hits, len(events))
    assert labelled.points == sum(t is not None for t in targets)


def test_the_log_stream_is_the_deduplicated_log_in_order(log_dir: Path) -> None:
    events = reference.log_events(log_dir)
    streamed: list[Event] = []
    last: list[bool] = []
    with LogStream(log_dir) as log:
        assert log.count() == len(events)
        for batch in log.batches(batch_rows=500):
            streamed.extend(events_of(batch))
            last.extend(batch.column("last").to_pylist())
    assert streamed == events
    ends = {e.session_id: i for i, e in enumerate(events)}
    assert last == [ends[e.session_id] == i for i, e in enumerate(events)]


def test_a_stream_forgets_each_session_after_its_last_event(log_dir: Path) -> None:
    events = reference.log_events(log_dir)
    generator = SignalCandidates()
    targets = reference.next_item_targets(events)
    ends = {e.session_id: i for i, e in enumerate(events)}
    rows = (
        (e, t, ends[e.session_id] == i)
        for i, (e, t) in enumerate(zip(events, targets, strict=True))
    )
    assert sum(1 for _ in stream_examples(rows, generator)) > 0
    assert not generator.signals._recent
    assert not generator._last_category


def _dataset(log_dir: Path, path: Path, shuffle: bool = True) -> pa.Table:
    """A training set: the examples plus long-term feature columns (synthetic values, some
    rows without any, as for entities without a snapshot)."""
    label_examples(log_dir, path, generator=SignalCandidates(), max_points=400, seed=1)
    table = pq.read_table(path)
    rng = np.random.default_rng(0)
    n = table.num_rows
    price = np.where(rng.random(n) < 0.2, np.nan, rng.random(n) * 100)
    views = [None if rng.random() < 0.3 else int(v) for v in rng.integers(0, 50, n)]
    table = table.append_column("item_features__price", pa.array(price, from_pandas=True))
    table = table.append_column("user_features__n_view_30d", pa.array(views, pa.int64()))
    if shuffle:  # rows in another order than point order: the stream must sort them back
        table = table.take(pa.array(rng.permutation(n)))
    pq.write_table(table, path)
    return table


@pytest.mark.parametrize(
    ("config", "shuffle"),
    [
        (TrainingConfig(holdout=0.25, negatives_per_point=3, max_iter=15), True),
        (TrainingConfig(holdout=0.25, negatives_per_point=3, max_iter=15), False),
        (TrainingConfig(holdout=0.0, negatives_per_point=None, max_iter=10), True),
    ],
)
def test_streamed_training_equals_the_in_memory_fit(
    log_dir: Path, tmp_path: Path, config: TrainingConfig, shuffle: bool
) -> None:
    path = tmp_path / "training.parquet"
    table = _dataset(log_dir, path, shuffle)
    events = reference.log_events(log_dir)
    points = points_from_table(table)
    features = reference.replay_features(events, points, session_policy=config.session_policy)
    expected = fit_ranker(features, config)

    with DatasetStream(path, required=DATASET_COLUMNS) as dataset, LogStream(log_dir) as log:
        index = dataset.points()
        assert dataset.in_order() is not shuffle

        def rows():  # type: ignore[no-untyped-def]
            for batch in log.batches(batch_rows=700):
                yield from zip(events_of(batch), batch.column("last").to_pylist(), strict=True)

        replayed = list(
            replay_points(
                rows(),
                stream_points(dataset.batches(batch_rows=333)),
                session_policy=config.session_policy,
                sessions_with_points=set(index.column("session_id").to_pylist()),
            )
        )
        got = fit_stream(
            iter(replayed),
            config,
            holdout_from=holdout_start(index.column("at").to_pylist(), config.holdout),
        )
    # The same rows, point by point, in the same order.
    assert [r.point for r in replayed] == features.points
    assert np.array_equal(np.vstack([r.X for r in replayed]), features.X, equal_nan=True)
    assert np.array_equal(np.concatenate([r.y for r in replayed]), features.y)
    # The same model and figures.
    assert got.metrics == expected.metrics
    probe = features.X
    assert np.array_equal(
        got.ranker.score_candidates(probe), expected.ranker.score_candidates(probe)
    )
    if config.holdout:
        assert got.metrics["holdout_points"] > 0


def test_points_without_events_are_refused_by_the_stream(log_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "training.parquet"
    table = _dataset(log_dir, path)
    first = table.column("session_id")[0].as_py()
    pq.write_table(
        table.set_column(
            table.column_names.index("session_id"),
            "session_id",
            pa.array(
                [first + "-gone" if s == first else s for s in table["session_id"].to_pylist()]
            ),
        ),
        path,
    )
    with DatasetStream(path) as dataset, LogStream(log_dir) as log:
        rows = (
            (e, last)
            for batch in log.batches()
            for e, last in zip(events_of(batch), batch.column("last").to_pylist(), strict=True)
        )
        with pytest.raises(ConfigError, match="have no event in the log"):
            list(replay_points(rows, stream_points(dataset.batches())))


def test_a_training_set_without_the_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"point_id": [1]}), path)
    with pytest.raises(ConfigError, match="lacks column"):
        DatasetStream(path, required=DATASET_COLUMNS)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ConfigError, match="cannot read the training set"):
        DatasetStream(tmp_path / "junk.parquet")


@pytest.mark.parametrize(
    "options",
    [{"learn_after_session": True}, {"learn_until": datetime(2024, 1, 2, 6, tzinfo=UTC)}],
)
def test_replay_features_equal_the_reference_under_the_evaluation_protocols(
    log_dir: Path, options: dict[str, Any]
) -> None:
    """``featrec evaluate`` and the RSC15 benchmark train through ``replay_features`` with
    signals that learn a session only once it has ended, or stop learning at a cutoff."""
    events = reference.log_events(log_dir)
    points = points_from_events(events, collapse_repeats=False, max_points=800, seed=2)
    expected = reference.replay_features(events, points, **options)
    got = replay_features(events, points, **options)
    assert got.points == expected.points
    assert np.array_equal(got.X, expected.X, equal_nan=True)
    assert np.array_equal(got.y, expected.y)
    assert np.array_equal(got.group, expected.group)
    assert got.item_ids == expected.item_ids
    assert got.candidate_coverage == expected.candidate_coverage
