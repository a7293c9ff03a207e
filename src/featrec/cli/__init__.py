"""The ``featrec`` command line: a thin entry point over the adapters and dataflows.

Settings are built once from ``FEATREC_*`` variables (see :mod:`featrec.settings`) and handed to
every command through click's context. Any :class:`~featrec.errors.FeatrecError` becomes a
one-line message and exit status 1; a bad argument is click's usage error (status 2).
Feast is imported lazily, inside the commands that need it (``import feast`` takes seconds).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from featrec.cli.common import (
    CliState,
    FeatrecGroup,
    context_settings,
    context_state,
    pass_settings,
)
from featrec.cli.mapping import map_group, mapping_options, resolve_mapping
from featrec.core.events.formats import FORMATS
from featrec.errors import FeatrecError, NotFound
from featrec.jobs.launch import flow_options, run_flow
from featrec.settings import Settings


@click.group(cls=FeatrecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featrec")
@click.option(
    "--project",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The project directory (default: FEATREC_PROJECT, else the nearest featrec.toml "
    "at or above the working directory).",
)
@click.pass_context
def main(ctx: click.Context, project: Path | None) -> None:
    """featrec: real-time recommendations from streaming session features.

    Start with `featrec init shop && cd shop && featrec demo`. Every command finds its project
    (featrec.toml) from the working directory; FEATREC_* environment variables override its
    settings (FEATREC_ONLINE_STORE=redis, FEATREC_REDIS_URL=redis://...).
    """
    ctx.obj = CliState.resolve(project)


@main.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
def init(ctx: click.Context, directory: Path | None) -> None:
    """Create a project in DIRECTORY (default: here): featrec.toml, a Feast repo of your own,
    .gitignore and the local stores; then apply the Feast repo. Never overwrites a project.

    Where settings come from the environment (FEATREC_REPO set, or featrec's own checkout) and
    no DIRECTORY is given, it only creates the local stores and applies that repo.
    """
    from featrec.jobs.project_init import apply_project, init_project
    from featrec.project import legacy_layout

    state = context_state(ctx)
    if directory is None and state.project is None and legacy_layout(state.cwd, os.environ):
        settings = context_settings(ctx)
        click.echo(f"featrec home: {settings.home}")
        click.echo(f"applying Feast repo {settings.repo} ({settings.online_store} online store)")
        for line in apply_project(settings):
            click.echo(f"  {line}")
        return
    target = directory if directory is not None else state.cwd
    if directory is None and state.project is not None:
        raise click.ClickException(
            f"{state.cwd} is inside the featrec project {state.project.root}; give a new "
            "directory (featrec init DIR), or re-apply this one with `featrec apply`"
        )
    report = init_project(target, dict(os.environ))
    root = report.project.root
    click.echo(f"created featrec project {root}")
    for path in report.created:
        click.echo(f"  {path.relative_to(root)}")
    click.echo(f"applied the Feast repo {root / 'feature_repo'}:")
    for line in report.applied:
        click.echo(f"  {line}")
    here = "" if root == state.cwd.resolve() else f"cd {directory} && "
    click.echo(f"next: {here}featrec demo   (or see README: 'Use it for your shop')")


@main.command()
@pass_settings
def apply(settings: Settings) -> None:
    """Create the project's local stores and apply its Feast repo (after editing it)."""
    from featrec.jobs.project_init import apply_project

    click.echo(f"applying Feast repo {settings.repo} ({settings.online_store} online store)")
    for line in apply_project(settings):
        click.echo(f"  {line}")


@main.command()
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output file: .jsonl, .csv or .parquet (featrec schema).",
)
@click.option("--events", "n_events", type=click.IntRange(1), default=100_000, show_default=True)
@click.option(
    "--users",
    "n_users",
    type=click.IntRange(1),
    default=None,
    help="Distinct returning users (default: the generator's).",
)
@click.option(
    "--items",
    "n_items",
    type=click.IntRange(10),
    default=None,
    help="Catalogue size (default: the generator's).",
)
@click.option(
    "--concurrent",
    "concurrent_sessions",
    type=click.IntRange(1),
    default=None,
    help="Sessions open at the same time (default: the generator's).",
)
@click.option("--seed", type=int, default=7, show_default=True)
def generate(
    out: Path,
    n_events: int,
    n_users: int | None,
    n_items: int | None,
    concurrent_sessions: int | None,
    seed: int,
) -> None:
    """Write synthetic shop traffic (returning users, funnel, power-law popularity)."""
    from featrec.adapters.files.event_files import write_events
    from featrec.core.events.generator import GeneratorConfig
    from featrec.core.events.generator import generate as generate_events

    overrides: dict[str, Any] = {
        "n_users": n_users,
        "n_items": n_items,
        "concurrent_sessions": concurrent_sessions,
    }
    config = replace(
        GeneratorConfig(n_events=n_events, seed=seed),
        **{k: v for k, v in overrides.items() if v is not None},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with click.progressbar(length=n_events, label=f"generating {out}") as bar:
        written = write_events(out, _progress(generate_events(config), bar))
    click.echo(f"wrote {written:,} events to {out}")


def _progress(events: Iterator[Any], bar: Any, every: int = 10_000) -> Iterator[Any]:
    for i, event in enumerate(events, 1):
        if i % every == 0:
            bar.update(every)
        yield event


@main.group()
def run() -> None:
    """Launch a dataflow through bytewax's runner."""


@run.command("sessions")
@flow_options
@mapping_options
@pass_settings
def run_sessions(
    settings: Settings, /, mapping: str | None, map_pairs: tuple[str, ...], **options: Any
) -> None:
    """Sessions dataflow: events -> session features -> online store (+ event log)."""
    resolved = resolve_mapping(click.get_current_context(), mapping, map_pairs)
    table = resolved[1] if resolved is not None else None
    run_flow("dataflows.sessions:flow()", settings, mapping_table=table, **options)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Input format (default: from the file name).",
)
@click.option(
    "--bus",
    type=click.Choice(["redis", "kafka"]),
    default=None,
    help="The bus to publish to (default: FEATREC_BUS).",
)
@click.option(
    "--stream",
    default=None,
    help="Redis stream key or Kafka topic (default: FEATREC_STREAM / FEATREC_KAFKA_TOPIC).",
)
@mapping_options
@pass_settings
def publish(
    settings: Settings,
    file: Path,
    fmt: str | None,
    bus: str | None,
    stream: str | None,
    mapping: str | None,
    map_pairs: tuple[str, ...],
) -> None:
    """Send a file's events to the event bus, in featrec's schema: XADD to the Redis stream,
    or produce to the Kafka topic keyed by session id."""
    from featrec.adapters.files.event_files import read_events
    from featrec.core.events.model import Event

    resolved = resolve_mapping(click.get_current_context(), mapping, map_pairs)
    rejected: list[Any] = []

    def valid() -> Iterator[Event]:
        for item in read_events(file, fmt, resolved[0] if resolved else None):
            if isinstance(item, Event):
                yield item
            else:
                rejected.append(item)

    if (bus or settings.bus) == "kafka":
        from featrec.adapters.kafka.config import producer_config
        from featrec.adapters.kafka.producer import publish as produce_events
        from featrec.settings import KafkaSettings

        kafka = KafkaSettings.from_env(os.environ)
        target = stream or kafka.topic
        n = produce_events(producer_config(kafka), target, valid())
        where = f"the Kafka topic {target}"
    else:
        from featrec.adapters.redis.streams import publish as publish_events

        target = stream or settings.stream
        n = publish_events(settings.stream_url, target, valid())
        where = target
    click.echo(f"published {n:,} events to {where}")
    if rejected:
        click.echo(
            f"{len(rejected):,} invalid records not published, first: "
            f"{rejected[0].origin}: {rejected[0].reason}",
            err=True,
        )


@main.command()
@click.argument("session_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_settings
def features(settings: Settings, session_id: str, as_json: bool) -> None:
    """Show a session's features, read through Feast."""
    from featrec.adapters.feast.reader import FeastOnlineReader
    from featrec.adapters.feast.repo import open_store
    from featrec.core.features.catalog import SESSION_FEATURES

    reader = FeastOnlineReader(open_store(settings))
    [row] = reader.read(SESSION_FEATURES.name, [session_id])
    if row is None:
        raise NotFound(
            f"no features for session {session_id!r} in the {settings.online_store} store"
        )
    if as_json:
        click.echo(json.dumps(dict(row), default=str, sort_keys=True))
        return
    for name in SESSION_FEATURES.feature_names:
        click.echo(f"{name:>18}  {row.get(name)!r}")


@main.command()
@pass_settings
def status(settings: Settings) -> None:
    """Store, stream, dead letters and the last write of each running flow."""
    from featrec.adapters.files.flow_status import read_status
    from featrec.adapters.sqlite.partitioned_log import request_log_dir
    from featrec.jobs.cluster import cluster_summary

    click.echo(f"online store   {settings.online_store} (repo {settings.repo})")
    if settings.online_store == "redis" or settings.stream:
        _redis_status(settings)
    for path in sorted({settings.dead_letter_file, *settings.home.glob("deadletters*.jsonl")}):
        click.echo(f"dead letters   {_count_lines(path):,} in {path}")
    log_dir = request_log_dir(settings)
    if log_dir.is_dir():  # sizes only: `featrec requests status` counts the entries
        hours = list(log_dir.glob("*Z.db"))
        size = sum(p.stat().st_size for p in log_dir.glob("*Z.db*"))
        click.echo(f"request log    {len(hours)} hour file(s), {size / 1e6:,.1f} MB in {log_dir}")
    statuses = read_status(settings.home)
    for line in cluster_summary(statuses):
        click.echo(line)
    for info in statuses:
        if "error" in info or info.get("kind") == "cluster":
            continue
        last = info.get("last_write_at")
        when = datetime.fromtimestamp(last, tz=UTC).isoformat() if last else "never"
        click.echo(
            f"flow {Path(info['file']).stem:<12} events {info.get('events_in', 0):,}  "
            f"dead letters {info.get('dead_letters', 0):,}  rows written "
            f"{info.get('rows_written', 0):,}  last write {when}"
        )


def _redis_status(settings: Settings) -> None:
    from featrec.adapters.redis import streams as redis_streams

    try:
        length = redis_streams.stream_length(settings.stream_url, settings.stream)
        dead = redis_streams.stream_length(settings.stream_url, settings.dead_letter_stream)
    except FeatrecError as exc:
        click.echo(f"redis          unreachable ({exc})")
        return
    click.echo(f"event stream   {settings.stream}: {length:,} entries")
    click.echo(f"dead-letter    {settings.dead_letter_stream}: {dead:,} entries")


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


@main.command()
@click.option("--events", "n_events", type=click.IntRange(100), default=3000, show_default=True)
@click.option(
    "--speed",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Replay pace, recorded pace x N (default: the replay lasts ~20 s).",
)
@click.option(
    "--watch",
    "n_watch",
    type=click.IntRange(1, 10),
    default=3,
    show_default=True,
    help="Sessions to follow live.",
)
@click.option(
    "--web",
    is_flag=True,
    help="Start the whole system and the shop page instead (both flows, batch features, "
    "trained ranker, HTTP server) and print the URL; Ctrl-C stops it.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@pass_settings
def demo(
    settings: Settings, n_events: int, speed: float | None, n_watch: int, web: bool, port: int
) -> None:
    """Generate traffic, replay it through the sessions dataflow, watch features change."""
    if web:
        from featrec.cli.demo_web import run_web_demo

        run_web_demo(settings, port=port, echo=click.echo)
        return
    from featrec.cli.demo import run_demo

    run_demo(settings, n_events=n_events, speed=speed, n_watch=n_watch, echo=click.echo)


def _register_subcommands() -> None:
    """Commands that live in their own modules (imported here: they import nothing heavy)."""
    from featrec.cli.batch import batch_group, dataset_group, log_group, materialize_command
    from featrec.cli.declared import declared_group, run_declared, skew_command
    from featrec.cli.evaluate import evaluate
    from featrec.cli.forget import forget
    from featrec.cli.items import items, run_items
    from featrec.cli.requests import requests_group
    from featrec.cli.serve import explain, recommend, serve
    from featrec.cli.train import train

    main.add_command(items)
    main.add_command(map_group)
    run.add_command(run_items)
    run.add_command(run_declared)
    for command in (
        log_group,
        batch_group,
        materialize_command,
        dataset_group,
        train,
        recommend,
        explain,
        serve,
        forget,
        requests_group,
        evaluate,
        declared_group,
        skew_command,
    ):
        main.add_command(command)


_register_subcommands()
