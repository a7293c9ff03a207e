"""Rows/s of every online feature writer, side by side in one run.

Starts its own redis-server on a free loopback port and applies a copy of ``feature_repo/`` in
a tmp dir (SQLite and Redis), then writes ``session_features`` rows (16 features) with fresh
versions (so every row is written, as in streaming) at 1, 100 and 10,000 rows per call.
Prints rows/s, the ratio against ``FeastApiWriter`` on the same store, and on Redis the ratio
against raw pipelined HSET of pre-serialized bytes (the ceiling for a Python writer).

    .venv/bin/python benchmarks/write_paths.py [--repeats 3]
        [--rows-per-size 1:300,100:3000,10000:20000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from featrec.adapters.feast.layout import values as feast_wire
from featrec.adapters.feast.repo import apply_repo, open_store
from featrec.adapters.feast.writers import FeastApiWriter, FeastBatchWriter, RedisLayoutWriter
from featrec.core.features.catalog import SESSION_FEATURES
from featrec.core.features.rows import FeatureRow
from featrec.settings import Settings
from featrec.testing.redis_server import running_redis as redis_server

REPO_SOURCE = Path(__file__).resolve().parents[1] / "feature_repo"
BASE_VERSION = 1_700_000_000_000_000


def session_row(i: int, key: str, version: int) -> FeatureRow:
    values: dict[str, object] = {
        "user_id": f"u{i % 997}",
        "n_events": i % 50 + 1,
        "n_views": i % 30,
        "n_clicks": i % 20,
        "n_carts": i % 5,
        "n_purchases": i % 2,
        "n_distinct_items": i % 40,
        "duration_s": i * 0.5,
        "mean_dwell_s": 12.25,
        "last_items": [f"item{(i + j) % 5000}" for j in range(10)],
        "last_category": f"cat{i % 100}",
        "last_price": 19.99,
        "cart_value": 59.97,
        "started_at_s": 1_700_000_000.0,
        "last_event_at_s": 1_700_000_100.5,
        "version": i,
    }
    return FeatureRow(SESSION_FEATURES.name, key, values, version)


class Batches:
    """Fresh batches for each measurement: versions only ever grow, so nothing is skipped."""

    def __init__(self, n_keys: int) -> None:
        self.keys = [f"session-{i}" for i in range(n_keys)]
        self.version = BASE_VERSION

    def make(self, rows_per_call: int, total: int) -> list[list[FeatureRow]]:
        batches = []
        for start in range(0, total, rows_per_call):
            batch = []
            for i in range(start, min(start + rows_per_call, total)):
                self.version += 1
                batch.append(session_row(i, self.keys[i % len(self.keys)], self.version))
            batches.append(batch)
        return batches


def raw_hset(client: redis.Redis[bytes]) -> Callable[[Sequence[FeatureRow]], Any]:
    """Pre-serializes (untimed) and returns a function that only pipelines HSETs."""
    prefix = feast_wire.entity_key_prefix(SESSION_FEATURES.entity.join_key)
    fields = [
        (f.name, feast_wire.field_hash(SESSION_FEATURES.name, f.name), f.dtype)
        for f in SESSION_FEATURES.features
    ]
    ts_field = feast_wire.ts_field(SESSION_FEATURES.name)
    cache: dict[int, list[tuple[bytes, list[bytes]]]] = {}

    def prepare(rows: Sequence[FeatureRow]) -> None:
        cache[id(rows)] = [
            (
                feast_wire.encode_entity_key_after(prefix, r.key) + b"featrec",
                [ts_field, feast_wire.encode_timestamp(r.version)]
                + [
                    b
                    for name, fh, dtype in fields
                    for b in (fh, feast_wire.encode_value(dtype, r.values[name]))
                ],
            )
            for r in rows
        ]

    def write(rows: Sequence[FeatureRow]) -> None:
        with client.pipeline(transaction=False) as pipe:
            for key, args in cache.pop(id(rows)):
                pipe.execute_command("HSET", key, *args)  # type: ignore[no-untyped-call]
            pipe.execute()

    write.prepare = prepare  # type: ignore[attr-defined]
    return write


def measure(write: Callable[[Sequence[FeatureRow]], Any], batches: list[list[FeatureRow]]) -> float:
    prepare = getattr(write, "prepare", None)
    if prepare is not None:
        for batch in batches:
            prepare(batch)
    n = sum(len(b) for b in batches)
    start = time.perf_counter()
    for batch in batches:
        write(batch)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument(
        "--rows-per-size",
        default="1:300,100:3000,10000:20000",
        help="rows_per_call:total_rows pairs",
    )
    args = parser.parse_args()
    sizes = [tuple(int(x) for x in pair.split(":")) for pair in args.rows_per_size.split(",")]

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "repo"
        repo.mkdir()
        for pattern in ("*.py", "*.yaml"):
            for path in REPO_SOURCE.glob(pattern):
                shutil.copy(path, repo / path.name)
        with redis_server(tmp) as url:
            base = Settings(home=tmp / "home", repo=repo)
            redis_settings = base.with_(online_store="redis", redis_url=url)
            sqlite_settings = base.with_(online_store="sqlite")
            apply_repo(redis_settings)
            apply_repo(sqlite_settings)
            redis_store = open_store(redis_settings)
            sqlite_store = open_store(sqlite_settings)
            client: redis.Redis[bytes] = redis.Redis.from_url(url)

            writers: list[tuple[str, str, Callable[[Sequence[FeatureRow]], Any]]] = [
                ("redis", "raw HSET (pre-serialized)", raw_hset(client)),
                ("redis", "FeastApiWriter", FeastApiWriter(redis_store).write),
                ("redis", "FeastBatchWriter", FeastBatchWriter(redis_store).write),
                ("redis", "RedisLayoutWriter read", RedisLayoutWriter(client, "featrec").write),
                (
                    "redis",
                    "RedisLayoutWriter lua",
                    RedisLayoutWriter(client, "featrec", guard="lua").write,
                ),
                ("sqlite", "FeastApiWriter", FeastApiWriter(sqlite_store).write),
                ("sqlite", "FeastBatchWriter", FeastBatchWriter(sqlite_store).write),
            ]
            batches = Batches(n_keys=10_000)
            results: dict[tuple[str, str, int], float] = {}
            for rows_per_call, total in sizes:
                for store, name, write in writers:
                    runs = [
                        measure(write, batches.make(rows_per_call, total))
                        for _ in range(args.repeats)
                    ]
                    results[(store, name, rows_per_call)] = statistics.median(runs)

    print(f"session_features rows (16 features); median of {args.repeats} runs; rows/s")
    header = (
        f"{'store':7} {'writer':27} {'rows/call':>9} {'rows/s':>10} {'x FeastApi':>10} {'/ raw':>7}"
    )
    print(header)
    print("-" * len(header))
    for rows_per_call, _ in sizes:
        for store, name, _ in writers:
            rate = results[(store, name, rows_per_call)]
            api = results[(store, "FeastApiWriter", rows_per_call)]
            raw = results.get(("redis", "raw HSET (pre-serialized)", rows_per_call))
            vs_raw = f"{rate / raw:7.2f}" if store == "redis" and raw else f"{'-':>7}"
            print(
                f"{store:7} {name:27} {rows_per_call:9d} {rate:10,.0f} {rate / api:10.1f} {vs_raw}"
            )
        print()


if __name__ == "__main__":
    main()
