"""``featrec items ...`` and ``featrec run items``: item signals from the command line.

- :data:`items` (a click group): ``similar ITEM_ID``, ``trending [--category C]`` (both read
  through stock Feast) and ``bootstrap`` (the batch computation over past events, written to
  the online store).
- :data:`run_items` (a click command, registered as ``featrec run items``): launches
  ``dataflows.items:flow()`` through bytewax's runner, with the options of ``run sessions``.

Both work inside ``featrec`` (settings from the parent context) and on their own (settings from
``FEATREC_*``). A :class:`~featrec.errors.FeatrecError` becomes a one-line message and exit 1.
Feast is imported inside the commands that need it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from featrec.app.item_signals import (
    is_reserved,
    trending_key,
)
from featrec.cli.common import context_settings
from featrec.cli.mapping import mapping_options, resolve_mapping
from featrec.core.events.formats import FORMATS
from featrec.core.features.catalog import ITEM_NEIGHBOURS
from featrec.errors import ConfigError, FeatrecError, NotFound
from featrec.jobs.launch import flow_options, run_flow
from featrec.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

FLOW_TARGET: Final = "dataflows.items:flow()"


def with_settings(command: F) -> F:
    """Pass the context's :class:`Settings` (built from the environment when there is none)
    as the first argument, and turn featrec errors into one-line click errors."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings = context_settings(click.get_current_context())
        try:
            return command(settings, *args, **kwargs)
        except FeatrecError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def items() -> None:
    """Item signals: co-visitation neighbours and trending items.

    Written by `featrec run items` (streaming) or `featrec items bootstrap` (from history),
    read back through Feast.
    """


def _read_list(settings: Settings, key: str) -> Mapping[str, object] | None:
    from featrec.adapters.feast.reader import FeastOnlineReader
    from featrec.adapters.feast.repo import open_store

    [row] = FeastOnlineReader(open_store(settings)).read(ITEM_NEIGHBOURS.name, [key])
    return row


def _echo_list(
    title: str, row: Mapping[str, object], k: int, as_json: bool, extra: dict[str, Any]
) -> None:
    ids = list(_sequence(row.get("neighbour_ids")))[:k]
    weights = list(_sequence(row.get("neighbour_weights")))[:k]
    as_of = row.get("as_of_s")
    if as_json:
        entries = [{"item_id": i, "weight": w} for i, w in zip(ids, weights, strict=True)]
        click.echo(json.dumps({**extra, "as_of_s": as_of, "items": entries}, sort_keys=True))
        return
    when = (
        datetime.fromtimestamp(float(as_of), tz=UTC).isoformat()
        if isinstance(as_of, int | float)
        else "unknown"
    )
    click.echo(f"{title} (weights as of {when})")
    if not ids:
        click.echo("  (empty)")
    for rank, (item, weight) in enumerate(zip(ids, weights, strict=True), start=1):
        click.echo(f"{rank:>4}  {item:<24} {weight:.6g}")


def _sequence(value: object) -> Iterable[Any]:
    return value if isinstance(value, list | tuple) else ()


@items.command()
@click.argument("item_id")
@click.option("--k", type=click.IntRange(1), default=20, show_default=True, help="How many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings
def similar(settings: Settings, item_id: str, k: int, as_json: bool) -> None:
    """The co-visitation neighbours of ITEM_ID, heaviest first."""
    if is_reserved(item_id):
        raise ConfigError(f"{item_id!r} is a trending list key: use `featrec items trending`")
    row = _read_list(settings, item_id)
    if row is None:
        raise NotFound(
            f"no neighbours for item {item_id!r} in the {settings.online_store} store "
            "(run `featrec run items` or `featrec items bootstrap` first)"
        )
    _echo_list(f"neighbours of {item_id}", row, k, as_json, {"item_id": item_id})


@items.command()
@click.option("--category", default=None, help="One category's list (default: all items).")
@click.option("--k", type=click.IntRange(1), default=20, show_default=True, help="How many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings
def trending(settings: Settings, category: str | None, k: int, as_json: bool) -> None:
    """Trending items (decayed, type-weighted popularity), best first."""
    row = _read_list(settings, trending_key(category))
    scope = "all items" if category is None else f"category {category!r}"
    if row is None:
        raise NotFound(
            f"no trending list for {scope} in the {settings.online_store} store "
            "(run `featrec run items` or `featrec items bootstrap` first)"
        )
    _echo_list(f"trending, {scope}", row, k, as_json, {"category": category})


@items.command()
@click.option(
    "--source",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="An event file (.jsonl .csv .parquet, OTTO jsonl, session-rec .txt).",
)
@click.option("--from-log", is_flag=True, help="Read the event log (FEATREC_HOME/events).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Input format of --source (default: from the file name).",
)
@with_settings
def bootstrap(settings: Settings, source: Path | None, from_log: bool, fmt: str | None) -> None:
    """Compute neighbours and trending from past events and write them to the online store.

    The same computation as the streaming flow: on the events a flow has seen, in the same
    order, the rows are the flow's. Rows never replace newer ones already stored.
    """
    if (source is None) == (not from_log):
        raise click.UsageError("give exactly one of --source FILE or --from-log")
    if from_log and fmt is not None:
        raise click.UsageError("--format applies to --source only")
    from featrec.jobs.item_signals import bootstrap_items, history

    events, where = history(settings, source, fmt)
    report = bootstrap_items(settings, events, where)
    click.echo(
        f"bootstrapped from {report.signals.n_events:,} events in {where}: "
        f"{report.neighbour_lists:,} neighbour lists, {report.trending_items:,} "
        f"trending items, {report.trending_lists:,} trending lists; wrote {report.written:,} "
        f"of {report.rows:,} rows ({report.rows - report.written:,} not newer than the "
        f"{settings.online_store} store's)"
    )
    if report.refused:
        first = report.refused[0]
        click.echo(
            f"{len(report.refused):,} records skipped, first: {first.origin}: {first.reason}",
            err=True,
        )


@items.command("train-model")
@click.option(
    "--max-items",
    type=click.IntRange(1),
    default=None,
    help="Model only the most frequent items (memory grows with the square; default 10,000).",
)
@click.option(
    "--top-k",
    type=click.IntRange(1),
    default=None,
    help="Entries kept per item, the item_model row (default 100).",
)
@click.option("--alpha", type=click.FloatRange(0, 1), default=None, help="SLIS vs SLIT weight.")
@click.option("--reg", type=click.FloatRange(0, min_open=True), default=None, help="L2 penalty.")
@click.option(
    "--until",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Train on events before this UTC time (default: the whole log).",
)
@click.option("--no-write", is_flag=True, help="Save the version, write no rows.")
@with_settings
def train_model(
    settings: Settings,
    max_items: int | None,
    top_k: int | None,
    alpha: float | None,
    reg: float | None,
    until: datetime | None,
    no_write: bool,
) -> None:
    """Train the batch item model (SLIST) on the event log and write its lists.

    A closed-form linear item-item model: one version under FEATREC_HOME/item_models, and
    one item_model row per item in the online store (a candidate source and ranker features).
    Run it on a schedule, e.g. nightly after `featrec batch run`.
    """
    from dataclasses import replace

    from featrec.core.items.slist import SlistConfig
    from featrec.jobs.item_model import train_item_model

    config = SlistConfig()
    if max_items is not None:
        config = replace(config, max_items=max_items)
    if top_k is not None:
        config = replace(config, top_k=top_k)
    if alpha is not None:
        config = replace(config, alpha=alpha)
    if reg is not None:
        config = replace(config, reg=reg)
    _, report = train_item_model(
        settings,
        config,
        until=None if until is None else until.replace(tzinfo=UTC),
        write=not no_write,
        log=lambda msg: click.echo(msg, err=True),
    )
    click.echo(
        f"item model {report.version}: {report.events:,} events, {report.items:,} items "
        f"({report.modelled:,} modelled); read {report.read_s:.1f} s, fit {report.fit_s:.1f} s, "
        f"peak RSS {report.peak_rss_mb:,.0f} MB; {report.rows_written:,} rows written"
    )


@click.command("items")
@flow_options
@mapping_options
@with_settings
def run_items(
    settings: Settings, /, mapping: str | None, map_pairs: tuple[str, ...], **options: Any
) -> None:
    """Item signals dataflow: events -> neighbours and trending -> online store.

    Give it its own --recovery-dir (not the sessions flow's).
    """
    resolved = resolve_mapping(click.get_current_context(), mapping, map_pairs)
    table = resolved[1] if resolved is not None else None
    run_flow(FLOW_TARGET, settings, mapping_table=table, **options)
