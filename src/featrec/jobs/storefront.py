"""The whole system behind the shop page, on the embedded default (``featrec demo --web``).

:func:`prepare` makes a shop's history and everything computed from it: the Feast repo
applied, generated traffic over the shop's catalogue (:data:`featrec.app.shop.SHOP`) imported
into the event log, batch features computed and materialized, item signals bootstrapped, a
training set built and the ranker trained. Each batch step is the CLI command a user would
run (``featrec log import``, ``batch run``, ``materialize --fast``, ``dataset build``,
``train``), run as a child process so the demo exercises exactly that path.

:func:`start` starts the live part: both dataflows tailing the collector log
(``FEATREC_SOURCE=collector``; the Redis stream when the online store is Redis), with recovery
stores so a restart resumes, and ``featrec serve``. :func:`stop` stops them all (SIGINT, then
SIGTERM, then SIGKILL after a grace).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from featrec.app.shop import SHOP
from featrec.errors import FeatrecError
from featrec.jobs.launch import ensure_recovery_store, flow_command
from featrec.settings import Settings

Echo = Callable[[str], None]
#: Both dataflows, as ``python -m bytewax.run`` targets.
FLOWS: Final = ("dataflows.sessions:flow()", "dataflows.items:flow()")
#: The featrec CLI, run by this interpreter.
CLI: Final = (sys.executable, "-c", "from featrec.cli import main; main()")


def _restore_sigint() -> None:
    # A child of a non-interactive shell inherits SIGINT ignored: give Ctrl-C back to it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: the settings as ``FEATREC_*`` plus ``extra``."""
    return {**os.environ, **settings.to_env(), **(extra or {})}


def run_cli(settings: Settings, *args: str) -> None:
    """Run ``featrec ARGS`` to completion; a failure raises with its output's last line."""
    done = subprocess.run(
        [*CLI, *args],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        preexec_fn=_restore_sigint,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise FeatrecError(f"`featrec {' '.join(args)}` failed: {last[0]}")


def prepare(settings: Settings, *, n_events: int, train: bool, echo: Echo) -> None:
    """Apply the repo, generate and import a history, compute everything from it."""
    from featrec.adapters.feast.repo import apply_repo
    from featrec.adapters.files.event_files import write_events
    from featrec.core.events.generator import generate
    from featrec.jobs.item_signals import bootstrap_items

    echo(f"applying the Feast repo {settings.repo} ({settings.online_store} online store)")
    apply_repo(settings)
    # The history ends now, so the item signals and batch features are as fresh as the live
    # clicks they meet (the generated span is found by a first, identical draw).
    first = list(generate(replace(SHOP, n_events=n_events)))
    span = first[-1].ts - first[0].ts
    start_at = datetime.now(UTC).replace(microsecond=0) - span - timedelta(minutes=1)
    events = list(generate(replace(SHOP, n_events=n_events, start=start_at)))
    history = settings.home / "shop" / "history.jsonl"
    history.parent.mkdir(parents=True, exist_ok=True)
    write_events(history, events)
    echo(f"generated {len(events):,} events of shop history over {SHOP.n_items} products")
    report = bootstrap_items(settings, events, "the shop's history")
    echo(f"item signals bootstrapped: {report.neighbour_lists:,} neighbour lists")
    if train:
        train_ranker(settings, history, echo)


def train_ranker(settings: Settings, history: Path, echo: Echo) -> None:
    """The batch side from an event file, as a user runs it: import it into the event log,
    compute and materialize the batch features, build a training set, train the ranker (the
    served model is the newest: ``FEATREC_SERVE_MODEL=auto``)."""
    steps = [
        ("importing the history into the event log", ("log", "import", str(history))),
        ("computing batch features", ("batch", "run")),
        ("materializing them", ("materialize", "--fast")),
        ("building a point-in-time training set", ("dataset", "build")),
        ("training the ranker", ("train",)),
    ]
    for message, args in steps:
        started = time.monotonic()
        run_cli(settings, *args)
        echo(f"{message}: done in {time.monotonic() - started:.1f} s")


@dataclass
class Running:
    """The processes of a started shop."""

    flows: list[subprocess.Popen[bytes]]
    server: subprocess.Popen[bytes]
    url: str

    @property
    def all(self) -> list[subprocess.Popen[bytes]]:
        return [self.server, *self.flows]


def start(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model: str = "auto",
    serve_env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> Running:
    """Start both dataflows on the collector's bus and ``featrec serve`` (one worker).

    The bus is the collector log on the embedded default, the Redis stream when the online
    store is Redis (as ``FEATREC_SERVE_COLLECT_BUS=auto`` resolves it)."""
    source = "redis" if settings.collector_bus("auto") == "redis" else "collector"
    env = cli_env(settings, {"FEATREC_SOURCE": source})
    out = open(log, "ab") if log is not None else None  # noqa: SIM115 - children keep it
    flows = []
    for i, target in enumerate(FLOWS):
        recovery = settings.home / "shop" / f"recovery-{i}"
        ensure_recovery_store(recovery, partitions=1)
        flows.append(
            subprocess.Popen(
                flow_command(target, recovery_dir=recovery, snapshot_interval=2),
                env=env,
                stdout=out,
                stderr=out,
                preexec_fn=_restore_sigint,  # noqa: PLW1509
            )
        )
    args = ["serve", "--host", host, "--port", str(port), "--workers", "1", "--model", model]
    # The page polls /recommend while a click goes through the flow: a shopper's pace, and
    # item lists refreshed every second so new co-visits show.
    args += ["--rate-limit", "50", "--rate-burst", "100", "--item-cache", "1"]
    server = subprocess.Popen(
        [*CLI, *args],
        env={**cli_env(settings), **(serve_env or {})},
        stdout=out,
        stderr=out,
        preexec_fn=_restore_sigint,  # noqa: PLW1509
    )
    return Running(flows, server, f"http://{host}:{port}/shop")


def wait_ready(running: Running, timeout_s: float = 60.0) -> None:
    """Wait until the server answers ``/health`` (raises if a process died or time ran out)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    health = running.url.removesuffix("/shop") + "/health"
    while time.monotonic() < deadline:
        for p in running.all:
            if p.poll() is not None:
                raise FeatrecError(f"{p.args!r} exited with status {p.returncode}")
        try:
            if httpx.get(health, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise FeatrecError(f"the server did not answer {health} within {timeout_s:g} s")


def wait_flowing(running: Running, timeout_s: float = 120.0) -> float:
    """Wait until an event posted to ``/events`` shows in ``/recommend`` (the sessions flow is
    up and tailing the collector log); returns the seconds that took. The probe is one view
    of a session of its own (``featrec-probe-...``), which no shopper's answer depends on."""
    import uuid

    import httpx

    base = running.url.removesuffix("/shop")
    session = f"featrec-probe-{uuid.uuid4().hex[:12]}"
    now = time.time()
    probe = {"event_id": session, "session_id": session, "item_id": "i0", "type": "view"}
    posted = httpx.post(f"{base}/events", json={**probe, "ts": now}, timeout=10)
    if posted.status_code != 202:
        raise FeatrecError(f"the collector refused the probe: {posted.text}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in running.all:
            if p.poll() is not None:
                raise FeatrecError(f"{p.args!r} exited with status {p.returncode}")
        answer = httpx.post(f"{base}/recommend", json={"session_id": session, "k": 1}, timeout=10)
        if (answer.json().get("session_version") or 0) >= int(now * 1e6) - 1000:
            return time.time() - now
        time.sleep(0.2)
    raise FeatrecError(f"an event did not reach the online store within {timeout_s:g} s")


def stop(running: Running, grace_s: float = 15.0) -> None:
    """Stop every process: SIGINT, SIGTERM after ``grace_s``, SIGKILL after as long again."""
    for p in running.all:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + grace_s
        for p in running.all:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.send_signal(sig)
    for p in running.all:
        p.wait()
