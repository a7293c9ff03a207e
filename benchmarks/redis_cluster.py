"""Redis Cluster write throughput against a single Redis: same writer, same rows, same run.

Private servers started here: one redis-server, a 3-master Redis Cluster and (with
``--replicas``) a 3-master, 3-replica cluster. The rows are session rows in Feast's layout
(``--rows`` rows over ``--keys`` sessions, so most rows update a session already written),
written in flushes of ``--batch`` rows, as the sessions dataflow's sink does. Per writer and
target, the runs alternate (single, cluster, single, cluster, ...) ``--repeat`` times and the
median is printed:

- rows/s (wall), client CPU-µs per row (``process_time`` of this process), Redis CPU-µs per row
  (``used_cpu_user + used_cpu_sys`` of every master, from ``INFO cpu``), and the cluster/single
  ratios;
- writers: the dataflows' ``FlushWriter`` (``remember=True``, one pre-packed round trip per
  flush) against ``ClusterFlushWriter`` (the same commands, one write per master), and the
  redis-py pipelined ``RedisLayoutWriter`` (read guard) on both; with ``--replicas`` also
  ``ClusterFlushWriter`` with ``WAIT 1`` per flush on the replicated cluster.

This machine has 2 cores shared by every process: the servers, the client and anything else
running. The load average is printed at the start and the end.

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/redis_cluster.py
    .venv/bin/python benchmarks/redis_cluster.py --rows 50000 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from featrec.adapters.feast.cluster_writer import ClusterFlushWriter
from featrec.adapters.feast.flush_writer import FlushWriter
from featrec.adapters.feast.writers import RedisLayoutWriter
from featrec.core.features import catalog
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import FeatureWriter
from featrec.testing.redis_cluster import RedisClusterServers
from featrec.testing.redis_server import RedisServer

SESSION = catalog.SESSION_FEATURES.name
T0 = 1_700_000_000_000_000


def session_rows(n_rows: int, n_keys: int) -> list[FeatureRow]:
    """``n_rows`` rows round-robin over ``n_keys`` sessions, each newer than the last."""
    rows = []
    for i in range(n_rows):
        n = i // n_keys + 1
        values = {
            "user_id": f"u{i % 997}", "n_events": n, "n_views": n, "n_clicks": i % 3,
            "n_carts": 0, "n_purchases": 0, "n_distinct_items": n, "duration_s": 1.5 * n,
            "mean_dwell_s": 0.5, "last_items": [f"i{i % 101}", f"i{i % 103}"],
            "last_category": "shoes", "last_price": 9.5, "cart_value": 0.0,
            "started_at_s": 1.0, "last_event_at_s": 2.5 + n, "version": n,
        }  # fmt: skip
        rows.append(FeatureRow(SESSION, f"s{i % n_keys}", values, T0 + i))
    return rows


def redis_cpu_s(clients: Sequence[Any]) -> float:
    """CPU seconds the servers behind ``clients`` have used so far."""
    total = 0.0
    for client in clients:
        info = client.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def timed_write(
    make: Callable[[], FeatureWriter], rows: list[FeatureRow], batch: int, servers: Sequence[Any]
) -> tuple[float, float, float]:
    """(rows/s, client CPU-µs per row, Redis CPU-µs per row) of writing ``rows``."""
    writer = make()
    redis0, cpu0, wall0 = redis_cpu_s(servers), time.process_time(), time.perf_counter()
    written = 0
    for start in range(0, len(rows), batch):
        written += writer.write(rows[start : start + batch])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    redis = redis_cpu_s(servers) - redis0
    writer.close()
    assert written == len(rows), f"{written} of {len(rows)} rows written"
    n = len(rows)
    return n / wall, cpu / n * 1e6, redis / n * 1e6


def masters(cluster: RedisClusterServers) -> list[Any]:
    return [n.client() for n in cluster.masters_now()]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=25_000)
    ap.add_argument("--batch", type=int, default=1000, help="rows per flush")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--replicas", action="store_true", help="also WAIT 1 on 3+3 nodes")
    args = ap.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}")
    rows = session_rows(args.rows, args.keys)
    print(f"{len(rows):,} rows over {args.keys:,} sessions, {args.batch} rows per flush")
    with tempfile.TemporaryDirectory(prefix="featrec-rcluster-") as tmp_name:
        tmp = Path(tmp_name)
        single = RedisServer(tmp / "single")
        (tmp / "single").mkdir()
        cluster = RedisClusterServers(tmp / "cluster")
        replicated = RedisClusterServers(tmp / "replicated", replicas=1) if args.replicas else None
        started: list[Any] = []
        try:
            for server in (single, cluster, replicated):
                if server is not None:
                    server.start()
                    started.append(server)
            run(args, rows, single, cluster, replicated)
        finally:
            for server in reversed(started):
                server.stop()
    print(f"\nload average at end: {os.getloadavg()}")


def run(
    args: argparse.Namespace,
    rows: list[FeatureRow],
    single: RedisServer,
    cluster: RedisClusterServers,
    replicated: RedisClusterServers | None,
) -> None:
    targets: dict[
        str, tuple[Callable[[], FeatureWriter], Callable[[], list[Any]], Callable[[], None]]
    ]
    targets = {
        "FlushWriter, single Redis": (
            lambda: FlushWriter(single.client(), "featrec", remember=True, owns_client=True),
            lambda: [single.client()],
            lambda: single.client().flushall(),
        ),
        "ClusterFlushWriter, 3 masters": (
            lambda: ClusterFlushWriter(
                cluster.client(), "featrec", remember=True, owns_client=True
            ),
            lambda: masters(cluster),
            cluster.flushall,
        ),
        "RedisLayoutWriter (redis-py pipeline), single Redis": (
            lambda: RedisLayoutWriter(single.client(), "featrec", owns_client=True),
            lambda: [single.client()],
            lambda: single.client().flushall(),
        ),
        "RedisLayoutWriter (redis-py cluster pipeline), 3 masters": (
            lambda: RedisLayoutWriter(cluster.client(), "featrec", owns_client=True),  # type: ignore[arg-type]
            lambda: masters(cluster),
            cluster.flushall,
        ),
    }
    if replicated is not None:
        targets["ClusterFlushWriter WAIT 1, 3 masters + 3 replicas"] = (
            lambda: ClusterFlushWriter(
                replicated.client(), "featrec", remember=True, owns_client=True, wait_replicas=1
            ),
            lambda: masters(replicated),
            replicated.flushall,
        )
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in targets}
    for attempt in range(args.repeat):
        for name, (make, servers, flush) in targets.items():
            flush()
            results[name].append(timed_write(make, rows, args.batch, servers()))
            rate, client_us, redis_us = results[name][-1]
            print(
                f"  run {attempt + 1}: {name}: {rate:,.0f} rows/s, {client_us:.2f} client "
                f"CPU-µs/row, {redis_us:.2f} Redis CPU-µs/row; load {os.getloadavg()[0]:.2f}"
            )
    medians = {
        name: tuple(statistics.median(r[i] for r in runs) for i in range(3))
        for name, runs in results.items()
    }
    print(f"\n[medians of {args.repeat}] load {os.getloadavg()[0]:.2f}")
    for name, (rate, client_us, redis_us) in medians.items():
        print(
            f"  {name}: {rate:,.0f} rows/s, {client_us:.2f} client CPU-µs/row, "
            f"{redis_us:.2f} Redis CPU-µs/row"
        )
    pairs = [
        ("ClusterFlushWriter, 3 masters", "FlushWriter, single Redis"),
        (
            "RedisLayoutWriter (redis-py cluster pipeline), 3 masters",
            "RedisLayoutWriter (redis-py pipeline), single Redis",
        ),
        ("ClusterFlushWriter WAIT 1, 3 masters + 3 replicas", "FlushWriter, single Redis"),
    ]
    print("\n[ratios] cluster / single (rows/s; client CPU per row)")
    for a, b in pairs:
        if a in medians and b in medians:
            print(
                f"  {a} / {b}: {medians[a][0] / medians[b][0]:.2f}x rows/s, "
                f"{medians[a][1] / medians[b][1]:.2f}x client CPU/row"
            )


if __name__ == "__main__":
    main()
