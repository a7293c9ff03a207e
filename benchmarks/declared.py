"""Declared features: stream cost per feature per event, state memory, batch time.

Phases, one run (run it under ``flock /tmp/featrec-heavy.lock``):

- ``stream``: the declared dataflow (``run_main``, in-memory store) over ``--stream-events``
  generated events, once with one declared feature (the baseline: decode, routing, bytewax,
  writes) and once with the 20 of :func:`twenty`; the CPU difference divided by 19 features
  and the events is the cost of one declared feature per event. The pure fold
  (``DeclaredShard.fold``) is timed alone too.
- ``memory``: state size (tracemalloc) per key and window after the stream phase's events.
- ``batch``: ``--batch-events`` generated events written as an event log, then the DuckDB
  engine: load, the 20 features as of every key's newest event (materialization), and the
  offline history (every key at every event time) for one declaration (``--skip-history``:
  not, for sizes where it would take hours). A linear extrapolation to 10M is printed as such.

    .venv/bin/python benchmarks/declared.py --stream-events 100000 --batch-events 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.declared import build_flow
from featrec.adapters.duckdb.declared import DeclaredBatch
from featrec.adapters.files.event_log import EventLogWriter
from featrec.core.events.formats import RawRecord
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event
from featrec.core.features.declared.model import (
    DAY_US,
    HOUR_US,
    US,
    Aggregation,
    Declaration,
    Filters,
    Function,
    validate,
)
from featrec.core.features.declared.shard import DeclaredShard
from featrec.core.ports.features import InMemoryFeatureStore


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def agg(
    name: str, column: str, f: Function, window: int | None, hop: int | None, n: int = 0
) -> Aggregation:
    return Aggregation(name, column, f, n=n, window_us=window, hop_us=hop)


M5 = 5 * 60 * US


def twenty() -> list[Declaration]:
    """20 declared features over the three entities, every function, all window kinds."""
    session = Declaration(
        "b_session",
        "session",
        (
            agg("s_last5", "item_id", Function.LAST_N, None, None, 5),
            agg("s_ncat", "category", Function.COUNT_DISTINCT, None, None),
            agg("s_mean_price", "price", Function.MEAN, None, None),
            agg("s_n_1h", "item_id", Function.COUNT, HOUR_US, M5),
            agg("s_max_price", "price", Function.MAX, None, None),
        ),
    )
    user = Declaration(
        "b_user",
        "user",
        (
            agg("u_n_1h", "item_id", Function.COUNT, HOUR_US, M5),
            agg("u_n_24h", "item_id", Function.COUNT, DAY_US, HOUR_US),
            agg("u_items_7d", "item_id", Function.COUNT_DISTINCT, 7 * DAY_US, DAY_US),
            agg("u_spend_30d", "price", Function.SUM, 30 * DAY_US, DAY_US),
            agg("u_last_cat_7d", "category", Function.LAST, 7 * DAY_US, DAY_US),
        ),
    )
    carts = Declaration(
        "b_user_carts",
        "user",
        (
            agg("c_n_24h", "item_id", Function.COUNT, DAY_US, HOUR_US),
            agg("c_value_24h", "price", Function.SUM, DAY_US, HOUR_US),
            agg("c_min_price_7d", "price", Function.MIN, 7 * DAY_US, DAY_US),
            agg("c_last3_7d", "item_id", Function.LAST_N, 7 * DAY_US, DAY_US, 3),
            agg("c_qty_30d", "quantity", Function.SUM, 30 * DAY_US, DAY_US),
        ),
        Filters(event_types=("cart", "purchase")),
    )
    item = Declaration(
        "b_item",
        "item",
        (
            agg("i_n_1h", "item_id", Function.COUNT, HOUR_US, M5),
            agg("i_n_24h", "item_id", Function.COUNT, DAY_US, HOUR_US),
            agg("i_sessions_24h", "session_id", Function.COUNT_DISTINCT, DAY_US, HOUR_US),
            agg("i_price_7d", "price", Function.LAST, 7 * DAY_US, DAY_US),
            agg("i_buyers_30d", "user_id", Function.COUNT_DISTINCT, 30 * DAY_US, DAY_US),
        ),
    )
    return [validate(d) for d in (session, user, carts, item)]


def one() -> list[Declaration]:
    return [
        validate(
            Declaration("b_one", "user", (agg("n_1h", "item_id", Function.COUNT, HOUR_US, M5),))
        )
    ]


def events(n: int, seed: int = 1) -> list[Event]:
    return list(
        generate(GeneratorConfig(n_events=n, seed=seed, n_users=20_000, concurrent_sessions=2000))
    )


def run_flow(raws: Sequence[RawRecord], declarations: list[Declaration]) -> tuple[float, int]:
    store = InMemoryFeatureStore()
    flow = build_flow(
        TestingSource(list(raws), batch_size=1000),
        declarations,
        writer_factory=lambda: store,
        dead_letter_sink=TestingSink([]),
    )
    start = cpu()
    run_main(flow)
    return cpu() - start, sum(len(store.keys(d.name)) for d in declarations)


def stream_phase(n: int) -> list[Event]:
    evs = events(n)
    raws = [RawRecord("featrec", f"b:{i}", json.dumps(e.to_dict()), 1.0) for i, e in enumerate(evs)]
    decls = twenty()
    n_features = sum(len(d.aggregations) for d in decls)
    base, _ = run_flow(raws, one())
    full, keys = run_flow(raws, decls)
    base2, _ = run_flow(raws, one())
    base = min(base, base2)
    print(
        f"stream: {n:,} events; flow CPU with 1 feature {base:.2f} s "
        f"({base / n * 1e6:.2f} µs/event), with {n_features} features {full:.2f} s "
        f"({full / n * 1e6:.2f} µs/event), {keys:,} rows"
    )
    per = (full - base) / (n_features - 1) / n * 1e6
    print(f"stream: marginal cost of one declared feature: {per:.3f} CPU-µs per event")
    shard = DeclaredShard(decls)
    start = cpu()
    for i in range(0, n, 1000):
        shard.fold(evs[i : i + 1000])
    fold = cpu() - start
    print(
        f"stream: pure fold of {n_features} features: {fold / n * 1e6:.2f} CPU-µs per event "
        f"({fold / n / n_features * 1e6:.3f} per feature per event)"
    )
    return evs


def memory_phase(evs: list[Event]) -> None:
    decls = twenty()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    shard = DeclaredShard(decls)
    for i in range(0, len(evs), 1000):
        shard.fold(evs[i : i + 1000])
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    keys = len(shard.states)
    windows = sum(len(s.decl.aggregations) for s in shard.states.values())
    buckets = sum(s.n_buckets() for s in shard.states.values())
    blob = len(shard.to_bytes())
    print(
        f"memory: {keys:,} (declaration, key) states, {windows:,} key-windows, {buckets:,} "
        f"buckets: {(after - before) / 1e6:.1f} MB traced = {(after - before) / keys:.0f} B per "
        f"key-declaration, {(after - before) / windows:.0f} B per key-window; snapshot "
        f"{blob / 1e6:.1f} MB"
    )


def batch_phase(n: int, work: Path, history: bool = True) -> None:
    log = work / "log"
    if log.exists():
        shutil.rmtree(log)
    start = time.perf_counter()
    writer = EventLogWriter(log)
    chunk: list[Event] = []
    for e in generate(
        GeneratorConfig(
            n_events=n, seed=2, n_users=200_000, n_items=50_000, concurrent_sessions=5000
        )
    ):
        chunk.append(e)
        if len(chunk) == 200_000:
            writer.write(chunk)
            chunk = []
    if chunk:
        writer.write(chunk)
    print(f"batch: generated and logged {n:,} events in {time.perf_counter() - start:.1f} s")
    decls = twenty()
    t0 = time.perf_counter()
    c0 = cpu()
    with DeclaredBatch(log) as batch:
        loaded = time.perf_counter() - t0
        rows = 0
        for decl in decls:
            rows += batch.compute(decl, batch.latest_points(decl)).num_rows
        latest = time.perf_counter() - t0 - loaded
        t1 = time.perf_counter()
        hist = batch.compute(decls[1], batch.history_points(decls[1])).num_rows if history else 0
        took = time.perf_counter() - t1
    wall = time.perf_counter() - t0
    used = cpu() - c0
    print(
        f"batch: load {loaded:.1f} s; 20 features as of each key's newest event "
        f"({rows:,} rows) {latest:.1f} s; history of b_user (5 features, {hist:,} rows) "
        f"{took:.1f} s{'' if history else ' (skipped)'}; total {wall:.1f} s wall, {used:.1f} s CPU"
    )
    scale = 10_000_000 / n
    print(
        f"batch: extrapolated linearly to 10M events: latest ~{(loaded + latest) * scale:.0f} s,"
        f" history of one 5-feature declaration ~{took * scale:.0f} s (not measured)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream-events", type=int, default=100_000)
    parser.add_argument("--batch-events", type=int, default=1_000_000)
    parser.add_argument("--phases", default="stream,memory,batch")
    parser.add_argument(
        "--skip-history", action="store_true", help="Batch: only the newest rows (materialization)."
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/featrec-declared-bench"))
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()}")
    phases = args.phases.split(",")
    evs: list[Event] = []
    if "stream" in phases:
        evs = stream_phase(args.stream_events)
    if "memory" in phases:
        memory_phase(evs or events(args.stream_events))
    if "batch" in phases:
        args.work.mkdir(parents=True, exist_ok=True)
        batch_phase(args.batch_events, args.work, history=not args.skip_history)
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
