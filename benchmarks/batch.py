"""The batch path at scale: batch job, materialization (stock vs fast), historical retrieval.

Phases (all by default, or pick with ``--phases``), in one work directory that is kept between
runs so the generated log is made once:

- ``generate``: ``--events`` generated events into the event log (skipped when the log already
  holds that many);
- ``batch``: load the log into DuckDB, then one user and one item snapshot per day of the log
  (``--days`` most recent days; 0 = all), timed apart;
- ``materialize``: a ``user_features`` snapshot of ``--users`` synthetic users, materialized into
  a private redis-server by Feast's local engine (``--stock-rows`` of them) and by the fast path
  (all of them), same run, then 1,000 random keys read back with stock ``get_online_features``
  and compared; the same on SQLite with ``--sqlite-rows``;
- ``historical``: ``get_historical_features`` (feature service ``long_term_v1``, DuckDB offline
  store) for ``--entity-rows`` entity rows drawn from the log, against the daily snapshots.

    .venv/bin/python benchmarks/batch.py --work /tmp/featrec-batch-bench
    .venv/bin/python benchmarks/batch.py --events 1000000 --users 200000 --phases batch
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import shutil
import time
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from featrec.adapters.duckdb.features import EventLogDB
from featrec.adapters.feast.reader import FeastOnlineReader
from featrec.adapters.feast.repo import apply_repo, open_store
from featrec.adapters.feast.types import arrow_schema
from featrec.adapters.files.event_log import EventLogWriter, event_log_files
from featrec.adapters.files.snapshots import snapshot_dir, write_snapshot
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import MIN_TS
from featrec.core.features import catalog
from featrec.core.features.catalog import Dtype
from featrec.core.features.snapshot_days import midnight
from featrec.jobs.batch import run_batch
from featrec.jobs.materialize import materialize, pull_latest
from featrec.jobs.training_sets import join_features
from featrec.settings import Settings
from featrec.testing.redis_server import running_redis as redis_server

REPO_SOURCE = Path(__file__).resolve().parents[1] / "feature_repo"
SNAPSHOT_AT = datetime(2024, 2, 1, tzinfo=UTC)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fresh_repo(path: Path, **settings: Any) -> Settings:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    for pattern in ("*.py", "*.yaml"):
        for source in REPO_SOURCE.glob(pattern):
            shutil.copy(source, path / source.name)
    s = Settings(home=path.parent / "home", repo=path, **settings)
    apply_repo(s)
    return s


# -- generate -------------------------------------------------------------------------------


def phase_generate(log: Path, n_events: int, n_users: int, concurrent: int) -> None:
    existing = sum(1 for _ in event_log_files(log))
    if existing:
        with EventLogDB(log) as db:
            if db.count() == n_events:
                print(f"generate: reusing the log in {log} ({n_events:,} events)")
                return
        shutil.rmtree(log)
    config = GeneratorConfig(
        n_events=n_events, n_users=n_users, n_items=100_000, concurrent_sessions=concurrent
    )
    t0 = time.perf_counter()
    writer = EventLogWriter(log, "bench")
    stream = generate(config)
    done = 0
    while batch := list(islice(stream, 500_000)):
        writer.write(batch)
        done += len(batch)
        print(f"  generated {done:,} events ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"generate: {done:,} events in {time.perf_counter() - t0:.1f} s")


# -- batch ----------------------------------------------------------------------------------


def phase_batch(log: Path, data: Path, days: int) -> list[datetime]:
    t0 = time.perf_counter()
    db = EventLogDB(log, temp_dir=log.parent / "duckdb-tmp")
    loaded = time.perf_counter() - t0
    n = db.count()
    span = db.time_range()
    assert span is not None, "empty log"
    first = datetime.fromtimestamp(span[0] / 1e6, tz=UTC).date()
    last = datetime.fromtimestamp(span[1] / 1e6, tz=UTC).date()
    all_days = [first + timedelta(days=i + 1) for i in range((last - first).days + 1)]
    chosen = all_days if days == 0 else all_days[-days:]
    print(
        f"batch: loaded and deduplicated {n:,} events in {loaded:.1f} s "
        f"({n / loaded:,.0f} events/s); log spans {first} .. {last}"
    )
    per_view: dict[str, list[float]] = {v: [] for v in catalog.BATCH_VIEWS}
    rows: dict[str, int] = {}
    t1 = time.perf_counter()
    for day in chosen:
        for view in catalog.BATCH_VIEWS:
            t = time.perf_counter()
            [written] = run_batch(db, data, [day], views=[view])
            per_view[view].append(time.perf_counter() - t)
            rows[view] = written.rows
    total = time.perf_counter() - t1
    db.close()
    for view, times in per_view.items():
        print(
            f"  {view}: {len(times)} daily snapshots, median {np.median(times):.2f} s, "
            f"last {times[-1]:.2f} s ({rows[view]:,} rows)"
        )
    print(
        f"batch: {len(chosen)} days x {len(per_view)} views in {total:.1f} s; "
        f"newest snapshot pair {sum(t[-1] for t in per_view.values()):.1f} s; "
        f"load + one day: {loaded + sum(t[-1] for t in per_view.values()):.1f} s; "
        f"peak RSS {rss_mb():,.0f} MB"
    )
    return [midnight(d) for d in chosen]


# -- materialize ----------------------------------------------------------------------------


def synthetic_users(n: int, seed: int = 0) -> pa.Table:
    """``n`` user_features rows shaped like the batch job's (counts, lists, nulls)."""
    rng = np.random.default_rng(seed)
    view = catalog.USER_FEATURES
    columns: dict[str, Any] = {"user_id": pa.array([f"u{i}" for i in range(n)])}
    cats = np.array([f"c{i}" for i in range(50)])
    for feature in view.features:
        if feature.dtype is Dtype.INT64:
            columns[feature.name] = pa.array(rng.poisson(8, n))
        elif feature.dtype is Dtype.FLOAT64:
            values = rng.gamma(2.0, 20.0, n)
            columns[feature.name] = pa.array(values, mask=rng.random(n) < 0.2)
        elif feature.dtype is Dtype.STRING_LIST:
            picks = cats[rng.integers(0, 50, (n, 3))]
            offsets = np.arange(0, 3 * n + 1, 3, dtype=np.int32)
            columns[feature.name] = pa.ListArray.from_arrays(offsets, pa.array(picks.ravel()))
        else:
            shares = rng.dirichlet([1, 1, 1], n).ravel()
            offsets = np.arange(0, 3 * n + 1, 3, dtype=np.int32)
            columns[feature.name] = pa.ListArray.from_arrays(offsets, pa.array(shares))
    columns["event_timestamp"] = pa.array(
        np.full(n, int(SNAPSHOT_AT.timestamp() * 1e6)), pa.timestamp("us", tz="UTC")
    )
    return pa.table(columns).cast(arrow_schema(view))


def check_read_back(settings: Settings, table: pa.Table, n: int = 1000) -> str:
    picks = random.Random(1).sample(range(table.num_rows), min(n, table.num_rows))
    rows = table.take(picks).to_pylist()
    got = FeastOnlineReader(open_store(settings)).read(
        "user_features", [r["user_id"] for r in rows]
    )
    bad = sum(
        g is None or any(g[f] != r[f] for f in catalog.USER_FEATURES.feature_names)
        for g, r in zip(got, rows, strict=True)
    )
    return f"{len(rows) - bad}/{len(rows)} read back equal via stock get_online_features"


def timed_materialize(settings: Settings, fast: bool) -> tuple[float, int | None]:
    store = open_store(settings)
    t0 = time.perf_counter()
    [run] = materialize(
        store, ["user_features"], start=MIN_TS, end=SNAPSHOT_AT + timedelta(hours=1), fast=fast
    )
    return time.perf_counter() - t0, run.written


def timed_pull(settings: Settings) -> float:
    """Seconds of the fast path's first step alone (Feast's pull of the newest rows)."""
    store = open_store(settings)
    t0 = time.perf_counter()
    pull_latest(
        store,
        store.get_feature_view("user_features"),
        MIN_TS,
        SNAPSHOT_AT + timedelta(hours=1),
    )
    return time.perf_counter() - t0


def phase_materialize(work: Path, n_users: int, stock_rows: int, sqlite_rows: int) -> None:
    table = synthetic_users(n_users)
    print(f"materialize: user_features, {len(catalog.USER_FEATURES.features)} features")
    print(f"  load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with redis_server(work) as url:
        results: dict[str, tuple[int, float]] = {}
        runs = [("redis fast path", n_users, True, 0)]
        if stock_rows:
            runs.insert(0, ("redis stock engine", min(stock_rows, n_users), False, 1))
        for label, rows, fast, db in runs:
            settings = fresh_repo(
                work / f"repo-{db}", online_store="redis", redis_url=url.replace("/0", f"/{db}")
            )
            part = table.slice(0, rows)
            write_snapshot(snapshot_dir(settings.repo / "data", "user_features"), SNAPSHOT_AT, part)
            gc.collect()
            seconds, written = timed_materialize(settings, fast)
            results[label] = (rows, seconds)
            print(
                f"  {label}: {rows:,} rows in {seconds:.1f} s = {rows / seconds:,.0f} rows/s"
                + ("" if written is None else f" ({written:,} written)")
                + f"; {check_read_back(settings, part)}"
            )
            if fast:
                pull = timed_pull(settings)
                print(
                    f"    of which Feast's pull of the rows ~{pull:.1f} s; the write alone "
                    f"{rows / (seconds - pull):,.0f} rows/s"
                )
        if stock_rows:
            stock = results["redis stock engine"]
            fast_r = results["redis fast path"]
            ratio = (fast_r[0] / fast_r[1]) / (stock[0] / stock[1])
            print(f"  redis: fast / stock = {ratio:.1f}x")
    if sqlite_rows:
        part = table.slice(0, min(sqlite_rows, n_users))
        rates = []
        for label, fast in (("sqlite stock engine", False), ("sqlite fast path", True)):
            settings = fresh_repo(work / f"repo-sqlite-{int(fast)}")
            write_snapshot(snapshot_dir(settings.repo / "data", "user_features"), SNAPSHOT_AT, part)
            seconds, _ = timed_materialize(settings, fast)
            rates.append(part.num_rows / seconds)
            print(
                f"  {label}: {part.num_rows:,} rows in {seconds:.1f} s = {rates[-1]:,.0f} rows/s; "
                f"{check_read_back(settings, part)}"
            )
        print(f"  sqlite: fast / stock = {rates[1] / rates[0]:.1f}x")


# -- historical -----------------------------------------------------------------------------


def phase_historical(work: Path, log: Path, n_rows: int, snapshots: list[datetime]) -> None:
    settings = fresh_repo(work / "repo-historical")
    data = settings.repo / "data"
    print("historical: snapshots of the batch phase copied into a fresh repo")
    for view in catalog.BATCH_VIEWS:
        source = work / "batch-data" / view
        for path in source.glob("snapshot-*.parquet"):
            shutil.copy(path, snapshot_dir(data, view) / path.name)
    with EventLogDB(log) as db:
        lo, hi = int(snapshots[0].timestamp() * 1e6), int(snapshots[-1].timestamp() * 1e6)
        events = db.query(
            "SELECT * FROM (SELECT user_id, item_id, make_timestamptz(t) AS event_timestamp "
            f"FROM events WHERE t >= {lo} AND t < {hi}) "
            f"USING SAMPLE reservoir({n_rows} ROWS) REPEATABLE (1)"
        )
    events = events.cast(
        pa.schema(
            [
                ("user_id", pa.string()),
                ("item_id", pa.string()),
                ("event_timestamp", pa.timestamp("us", tz="UTC")),
            ]
        )
    )
    store = open_store(settings)
    t0 = time.perf_counter()
    joined = join_features(store, events)
    seconds = time.perf_counter() - t0
    filled = 1 - joined.column("user_features__n_view_7d").null_count / joined.num_rows
    print(
        f"historical: {joined.num_rows:,} entity rows x "
        f"{sum(len(v.features) for v in catalog.BATCH_VIEWS.values())} features in "
        f"{seconds:.1f} s = {joined.num_rows / seconds:,.0f} rows/s "
        f"({filled:.0%} with user features); peak RSS {rss_mb():,.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/featrec-batch-bench"))
    parser.add_argument("--phases", default="generate,batch,materialize,historical")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--log-users", type=int, default=1_000_000)
    parser.add_argument("--concurrent", type=int, default=300)
    parser.add_argument("--days", type=int, default=0, help="snapshot days (0: all)")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--stock-rows", type=int, default=1_000_000)
    parser.add_argument("--sqlite-rows", type=int, default=100_000)
    parser.add_argument("--entity-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "events"
    snapshots: list[datetime] = []
    if "generate" in phases:
        phase_generate(log, args.events, args.log_users, args.concurrent)
    if "batch" in phases or "historical" in phases:
        snapshots = phase_batch(log, args.work / "batch-data", args.days)
    if "materialize" in phases:
        phase_materialize(args.work, args.users, args.stock_rows, args.sqlite_rows)
    if "historical" in phases:
        phase_historical(args.work, log, args.entity_rows, snapshots)


if __name__ == "__main__":
    main()
