"""The batch path on the command line: ``log import``, ``batch run``, ``materialize``,
``dataset build``.

Click objects to register on the main group: :data:`log_group`, :data:`batch_group`,
:data:`materialize_command`, :data:`dataset_group`. Each finds the :class:`~featrec.settings.
Settings` in click's context (built once by ``featrec``'s main group) or, invoked on its own,
builds them from ``FEATREC_*``. Any :class:`~featrec.errors.FeatrecError` becomes a one-line
message and exit status 1. Feast is imported only by the commands that need it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import click

from featrec.adapters.files.layouts import READ_FORMATS
from featrec.cli.common import ClickProgress, FeatrecCommand, FeatrecGroup, context_settings
from featrec.cli.mapping import mapping_options, resolve_mapping
from featrec.core.features import catalog
from featrec.errors import ConfigError, FeatrecError


def _day(ctx: click.Context, param: click.Parameter, value: str | None) -> date | None:
    from featrec.core.features.snapshot_days import parse_day

    if value is None:
        return None
    try:
        return parse_day(value)
    except ConfigError as e:
        raise click.BadParameter(str(e), ctx, param) from None


def _instant(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    from featrec.core.events.model import parse_timestamp

    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except FeatrecError as e:
        raise click.BadParameter(f"{value!r}: {e}", ctx, param) from None


def _views(values: Sequence[str]) -> list[str]:
    return list(values) if values else list(catalog.BATCH_VIEWS)


# -- featrec log ------------------------------------------------------------------------------


@click.group("log", cls=FeatrecGroup)
def log_group() -> None:
    """The event log (Parquet, partitioned by day): the offline record of every event."""


@log_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(READ_FORMATS),
    default=None,
    help="Input format (default: from the file name).",
)
@mapping_options
@click.pass_context
def log_import(
    ctx: click.Context,
    file: Path,
    fmt: str | None,
    mapping: str | None,
    map_pairs: tuple[str, ...],
) -> None:
    """Add FILE's events to the event log; events already logged (same event_id) are skipped,
    so importing twice changes nothing. Invalid records go to the dead-letter file.

    A shop's own export: --mapping NAME (see `featrec map check --help`)."""
    from featrec.adapters.files.event_files import read_events
    from featrec.jobs.log_import import import_events

    settings = context_settings(ctx)
    resolved = resolve_mapping(ctx, mapping, map_pairs)
    with click.progressbar(length=_estimate_records(file), label=f"importing {file}") as bar:
        result = import_events(
            settings.event_log_dir,
            read_events(file, fmt, resolved[0] if resolved is not None else None),
            dead_letter_file=settings.dead_letter_file,
            on_progress=bar.update,
        )
    click.echo(
        f"imported {result.imported:,} of {result.read:,} valid events into "
        f"{settings.event_log_dir} ({result.duplicates:,} already logged or repeated)"
    )
    if result.forgotten:
        click.echo(f"{result.forgotten:,} events of forgotten users skipped")
    if result.dead_letters:
        first = result.first_dead_letter
        where = f", first: {first.origin}: {first.reason}" if first is not None else ""
        click.echo(
            f"{result.dead_letters:,} invalid records written to "
            f"{settings.dead_letter_file}{where}",
            err=True,
        )


def _estimate_records(path: Path) -> int:
    """Records in an event file, for the progress bar: Parquet rows, else lines."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.read_metadata(path).num_rows)
        except (OSError, ValueError):
            return 1
    lines = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
    return max(lines, 1)


# -- featrec batch ----------------------------------------------------------------------------


@click.group("batch", cls=FeatrecGroup)
def batch_group() -> None:
    """Batch features computed from the event log (daily snapshots for Feast)."""


@batch_group.command("run")
@click.option(
    "--as-of",
    "as_of",
    callback=_day,
    default=None,
    help="Snapshot date YYYY-MM-DD: features of the events before its 00:00 UTC "
    "(default: the day after the newest logged event, at most today).",
)
@click.option(
    "--since",
    callback=_day,
    default=None,
    help="Also write every daily snapshot from this date to --as-of (a backfill).",
)
@click.option(
    "--view",
    "views",
    multiple=True,
    type=click.Choice(list(catalog.BATCH_VIEWS)),
    help="Only this view (repeatable; default: all batch views).",
)
@click.pass_context
def batch_run(
    ctx: click.Context, as_of: date | None, since: date | None, views: tuple[str, ...]
) -> None:
    """Compute user and item features with DuckDB and write them as Parquet snapshots in
    the Feast repo's data/ (re-running a date replaces its snapshot)."""
    from featrec.adapters.duckdb.features import EventLogDB
    from featrec.jobs.batch import plan_batch, run_batch

    settings = context_settings(ctx)
    started = time.perf_counter()
    with EventLogDB(settings.event_log_dir, temp_dir=settings.home / "tmp" / "duckdb") as db:
        plan = plan_batch(db, as_of, since, datetime.now(UTC))
        if plan.n_events == 0:
            click.echo(f"the event log {settings.event_log_dir} is empty: snapshots will be empty")
        chosen = _views(views)
        loaded = time.perf_counter() - started
        click.echo(f"loaded {plan.n_events:,} events in {loaded:.1f} s")
        total = len(plan.days) * len(chosen)
        with click.progressbar(length=total, label="writing snapshots") as bar:
            written = run_batch(
                db,
                settings.repo.resolve() / "data",
                plan.days,
                views=chosen,
                on_snapshot=lambda _: bar.update(1),
            )
    for snap in written[-len(chosen) :]:
        click.echo(f"{snap.view} as of {snap.as_of.isoformat()}: {snap.rows:,} rows -> {snap.path}")
    click.echo(
        f"wrote {len(written)} snapshots ({len(plan.days)} day"
        f"{'s' if len(plan.days) != 1 else ''}) in "
        f"{time.perf_counter() - started:.1f} s"
    )


# -- featrec materialize ----------------------------------------------------------------------


@click.command("materialize", cls=FeatrecCommand)
@click.option(
    "--start",
    callback=_instant,
    default=None,
    help="Interval start (ISO-8601 or YYYY-MM-DD, UTC; default 2000-01-01). Not with "
    "--incremental.",
)
@click.option("--end", callback=_instant, default=None, help="Interval end (default: now).")
@click.option(
    "--incremental",
    is_flag=True,
    help="Start where the last materialization of each view ended (Feast's rule).",
)
@click.option(
    "--fast",
    is_flag=True,
    help="Write with featrec's bulk writer instead of Feast's engine (same rows, same "
    "format, same registry bookkeeping).",
)
@click.option(
    "--view",
    "views",
    multiple=True,
    type=click.Choice(list(catalog.VIEWS)),
    help="Only this view (repeatable; default: the batch views).",
)
@click.pass_context
def materialize_command(
    ctx: click.Context,
    start: datetime | None,
    end: datetime | None,
    incremental: bool,
    fast: bool,
    views: tuple[str, ...],
) -> None:
    """Load the newest offline values of each view into the online store."""
    from featrec.jobs.materialize import materialize_views

    if incremental and start is not None:
        raise click.UsageError("--start and --incremental exclude each other")
    settings = context_settings(ctx)
    chosen = _views(views)
    with click.progressbar(length=len(chosen), label="materializing") as bar:
        done = materialize_views(
            settings,
            chosen,
            end=end,
            start=start,
            incremental=incremental,
            fast=fast,
            on_view=lambda _: bar.update(1),
        )
    for run in done:
        rows = "" if run.rows is None else f": {run.rows:,} rows, {run.written:,} written"
        rate = (
            f", {run.rows / run.seconds:,.0f} rows/s"
            if run.rows is not None and run.seconds > 0
            else ""
        )
        click.echo(
            f"{run.view} {run.start.isoformat()} .. {run.end.isoformat()} "
            f"({'fast' if fast else 'stock engine'}){rows} in {run.seconds:.1f} s{rate}"
        )


# -- featrec dataset --------------------------------------------------------------------------

#: ``dataset build``'s default point budget: the fit's size stays bounded whatever the log's
#: (README, Training at scale); smaller logs have fewer points and keep all.
DEFAULT_MAX_POINTS = 200_000


@click.group("dataset", cls=FeatrecGroup)
def dataset_group() -> None:
    """Training sets for the ranker, point-in-time correct."""


@dataset_group.command("build")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output Parquet file (default: $FEATREC_HOME/datasets/training.parquet).",
)
@click.option("--since", callback=_day, default=None, help="First day of prediction points.")
@click.option("--until", callback=_day, default=None, help="Last day of prediction points.")
@click.option(
    "--max-points",
    type=click.IntRange(0),
    default=DEFAULT_MAX_POINTS,
    show_default=True,
    help="Sample at most this many prediction points (seeded, uniform over the log); 0: "
    "every point (a long log then takes hours: ~1 ms per point and candidate pool).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--session-items",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Candidates from the session's own items.",
)
@click.option(
    "--popular",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Candidates from the most popular items as of the prediction time.",
)
@click.option(
    "--keep-repeats",
    is_flag=True,
    help="Every event is a prediction point (default: only where the next item differs).",
)
@click.option(
    "--candidates",
    type=click.Choice(["serving", "simple"]),
    default="serving",
    show_default=True,
    help="serving: the recommender's own candidates (co-visitation, session, history, "
    "trending, popular), learned from the past only, so training sees what serving ranks; "
    "simple: the session's items + popular items (--session-items, --popular).",
)
@click.pass_context
def dataset_build(
    ctx: click.Context,
    out: Path | None,
    since: date | None,
    until: date | None,
    max_points: int | None,
    seed: int,
    session_items: int,
    popular: int,
    keep_repeats: bool,
    candidates: str,
) -> None:
    """Label the log's prediction points (1 = the item that came next) over generated
    candidates and join user and item features as of each point (Feast, DuckDB store)."""
    from featrec.adapters.feast.repo import open_store
    from featrec.core.candidates.point_generators import (
        CandidateGenerator,
        SignalCandidates,
        default_generator,
    )
    from featrec.jobs.training_sets import build_training_set

    settings = context_settings(ctx)
    generator: CandidateGenerator = (
        SignalCandidates() if candidates == "serving" else default_generator(session_items, popular)
    )
    if since is not None and until is not None and since > until:
        raise click.UsageError(f"--since {since} is after --until {until}")
    target = out or settings.home / "datasets" / "training.parquet"
    started = time.perf_counter()
    progress = ClickProgress()
    try:
        result = build_training_set(
            open_store(settings),
            settings.event_log_dir,
            target,
            generator=generator,
            collapse_repeats=not keep_repeats,
            since=since,
            until=until,
            max_points=max_points or None,
            seed=seed,
            progress=progress,
        )
    finally:
        progress.close()
    recall = result.points_with_target / result.points
    click.echo(
        f"wrote {result.rows:,} examples for {result.points:,} prediction points to "
        f"{result.path} in {time.perf_counter() - started:.1f} s (next item among the "
        f"candidates at {recall:.1%} of points)"
    )
    if result.eligible > result.points:
        click.echo(
            f"sampled {result.points:,} of the log's {result.eligible:,} prediction points "
            "(seeded, uniform; --max-points N to change, 0 for all)"
        )
