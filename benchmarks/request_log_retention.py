"""Keeping the request log bounded, and forgetting a user in it: one file per hour against the
one file of earlier versions, on real records.

The world of ``benchmarks/recommend.py`` (private redis-server, 5,000 items, a 200-tree ranker):
``--requests`` cold-cache requests at ``--candidates`` candidates whose records are captured,
then written ``--per-hour`` times per hour for ``--hours`` hours (copies with new ids and
times: their rows are shared, as a busy server's are) into

1. the one-file log as earlier versions created it (``SqliteRequestLog`` on a file with the
   earlier tables, upgraded when opened: what the server wrote before), then one user
   forgotten and the oldest hour pruned: both read every remaining entry to find the rows
   nothing refers to, inside their write transaction (the writer waits meanwhile);
2. the hourly log (``PartitionedRequestLog``, the server's default), forgotten in (each
   file finds the user's entries and rows by index, no entry read) and pruned of the same
   hour (its file closed and deleted, unread; the server's retention deletes hours the same
   way, ``keep_s``, as each new hour starts).

Prints write CPU per record for both, the wall time each deletion holds the writer, and the
ratios, with the load average. The one-file prune grows with the whole log (``--hours``); the
hourly one with the hour deleted. Each hour's file stores the rows its entries refer to once
more (a new file knows none): with only ``--requests`` distinct requests copied, that cost is
spread over few entries here; the script prints it per hour.

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/request_log_retention.py \
        [--candidates 200] [--requests 200] [--hours 3] [--per-hour 2000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recommend as bench
from measure import load_average, with_private_redis

from featrec.adapters.sqlite.partitioned_log import PERIOD_S, PartitionedRequestLog
from featrec.adapters.sqlite.request_log import SqliteRequestLog
from featrec.core.ports.serving import RequestRecord
from featrec.testing.redis_server import RedisServer
from featrec.testing.request_logs import earlier_log_file

#: 2026-12-05 00:00 UTC: an hour boundary.
T0 = 1_796_428_800
BATCH = 64


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--hours", type=int, default=3)
    ap.add_argument("--per-hour", type=int, default=2000)
    args = ap.parse_args(argv)
    if args.hours < 2 or args.per_hour < 1 or args.requests < 1:
        ap.error("--hours must be >= 2, --per-hour and --requests >= 1")
    with_private_redis("featrec-retention-", lambda tmp, server: run(args, tmp, server))


def stream(records: list[RequestRecord], hours: int, per_hour: int) -> list[RequestRecord]:
    """``per_hour`` copies per hour, cycling through ``records``, evenly spread in time."""
    out = []
    for n in range(hours * per_hour):
        hour, k = divmod(n, per_hour)
        at = T0 + hour * PERIOD_S + k * (PERIOD_S / per_hour)
        out.append(replace(records[n % len(records)], request_id=f"r{n}", created_at_s=at))
    return out


def write(log: Callable[[list[RequestRecord]], None], records: list[RequestRecord]) -> float:
    """CPU seconds of writing ``records`` in batches of :data:`BATCH`."""
    c0 = time.process_time()
    for start in range(0, len(records), BATCH):
        log(records[start : start + BATCH])
    return time.process_time() - c0


def run(args: argparse.Namespace, tmp: Path, server: RedisServer) -> None:
    recommender, order = bench.logged_world(tmp, server.url, args.candidates)
    builds: list[Callable[[], RequestRecord]] = []
    recommender._defer = builds.append  # capture the records instead of writing them
    for session in order[: args.requests]:
        recommender.recommend(session, k=20)
    recommender.log.close()
    records = stream([build() for build in builds], args.hours, args.per_hour)
    n = len(records)
    print(f"load average (1, 5, 15 min): {load_average()}")
    print(
        f"{n:,} entries at {args.candidates} candidates over {args.hours} hours "
        f"({len(builds)} distinct requests, copied), written in batches of {BATCH}"
    )

    # Written alternately, twice each, the best CPU kept (the page cache and writeback of
    # hundreds of MB make single runs differ by ~1.5x either way); the second pair is pruned.
    one_cpu = hourly_cpu = float("inf")
    for attempt in range(2):
        shutil.rmtree(tmp / "one", ignore_errors=True)
        shutil.rmtree(tmp / "hourly", ignore_errors=True)
        one = SqliteRequestLog(earlier_log_file(tmp / "one" / "requests.db"))
        one_cpu = min(one_cpu, write(one.append_many, records))
        hourly = PartitionedRequestLog(tmp / "hourly")
        hourly_cpu = min(hourly_cpu, write(hourly.append_many, records))
        if attempt == 0:
            one.close()
            hourly.close()
    size = (tmp / "one" / "requests.db").stat().st_size
    user = next(r.body["user_id"] for r in records if r.body.get("user_id"))
    sessions = one.sessions_of(user) | hourly.sessions_of(user)
    t0 = time.perf_counter()
    one_forgot = one.forget(user, sessions)
    one_forget = time.perf_counter() - t0
    t0 = time.perf_counter()
    hourly_forgot = hourly.forget(user, sessions)
    hourly_forget = time.perf_counter() - t0
    t0 = time.perf_counter()
    one_pruned = one.prune(T0 + PERIOD_S)
    one_prune = time.perf_counter() - t0
    one.close()

    parts_before = len(hourly.parts())
    t0 = time.perf_counter()
    hourly_pruned = hourly.prune(T0 + PERIOD_S)  # the oldest hour: its file, unread
    hourly_prune = time.perf_counter() - t0
    parts_after = len(hourly.parts())
    hourly.close()

    print(f"one-file log: {size / 1e6:,.0f} MB, {size / n / 1e3:.1f} KB per entry")
    print(f"\n{'':<44}{'earlier':>12}{'hourly':>12}")
    print(
        f"{'write, CPU-us per entry (best of 2)':<44}"
        f"{one_cpu / n * 1e6:>12.0f}{hourly_cpu / n * 1e6:>12.0f}"
    )
    print(
        f"{'prune the oldest hour, wall ms':<44}{one_prune * 1e3:>12.1f}"
        f"{hourly_prune * 1e3:>12.1f}   (the writer waits this long)"
    )
    print(
        f"{'forget one user, wall ms (all files)':<44}{one_forget * 1e3:>12.1f}"
        f"{hourly_forget * 1e3:>12.1f}   ({one_forgot} / {hourly_forgot} entries)"
    )
    print(
        f"{'  entries deleted':<44}{one_pruned:>12,}{hourly_pruned:>12,}   "
        f"(hourly: {parts_before} files -> {parts_after})"
    )
    extra = (hourly_cpu - one_cpu) / (args.hours - 1)
    print(
        f"\neach new hour's file stores its rows again: {extra * 1e3:,.0f} ms of CPU per hour "
        f"here ({len(builds)} distinct requests, so ~{extra / args.per_hour * 1e6:.0f} us per "
        f"entry of a {args.per_hour:,}-entry hour; a server core answering 300 requests/s "
        f"writes ~1M entries an hour)"
    )
    print(f"forgetting a user: {one_forget / hourly_forget:,.1f}x less time holding the writer")
    print(
        f"deleting an hour of a {args.hours}-hour log: {one_prune / hourly_prune:,.1f}x less "
        f"time holding the writer, one file per hour"
    )


if __name__ == "__main__":
    main()
