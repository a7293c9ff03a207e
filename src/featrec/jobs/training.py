"""Training the ranker: a training set (or the events) in, a saved model version out.

:func:`train_on_dataset` is ``featrec train``: it streams the Parquet file ``featrec dataset
build`` wrote and the event log it was built from (both through DuckDB, in batches), replays
the log for the candidate and session features (:mod:`featrec.app.training`), fits, and writes
``$FEATREC_HOME/models/<version>/`` with its manifest
(:mod:`featrec.adapters.files.model_store`). :func:`fit_and_save` fits on points and events
already in memory (the replay evaluation's, whose logs are small); its replay and fit stream
too (:func:`featrec.app.training.train`)."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featrec.core.progress import SILENT, Progress
from featrec.errors import ConfigError
from featrec.settings import Settings

if TYPE_CHECKING:
    from featrec.app.training import (
        CollectedRows,
        LabelledPoint,
        TrainingConfig,
        TrainingResult,
    )
    from featrec.core.events.model import Event
    from featrec.core.items.slist import SessionFolds


@dataclass(frozen=True, slots=True)
class TrainJob:
    """What ``featrec train`` was asked: the training set and the fit's knobs."""

    dataset: Path | None = None
    holdout: float = 0.2
    negatives: int = 20
    max_iter: int = 100
    learning_rate: float = 0.1
    version: str | None = None


@dataclass(frozen=True, slots=True)
class TrainReport:
    """A trained and saved model: its version, where it is, and its training figures."""

    version: str
    path: Path
    metrics: Mapping[str, float]
    k: int
    seconds: float
    training: Mapping[str, Any] = field(default_factory=dict)


def default_dataset(settings: Settings) -> Path:
    """Where ``featrec dataset build`` writes the training set."""
    return settings.home / "datasets" / "training.parquet"


def fit_and_save(
    settings: Settings,
    events: Sequence[Event],
    points: Sequence[LabelledPoint],
    config: TrainingConfig,
    *,
    training: Mapping[str, Any],
    version: str | None = None,
    on_point: Callable[[], None] | None = None,
    item_model: SessionFolds | None = None,
) -> TrainReport:
    """Fit the ranker on ``points`` (features replayed from ``events``) and save it;
    ``item_model``: the cross-fitted item models its ``model`` features come from."""
    from featrec.app.training import train as train_ranker

    started = time.perf_counter()
    result = train_ranker(events, points, config, on_point=on_point, item_model=item_model)
    return _save(settings, result, config, training, version, started)


def _save(
    settings: Settings,
    result: TrainingResult,
    config: TrainingConfig,
    training: Mapping[str, Any],
    version: str | None,
    started: float,
) -> TrainReport:
    """Save ``result``'s ranker as a model version; the report of the run begun at
    ``started`` (``time.perf_counter()``)."""
    from featrec.adapters.files.model_store import models_dir, save_model

    root = models_dir(settings.home)
    manifest = save_model(
        result.ranker, root, metrics=result.metrics, training=dict(training), version=version
    )
    return TrainReport(
        version=manifest.version,
        path=root / manifest.version,
        metrics=dict(result.metrics),
        k=config.k,
        seconds=time.perf_counter() - started,
        training=dict(training),
    )


def item_model_folds(settings: Settings) -> SessionFolds | None:
    """Cross-fitted twins of the newest item model (same hyperparameters, each fitted on half
    the sessions of the event log), so the ranker learns the ``model`` features on sessions
    the model never saw; None when no item model was trained (the features stay 0)."""
    from featrec.adapters.files.item_model_store import item_models_dir, list_item_model_versions
    from featrec.core.items.slist import SlistConfig, fit_folds
    from featrec.jobs.item_model import read_clicks

    root = item_models_dir(settings.home)
    versions = list_item_model_versions(root)
    if not versions:
        return None
    manifest = json.loads((root / versions[-1] / "manifest.json").read_text())
    return fit_folds(read_clicks(settings), SlistConfig(**manifest["config"]))


def load_points(path: Path) -> tuple[list[LabelledPoint], int]:
    """The prediction points of a training set file, and its row count."""
    import pyarrow.parquet as pq

    from featrec.app.training import points_from_table

    if not path.is_file():
        raise ConfigError(f"no training set at {path}: run `featrec dataset build` first")
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the training set {path}: {e}") from None
    return points_from_table(table), table.num_rows


def train_on_dataset(
    settings: Settings,
    job: TrainJob,
    *,
    progress: Progress = SILENT,
) -> TrainReport:
    """``featrec train``: fit on a training set and the event log, save a model version.

    Streams: the training set is read point by point in time order and the log in batches
    (both through DuckDB), replayed together (:func:`~featrec.app.training.replay_points`),
    and only what the fit keeps is kept (:func:`~featrec.app.training.collect_rows`: the
    training points' positives and sampled negatives, the held-out points' rows, spooled
    to a temp dir). The fit starts once the DuckDB databases and the replay are gone, and
    the held-out rows are scored from disk in chunks."""
    from featrec.app.training import TrainingConfig, fit_collected

    started = time.perf_counter()
    path = job.dataset or default_dataset(settings)
    if not path.is_file():
        raise ConfigError(f"no training set at {path}: run `featrec dataset build` first")
    config = TrainingConfig(
        holdout=job.holdout,
        negatives_per_point=job.negatives,
        max_iter=job.max_iter,
        learning_rate=job.learning_rate,
        session_policy=settings.session_policy,
    )
    with contextlib.ExitStack() as outer:
        work = Path(outer.enter_context(tempfile.TemporaryDirectory(prefix="featrec-train-")))
        collected, read = _collect(settings, path, config, work, progress)
        outer.callback(collected.close)
        # The DuckDB databases (up to their memory limits) are closed by now: the fit and
        # the held-out scoring have the memory to themselves.
        result = fit_collected(
            collected,
            config,
            on_fit=lambda n: progress.stage(
                f"fitting the ranker on {n:,} rows ({config.max_iter} boosting iterations)"
            ),
        )
    training = {
        "item_model_folds": read.folds,
        "dataset": str(path.resolve()),
        "dataset_rows": read.dataset_rows,
        "events": read.events,
        "holdout": job.holdout,
        "negatives_per_point": job.negatives,
    }
    return _save(settings, result, config, training, job.version, started)


@dataclass(frozen=True)
class _Read:
    """What :func:`_collect` read: training-set rows, log events, item-model folds used."""

    dataset_rows: int
    events: int
    folds: bool


def _collect(
    settings: Settings,
    path: Path,
    config: TrainingConfig,
    work: Path,
    progress: Progress,
) -> tuple[CollectedRows, _Read]:
    """Replay the log beside the training set (both through DuckDB) and keep what the fit
    needs (:func:`~featrec.app.training.collect_rows`, spooled under ``work``). The DuckDB
    databases, the replay's signals and the item model's folds are gone when it returns."""
    import pyarrow.parquet as pq

    from featrec.adapters.duckdb.event_stream import DatasetStream, LogStream, events_of
    from featrec.app.training import (
        DATASET_COLUMNS,
        collect_rows,
        declared_names,
        holdout_start,
        replay_points,
        stream_points,
    )

    folds = item_model_folds(settings)
    with contextlib.ExitStack() as stack:
        progress.stage("reading the training set's points (DuckDB)")
        dataset = stack.enter_context(
            DatasetStream(path, required=DATASET_COLUMNS, temp_dir=work / "duckdb-dataset")
        )
        index = dataset.points()
        rows = dataset.count()
        if index.num_rows == 0:
            raise ConfigError("the training set is empty: build it with `featrec dataset build`")
        progress.stage("loading the event log (DuckDB: deduplicate, order, sessions)")
        log = stack.enter_context(LogStream(settings.event_log_dir, temp_dir=work / "duckdb"))
        n_events = log.count()
        if not n_events:
            raise ConfigError(f"the event log {settings.event_log_dir} is empty")
        progress.stage(
            f"replaying {n_events:,} events for {index.num_rows:,} prediction points", n_events
        )

        def events() -> Iterator[tuple[Event, bool]]:
            for batch in log.batches():
                yield from zip(events_of(batch), batch.column("last").to_pylist(), strict=True)
                progress.advance(batch.num_rows)

        schema = pq.read_schema(path)
        declared = declared_names(schema.metadata, schema.names)
        replayed = replay_points(
            events(),
            stream_points(dataset.batches(), declared),
            candidates=config.candidates,
            session_policy=config.session_policy,
            item_model=folds,
            sessions_with_points=set(index.column("session_id").to_pylist()),
        )
        collected = collect_rows(
            replayed,
            config,
            holdout_from=holdout_start(index.column("at").to_pylist(), config.holdout),
            directory=work,
        )
    return collected, _Read(rows, n_events, folds is not None)
