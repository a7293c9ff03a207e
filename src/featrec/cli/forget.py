"""``featrec forget USER_ID``: remove a user from every place featrec keeps them.

A thin entry point over :func:`featrec.jobs.forget.forget_user` (which documents the
places and the order). It asks for confirmation unless ``--yes`` is given, prints one line
per place with what was removed, and exits non-zero with a one-line message on any error
(running it again finishes an interrupted forget: every step is idempotent).
"""

from __future__ import annotations

import json

import click

from featrec.cli.items import with_settings
from featrec.settings import Settings


@click.command("forget")
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@with_settings
def forget(settings: Settings, user_id: str, yes: bool, as_json: bool) -> None:
    """Forget USER_ID: online rows, live dataflow state, event log, batch outputs, request
    log, event stream, dead letters; then deny the user at ingest, in batch jobs and in
    materialization. Aggregate item signals (co-visitation, trending) are kept."""
    from featrec.jobs.forget import forget_user

    if not yes:
        click.confirm(
            f"Forget user {user_id!r} everywhere (cannot be undone)?", abort=True, err=True
        )
    report = forget_user(settings, user_id)
    if as_json:
        click.echo(json.dumps(report.to_dict(), sort_keys=True))
        return
    click.echo(f"forgot user {user_id!r}:")
    for line in report.lines():
        click.echo(f"  {line}")
