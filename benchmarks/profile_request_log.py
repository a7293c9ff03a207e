"""Where the request log's writer thread spends its CPU, phase by phase, on real records.

The world of ``benchmarks/recommend.py`` (private redis-server, 5,000 items, a 200-tree ranker),
``--requests`` cold-cache requests at ``--candidates`` candidates whose records are *captured*
(not written), then the writer's work done on them in this thread, timed per phase in
batches of ``--batch`` records (the serving writer takes whatever is queued: at one request
thread it is mostly one record per transaction): building the body (``to_record``), then the
row digests, the entry's bytes and the SQLite transaction (timed apart on a tree whose log
has ``encode_entries``; together since the log resolves row ids inside its transaction).
``--cprofile`` prints the top functions of the whole write.

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/profile_request_log.py \
        [--candidates 200] [--requests 400] [--batch 1] [--cprofile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recommend as bench
from measure import load_average, with_private_redis

from featrec.adapters.sqlite.request_log import SqliteRequestLog
from featrec.core.ports.serving import RequestRecord
from featrec.testing.redis_server import RedisServer


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="timed passes (the best is shown)")
    ap.add_argument("--cprofile", action="store_true")
    args = ap.parse_args(argv)
    with_private_redis("featrec-bench-log-", lambda tmp, server: run(args, tmp, server))


def run(args: argparse.Namespace, tmp: Path, server: RedisServer) -> None:
    recommender, order = bench.logged_world(tmp, server.url, args.candidates)
    builds: list[Callable[[], RequestRecord]] = []
    recommender._defer = builds.append  # capture: the records are written below, timed
    for session in order[: args.requests]:
        recommender.recommend(session, k=20)
    recommender.log.close()
    n = len(builds)
    print(f"load average (1, 5, 15 min): {load_average()}")
    print(f"{n} records at {args.candidates} candidates, batches of {args.batch}")

    best: dict[str, float] = {}
    split = hasattr(SqliteRequestLog, "encode_entries")  # the fifth pass's tree: two phases
    write_phase = "SQLite write" if split else "digests + row ids + entries + SQLite"
    for attempt in range(args.repeat):
        log = SqliteRequestLog(tmp / f"log{attempt}.db")
        times = {"body (to_record)": 0.0, "digests + entry bytes": 0.0, write_phase: 0.0}
        if not split:
            del times["digests + entry bytes"]
        for start in range(0, n, args.batch):
            chunk = builds[start : start + args.batch]
            c0 = time.thread_time()
            records = [build() for build in chunk]
            c1 = time.thread_time()
            if split:
                entries, new_rows = log.encode_entries(records)  # type: ignore[attr-defined]
                c2 = time.thread_time()
                log.write_entries(entries, new_rows)  # type: ignore[attr-defined]
            else:  # row ids are resolved inside the transaction: one phase
                c2 = c1
                log.append_many(records)
            c3 = time.thread_time()
            times["body (to_record)"] += c1 - c0
            if split:
                times["digests + entry bytes"] += c2 - c1
            times[write_phase] += c3 - c2
        log.close()
        for name, value in times.items():
            best[name] = min(best.get(name, float("inf")), value)
    print(f"{'phase (best of ' + str(args.repeat) + ')':<36}{'CPU-us/record':>14}")
    for name, value in best.items():
        print(f"{name:<36}{value / n * 1e6:>14.0f}")
    db = sqlite3.connect(tmp / "log0.db")
    size = db.execute("SELECT AVG(LENGTH(entry)) FROM requests").fetchone()[0]
    db.close()
    print(f"entry size: {size / 1000:.1f} KB on average")
    print(f"{'total':<36}{sum(best.values()) / n * 1e6:>14.0f}")
    if args.cprofile:
        log = SqliteRequestLog(tmp / "profiled.db")
        profiler = cProfile.Profile()
        profiler.enable()
        for start in range(0, n, args.batch):
            log.append_many([build() for build in builds[start : start + args.batch]])
        profiler.disable()
        log.close()
        stats: Any = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
