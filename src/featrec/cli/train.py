"""``featrec train``: fit the ranker on a training set and store it as a new model version.

The click command :data:`train` (registered on the main group by ``featrec.cli``) reads the
Parquet file ``featrec dataset build`` wrote and the event log it was built from, replays the
log for the candidate and session features (:mod:`featrec.app.training`), fits, and writes
``$FEATREC_HOME/models/<version>/`` with its manifest (:mod:`featrec.adapters.files.model_store`).
Any :class:`~featrec.errors.FeatrecError` becomes a one-line message and exit status 1.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from featrec.cli.common import FeatrecCommand, context_settings
from featrec.errors import ConfigError


@click.command("train", cls=FeatrecCommand)
@click.option(
    "--dataset",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Training set (default: $FEATREC_HOME/datasets/training.parquet).",
)
@click.option(
    "--holdout",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.2,
    show_default=True,
    help="Newest share of prediction points held out to measure the model.",
)
@click.option(
    "--negatives",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Negative candidates sampled per training point.",
)
@click.option("--max-iter", type=click.IntRange(1), default=100, show_default=True)
@click.option(
    "--learning-rate", type=click.FloatRange(0.0, min_open=True), default=0.1, show_default=True
)
@click.option("--version", "version", default=None, help="Version name (default: time-sha).")
@click.pass_context
def train(
    ctx: click.Context,
    dataset: Path | None,
    holdout: float,
    negatives: int,
    max_iter: int,
    learning_rate: float,
    version: str | None,
) -> None:
    """Fit the ranker on `featrec dataset build` output and save it as a model version."""
    import pyarrow.parquet as pq

    from featrec.adapters.files.model_store import models_dir, save_model
    from featrec.app.training import TrainingConfig, points_from_table
    from featrec.app.training import train as train_ranker
    from featrec.jobs.training_sets import log_events

    settings = context_settings(ctx)
    path = dataset or settings.home / "datasets" / "training.parquet"
    if not path.is_file():
        raise ConfigError(f"no training set at {path}: run `featrec dataset build` first")
    started = time.perf_counter()
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the training set {path}: {e}") from None
    points = points_from_table(table)
    events = log_events(settings.event_log_dir)
    if not events:
        raise ConfigError(f"the event log {settings.event_log_dir} is empty")
    config = TrainingConfig(
        holdout=holdout,
        negatives_per_point=negatives,
        max_iter=max_iter,
        learning_rate=learning_rate,
        session_policy=settings.session_policy,
    )
    with click.progressbar(length=len(points), label="replaying prediction points") as bar:
        result = train_ranker(events, points, config, on_point=lambda: bar.update(1))
    manifest = save_model(
        result.ranker,
        models_dir(settings.home),
        metrics=result.metrics,
        training={
            "dataset": str(path.resolve()),
            "dataset_rows": table.num_rows,
            "events": len(events),
            "holdout": holdout,
            "negatives_per_point": negatives,
        },
        version=version,
    )
    m = result.metrics
    click.echo(
        f"trained on {int(m['train_points']):,} points ({int(m['train_rows']):,} rows), "
        f"next item among the candidates at {m['candidate_recall']:.1%} of points, "
        f"{m['candidate_coverage']:.1%} of candidates also proposed by serving"
    )
    if m["candidate_coverage"] < 1:
        click.echo(
            "note: serving would not propose some of the training set's candidates (they "
            "train without sources); build the training set with "
            "featrec.core.candidates.point_generators.SignalCandidates so the model learns "
            "serving's candidates"
        )
    k = config.k
    if f"holdout_model_hr@{k}" in m:
        click.echo(
            f"held out {int(m['holdout_points']):,} newest points: "
            f"HR@{k} {m[f'holdout_model_hr@{k}']:.4f} / MRR@{k} {m[f'holdout_model_mrr@{k}']:.4f} "
            f"(candidate order {m[f'holdout_candidate_order_hr@{k}']:.4f} / "
            f"{m[f'holdout_candidate_order_mrr@{k}']:.4f})"
        )
    click.echo(
        f"model {manifest.version} -> {models_dir(settings.home) / manifest.version} "
        f"in {time.perf_counter() - started:.1f} s"
    )
