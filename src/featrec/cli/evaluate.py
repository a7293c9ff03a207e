"""``featrec evaluate``: replay a test period through the real pipeline and score the policies.

Training phase (from ``--train`` alone) then replay phase (``--test`` through the sessions
dataflow, one event at a time, every policy asked at every prediction point), then the figures:
one line per policy on stdout, ``results.json`` and a report with plots in ``--out``. See
:mod:`featrec.jobs.evaluation` for the work directory and :mod:`featrec.app.evaluation.replay`
for the policies.
"""

from __future__ import annotations

import math
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from featrec.cli.common import FeatrecCommand, context_settings
from featrec.core.events.formats import FORMATS

#: Processes answering a replay's points (``--workers``); see README "Replay speed, third pass".
DEFAULT_WORKERS = 2


def _external(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"expected NAME=PATH, got {value!r}")
        out[name] = Path(path)
    return out


@click.command("evaluate", cls=FeatrecCommand)
@click.option(
    "--train",
    "train_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Training events (the only data the policies learn from).",
)
@click.option(
    "--test",
    "test_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Test events, replayed in time order.",
)
@click.option(
    "--events",
    "events_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="One event file to split by time instead of --train/--test (see --test-share).",
)
@click.option(
    "--test-share",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="With --events: the sessions that start in the last share of the events are the test.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Input format of both files (default: from the file name/content).",
)
@click.option("--k", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option(
    "--policies",
    default="all",
    show_default=True,
    help="Comma-separated: popularity, batch-only, session-only, item-model, full, stale-1s, "
    "stale-1m, stale-1h (or all).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Work directory for the store, model, answers and report (must be new or empty; "
    "default: a new temp dir).",
)
@click.option(
    "--train-points",
    type=click.IntRange(1),
    default=None,
    help="Prediction points sampled from the training events to fit the ranker (default: "
    "every point after the first 10% of the events).",
)
@click.option(
    "--trainer",
    type=click.Choice(["events", "dataset"]),
    default="events",
    show_default=True,
    help="events: the ranker learns from the training events' next-item points; dataset: "
    "production's `featrec dataset build --keep-repeats` + `featrec train` (point-in-time "
    "batch features through Feast).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--session-gap",
    type=click.FloatRange(1.0),
    default=1800.0,
    show_default=True,
    help="Seconds of inactivity that end a session in the replay's dataflow.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Sessions replayed at once (each in lock-step: a point is answered only after its "
    "own session's last event is readable). The figures do not depend on it.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=DEFAULT_WORKERS,
    show_default=True,
    help="Processes answering the prediction points, each owning whole sessions (1: the "
    "replay process answers them itself). The figures do not depend on it.",
)
@click.option(
    "--external",
    multiple=True,
    callback=_external,
    help="NAME=PATH: score another system's lists (JSON lines with session_id, position, "
    "items) on the same points. Repeatable.",
)
@click.option(
    "--points-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the prediction points (session, position, items so far) for other systems.",
)
@click.option(
    "--ab",
    is_flag=True,
    help="Instead of a replay: per-arm outcome rates of a live experiment, from the request "
    "log ($FEATREC_HOME) and the events that followed each request (95 percent intervals).",
)
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="--ab: only requests from this UTC time on.",
)
@click.option(
    "--horizon",
    type=click.FloatRange(1.0),
    default=1800.0,
    show_default=True,
    help="--ab: seconds after a request in which a recommended item counts as an outcome.",
)
@click.option("--experiment", default=None, help="--ab: the experiment (if the log has several).")
@click.option(
    "--request-log",
    type=click.Choice(["sqlite", "redis"]),
    default="sqlite",
    show_default=True,
    help="--ab: where the serving path logged its requests.",
)
@click.option("--json", "as_json", is_flag=True, help="--ab: print the report as JSON.")
def evaluate(
    train_path: Path | None,
    test_path: Path | None,
    events_path: Path | None,
    test_share: float,
    fmt: str | None,
    k: int,
    policies: str,
    out: Path | None,
    train_points: int | None,
    trainer: str,
    seed: int,
    session_gap: float,
    concurrency: int,
    workers: int,
    external: dict[str, Path],
    points_out: Path | None,
    ab: bool,
    since: datetime | None,
    horizon: float,
    experiment: str | None,
    request_log: str,
    as_json: bool,
) -> None:
    """Replay --test through the real dataflow and store; print HR@K and MRR@K per policy.

    With --ab: the per-arm report of a live A/B test instead (see `featrec serve --experiment`).
    """
    if ab:
        from featrec.cli.ab import run_ab

        raise SystemExit(
            run_ab(
                context_settings(click.get_current_context()),
                request_log=request_log,
                since_s=since.replace(tzinfo=UTC).timestamp() if since is not None else None,
                horizon_s=horizon,
                experiment=experiment,
                out=out / "ab.json" if out is not None else None,
                as_json=as_json,
            )
        )
    if events_path is not None:
        if train_path is not None or test_path is not None:
            raise click.UsageError("give --events (a time split) or --train and --test, not both")
        train_path, test_path, share = events_path, None, test_share
    elif train_path is None or test_path is None:
        raise click.UsageError("give --train and --test, or --events (a time split), or --ab")
    else:
        share = None
    from featrec.app.evaluation.replay import parse_policies
    from featrec.jobs.evaluation import (
        EvalSpec,
        WorkDir,
        prepare,
        read_external,
        run_replay,
        score,
        write_points,
    )
    from featrec.jobs.project_init import feature_repo_template

    chosen = parse_policies(policies)
    root = out if out is not None else Path(tempfile.mkdtemp(prefix="featrec-eval-"))
    # The replay builds its own store: a project's Feast repo if there is one, else the
    # template, so that evaluate needs no project.
    settings = context_settings(click.get_current_context(), project_required=False)
    repo = settings.repo if (settings.repo / "feature_store.yaml").is_file() else None
    # Only what is not a secret: a Redis URL (with its password) stays in the environment.
    env: dict[str, str] = {"FEATREC_ONLINE_STORE": settings.online_store}
    spec = EvalSpec(
        train=str(train_path.resolve()),
        test=str(test_path.resolve()) if test_path is not None else "",
        test_share=share,
        fmt=fmt,
        k=k,
        policies=tuple(chosen),
        train_points=train_points,
        trainer=trainer,
        seed=seed,
        session_gap_s=session_gap,
        settings_env=env,
        concurrency=concurrency,
        workers=workers,
    )
    lists = {name: read_external(path) for name, path in external.items()}
    work = WorkDir(root)
    started = time.perf_counter()
    click.echo(f"work dir: {root}")
    prepared = prepare(work, spec, repo or feature_repo_template(), log=click.echo)
    if points_out is not None:
        click.echo(f"prediction points: {write_points(work, points_out):,} -> {points_out}")
    click.echo(f"replaying {prepared.test_events:,} test events through the sessions dataflow")
    replay_seconds = run_replay(work)
    results = score(work, prepared, replay_seconds, external=lists)
    for row in results["policies"]:
        lat = row["latency_ms"]
        p99 = lat.get("p99", math.nan)
        latency = "" if not math.isfinite(p99) else f"  p99 {p99:.1f} ms"
        click.echo(
            f"{row['policy']:>16}  HR@{k} {row[f'hr@{k}']:.4f}  MRR@{k} {row[f'mrr@{k}']:.4f}"
            f"  coverage {row[f'coverage@{k}']:.3f}{latency}"
        )
    replay = results["replay"]
    click.echo(
        f"{results['points']:,} points; replay {replay['events']:,} events in "
        f"{replay['seconds']:.1f} s ({replay['events_per_s']:,.0f} events/s); freshness p99 "
        f"{replay['freshness_ms']['p99']:.1f} ms; total {time.perf_counter() - started:.1f} s"
    )
    click.echo(f"report: {root / 'report.html'}")
