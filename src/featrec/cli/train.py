"""``featrec train``: fit the ranker on a training set and store it as a new model version.

The click command :data:`train` (registered on the main group by ``featrec.cli``) parses its
options, runs :func:`featrec.jobs.training.train_on_dataset` with a progress bar, and prints
its report. Any :class:`~featrec.errors.FeatrecError` becomes a one-line message and exit status 1.
"""

from __future__ import annotations

from pathlib import Path

import click

from featrec.cli.common import ClickProgress, FeatrecCommand, context_settings


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
    from featrec.jobs.training import TrainJob, train_on_dataset

    settings = context_settings(ctx)
    job = TrainJob(dataset, holdout, negatives, max_iter, learning_rate, version)
    progress = ClickProgress()
    try:
        report = train_on_dataset(settings, job, progress=progress)
    finally:
        progress.close()
    m, k = report.metrics, report.k
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
    if f"holdout_model_hr@{k}" in m:
        click.echo(
            f"held out {int(m['holdout_points']):,} newest points: "
            f"HR@{k} {m[f'holdout_model_hr@{k}']:.4f} / MRR@{k} {m[f'holdout_model_mrr@{k}']:.4f} "
            f"(candidate order {m[f'holdout_candidate_order_hr@{k}']:.4f} / "
            f"{m[f'holdout_candidate_order_mrr@{k}']:.4f})"
        )
    click.echo(f"model {report.version} -> {report.path} in {report.seconds:.1f} s")
