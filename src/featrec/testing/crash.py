"""Running the sessions dataflow as a real process, feeding it, killing it, comparing results.

Shared by the crash-recovery and Redis-outage tests and their benchmarks
(``benchmarks/kill_recovery.py``, ``benchmarks/redis_outage.py``). Everything is real: the
flow runs with ``python -m bytewax.run "dataflows.sessions:flow()"`` and its own recovery
store, events travel over a Redis stream on a private redis-server, rows are read back from
Feast's Redis layout with featrec's row reader, and the event log is read from its Parquet
files, both deduplicated (what readers see) and raw (what is on disk).
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import redis
from prometheus_client.parser import text_string_to_metric_families

from featrec.adapters.files.event_log import event_log_files, read_event_log
from featrec.adapters.redis.rows import RedisRowReader, serving_client
from featrec.adapters.redis.streams import publish
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event
from featrec.core.features.catalog import SESSION_FEATURES
from featrec.jobs.launch import with_cold_sessions
from featrec.settings import Settings
from featrec.testing.feast_repo import CHECKOUT as REPO_ROOT
from featrec.testing.redis_server import RedisServer, free_port
from featrec.testing.wait import wait_until

FLOW = "dataflows.sessions:flow()"
PROJECT = "featrec"


def make_events(n: int, seed: int) -> list[Event]:
    """``n`` synthetic shop events (many concurrent sessions, so most rows change often)."""
    config = GeneratorConfig(
        n_events=n, n_users=max(n // 20, 10), n_items=500, concurrent_sessions=200, seed=seed
    )
    return list(generate(config))


def flow_env(settings: Settings, source: str, **extra: str) -> dict[str, str]:
    """The environment of a flow process: ours without ``FEATREC_*``, then ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATREC_")}
    env.update(settings.to_env())
    env["FEATREC_SOURCE"] = source
    env.update(extra)
    return env


def init_recovery(recovery: Path) -> None:
    recovery.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery), "1"],
        check=True,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
    )


def start_flow(
    env: dict[str, str], recovery: Path | None, log: Path, snapshot_s: int = 1
) -> subprocess.Popen[bytes]:
    """Start the sessions flow (its output appended to ``log``)."""
    args = [sys.executable, "-m", "bytewax.run", FLOW]
    if recovery is not None:
        args += ["-r", str(recovery), "-s", str(snapshot_s), "-b", "0"]
        env = with_cold_sessions(env, recovery)
    with log.open("ab") as out:
        return subprocess.Popen(
            args, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def executions(recovery: Path) -> list[int]:
    """The resume epoch of every execution recorded in a recovery store (bytewax's ``exs``
    table, spread over the partitions), in order: 1 for a start from scratch, higher for a
    resume."""
    found: list[tuple[int, int]] = []
    for part in sorted(recovery.glob("part-*.sqlite3")):
        with closing(sqlite3.connect(part)) as db:
            found += db.execute("SELECT ex_num, resume_epoch FROM exs").fetchall()
    return [int(epoch) for _, epoch in sorted(found)]


def scrape(port: int, wait_s: float = 20.0) -> dict[str, float]:
    """A flow's Prometheus metrics (``BYTEWAX_DATAFLOW_API_PORT``): sample name with its
    labels -> value, e.g. ``featrec_store_up{store="online"}``. Waits up to ``wait_s`` for
    the endpoint of a process that is still starting."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
            finally:
                conn.close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def metrics_env(port: int) -> dict[str, str]:
    """Bytewax's dataflow API on ``port``; it also writes ``dataflow.json`` into its cache
    directory (the working directory by default), so that goes to a temp dir."""
    import tempfile

    cache = Path(tempfile.gettempdir()) / "featrec-bytewax-api"
    cache.mkdir(exist_ok=True)
    return {
        "BYTEWAX_DATAFLOW_API_ENABLED": "1",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
        "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(cache),
    }


def kill9(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


class Producer(threading.Thread):
    """Publishes events to a stream at a steady pace (``chunk`` events every ``period_s``),
    like a shop that keeps selling while the consumer crashes."""

    def __init__(
        self, url: str, stream: str, events: Sequence[Event], duration_s: float, chunk: int = 10
    ) -> None:
        super().__init__(daemon=True)
        self.url, self.stream, self.events, self.chunk = url, stream, events, chunk
        self.period_s = duration_s / max(len(events) / chunk, 1)
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start = time.monotonic()
            for i in range(0, len(self.events), self.chunk):
                due = start + (i // self.chunk) * self.period_s
                time.sleep(max(due - time.monotonic(), 0.0))
                self.sent += publish(self.url, self.stream, self.events[i : i + self.chunk])
        except BaseException as exc:  # reported by the test, not swallowed
            self.error = exc


def session_rows(url: str, keys: Sequence[str]) -> dict[str, tuple[Any, ...] | None]:
    """Every session's stored row (values and version) from Feast's Redis layout."""
    reader = RedisRowReader(serving_client(url), PROJECT, owns_client=True)
    try:
        out: dict[str, tuple[Any, ...] | None] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            found = reader.read_rows({SESSION_FEATURES.name: chunk})[SESSION_FEATURES.name]
            for key, row in zip(chunk, found, strict=True):
                out[key] = None if row is None else (row.ts_us, tuple(sorted(row.values.items())))
        return out
    finally:
        reader.close()


@dataclass
class LogCount:
    """Event ids as a reader of the log sees them, and as the files on disk hold them."""

    seen: Counter[str]
    raw: Counter[str]

    @property
    def raw_duplicates(self) -> int:
        return sum(n - 1 for n in self.raw.values() if n > 1)


def event_log_count(directory: Path) -> LogCount:
    seen = Counter(read_event_log(directory)["event_id"].to_pylist())
    raw: Counter[str] = Counter()
    for path in event_log_files(directory):
        raw.update(pq.read_table(path, columns=["event_id"])["event_id"].to_pylist())
    return LogCount(seen, raw)


@dataclass
class Comparison:
    """A run against the reference (clean) run: what readers would see differ."""

    rows_missing: list[str] = field(default_factory=list)
    rows_different: list[str] = field(default_factory=list)
    events_lost: int = 0
    events_extra: int = 0
    events_duplicated_seen: int = 0
    events_duplicated_raw: int = 0

    @property
    def equal(self) -> bool:
        return not (
            self.rows_missing
            or self.rows_different
            or self.events_lost
            or self.events_extra
            or self.events_duplicated_seen
        )


def compare(
    rows: dict[str, tuple[Any, ...] | None],
    reference: dict[str, tuple[Any, ...] | None],
    log: LogCount,
    event_ids: Sequence[str],
) -> Comparison:
    out = Comparison()
    for key, want in reference.items():
        got = rows.get(key)
        if got is None:
            out.rows_missing.append(key)
        elif got != want:
            out.rows_different.append(key)
    expected = set(event_ids)
    out.events_lost = len(expected - set(log.seen))
    out.events_extra = len(set(log.seen) - expected)
    out.events_duplicated_seen = sum(n - 1 for n in log.seen.values() if n > 1)
    out.events_duplicated_raw = log.raw_duplicates
    return out


@dataclass
class KillRecord:
    """One SIGKILL: when, how long after the run was up, and how far the replay had got."""

    at_s: float
    lived_s: float
    published: int
    logged: int


def kill_loop(
    env: dict[str, str],
    recovery: Path,
    log: Path,
    kills: int,
    rng: random.Random,
    lifetime_s: tuple[float, float],
    progress: Callable[[], tuple[int, int]],
) -> list[KillRecord]:
    """Start the flow and SIGKILL it ``kills`` times, each a random time after it is running.

    "Running" is when its metrics endpoint answers (the dataflow is built and reading), so
    the kill points spread over processing time however slow start-up is on a busy machine.
    ``progress()`` gives ``(published, logged)`` at each kill, for the report. A process that
    exits by itself before its kill is an error (the stream source never ends).
    """
    records = []
    t0 = time.monotonic()
    for _ in range(kills):
        port = free_port()
        proc = start_flow({**env, **metrics_env(port)}, recovery, log)
        try:
            scrape(port, wait_s=60)
        except OSError:
            kill9(proc)
            raise AssertionError(f"the flow did not start within 60 s: {log}") from None
        lived = rng.uniform(*lifetime_s)
        time.sleep(lived)
        if proc.poll() is not None:
            raise AssertionError(f"the flow exited with {proc.returncode} before its kill: {log}")
        kill9(proc)
        published, logged = progress()
        records.append(KillRecord(time.monotonic() - t0, lived, published, logged))
    return records


def shutdown_saving(server: RedisServer) -> None:
    """Stop ``server`` as a Redis with persistence would go down: ``SHUTDOWN SAVE`` writes
    its RDB file atomically with the exit (no acknowledged write is lost), and the next
    ``start()`` in the same directory loads it back."""
    client = server.client()
    try:
        client.shutdown(save=True)
    except redis.exceptions.ConnectionError:
        pass  # the server closed the connection as it exited
    finally:
        client.close()
    server.stop()


@dataclass
class Answers:
    """What the recommender answered while the store went down and came back."""

    total: int = 0
    raised: list[str] = field(default_factory=list)
    #: degraded code (or "ok") -> count, per phase ("before", "outage", "after")
    by_phase: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, phase: str, code: str) -> None:
        self.total += 1
        self.by_phase.setdefault(phase, Counter())[code] += 1


class Caller(threading.Thread):
    """Asks ``recommend(session, k=5)`` every ``period_s`` for a session of the events and
    records each answer's degraded code under the current ``phase``."""

    def __init__(self, recommend: Callable[[str], Any], sessions: Sequence[str]) -> None:
        super().__init__(daemon=True)
        self.recommend = recommend
        self.sessions = sessions
        self.phase = "before"
        self.answers = Answers()
        self.stopped = threading.Event()
        self.period_s = 0.05

    def run(self) -> None:
        i = 0
        while not self.stopped.is_set():
            session = self.sessions[i % len(self.sessions)]
            i += 1
            phase = self.phase
            try:
                answer = self.recommend(session)
            except Exception as exc:  # the contract under test: this never happens
                self.answers.raised.append(f"{type(exc).__name__}: {exc}")
                continue
            self.answers.add(phase, answer.degraded_code or "ok")
            time.sleep(self.period_s)


@dataclass
class OutageResult:
    """What one outage run measured (see :func:`outage_run`)."""

    outage_s: float
    caught_up: bool
    catch_up_s: float
    comparison: Comparison
    answers: Answers
    #: the flow's metrics just before the outage, half-way through it, and at the end
    before: dict[str, float]
    during: dict[str, float]
    after: dict[str, float]


def outage_run(
    base: Settings,
    bus: RedisServer,
    store: RedisServer,
    work: Path,
    events: Sequence[Event],
    *,
    publish_s: float,
    outage_at_s: float,
    outage_s: float,
) -> OutageResult:
    """Stream ``events`` through the sessions flow (bus and store on separate servers) while
    the store goes down for ``outage_s`` and a recommender answers requests all along; then
    compare the flow's rows and event log with an uninterrupted run of the same events."""
    from featrec.adapters.files.event_files import write_events
    from featrec.adapters.sqlite.request_log import SqliteRequestLog
    from featrec.app.serving.recommender import Recommender, ServingConfig

    keys = sorted({e.session_id for e in events})
    log_file = work / "flow.log"
    # Reference: an uninterrupted run from a file, into db 1 of the bus server.
    clean = base.with_(
        online_store="redis", redis_url=bus.url.rsplit("/", 1)[0] + "/1", home=work / "clean"
    )
    source = work / "events.jsonl"
    write_events(source, events)
    if start_flow(flow_env(clean, str(source)), None, log_file).wait(timeout=600) != 0:
        raise AssertionError(f"the uninterrupted run failed: {log_file.read_text()[-3000:]}")
    reference = session_rows(clean.redis_url, keys)

    settings = base.with_(
        online_store="redis", redis_url=store.url, bus_url=bus.url, home=work / "outage"
    )
    port = free_port()
    flow = start_flow({**flow_env(settings, "redis"), **metrics_env(port)}, None, log_file)
    producer = Producer(bus.url, settings.stream, events, publish_s)
    early = list(dict.fromkeys(e.session_id for e in events[: len(events) // 4]))[:50]
    recommender = Recommender(
        RedisRowReader(serving_client(store.url), PROJECT, owns_client=True),
        SqliteRequestLog(work / "requests.db"),
        config=ServingConfig(store_retry_s=0.5, max_session_age_s=10 * 365 * 86400.0),
    )
    caller = Caller(lambda s: recommender.recommend(s, k=5), early)
    try:
        producer.start()
        caller.start()
        time.sleep(outage_at_s)
        before = scrape(port)
        shutdown_saving(store)
        # Only once the store is down: a request begun while it was shutting down may still
        # have read it, and would be counted as an answer during the outage.
        caller.phase = "outage"
        went_down = time.monotonic()
        time.sleep(outage_s / 2)
        during = scrape(port)
        time.sleep(max(outage_s - (time.monotonic() - went_down), 0.0))
        store.start()
        down_s = time.monotonic() - went_down
        caller.phase = "after"
        producer.join(timeout=publish_s + 60)
        if producer.error is not None or producer.sent != len(events):
            raise AssertionError(f"publishing failed: {producer.error}")
        t = time.monotonic()
        caught_up = wait_until(
            lambda: (
                len(event_log_count(settings.event_log_dir).seen) == len(events)
                and session_rows(store.url, keys) == reference
            ),
            timeout_s=60 + len(events) / 1000,
            proc=flow,
        )
        catch_up_s = time.monotonic() - t
        after = scrape(port)
    finally:
        caller.stopped.set()
        caller.join(timeout=10)
        kill9(flow)
    log = event_log_count(settings.event_log_dir)
    ids = [e.event_id for e in events]
    comparison = compare(session_rows(store.url, keys), reference, log, ids)
    return OutageResult(
        down_s, caught_up, catch_up_s, comparison, caller.answers, before, during, after
    )
