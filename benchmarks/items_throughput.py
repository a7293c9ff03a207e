"""Throughput of the item signals flow next to the sessions flow, and memory per key.

Generates synthetic events (featrec JSON lines), then runs, in-process with
``bytewax.testing.run_main`` (one worker), side by side on the same file:

1. ``sessions``         the production sessions flow (rows + Parquet event log + dead letters);
2. ``items``            the production item signals flow (``dataflows.items``), its own decode;
   ``items per-event``  the same in its previous shape (``FEATREC_FLOW_SHAPE=per-event``);
3. ``sessions+items``   the sessions flow with the item signal steps grafted onto its decoded
                        events (what "item signals inside the sessions flow" would cost).

``items`` on its own is the cost of a separate flow; (1)+(2) against (3) is what sharing the
decode would save. Rows go to an in-memory store, or with ``--redis`` into a private
redis-server with the Feast repo applied, through the writer each flow uses in production
(``open_writer(flow=True)``: the one-round-trip ``FlushWriter``, exclusive for the sessions
flow, every row guarded for the item flows). Pair updates/s and rows written (the
rate limit at work) are printed per flow. Memory per key is measured with tracemalloc over the
flow's own state objects (logic + state) built from a bootstrap of the same events.

    .venv/bin/python benchmarks/items_throughput.py                   # 200k events
    .venv/bin/python benchmarks/items_throughput.py --events 50000 --redis --profile
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import pstats
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.testing import run_main
from prometheus_client import REGISTRY

REPO_ROOT = Path(__file__).resolve().parents[1]

from dataflows import items as items_flow  # noqa: E402
from dataflows import sessions as sessions_flow  # noqa: E402
from dataflows.batching import micro_batch, shard_chunks  # noqa: E402
from dataflows.gc_tuning import ITEMS_GC_THRESHOLDS, SESSIONS_GC_THRESHOLDS, tune_gc  # noqa: E402
from dataflows.item_logic import (  # noqa: E402
    EventClock,
    NeighbourLogic,
    PairLogic,
    Sequenced,
    Throttled,
    TrendLogic,
)
from dataflows.sessions import Arrival  # noqa: E402
from dataflows.sinks import DeadLetterSink, EventLogSink, FeatureSink  # noqa: E402
from dataflows.sources import FileReplaySource  # noqa: E402
from featrec.adapters.files.event_files import read_events, write_events  # noqa: E402
from featrec.app.item_signals import ItemSignalsConfig, bootstrap  # noqa: E402
from featrec.core.events.generator import GeneratorConfig, generate  # noqa: E402
from featrec.core.events.model import Event  # noqa: E402
from featrec.core.features.rows import FeatureRow, micros  # noqa: E402
from featrec.core.items.covisit import RecentItems, observe  # noqa: E402
from featrec.core.ports.features import FeatureWriter, InMemoryFeatureStore  # noqa: E402
from featrec.settings import Settings  # noqa: E402
from featrec.testing.redis_server import RedisServer  # noqa: E402


class CountingWriter:
    """Counts the rows handed to the inner writer, per view."""

    def __init__(self, inner: FeatureWriter, counts: dict[str, int]) -> None:
        self.inner = inner
        self.counts = counts

    def write(self, rows: Any) -> int:
        for row in rows:
            self.counts[row.view] = self.counts.get(row.view, 0) + 1
        return self.inner.write(rows)

    def close(self) -> None:
        self.inner.close()


def pair_updates_so_far() -> float:
    return REGISTRY.get_sample_value("featrec_items_pair_updates_total") or 0.0


def sessions_only(path: Path, settings: Settings, writer: Callable[[], FeatureWriter]) -> Dataflow:
    return sessions_flow.build_flow(
        FileReplaySource([path]),
        settings,
        writer_factory=writer,
        dead_letter_sink=DeadLetterSink(file=settings.dead_letter_file),
        event_log_sink=EventLogSink(settings.event_log_dir),
    )


def items_only(path: Path, settings: Settings, writer: Callable[[], FeatureWriter]) -> Dataflow:
    return items_flow.build_flow(
        FileReplaySource([path]),
        settings,
        writer_factory=writer,
        dead_letter_sink=DeadLetterSink(file=settings.home / "dead-items.jsonl"),
    )


def items_per_event(
    path: Path, settings: Settings, writer: Callable[[], FeatureWriter]
) -> Dataflow:
    """The items flow in its previous shape (one engine key per session, anchor and item)."""
    return items_only(path, settings.with_(flow_shape="per-event"), writer)


def combined(path: Path, settings: Settings, writer: Callable[[], FeatureWriter]) -> Dataflow:
    """The sessions flow, plus the item signal steps on its decoded events (one decode)."""
    flow = sessions_only(path, settings, writer)
    # The sessions flow does not expose its decoded stream; address it by its stream id.
    # Batch shape: (shard, [Arrival, ...]) chunks (or a Forget); per-event shape: Arrivals.
    arrivals: Stream[Any] = Stream(f"{sessions_flow.FLOW_ID}.split.trues", flow._scope)
    clock = EventClock()
    seq = itertools.count()

    def sequenced(items: list[Any]) -> list[Sequenced]:
        batch: list[Arrival] = []
        for item in items:
            if type(item) is Arrival:
                batch.append(item)
            elif isinstance(item, tuple) and isinstance(item[1], list):
                batch.extend(item[1])
        out = [Sequenced(next(seq), a.event, a.ingested_at) for a in batch]
        if out:
            clock.advance(max(micros(a.event.ts) for a in batch))
        return out

    tagged = op.flat_map_batch("items_sequence", arrivals, sequenced)
    config = ItemSignalsConfig.from_settings(settings)
    shards = items_flow.DEFAULT_SHARDS
    rows = items_flow.add_sharded_item_signals(tagged, settings, config, clock, shards)

    def shard(kvs: list[tuple[str, Any]]) -> list[tuple[str, list[FeatureRow]]]:
        flat = [r for _, out in kvs for r in (out if type(out) is list else [out])]
        return shard_chunks(flat, lambda r: r.key, shards)

    deadline = timedelta(milliseconds=settings.batch_deadline_ms)
    batches = micro_batch(
        "items_batch_rows",
        op.flat_map_batch("items_shard_rows", rows, shard),
        settings.batch_max_rows,
        deadline,
    )
    sink = FeatureSink(writer, flow_name="items")
    op.output("items_write", op.key_rm("items_unkey_rows", batches), sink)
    return flow


Builder = Callable[[Path, Settings, Callable[[], FeatureWriter]], Dataflow]


def measure(
    name: str,
    build: Builder,
    path: Path,
    settings: Settings,
    new_writer: Callable[[bool], FeatureWriter],
    n: int,
    repeat: int,
    reset: Callable[[], None],
    thresholds: tuple[int, int, int],
    exclusive: bool,
) -> tuple[float, float]:
    """Best wall and CPU seconds of ``repeat`` runs (the machine is shared: the minimum is the
    least disturbed figure), with the collector tuned as the flow's ``flow()`` tunes it in
    production; prints one line."""
    best_wall = best_cpu = float("inf")
    pairs = 0.0
    counts: dict[str, int] = {}
    for i in range(repeat):
        home = settings.home / f"{name}-{i}"
        run_settings = settings.with_(home=home)
        counts = {}
        reset()
        inner = new_writer(exclusive)

        def writer(inner: FeatureWriter = inner, counts: dict[str, int] = counts) -> Any:
            return CountingWriter(inner, counts)

        flow = build(path, run_settings, writer)
        before = pair_updates_so_far()
        tune_gc(thresholds)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        run_main(flow)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        pairs = pair_updates_so_far() - before
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
        shutil.rmtree(home, ignore_errors=True)
    rows = ", ".join(f"{v} {c:,}" for v, c in sorted(counts.items()))
    pair_rate = f"{pairs / best_wall:>10,.0f}" if pairs else f"{'-':>10}"
    print(
        f"{name:<16} {n / best_wall:>10,.0f} {best_wall / n * 1e6:>9.1f} "
        f"{best_cpu / n * 1e6:>9.1f} {pair_rate}   rows: {rows}"
    )
    return best_wall, best_cpu


def memory_per_key(events: list[Event], settings: Settings) -> None:
    """Bytes per live key of each stateful step: the logic object plus its state, built from
    the final state of a bootstrap over the same events (what the flow holds per key)."""
    config = ItemSignalsConfig.from_settings(settings)
    signals = bootstrap(events, config)
    buffers: dict[str, RecentItems] = {}
    for event in events:
        observe(buffers.setdefault(event.session_id, RecentItems()), event, config.covisit)
    clock = EventClock()
    interval, idle = timedelta(seconds=5), timedelta(minutes=10)
    cases: list[tuple[str, int, Callable[[], list[Any]]]] = [
        (
            "session (PairLogic + RecentItems)",
            len(buffers),
            lambda: [PairLogic(config, idle, b) for b in buffers.values()],
        ),
        (
            "anchor (NeighbourLogic + sketch)",
            len(signals.index.sketches),
            lambda: [
                NeighbourLogic(config, interval, idle, clock, Throttled(a, s, False))
                for a, s in signals.index.sketches.items()
            ],
        ),
        (
            "item (TrendLogic + ItemTrend)",
            len(signals.board.items),
            lambda: [
                TrendLogic(config, interval, idle, clock, Throttled(i, t, False))
                for i, t in signals.board.items.items()
            ],
        ),
    ]
    counters = [len(s.counts) for s in signals.index.sketches.values()]
    print(
        f"\nmemory per live key (tracemalloc; {len(counters):,} anchors, mean "
        f"{sum(counters) / len(counters):.1f} and max {max(counters)} neighbours kept, "
        f"capacity {config.covisit.capacity}):"
    )
    for label, n, build in cases:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        held = build()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        print(f"  {label:<36} {(after - before) / n:>8,.0f} B  x {n:,} keys")
        del held
    # The board holds one ItemTrend per item (shared with nothing: copies).
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    copies = {i: t.copy() for i, t in signals.board.items.items()}
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"  {'board entry (ItemTrend copy)':<36} {(after - before) / len(copies):>8,.0f} B")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=2, help="runs per figure (best kept)")
    ap.add_argument("--redis", action="store_true", help="write to a private redis-server")
    ap.add_argument("--profile", action="store_true", help="cProfile the items flow")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="featrec-items-") as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "events.jsonl"
        t0 = time.perf_counter()
        config = GeneratorConfig(
            n_events=args.events,
            n_users=max(10_000, args.events // 20),
            n_items=max(5_000, args.events // 100),
            seed=1,
        )
        n = write_events(path, generate(config))
        print(f"generated {n:,} events in {time.perf_counter() - t0:.1f} s")
        server = None
        settings = Settings(home=tmp / "home")
        new_writer: Callable[[bool], FeatureWriter] = lambda exclusive: InMemoryFeatureStore()  # noqa: E731
        reset: Callable[[], None] = lambda: None  # noqa: E731
        try:
            if args.redis:
                (tmp / "redis").mkdir()
                server = RedisServer(tmp / "redis")
                server.start()
                settings = prepare_repo(tmp, server.url)
                from featrec.adapters.feast.writers import open_writer

                new_writer = partial(open_writer, settings, flow=True)
                reset = server.client().flushall
                print(f"store: private redis-server, each flow's production writer ({server.url})")
            else:
                print("store: in-memory")
            print(
                f"rate limit {settings.item_write_interval_s:g} s per item; "
                f"batch {settings.batch_max_rows} rows / {settings.batch_deadline_ms:g} ms"
            )
            print(
                f"\n{'flow':<16} {'events/s':>10} {'wall µs/ev':>9} {'CPU µs/ev':>9} "
                f"{'pairs/s':>10}"
            )
            # The sessions flow is the only writer of its entities (exclusive, as in
            # production); the item flows guard every row (`featrec items bootstrap` may
            # write the same ones), and so does the grafted flow, which writes both.
            flows: dict[str, tuple[Builder, tuple[int, int, int], bool]] = {
                "sessions": (sessions_only, SESSIONS_GC_THRESHOLDS, True),
                "items": (items_only, ITEMS_GC_THRESHOLDS, False),
                "items per-event": (items_per_event, ITEMS_GC_THRESHOLDS, False),
                "sessions+items": (combined, ITEMS_GC_THRESHOLDS, False),
            }
            results = {
                name: measure(
                    name,
                    build,
                    path,
                    settings,
                    new_writer,
                    n,
                    args.repeat,
                    reset,
                    thresholds,
                    exclusive,
                )
                for name, (build, thresholds, exclusive) in flows.items()
            }
            if server is not None:
                server.client().flushall()
            (s_wall, s_cpu), (i_wall, i_cpu) = results["sessions"], results["items"]
            c_wall, c_cpu = results["sessions+items"]
            print(
                f"\ntwo flows (sessions + items): {(s_cpu + i_cpu) / n * 1e6:.1f} CPU µs/event; "
                f"one flow: {c_cpu / n * 1e6:.1f} CPU µs/event; a separate flow costs "
                f"{(s_cpu + i_cpu - c_cpu) / n * 1e6:+.1f} µs/event "
                f"({(s_cpu + i_cpu) / c_cpu - 1:+.0%}); item signals add "
                f"{(c_cpu - s_cpu) / s_cpu:+.0%} to the sessions flow's CPU"
            )
            p_wall, p_cpu = results["items per-event"]
            print(
                f"items flow, batch shape vs per-event shape (same run): "
                f"{p_wall / i_wall:.1f}x events/s, {p_cpu / i_cpu:.1f}x less CPU"
            )
            del s_wall, i_wall, c_wall
            events = [e for e in read_events(path) if isinstance(e, Event)]
            memory_per_key(events[: min(len(events), 200_000)], settings)
            if args.profile:
                profiler = cProfile.Profile()
                flow = items_only(
                    path, settings.with_(home=tmp / "profiled"), partial(new_writer, False)
                )
                profiler.runcall(run_main, flow)
                print()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
        finally:
            if server is not None:
                server.stop()


def prepare_repo(tmp: Path, redis_url: str) -> Settings:
    from featrec.adapters.feast.repo import apply_repo

    repo = tmp / "repo"
    repo.mkdir()
    for source in (REPO_ROOT / "feature_repo").iterdir():
        if source.is_file() and source.suffix in (".py", ".yaml"):
            shutil.copy(source, repo / source.name)
    settings = Settings(home=tmp / "home", repo=repo, online_store="redis", redis_url=redis_url)
    apply_repo(settings)
    return settings


if __name__ == "__main__":
    main()
