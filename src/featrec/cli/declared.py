"""``featrec declared ...``, ``featrec skew`` and ``featrec run declared``: declared features.

- ``declared list``: the declarations applied to the registry (validated);
- ``declared backfill``: the batch engine over the event log -> offline history + online rows;
- ``skew``: online rows against the batch recomputation; ``--every S`` repeats and serves the
  gauges on ``--port`` for Prometheus;
- ``run declared``: launches ``dataflows.declared:flow()`` through bytewax's runner.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from featrec.cli.items import with_settings
from featrec.jobs.launch import flow_options, run_flow
from featrec.settings import Settings

FLOW_TARGET = "dataflows.declared:flow()"


@click.group("declared", context_settings={"help_option_names": ["-h", "--help"]})
def declared_group() -> None:
    """Declared features (feature_repo/featrec_declared.py): list, backfill."""


@declared_group.command("list")
@with_settings
def list_declared(settings: Settings) -> None:
    """The applied declarations: view, entity, filters, features."""
    from featrec.adapters.feast.repo import open_store
    from featrec.jobs.declared import load_declarations

    for decl in load_declarations(open_store(settings)):
        filters = ", ".join(f"{k}={v}" for k, v in decl.filters.to_tags().items()) or "none"
        click.echo(f"{decl.name} (entity {decl.entity}; filters: {filters})")
        for agg in decl.aggregations:
            fn = agg.function.value if agg.n == 0 else f"last_{agg.n}"
            click.echo(f"  {agg.name}: {fn}({agg.column}) over {agg.window_label}")


@declared_group.command("backfill")
@click.argument("views", nargs=-1)
@click.option("--no-online", is_flag=True, help="Write the offline history only.")
@with_settings
def backfill_command(settings: Settings, views: tuple[str, ...], no_online: bool) -> None:
    """Compute declared VIEWS (default: all) from the event log: offline history for
    training sets, and each key's newest row into the online store."""
    from featrec.jobs.declared import Backfilled, backfill

    def report(done: Backfilled) -> None:
        click.echo(
            f"{done.view}: {done.history_rows} history rows, {done.online_rows} online rows "
            f"({done.seconds:.1f} s)"
        )

    backfill(settings, views, online=not no_online, on_view=report)


@click.command("skew")
@click.argument("views", nargs=-1)
@click.option("--sample", default=200, show_default=True, help="Keys sampled per view.")
@click.option("--seed", type=int, default=None, help="Sampling seed (default: random).")
@click.option("--worst", default=3, show_default=True, help="Worst examples kept per feature.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--every", type=click.FloatRange(min=1), default=None, help="Repeat every S seconds.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Serve the gauges on this port."
)
@click.option("--rounds", type=click.IntRange(min=0), default=0, help="With --every: stop after N.")
@click.option("--fail-on-mismatch", is_flag=True, help="Exit 1 when any value mismatches.")
@with_settings
def skew_command(
    settings: Settings,
    views: tuple[str, ...],
    sample: int,
    seed: int | None,
    worst: int,
    as_json: bool,
    every: float | None,
    port: int | None,
    rounds: int,
    fail_on_mismatch: bool,
) -> None:
    """Training/serving skew of declared VIEWS (default: all): sample online rows, recompute
    each from the event log as of its own time, report mismatches per feature."""
    from featrec.jobs.declared import publish_gauges, skew

    registry: Any = None
    if port is not None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        start_http_server(port, registry=registry)
    done = 0
    while True:
        report = skew(settings, views, sample=sample, seed=seed, keep=worst)
        if registry is not None:
            publish_gauges(report, registry)
        if as_json:
            click.echo(json.dumps(_as_dict(report), sort_keys=True, default=str))
        else:
            for line in report.lines():
                click.echo(line)
        done += 1
        if fail_on_mismatch and report.mismatches:
            raise click.ClickException(f"{report.mismatches} mismatched values")
        if every is None or (rounds and done >= rounds):
            return
        time.sleep(every)


def _as_dict(report: Any) -> dict[str, Any]:
    return {
        "rows": report.rows,
        "missing": report.missing,
        "features": {
            f"{s.view}:{s.feature}": {
                "checked": s.checked,
                "mismatches": s.mismatches,
                "rate": s.rate,
                "worst": [
                    {"key": e.key, "as_of_us": e.as_of_us, "online": e.online, "batch": e.batch}
                    for e in s.worst
                ],
            }
            for s in report.features.values()
        },
    }


@click.command("declared")
@flow_options
@with_settings
def run_declared(settings: Settings, /, **options: Any) -> None:
    """Declared features dataflow: events -> feature_repo's declared views -> online store.

    Reads the applied declarations at start: restart it after `featrec apply`. Give it its
    own --recovery-dir."""
    run_flow(FLOW_TARGET, settings, **options)
