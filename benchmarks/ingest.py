"""End-to-end ingest benchmark of the sessions dataflow into Redis in Feast's layout.

Everything is real: a private redis-server started here, a Feast repo applied to a temp dir,
the production flow (``dataflows.sessions.build_flow``) run in-process by
``bytewax.testing.run_main`` with one worker. Figures printed:

1. throughput: generated events/s from file replay to rows in Redis (fast writer), plus the
   Parquet event log and dead letters, over ``--events`` events (>= 10k concurrent sessions);
2. the same prefix of ``--feast-events`` events through the fast writer and through Feast's
   ``write_to_online_store`` (``FEATREC_WRITER=feast``), measured in this run: the ratio;
3. freshness p50/p99 at a steady ``--rate`` events/s published to a Redis Stream: from the
   XADD (the stream id's millisecond clock) to the write of the row that includes the event;
4. memory per live session (tracemalloc over folded session states and their snapshots);
5. keys left after the gap: live sessions still held once ``state_ttl`` has passed idle;
6. with ``--profile``: where the time goes (cProfile of a throughput run).

    .venv/bin/python benchmarks/ingest.py                      # 1M events, ~3-5 min
    .venv/bin/python benchmarks/ingest.py --events 200000 --feast-events 20000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import statistics
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import run_main

REPO_ROOT = Path(__file__).resolve().parents[1]

from dataflows import metrics  # noqa: E402
from dataflows.gc_tuning import tune_gc  # noqa: E402
from dataflows.sessions import build_flow  # noqa: E402
from dataflows.sinks import DeadLetterSink, EventLogSink  # noqa: E402
from dataflows.sources import FileReplaySource, RedisStreamSource, SourceItem  # noqa: E402
from featrec.adapters.feast.repo import apply_repo  # noqa: E402
from featrec.adapters.feast.writers import open_writer  # noqa: E402
from featrec.adapters.files.event_files import write_events  # noqa: E402
from featrec.adapters.redis.streams import publish  # noqa: E402
from featrec.core.events.generator import GeneratorConfig, generate  # noqa: E402
from featrec.core.events.model import Event  # noqa: E402
from featrec.core.features.rows import FeatureRow  # noqa: E402
from featrec.core.ports.features import FeatureWriter  # noqa: E402
from featrec.core.sessions.fold import fold, new_state  # noqa: E402
from featrec.settings import Settings  # noqa: E402
from featrec.testing.redis_server import RedisServer  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--concurrent", type=int, default=10_000)
    ap.add_argument("--feast-events", type=int, default=50_000)
    ap.add_argument("--rate", type=int, default=10_000, help="events/s for the freshness run")
    ap.add_argument("--rate-seconds", type=float, default=20.0)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="featrec-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        server = RedisServer(tmp)
        server.start()
        try:
            run(args, tmp, server)
        finally:
            server.stop()


def run(args: argparse.Namespace, tmp: Path, server: RedisServer) -> None:
    settings = prepare_repo(tmp, server.url)
    client = server.client()
    tune_gc()  # as dataflows.sessions:flow() does in production

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

    # 1. Throughput, fast writer, the whole file.
    rate, wall = replay(events_path, settings, "fast")
    keys = client.dbsize()
    print(
        f"\n[throughput] fast writer: {n:,} events in {wall:.1f} s = {rate:,.0f} events/s "
        f"end to end ({keys:,} Redis keys, {sessions:,} sessions)"
    )

    # 2. Same prefix, fast vs Feast's write_to_online_store, same run.
    prefix = tmp / "prefix.jsonl"
    with events_path.open() as src, prefix.open("w") as dst:
        dst.writelines(islice(src, args.feast_events))
    client.flushall()
    fast_rate, _ = replay(prefix, settings, "fast")
    client.flushall()
    feast_rate, _ = replay(prefix, settings, "feast")
    print(
        f"[ratio] {args.feast_events:,} events: fast {fast_rate:,.0f} events/s, "
        f"Feast write_to_online_store {feast_rate:,.0f} events/s, "
        f"ratio {fast_rate / feast_rate:.1f}x"
    )

    # 3. Freshness at a steady rate through the Redis Stream source.
    client.flushall()
    freshness(events_path, settings, server.url, args.rate, args.rate_seconds)

    # 4. Memory per live session.
    memory_per_session(events_path, min(200_000, n))

    # 5. Keys left after the gap.
    client.flushall()
    keys_after_gap(events_path, settings, server.url)

    if args.profile:
        client.flushall()
        profile = cProfile.Profile()
        profile.enable()
        replay(prefix, settings, "fast")
        profile.disable()
        print("\n[profile] top functions by own time (fast writer, prefix run):")
        pstats.Stats(profile).sort_stats("tottime").print_stats(18)


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


def replay(path: Path, settings: Settings, writer: str) -> tuple[float, float]:
    """Run the production flow over a file; returns (events/s, wall seconds)."""
    s = settings.with_(writer=writer)
    lines = sum(1 for _ in path.open())
    flow = build_flow(
        FileReplaySource([path]),
        s,
        writer_factory=lambda: open_writer(s),
        dead_letter_sink=DeadLetterSink(file=s.dead_letter_file),
        event_log_sink=EventLogSink(s.event_log_dir / writer),
    )
    t0 = time.perf_counter()
    run_main(flow)
    wall = time.perf_counter() - t0
    return lines / wall, wall


class TimingWriter:
    """Wraps a real writer; records, per written row, now minus the row's ``ingested_at``."""

    def __init__(self, inner: FeatureWriter, samples: list[tuple[float, float]]) -> None:
        self.inner = inner
        self.samples = samples

    def write(self, rows: Sequence[FeatureRow]) -> int:
        n = self.inner.write(rows)
        done = time.time()
        self.samples.extend((r.ingested_at, done - r.ingested_at) for r in rows if r.ingested_at)
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


def read_events(path: Path, limit: int) -> list[Event]:
    from featrec.adapters.files.event_files import read_events as read

    out = []
    for item in read(path):
        if isinstance(item, Event):
            out.append(item)
            if len(out) >= limit:
                break
    return out


def freshness(path: Path, settings: Settings, url: str, rate: int, seconds: float) -> None:
    """Publish at a steady rate while the flow runs; percentiles of event->readable."""
    total = int(rate * seconds)
    warmup = 500
    events = read_events(path, total + warmup)
    samples: list[tuple[float, float]] = []
    steady_from: list[float] = []
    s = settings.with_(stream="bench:events")
    flow = build_flow(
        BoundedStream(RedisStreamSource(url, [s.stream], batch_size=1000), len(events)),
        s,
        writer_factory=lambda: TimingWriter(open_writer(s), samples),
        dead_letter_sink=DeadLetterSink(file=s.dead_letter_file),
        event_log_sink=EventLogSink(s.event_log_dir / "fresh"),
    )

    def produce() -> None:
        # Warm up first (flow start-up, connections), then publish at a steady rate and
        # count only events published from then on.
        publish(url, s.stream, events[:warmup])
        while not samples:
            time.sleep(0.01)
        steady_from.append(time.time() - 0.001)  # stream ids have millisecond resolution
        chunk = max(1, rate // 200)  # 200 pipelined XADD bursts per second
        start = time.perf_counter()
        for i in range(warmup, len(events), chunk):
            due = start + (i - warmup) / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            publish(url, s.stream, events[i : i + chunk], batch=chunk)

    producer = threading.Thread(target=produce, daemon=True)
    t0 = time.perf_counter()
    producer.start()
    run_main(flow)
    producer.join()
    wall = time.perf_counter() - t0
    steady = sorted(lat for at, lat in samples if at >= steady_from[0])
    q = statistics.quantiles(steady, n=100)
    print(
        f"\n[freshness] {total:,} events at {rate:,}/s after {warmup} warm-up events, "
        f"{wall:.1f} s ({len(steady):,} row writes): p50 {q[49] * 1000:.1f} ms, "
        f"p99 {q[98] * 1000:.1f} ms, max {steady[-1] * 1000:.1f} ms "
        f"(XADD ms clock -> row written; batch deadline {s.batch_deadline_ms:g} ms)"
    )


def memory_per_session(path: Path, n_events: int) -> None:
    """Bytes held per live session: fold states + one snapshot copy (what bytewax keeps)."""
    import pickle

    events = read_events(path, n_events)
    policy = Settings().session_policy
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    states: dict[str, Any] = {}
    for e in events:
        st = states.get(e.session_id)
        if st is None:
            st = states[e.session_id] = new_state(e.session_id)
        fold(st, e, policy)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(base, "filename"))
    pickled = statistics.mean(len(pickle.dumps(st)) for st in states.values())
    mean_events = len(events) / len(states)
    print(
        f"\n[memory] {len(states):,} live sessions (mean {mean_events:.1f} events): "
        f"{held / len(states):,.0f} bytes of Python state per session; "
        f"snapshot (pickled) {pickled:,.0f} bytes"
    )


def keys_after_gap(path: Path, settings: Settings, url: str) -> None:
    """Live session states once the state TTL has passed idle (must be 0)."""
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
        writer_factory=lambda: open_writer(s),
        dead_letter_sink=DeadLetterSink(file=s.dead_letter_file),
        event_log_sink=EventLogSink(s.event_log_dir / "gap"),
    )
    run_main(flow)
    n_sessions = len({e.session_id for e in events})
    print(
        f"\n[gap] {len(events):,} events in {n_sessions:,} sessions, state TTL {ttl:g} s: "
        f"live session states after {ttl + 1.5:g} s idle: {seen['live'] - before:.0f}"
    )


if __name__ == "__main__":
    main()
