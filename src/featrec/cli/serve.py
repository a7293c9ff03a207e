"""``featrec recommend``, ``featrec explain`` and ``featrec serve``: the serving path from the
command line.

Three click commands (registered by :mod:`featrec.cli`); each also works on its own, with
settings from ``FEATREC_*`` (see :func:`featrec.cli.items.with_settings`). The scoring stack
(numpy, scikit-learn, Feast) is imported inside the commands, so registering them is cheap.
``serve`` runs the HTTP app under granian (default) or uvicorn through its import string (the
app builds its recommender from the environment, so ``--workers N`` processes each build their
own; one per core by default).
"""

from __future__ import annotations

import functools
import json
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from featrec.app.serving.config import (
    DEFAULT_REQUEST_LOG_KEEP_H,
    MAX_K,
    REQUEST_LOGS,
    ServingConfig,
)
from featrec.app.serving.http_limits import HttpLimits
from featrec.cli.items import with_settings
from featrec.cli.mapping import mapping_options, resolve_mapping
from featrec.core.evaluation.experiments import (
    ARM_SCORERS,
    UNIT_USER,
    UNITS,
    Experiment,
    parse_arms,
)
from featrec.errors import ConfigError
from featrec.settings import ServeSettings, Settings

if TYPE_CHECKING:
    from featrec.app.serving.explain import Explanation
    from featrec.app.serving.recommender import Recommendation
    from featrec.jobs.serving import ServingOptions

F = TypeVar("F", bound=Callable[..., Any])

_DEFAULTS = ServingConfig()
_LIMITS = HttpLimits()
#: The ASGI factory of the HTTP app.
APP_FACTORY = "featrec.server.main:app_from_env"
#: The HTTP servers ``serve`` can run (the first is the default).
SERVERS = ("granian", "uvicorn")
#: Enables the admin endpoints (a secret: from the environment only, never a flag).
ENV_ADMIN_TOKEN = ServeSettings.variable("admin_token")


def serving_options(command: F) -> F:
    """The options every serving command shares."""
    for option in reversed(
        [
            click.option(
                "--model",
                default="auto",
                show_default=True,
                help="Model version under FEATREC_HOME/models, 'latest', 'auto' (latest if "
                "any) or 'none' (score by candidate order).",
            ),
            click.option(
                "--request-log",
                type=click.Choice(REQUEST_LOGS),
                default="sqlite",
                show_default=True,
                help="Where requests are logged: FEATREC_HOME/requests/ (a file per hour) or "
                "Redis.",
            ),
            click.option(
                "--request-log-keep",
                "request_log_keep_h",
                type=click.FloatRange(1),
                default=DEFAULT_REQUEST_LOG_KEEP_H,
                show_default=True,
                help="Hours the request log keeps an entry (whole hours are deleted).",
            ),
            click.option(
                "--max-session-age",
                type=click.FloatRange(0),
                default=_DEFAULTS.max_session_age_s,
                show_default=True,
                help="Seconds after which session features count as stale (degraded answer).",
            ),
            click.option(
                "--candidates",
                type=click.IntRange(1, 5000),
                default=_DEFAULTS.candidates.max_total,
                show_default=True,
                help="Candidates scored per request (topped up with popular items).",
            ),
            click.option(
                "--item-cache",
                type=click.FloatRange(0),
                default=_DEFAULTS.item_cache_s,
                show_default=True,
                help="Seconds item rows and lists may be cached (bounded staleness).",
            ),
        ]
    ):
        command = option(command)
    return command


def experiment_options(command: F) -> F:
    """``--experiment NAME --arms control=1,treatment=1:model --salt S --unit user``, passed
    to the command as one ``experiment`` argument (None without ``--experiment``)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        name, arms = kwargs.pop("experiment_name"), kwargs.pop("arms")
        salt, unit = kwargs.pop("salt"), kwargs.pop("unit")
        kwargs["experiment"] = None
        if name is None:
            if arms is not None or salt is not None:
                raise click.UsageError("--arms and --salt need --experiment NAME")
        elif arms is None:
            raise click.UsageError("--experiment needs --arms, e.g. control=1,treatment=1:model")
        else:
            try:
                weights, configs = parse_arms(arms)
                kwargs["experiment"] = Experiment(name, salt or "", weights, unit, configs)
            except ConfigError as e:
                raise click.BadParameter(str(e), param_hint="--experiment/--arms") from e
        return command(*args, **kwargs)

    options = [
        click.option(
            "--experiment",
            "experiment_name",
            default=None,
            help="A/B experiment name: bucket each request into an arm (by user, else session).",
        ),
        click.option(
            "--arms",
            default=None,
            help="Arms as name=weight[:scorer][@model_version], comma-separated; the first is "
            f"the control. Scorers: {', '.join(ARM_SCORERS)}.",
        ),
        click.option(
            "--salt", default=None, help="Salt of the bucketing hash (new salt: reshuffle)."
        ),
        click.option(
            "--unit",
            type=click.Choice(UNITS),
            default=UNIT_USER,
            show_default=True,
            help="Bucket by user (the session when the user is unknown) or by session.",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return cast(F, wrapper)


def _options(
    model: str,
    request_log: str,
    max_session_age: float,
    candidates: int,
    item_cache: float,
    request_log_keep_h: float,
    experiment: Experiment | None = None,
) -> ServingOptions:
    from featrec.jobs.serving import ServingOptions, pool_config

    config = ServingConfig(
        max_session_age_s=max_session_age, item_cache_s=item_cache, experiment=experiment
    )
    if candidates != config.candidates.max_total:
        config = replace(config, candidates=pool_config(candidates))
    return ServingOptions(
        request_log=request_log,
        model=model,
        config=config,
        request_log_keep_h=request_log_keep_h,
    )


@click.command()
@click.argument("session_id")
@click.option("--user", "user_id", default=None, help="The shopper (default: the session's).")
@click.option("--k", type=click.IntRange(1, MAX_K), default=20, show_default=True)
@click.option(
    "--shown", default=None, help="Comma-separated items the shopper sees now, best first."
)
@serving_options
@experiment_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings
def recommend(
    settings: Settings,
    session_id: str,
    user_id: str | None,
    k: int,
    shown: str | None,
    model: str,
    request_log: str,
    max_session_age: float,
    candidates: int,
    item_cache: float,
    request_log_keep_h: float,
    experiment: Experiment | None,
    as_json: bool,
) -> None:
    """Recommend K items for SESSION_ID now, with scores and reasons."""
    from featrec.jobs.serving import open_recommender

    options = _options(
        model, request_log, max_session_age, candidates, item_cache, request_log_keep_h, experiment
    )
    recommender = open_recommender(settings, options)
    try:
        shown_list = [s.strip() for s in shown.split(",")] if shown is not None else None
        answer = recommender.recommend(session_id, user_id, k, shown_list)
    finally:
        recommender.log.close()
    if as_json:
        click.echo(json.dumps(answer.to_dict(), sort_keys=True))
        return
    for line in format_recommendation(answer):
        click.echo(line)


def format_recommendation(answer: Recommendation) -> list[str]:
    """The lines ``featrec recommend`` prints."""
    scorer = answer.scorer + (f" {answer.model_version}" if answer.model_version else "")
    lines = [
        f"request {answer.request_id}  session {answer.session_id}  user {answer.user_id or '-'}"
        f"  version {answer.session_version or '-'}  scorer {scorer}"
        + (f"  arm {answer.experiment}/{answer.arm}" if answer.arm else "")
        + ("  (cached)" if answer.cached else "")
    ]
    if answer.degraded:
        lines.append(f"DEGRADED: {answer.degraded_reason}")
    if not answer.logged:
        lines.append("warning: the request log could not record this answer")
    if not answer.items:
        lines.append("  (no items)")
    for item in answer.items:
        lines.append(
            f"{item.rank:>4}  {item.item_id:<20} {item.score:>9.4f}  {'; '.join(item.reasons)}"
        )
    return lines


@click.command()
@click.argument("request_id")
@click.option(
    "--request-log",
    type=click.Choice(REQUEST_LOGS),
    default="sqlite",
    show_default=True,
    help="Where the request was logged.",
)
@click.option("--all", "show_all", is_flag=True, help="Also the candidates that were not kept.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_settings
def explain(
    settings: Settings, request_id: str, request_log: str, show_all: bool, as_json: bool
) -> None:
    """Re-score REQUEST_ID from the request log and show why each item is there.

    Exits with status 1 if the re-scored list differs from the logged one.
    """
    from featrec.app.serving.explain import explain_request
    from featrec.jobs.serving import model_loader, open_request_log

    log = open_request_log(settings, request_log)
    load = model_loader(settings)
    try:
        explanation = explain_request(log, lambda v: load(v or ""), request_id)
    finally:
        log.close()
    if as_json:
        click.echo(json.dumps(explanation_dict(explanation), sort_keys=True))
    else:
        for line in format_explanation(explanation, show_all=show_all):
            click.echo(line)
    if not explanation.reproduced:
        raise click.ClickException(
            "the log does not reproduce: " + "; ".join(explanation.mismatches)
        )


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="microseconds")


def format_explanation(explanation: Explanation, *, show_all: bool = False) -> list[str]:
    """The lines ``featrec explain`` prints."""
    e = explanation
    scorer = e.scorer + (f" {e.model_version}" if e.model_version else "")
    lines = [
        f"request {e.request_id} at {_when(e.created_at_s)} (scored as of {_when(e.now_s)})",
        f"session {e.session_id}  user {e.user_id or '-'}  scorer {scorer}",
    ]
    if e.degraded_reason:
        lines.append(f"DEGRADED: {e.degraded_reason}")
    lines.extend(f"note: {note}" for note in e.notes)
    n = len(e.items)
    lines.append(
        f"reproduced from the log: {n} raw scores bit for bit, the same list"
        if e.reproduced
        else "NOT reproduced: " + "; ".join(e.mismatches)
    )
    lines.append("features used (event time they were written with):")
    counts: dict[str, int] = {}
    for logged in e.rows:
        if logged.view.startswith("item_"):
            counts[logged.view] = counts.get(logged.view, 0) + (logged.row is not None)
            continue
        when = _when(logged.row.ts_us / 1e6) if logged.row is not None else "no row"
        lines.append(f"  {logged.view:<17} {logged.key:<20} {when}")
    for view, count in sorted(counts.items()):
        lines.append(f"  {view:<17} {count} item rows")
    lines.append(f"{'rank':>4}  {'item':<20} {'score':>9} {'raw':>9}  why")
    for item in e.items:
        if not item.kept and not show_all:
            continue
        rank = str(item.rank) if item.rank is not None else "-"
        lines.append(
            f"{rank:>4}  {item.item_id:<20} {item.score:>9.4f} {item.raw_score:>9.4f}  "
            + "; ".join(item.reasons)
        )
    hidden = sum(1 for item in e.items if not item.kept)
    if hidden and not show_all:
        lines.append(f"      ({hidden} candidates not kept: --all shows them and why)")
    return lines


def explanation_dict(e: Explanation) -> dict[str, Any]:
    return {
        "request_id": e.request_id,
        "session_id": e.session_id,
        "user_id": e.user_id,
        "created_at_s": e.created_at_s,
        "now_s": e.now_s,
        "degraded_reason": e.degraded_reason,
        "notes": list(e.notes),
        "scorer": e.scorer,
        "model_version": e.model_version,
        "experiment": e.experiment,
        "arm": e.arm,
        "reproduced": e.reproduced,
        "mismatches": list(e.mismatches),
        "rows": [
            {
                "view": r.view,
                "key": r.key,
                "ts_us": r.row.ts_us if r.row is not None else None,
                "values": dict(r.row.values) if r.row is not None else None,
            }
            for r in e.rows
        ],
        "items": [
            {
                "item_id": i.item_id,
                "rank": i.rank,
                "kept": i.kept,
                "score": i.score,
                "raw_score": i.raw_score,
                "sources": list(i.sources),
                "source_scores": dict(i.source_scores),
                "reasons": list(i.reasons),
            }
            for i in e.items
        ],
    }


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes [default: one per core this process may run on].",
)
@click.option(
    "--server",
    type=click.Choice(SERVERS),
    default=SERVERS[0],
    show_default=True,
    help="The HTTP server (granian: ~half uvicorn's CPU per request, see README).",
)
@click.option(
    "--deadline-ms",
    type=click.FloatRange(0, min_open=True),
    default=_LIMITS.deadline_ms,
    show_default=True,
    help="A request that cannot be answered within this many ms of its arrival is shed: the "
    "session's cached answer flagged 'overload', else 503 with Retry-After.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(1),
    default=_LIMITS.max_body_bytes,
    show_default=True,
    help="Larger request bodies are refused (413).",
)
@click.option(
    "--rate-limit",
    type=click.FloatRange(0),
    default=_LIMITS.rate_per_s,
    show_default=True,
    help="Requests/s per client IP and worker before 429 (0: no limit).",
)
@click.option(
    "--rate-burst",
    type=click.IntRange(1),
    default=_LIMITS.burst,
    show_default=True,
    help="Requests a client may send at once.",
)
@click.option(
    "--max-inflight",
    type=click.IntRange(0),
    default=_LIMITS.max_inflight,
    show_default=True,
    help="Requests in progress per worker beyond which new ones get 503 at once (shed load); "
    "0: queue them instead.",
)
@click.option(
    "--max-concurrent",
    type=click.IntRange(1, 64),
    default=_LIMITS.max_concurrent,
    show_default=True,
    help="Recommendations computed at once per worker (the others wait their turn).",
)
@serving_options
@experiment_options
@mapping_options
@with_settings
def serve(
    settings: Settings,
    host: str,
    port: int,
    workers: int | None,
    server: str,
    deadline_ms: float,
    max_body_bytes: int,
    rate_limit: float,
    rate_burst: int,
    max_inflight: int,
    max_concurrent: int,
    model: str,
    request_log: str,
    max_session_age: float,
    candidates: int,
    item_cache: float,
    request_log_keep_h: float,
    experiment: Experiment | None,
    mapping: str | None,
    map_pairs: tuple[str, ...],
) -> None:
    """Serve recommendations over HTTP: POST /recommend, GET /health, GET /metrics, /docs;
    the event collector POST /events and the shop page /shop (see README: The storefront).
    With --mapping, POST /events takes the shop's own JSON schema (see `featrec map check`).

    POST /admin/forget/USER_ID is enabled when FEATREC_ADMIN_TOKEN is set (at least 16
    characters; callers send it as 'Authorization: Bearer <token>').
    """
    from featrec.jobs.serving import load_model

    resolved = resolve_mapping(click.get_current_context(), mapping, map_pairs)
    if resolved is not None:  # POST /events reads the shop's own schema through it
        os.environ["FEATREC_SERVE_COLLECT_MAPPING"] = json.dumps(resolved[1])
    options = _options(
        model, request_log, max_session_age, candidates, item_cache, request_log_keep_h, experiment
    )
    load_model(settings, options.model)  # a bad --model fails here, in one line
    os.environ.update(settings.to_env())
    os.environ.update(options.to_env())
    limits = HttpLimits(
        max_body_bytes,
        rate_limit,
        rate_burst,
        max_inflight=max_inflight,
        max_concurrent=max_concurrent,
        deadline_ms=deadline_ms,
    )
    os.environ.update(limits.to_env())
    workers = workers or len(os.sched_getaffinity(0))
    token = ServeSettings.from_env(os.environ).admin_token  # validates what the workers will read
    admin = "on" if token is not None else f"off (no {ENV_ADMIN_TOKEN})"
    click.echo(
        f"featrec serving on http://{host}:{port} ({settings.online_store} store, model "
        f"{options.model}, request log {options.request_log}, admin {admin}; {server}, "
        f"{workers} worker(s)); OpenAPI at /docs"
    )
    run_server(server, host, port, workers)


def run_server(server: str, host: str, port: int, workers: int) -> None:
    """Serve :data:`APP_FACTORY` with ``workers`` processes (blocks until stopped)."""
    # Started in the background by a non-interactive shell, a process inherits SIGINT as
    # ignored, and so would the workers the server stops with it: a server must stop.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if server == "granian":
        from granian.constants import Interfaces
        from granian.log import LogLevels
        from granian.server import Server

        Server(
            APP_FACTORY,
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            workers=workers,
            factory=True,
            log_level=LogLevels.warning,
            log_access=False,
        ).serve()
        return
    import uvicorn

    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )
