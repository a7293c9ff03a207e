"""``featrec requests status | prune``: the SQLite request log's hour files, and deleting old
ones by hand (the server deletes hours older than ``--request-log-keep`` itself; Redis
entries expire)."""

from __future__ import annotations

import json
import time

import click

from featrec.cli.items import with_settings
from featrec.settings import Settings


@click.group("requests")
def requests_group() -> None:
    """The request log on SQLite: one file per hour under FEATREC_HOME/requests."""


@requests_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings
def status(settings: Settings, as_json: bool) -> None:
    """The log's files (oldest first), with their entries and size on disk."""
    from featrec.adapters.sqlite.partitioned_log import (
        request_log_dir,
        request_log_path,
        sqlite_request_log,
    )

    log = sqlite_request_log(settings)
    try:
        parts = log.part_sizes()
    finally:
        log.close()
    if as_json:
        files = [{"file": str(p), "entries": n, "bytes": size} for p, n, size in parts]
        click.echo(json.dumps({"files": files}, sort_keys=True))
        return
    if not parts:
        click.echo(f"no request log in {request_log_dir(settings)} or {request_log_path(settings)}")
        return
    for path, n, size in parts:
        click.echo(f"{path}  {n:,} entries  {size / 1e6:,.1f} MB")
    entries, total = sum(n for _, n, _ in parts), sum(size for _, _, size in parts)
    click.echo(f"{len(parts)} file(s), {entries:,} entries, {total / 1e6:,.1f} MB")


@requests_group.command("prune")
@click.option(
    "--keep",
    "keep_h",
    type=click.FloatRange(0),
    required=True,
    help="Hours of entries to keep: older ones are deleted (whole hours unread).",
)
@with_settings
def prune(settings: Settings, keep_h: float) -> None:
    """Delete the entries older than --keep hours from now."""
    from featrec.adapters.sqlite.partitioned_log import sqlite_request_log

    log = sqlite_request_log(settings)
    try:
        n = log.prune(time.time() - keep_h * 3600)
    finally:
        log.close()
    click.echo(f"deleted {n:,} request log entries older than {keep_h:g} h")
