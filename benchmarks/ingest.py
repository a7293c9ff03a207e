"""End-to-end ingest benchmark of the sessions dataflow into Redis in Feast's layout.

Everything is real: a private redis-server started here, a Feast repo applied to a temp dir,
the production flow (``dataflows.sessions.build_flow``) run in-process by
``bytewax.testing.run_main`` with one worker. Printed, in one run:

1. **throughput**: ``--events`` generated events (>= ``--concurrent`` concurrent sessions)
   from file replay to rows in Redis (``FlushWriter``), with the Parquet event log and the
   dead-letter file; wall events/s and process CPU-µs per event, and CPU-µs per event by
   stage (each stage's functions timed with ``thread_time``; the event log's on its thread);
2. **baseline**: the per-event shape (``FEATREC_FLOW_SHAPE=per-event``, the read-guarded
   ``RedisLayoutWriter``, the event log written inline) on the first ``--baseline-events``,
   and Feast's ``write_to_online_store`` path (``FEATREC_WRITER=feast``) on the first
   ``--feast-events`` next to the batch shape on the same prefix: the ratios;
3. **freshness** p50/p99/max at a steady ``--rate`` events/s and at half the measured maximum:
   a separate producer process XADDs the events at that pace to a Redis Stream; a sample is
   a written row: from its newest event's XADD (the stream id's millisecond clock) to the
   moment the write's replies are read (the row is readable);
4. **memory** per live session: tracemalloc over a shard's session states and bookkeeping,
   and the snapshot (msgpack) bytes per session;
5. **gap**: live session states once the state TTL has passed idle (must be 0).

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/ingest.py     # 1M events, ~4 min
    .venv/bin/python benchmarks/ingest.py --events 200000 --baseline-events 50000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

REPO_ROOT = Path(__file__).resolve().parents[1]

from dataflows import metrics, session_shards, sinks, sources  # noqa: E402
from dataflows.gc_tuning import (  # noqa: E402
    SESSIONS_GC_THRESHOLDS,
    frozen_after,
    tune_gc,
    tune_switch_interval,
)
from dataflows.session_shards import Cooling  # noqa: E402
from dataflows.sessions import build_flow  # noqa: E402
from dataflows.sinks import DeadLetterSink, EventLogSink  # noqa: E402
from dataflows.sources import FileReplaySource, RedisStreamSource, SourceItem  # noqa: E402
from featrec.adapters.feast.flush_writer import FlushWriter  # noqa: E402
from featrec.adapters.feast.repo import apply_repo  # noqa: E402
from featrec.adapters.feast.writers import open_writer  # noqa: E402
from featrec.adapters.files import event_log  # noqa: E402
from featrec.adapters.files.event_files import read_events as read_event_file  # noqa: E402
from featrec.adapters.files.event_files import write_events  # noqa: E402
from featrec.adapters.files.event_log import EventLogWriter  # noqa: E402
from featrec.adapters.sqlite.cold_sessions import ColdSessions  # noqa: E402
from featrec.core.events.batch_decode import Arrival  # noqa: E402
from featrec.core.events.generator import GeneratorConfig, generate  # noqa: E402
from featrec.core.events.model import Event  # noqa: E402
from featrec.core.features.rows import FeatureRow  # noqa: E402
from featrec.core.ports.features import FeatureWriter  # noqa: E402
from featrec.core.sessions.shard import SessionShard  # noqa: E402
from featrec.settings import Settings  # noqa: E402
from featrec.testing.redis_server import RedisServer  # noqa: E402

#: The batch shape's store of idle sessions (``--cool-s``), or none.
COOLING: Cooling | None = None


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--concurrent", type=int, default=10_000)
    ap.add_argument("--baseline-events", type=int, default=200_000)
    ap.add_argument("--feast-events", type=int, default=50_000)
    ap.add_argument("--rate", type=int, default=10_000, help="events/s for the freshness run")
    ap.add_argument("--rate-seconds", type=float, default=20.0)
    ap.add_argument("--profile", action="store_true", help="cProfile a throughput run too")
    ap.add_argument(
        "--parts",
        default="throughput,baseline,freshness,memory,gap",
        help="comma-separated parts to run (freshness at half the maximum needs throughput, "
        "else --half-rate)",
    )
    ap.add_argument("--half-rate", type=int, default=0, help="second freshness rate, events/s")
    ap.add_argument(
        "--encode-ahead",
        choices=("on", "idle", "off"),
        default="on",
        help="A/B of the shards' encoding ahead of snapshots: on (as shipped), idle (only "
        "sessions idle for ENCODE_IDLE_S, not near the expected snapshot), off (none: every "
        "changed session encoded at snapshot time, as before)",
    )
    ap.add_argument(
        "--no-freeze",
        action="store_true",
        help="A/B: do not freeze the heap after a worker opens its writer (as before)",
    )
    ap.add_argument(
        "--cool-s",
        type=float,
        default=0.0,
        help="A/B: give the batch shape a store of idle sessions (in the temp dir) with this "
        "FEATREC_SESSION_COOL_S, as the launcher does with a recovery store (default 0: none)",
    )
    ap.add_argument(
        "--epoch-s",
        type=float,
        default=10.0,
        help="the freshness runs' epoch (snapshot) interval; bytewax's run_main default is 10, "
        "featrec's launcher runs flows with 5",
    )
    ap.add_argument(
        "--deadlines",
        default="",
        help="comma-separated FEATREC_BATCH_DEADLINE_MS values to run the freshness part at "
        "(default: the setting's default)",
    )
    args = ap.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}")
    ab_switches(args.encode_ahead, args.no_freeze)

    with tempfile.TemporaryDirectory(prefix="featrec-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        if args.cool_s > 0:
            global COOLING  # noqa: PLW0603 - flow_parts below looks it up here
            COOLING = Cooling(ColdSessions(tmp / "cold-sessions"), args.cool_s)
            print(f"A/B: a store of idle sessions, sessions cooled after {args.cool_s:g} s idle")
        server = RedisServer(tmp)
        server.start()
        try:
            run(args, tmp, server)
        finally:
            server.stop()
    print(f"\nload average at end: {os.getloadavg()}")


def ab_switches(encode_ahead: str, no_freeze: bool) -> None:
    """Turn this benchmark's A/B switches into the flow's settings (module constants)."""
    global frozen_after  # noqa: PLW0603 - the writer factories below look it up here
    if encode_ahead != "on":
        session_shards.SNAPSHOT_LEAD_S = -1e9  # type: ignore[misc]
    if encode_ahead == "off":
        session_shards.ENCODE_IDLE_S = 1e9  # type: ignore[misc]
    if no_freeze:
        frozen_after = _unfrozen
    if encode_ahead != "on" or no_freeze:
        print(f"A/B: encode ahead {encode_ahead}, freeze after the writer opens: {not no_freeze}")


def _unfrozen(open_: Callable[[], Any]) -> Callable[[], Any]:
    return open_


def run(args: argparse.Namespace, tmp: Path, server: RedisServer) -> None:
    settings = prepare_repo(tmp, server.url)
    client = server.client()
    tune_gc(SESSIONS_GC_THRESHOLDS)  # as dataflows.sessions:flow() does in production
    tune_switch_interval()

    t0 = time.perf_counter()
    config = GeneratorConfig(
        n_events=args.events,
        concurrent_sessions=args.concurrent,
        n_users=max(10_000, args.events // 20),
        n_items=max(5_000, args.events // 100),
        seed=1,
    )
    events_path = tmp / "events.jsonl"
    n = write_events(events_path, generate(config))
    sessions = count_sessions(events_path)
    print(f"generated {n:,} events, {sessions:,} sessions in {time.perf_counter() - t0:.1f} s")

    parts = set(args.parts.split(","))
    rate = float(args.half_rate * 2)
    # 1. Throughput of the batch shape, the whole file, with CPU by stage.
    if "throughput" in parts:
        stages: dict[str, float] = defaultdict(float)
        with stage_timers(stages):
            rate, wall, cpu = replay(events_path, settings, "batch")
        keys = client.dbsize()
        print(
            f"\n[throughput] batch shape: {n:,} events in {wall:.1f} s = {rate:,.0f} events/s "
            f"end to end, {cpu / n * 1e6:.2f} CPU-µs/event (process), {keys:,} Redis keys, "
            f"load {os.getloadavg()[0]:.2f}"
        )
        print_stages(stages, n, cpu)
    if "baseline" in parts:
        baselines(args, tmp, settings, events_path, client)
    # 3. Freshness at a steady rate, and at half the measured maximum.
    if "freshness" in parts:
        deadlines = [float(d) for d in args.deadlines.split(",") if d] or [
            settings.batch_deadline_ms
        ]
        runs = 0
        for target in (args.rate, int(rate / 2)):
            for deadline in deadlines if target else []:
                client.flushall()
                at = settings.with_(batch_deadline_ms=deadline)
                freshness(
                    events_path, at, server.url, target, args.rate_seconds, f"f{runs}", n,
                    args.epoch_s,
                )  # fmt: skip
                runs += 1
    # 4. Memory per live session.
    if "memory" in parts:
        memory_per_session(events_path, min(200_000, n))
    # 5. Keys left after the gap.
    if "gap" in parts:
        client.flushall()
        keys_after_gap(events_path, settings, server.url)
    if args.profile:
        client.flushall()
        profile = cProfile.Profile()
        profile.enable()
        replay(write_prefix(events_path, tmp / "profiled.jsonl", 100_000), settings, "batch")
        profile.disable()
        print("\n[profile] top functions by own time (batch shape, 100k events):")
        pstats.Stats(profile).sort_stats("tottime").print_stats(22)


def baselines(
    args: argparse.Namespace, tmp: Path, settings: Settings, events_path: Path, client: Any
) -> None:
    """The per-event shape and Feast's write_to_online_store, each next to the batch shape."""
    # 2. Baselines on prefixes: the per-event shape, and Feast's write_to_online_store.
    prefix = write_prefix(events_path, tmp / "prefix.jsonl", args.baseline_events)
    client.flushall()
    base_rate, _, base_cpu = replay(prefix, settings, "per-event")
    client.flushall()
    same_rate, _, same_cpu = replay(prefix, settings, "batch")
    m = args.baseline_events
    print(
        f"\n[baseline] {m:,} events: batch shape {same_rate:,.0f} events/s "
        f"({same_cpu / m * 1e6:.2f} CPU-µs/event), per-event shape {base_rate:,.0f} events/s "
        f"({base_cpu / m * 1e6:.2f} CPU-µs/event): {same_rate / base_rate:.1f}x events/s, "
        f"{base_cpu / same_cpu:.1f}x less CPU; load {os.getloadavg()[0]:.2f}"
    )
    feast_prefix = write_prefix(events_path, tmp / "feast.jsonl", args.feast_events)
    client.flushall()
    fast_rate, _, _ = replay(feast_prefix, settings, "batch")
    client.flushall()
    feast_rate, _, _ = replay(feast_prefix, settings, "feast")
    print(
        f"[ratio] {args.feast_events:,} events: batch shape {fast_rate:,.0f} events/s, "
        f"Feast write_to_online_store {feast_rate:,.0f} events/s, "
        f"ratio {fast_rate / feast_rate:.1f}x; load {os.getloadavg()[0]:.2f}"
    )


def prepare_repo(tmp: Path, redis_url: str) -> Settings:
    repo = tmp / "repo"
    repo.mkdir()
    for path in (REPO_ROOT / "feature_repo").iterdir():
        if path.is_file() and path.suffix in (".py", ".yaml"):
            shutil.copy(path, repo / path.name)
    settings = Settings(home=tmp / "home", repo=repo, online_store="redis", redis_url=redis_url)
    apply_repo(settings)
    return settings


def count_sessions(path: Path) -> int:
    import json

    with path.open() as f:
        return len({json.loads(line)["session_id"] for line in f})


def write_prefix(src: Path, dst: Path, n: int) -> Path:
    with src.open() as f, dst.open("w") as out:
        out.writelines(islice(f, n))
    return dst


class InlineEventLogSink(DynamicSink[list[Event]]):
    """The per-event shape's event log as it was: Parquet written inside ``write_batch``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _InlineLog:
        return _InlineLog(EventLogWriter(self.directory, f"w{worker_index}"))


class _InlineLog(StatelessSinkPartition[list[Event]]):
    def __init__(self, writer: EventLogWriter) -> None:
        self.writer = writer

    def write_batch(self, items: list[list[Event]]) -> None:
        events = list(chain.from_iterable(items))
        if events:
            self.writer.write(events)


def flow_parts(s: Settings, shape: str, name: str) -> dict[str, Any]:
    """Writer factory and sinks of one shape (the baseline keeps the old writer and log).
    Writers are opened as the production flows open theirs (:func:`frozen_after`)."""
    if shape == "per-event":
        return {
            "writer_factory": frozen_after(lambda: open_writer(s)),
            "dead_letter_sink": DeadLetterSink(file=s.dead_letter_file),
            "event_log_sink": InlineEventLogSink(s.event_log_dir / name),
        }
    return {
        "writer_factory": frozen_after(lambda: open_writer(s, flow=True, exclusive=True)),
        "dead_letter_sink": DeadLetterSink(file=s.dead_letter_file),
        "event_log_sink": EventLogSink(s.event_log_dir / name),
        "cooling": COOLING,
    }


def replay(path: Path, settings: Settings, shape: str) -> tuple[float, float, float]:
    """Run the flow over a file; (events/s, wall s, process CPU s)."""
    writer = "feast" if shape == "feast" else "fast"
    s = settings.with_(writer=writer, flow_shape="per-event" if shape == "per-event" else "batch")
    lines = sum(1 for _ in path.open())
    flow = build_flow(FileReplaySource([path]), s, **flow_parts(s, shape, shape))
    t0, c0 = time.perf_counter(), time.process_time()
    run_main(flow)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return lines / wall, wall, cpu


# -- CPU by stage ------------------------------------------------------------------------------

STAGES = {
    "source (read lines)": (sources._FilePartition, "next_batch"),
    "decode + validate + route": (session_shards, "decode_to_shards"),
    "fold": (SessionShard, "fold_batch"),
    "rows (newest per session) + TTL": (SessionShard, "take_rows"),
    "rows on expiry": (SessionShard, "expire"),
    "encode + write (FlushWriter)": (FlushWriter, "write"),
    "sink (coalesce, metrics, status)": (sinks._FeatureSinkPartition, "write_batch"),
    "event log hand-over": (event_log.BackgroundEventLog, "append"),
    "event log Parquet (own thread)": (EventLogWriter, "write"),
}


@contextmanager
def stage_timers(totals: dict[str, float]) -> Iterator[None]:
    """Time each stage's function with ``thread_time`` (CPU of the thread that runs it)."""
    saved = []
    for name, (owner, attr) in STAGES.items():
        original = getattr(owner, attr)
        saved.append((owner, attr, original))

        def timed(*a: Any, _f: Callable[..., Any] = original, _n: str = name, **k: Any) -> Any:
            c0 = time.thread_time()
            try:
                return _f(*a, **k)
            finally:
                totals[_n] += time.thread_time() - c0

        setattr(owner, attr, timed)
    try:
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


def print_stages(totals: dict[str, float], n: int, cpu: float) -> None:
    print("  CPU-µs per event by stage:")
    # The sink's figure includes the writer's: report the difference.
    totals["sink (coalesce, metrics, status)"] -= totals["encode + write (FlushWriter)"]
    for name in STAGES:
        print(f"    {name:<36} {totals[name] / n * 1e6:6.2f}")
    rest = cpu - sum(totals.values())
    print(f"    {'bytewax engine, GC, the rest':<36} {rest / n * 1e6:6.2f}")


# -- freshness ---------------------------------------------------------------------------------


#: id(row) -> when the fold let it out (SessionShard.take_rows / expire, wrapped while a
#: freshness run lasts): splits a sample into its parts.
FLUSHED: dict[int, float] = {}


@contextmanager
def flush_stamps() -> Iterator[None]:
    """Stamp every row the fold lets out with the time it did (see :data:`FLUSHED`)."""
    take_rows, expire = SessionShard.take_rows, SessionShard.expire

    def stamped_take(shard: SessionShard) -> list[FeatureRow]:
        rows = take_rows(shard)
        at = time.time()
        for r in rows:
            FLUSHED[id(r)] = at
        return rows

    def stamped_expire(shard: SessionShard, now: float) -> tuple[list[FeatureRow], int]:
        rows, gone = expire(shard, now)
        at = time.time()
        for r in rows:
            FLUSHED[id(r)] = at
        return rows, gone

    SessionShard.take_rows = stamped_take  # type: ignore[method-assign]
    SessionShard.expire = stamped_expire  # type: ignore[method-assign]
    try:
        yield
    finally:
        SessionShard.take_rows = take_rows  # type: ignore[method-assign]
        SessionShard.expire = expire  # type: ignore[method-assign]
        FLUSHED.clear()


#: One sample per written row: (ingested_at, total, in the fold until flushed (source poll,
#: decode, the flush policy's wait), flushed -> write call (routing, sink), the write call).
Sample = tuple[float, float, float, float, float]


class TimingWriter:
    """Wraps a real writer; records, per written row, now minus the row's ``ingested_at``,
    split into its parts (see :data:`Sample`)."""

    def __init__(self, inner: FeatureWriter, samples: list[Sample]) -> None:
        self.inner = inner
        self.samples = samples

    def write(self, rows: Sequence[FeatureRow]) -> int:
        called = time.time()
        n = self.inner.write(rows)
        done = time.time()
        for r in rows:
            at = r.ingested_at
            if at:
                flushed = FLUSHED.pop(id(r), called)
                self.samples.append((at, done - at, flushed - at, called - flushed, done - called))
        return n

    def close(self) -> None:
        self.inner.close()


class _Bounded(StatefulSourcePartition[SourceItem, Any]):
    """Ends a never-ending partition after ``limit`` records, optionally idling first."""

    def __init__(self, inner: Any, limit: int, idle_s: float, on_end: Callable[[], None]):
        self.inner, self.limit, self.idle_s, self.on_end = inner, limit, idle_s, on_end
        self.seen = 0
        self.done_at: float | None = None

    def next_batch(self) -> list[SourceItem]:
        if self.seen >= self.limit:
            self.done_at = self.done_at or time.monotonic()
            if time.monotonic() - self.done_at >= self.idle_s:
                self.on_end()
                raise StopIteration
            return []
        batch: list[SourceItem] = self.inner.next_batch()
        self.seen += len(batch)
        return batch

    def next_awake(self) -> datetime | None:
        if self.done_at is not None:
            return datetime.now(UTC) + timedelta(milliseconds=50)
        awake: datetime | None = self.inner.next_awake()
        return awake

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class BoundedStream(FixedPartitionedSource[SourceItem, Any]):
    def __init__(
        self,
        inner: RedisStreamSource,
        limit: int,
        idle_s: float = 0.0,
        on_end: Callable[[], None] = lambda: None,
    ) -> None:
        self.inner, self.limit, self.idle_s, self.on_end = inner, limit, idle_s, on_end

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _Bounded:
        part = self.inner.build_part(step_id, for_part, resume_state)
        return _Bounded(part, self.limit, self.idle_s, self.on_end)


# A producer of its own process (the flow's process must not pay for it): XADDs raw JSON lines
# in pipelined bursts of rate/200 on a steady schedule; prints when the steady phase starts.
PRODUCER = r"""
import sys, time, redis
url, stream, path, rate, total, warmup = sys.argv[1:7]
rate, total, warmup = int(rate), int(total), int(warmup)
with open(path) as f:
    lines = [line.rstrip("\n") for _, line in zip(range(total + warmup), f)]
client = redis.Redis.from_url(url)
pipe = client.pipeline(transaction=False)
for line in lines[:warmup]:
    pipe.xadd(stream, {"e": line})
pipe.execute()
time.sleep(3.0)
print(time.time(), flush=True)
chunk = max(1, rate // 200)
start = time.perf_counter()
for i in range(warmup, len(lines), chunk):
    pause = start + (i - warmup) / rate - time.perf_counter()
    if pause > 0:
        time.sleep(pause)
    for line in lines[i : i + chunk]:
        pipe.xadd(stream, {"e": line})
    pipe.execute()
print(time.perf_counter() - start, flush=True)
"""


def freshness(
    path: Path,
    settings: Settings,
    url: str,
    rate: int,
    seconds: float,
    name: str,
    n: int,
    epoch_s: float = 10.0,
) -> None:
    """Publish at a steady rate from another process while the flow runs; percentiles."""
    warmup = 500
    total = min(int(rate * seconds), n - warmup)  # the file holds n events
    samples: list[Sample] = []
    s = settings.with_(stream=f"bench:{name}")
    parts = flow_parts(s, "batch", name)
    parts["writer_factory"] = frozen_after(
        lambda: TimingWriter(open_writer(s, flow=True, exclusive=True), samples)
    )
    source = BoundedStream(RedisStreamSource(url, [s.stream], batch_size=1000), total + warmup)
    flow = build_flow(source, s, **parts)
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, url, s.stream, str(path), str(rate), str(total),
         str(warmup)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    c0, t0 = time.process_time(), time.perf_counter()
    with flush_stamps(), worker_pauses() as pauses:
        run_main(flow, epoch_interval=timedelta(seconds=epoch_s))
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    out, _ = producer.communicate(timeout=60)
    steady_from_s, produced_s = out.split()[:2]
    steady_from = float(steady_from_s) - 0.001  # stream ids have millisecond resolution
    steady = sorted((x for x in samples if x[0] >= steady_from), key=lambda x: x[1])
    totals = [x[1] for x in steady]
    q = statistics.quantiles(totals, n=100)
    print(
        f"\n[freshness] {total:,} events at {rate:,}/s (published in {float(produced_s):.1f} s) "
        f"after {warmup} warm-up events, {len(steady):,} row writes: p50 {q[49] * 1000:.1f} ms, "
        f"p99 {q[98] * 1000:.1f} ms, max {totals[-1] * 1000:.1f} ms (XADD -> row readable; "
        f"batch deadline {s.batch_deadline_ms:g} ms, {s.batch_max_rows} rows); flow CPU "
        f"{cpu / wall * 100:.0f}% of a core; load {os.getloadavg()[0]:.2f}"
    )
    # Where the time goes: each part's p50/p99 over all samples, and its mean over the
    # samples at or above the p99 of the total (what the tail is made of).
    tail = [x for x in steady if x[1] >= q[98]]
    parts = ("XADD -> out of the fold", "fold -> write call", "write call")
    for i, label in enumerate(parts, start=2):
        values = sorted(x[i] for x in steady)
        qi = statistics.quantiles(values, n=100)
        print(
            f"  {label:<24} p50 {qi[49] * 1000:6.1f} ms, p99 {qi[98] * 1000:6.1f} ms; "
            f"in the slowest 1%: mean {statistics.fmean(x[i] for x in tail) * 1000:6.1f} ms"
        )
    pauses.report(steady_from)


class Pauses:
    """The worker's stops during a run: collector pauses by generation and the engine's
    end-of-epoch snapshots (every shard's, one after another), as (started, seconds)."""

    def __init__(self) -> None:
        self.gc: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}
        self.snapshots: list[tuple[float, float]] = []

    def report(self, since: float) -> None:
        names = {0: "young", 1: "middle", 2: "full"}
        parts = []
        for gen, xs in self.gc.items():
            d = [x[1] for x in xs if x[0] >= since]
            if d:
                parts.append(f"{names[gen]} {len(d)} (max {max(d) * 1000:.1f} ms)")
        # One epoch's snapshots run back to back: group those less than 50 ms apart.
        epochs: list[float] = []
        last = -1.0
        for at, took in sorted(x for x in self.snapshots if x[0] >= since):
            if at - last < 0.05:
                epochs[-1] += took
            else:
                epochs.append(took)
            last = at + took
        stalls = ", ".join(f"{x * 1000:.1f}" for x in epochs) or "none"
        print(
            f"  worker pauses in the steady phase: collections {'; '.join(parts) or 'none'}; "
            f"end-of-epoch snapshots, all shards: {stalls} ms"
        )


@contextmanager
def worker_pauses() -> Iterator[Pauses]:
    """Time the collector (``gc.callbacks``) and the shards' snapshots during a run."""
    pauses = Pauses()
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.time()
        else:
            pauses.gc[info["generation"]].append((started[0], time.time() - started[0]))

    snapshot = session_shards.ShardLogic.snapshot

    def timed_snapshot(logic: session_shards.ShardLogic) -> bytes:
        at = time.time()
        blob = snapshot(logic)
        pauses.snapshots.append((at, time.time() - at))
        return blob

    gc.callbacks.append(on_gc)
    session_shards.ShardLogic.snapshot = timed_snapshot  # type: ignore[method-assign]
    try:
        yield pauses
    finally:
        gc.callbacks.remove(on_gc)
        session_shards.ShardLogic.snapshot = snapshot  # type: ignore[method-assign]


# -- memory and the gap ------------------------------------------------------------------------


def read_events(path: Path, limit: int) -> list[Event]:
    out = []
    for item in read_event_file(path):
        if isinstance(item, Event):
            out.append(item)
            if len(out) >= limit:
                break
    return out


def memory_per_session(path: Path, n_events: int) -> None:
    """Bytes held per live session by a shard (states, TTL order, pending rows) and its
    snapshot; the FlushWriter's remembered version per session on top."""
    events = read_events(path, n_events)
    arrivals = [Arrival(e, 1.0, "") for e in events]
    policy = Settings().session_policy
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    shard = SessionShard(policy, 1800.0)
    for i in range(0, len(arrivals), 1000):
        shard.fold_batch(arrivals[i : i + 1000], 1.0)
    # The per-session bytes kept for incremental snapshots count as held memory.
    blob = shard.to_bytes()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(base, "filename")) - len(blob)
    known = {"\x00" * 30 + sid: 1 for sid in shard.states}  # ~ the writer's key -> version
    known_bytes = sys.getsizeof(known) + sum(sys.getsizeof(k) for k in known)
    n = len(shard)
    print(
        f"\n[memory] {n:,} live sessions (mean {len(events) / n:.1f} events): "
        f"{held / n:,.0f} bytes of Python state per session (shard, with its snapshot bytes), "
        f"+{known_bytes / n:,.0f} bytes remembered by the writer; "
        f"snapshot {len(blob) / n:,.0f} bytes per session (msgpack, {len(blob) / 1e6:.1f} MB)"
    )


def keys_after_gap(path: Path, settings: Settings, url: str) -> None:
    """Live session states once the state TTL has passed idle (must be 0)."""
    from featrec.adapters.redis.streams import publish

    ttl = 1.0
    s = settings.with_(stream="bench:gap", state_ttl_s=ttl)
    events = read_events(path, 20_000)
    publish(url, s.stream, events)
    seen: dict[str, float] = {}

    def record() -> None:
        seen["live"] = metrics.LIVE_SESSIONS._value.get()

    before = metrics.LIVE_SESSIONS._value.get()
    flow = build_flow(
        BoundedStream(
            RedisStreamSource(url, [s.stream]), len(events), idle_s=ttl + 1.5, on_end=record
        ),
        s,
        **flow_parts(s, "batch", "gap"),
    )
    run_main(flow)
    n_sessions = len({e.session_id for e in events})
    print(
        f"\n[gap] {len(events):,} events in {n_sessions:,} sessions, state TTL {ttl:g} s: "
        f"live session states after {ttl + 1.5:g} s idle: {seen['live'] - before:.0f}"
    )


if __name__ == "__main__":
    main()
