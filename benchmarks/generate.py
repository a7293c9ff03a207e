"""Throughput of the synthetic traffic generator, and of writing its events to files.

Prints events/s of ``generate`` (catalogue and users built first, timed apart), the stream's
span in event time, the peak resident memory, and optionally events/s of ``write_events`` for
each file format, fed straight from the generator (streaming: memory stays flat).

    .venv/bin/python benchmarks/generate.py                     # 1M events, 10k sessions
    .venv/bin/python benchmarks/generate.py --write /tmp/ev     # also jsonl / csv / parquet
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

from featrec.adapters.files.event_files import write_events
from featrec.adapters.files.layouts import FILE_FORMATS
from featrec.core.events.generator import GeneratorConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--concurrent", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--categories", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, help="directory to write one file per format to")
    args = parser.parse_args()
    config = GeneratorConfig(
        n_events=args.events,
        concurrent_sessions=args.concurrent,
        n_users=args.users,
        n_items=args.items,
        n_categories=args.categories,
        seed=args.seed,
    )

    t0, c0 = time.perf_counter(), time.process_time()
    stream = generate(config)  # builds the catalogue, users and first sessions eagerly
    t1, c1 = time.perf_counter(), time.process_time()
    n, first, last = 0, None, None
    for event in stream:
        if first is None:
            first = event.ts
        last = event.ts
        n += 1
    t2, c2 = time.perf_counter(), time.process_time()
    # CPU time too: on a shared machine the wall clock also counts other processes.
    print(
        f"setup ({args.items:,} items, {args.users:,} users, first sessions): {t1 - t0:.2f} s\n"
        f"generate: {n:,} events, {args.concurrent:,} concurrent sessions: "
        f"{n / (t2 - t1):,.0f} events/s wall ({t2 - t1:.2f} s), "
        f"{n / (c2 - c1):,.0f} events/s CPU ({c2 - c1:.2f} s)\n"
        f"event time span: {first} .. {last}\n"
        f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB"
    )
    if args.write is not None:
        for fmt in FILE_FORMATS:
            path = args.write / f"events.{fmt}"
            t0, c0 = time.perf_counter(), time.process_time()
            count = write_events(path, generate(config))
            dt, ct = time.perf_counter() - t0, time.process_time() - c0
            print(
                f"generate + write {fmt}: {count:,} events, {count / dt:,.0f}/s wall, "
                f"{count / ct:,.0f}/s CPU, "
                f"{path.stat().st_size / 1e6:,.0f} MB, "
                f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB"
            )


if __name__ == "__main__":
    main()
