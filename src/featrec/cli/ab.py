"""``featrec evaluate --ab``: per-arm outcome rates of an A/B experiment, as a table and JSON.

:func:`run_ab` is a plain function (the ``evaluate`` command calls it): it reads the request
log (SQLite or Redis, bodies only), the event log's events of the sessions that had requests,
and prints :func:`featrec.app.evaluation.ab_report.format_report` (or JSON). The statistics are
explained
in :mod:`featrec.app.evaluation.ab_report`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from featrec.app.evaluation.ab_report import (
    DEFAULT_HORIZON_S,
    ABReport,
    ab_report,
    format_report,
    logged_requests,
)
from featrec.core.events.model import Event
from featrec.settings import Settings


def load_ab_report(
    settings: Settings,
    *,
    request_log: str = "sqlite",
    since_s: float | None = None,
    horizon_s: float = DEFAULT_HORIZON_S,
    experiment: str | None = None,
) -> ABReport:
    """The report of ``experiment`` over the requests logged since ``since_s`` (unix s)."""
    from featrec.jobs.serving import open_request_log

    log = open_request_log(settings, request_log)
    try:
        requests = logged_requests(log.iter_records(since_s))
    finally:
        log.close()
    sessions = {r.session_id for r in requests}
    earliest = min((r.at_s for r in requests), default=None)
    events, newest_s = _events(settings.event_log_dir, sessions, earliest)
    return ab_report(
        requests,
        events,
        experiment=experiment,
        horizon_s=horizon_s,
        session_gap_s=settings.session_gap_s,
        observed_until_s=newest_s,
    )


def _events(
    log_dir: Path, sessions: set[str], since_s: float | None
) -> tuple[list[Event], float | None]:
    """The logged events of ``sessions`` from ``since_s`` on, and the time of the newest
    event of all (up to which outcomes are known)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from featrec.adapters.files.event_log import read_event_log

    table = read_event_log(log_dir)
    if table.num_rows == 0:
        return [], None
    newest = pc.max(table["ts"]).as_py().timestamp()
    if since_s is not None:
        since = pa.scalar(int(since_s * 1e6), pa.timestamp("us", tz="UTC"))
        table = table.filter(pc.greater_equal(table["ts"], since))
    table = table.filter(pc.is_in(table["session_id"], pa.array(sorted(sessions), pa.string())))
    columns = [table.column(name).to_pylist() for name in ("session_id", "item_id", "type", "ts")]
    events = [
        Event("", session_id, item_id, type_, ts)
        for session_id, item_id, type_, ts in zip(*columns, strict=True)
    ]
    return events, newest


def run_ab(
    settings: Settings,
    *,
    request_log: str = "sqlite",
    since_s: float | None = None,
    horizon_s: float = DEFAULT_HORIZON_S,
    experiment: str | None = None,
    out: Path | None = None,
    as_json: bool = False,
) -> int:
    """Print the A/B report (a table, or JSON with ``as_json``), write its JSON to ``out`` if
    given; returns the exit status (0). Featrec errors (no experiment in the log, several and
    none named, a store failure) propagate for the command line to report in one line."""
    report = load_ab_report(
        settings,
        request_log=request_log,
        since_s=since_s,
        horizon_s=horizon_s,
        experiment=experiment,
    )
    data = json.dumps(report.to_dict(), sort_keys=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(data + "\n")
    if as_json:
        click.echo(data)
    else:
        for line in format_report(report):
            click.echo(line)
        if out is not None:
            click.echo(f"JSON written to {out}")
    return 0
