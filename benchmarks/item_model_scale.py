"""Training the batch item model at shop scale: peak RSS and wall time of ``featrec items
train-model`` on N generated events.

The events are generated and written to an event log (Parquet, in chunks of 200k: the
generator streams), then the training runs in a **fresh process** (so its peak RSS is its own,
not the generator's) with the job's defaults (the 10,000 most frequent items, top 100):
DuckDB reads the log as coded arrays, the sparse Gram matrices are built, the dense system
solved, the lists kept, the version saved. No online store is written (``--no-write``: the
rows' write cost is the writers', measured in ``benchmarks/batch.py``).

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/item_model_scale.py --events 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path

from featrec.adapters.files.event_log import EventLogWriter
from featrec.core.events.generator import GeneratorConfig, generate

TRAIN = """
import json, resource, sys, time
from pathlib import Path
from featrec.core.items.slist import SlistConfig
from featrec.jobs.item_model import train_item_model
from featrec.settings import Settings

home = Path(sys.argv[1])
config = SlistConfig(max_items=int(sys.argv[2]))
t0 = time.perf_counter()
_, report = train_item_model(Settings(home=home), config, write=False, log=print)
wall = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "peak_rss_mb": rss, "read_s": report.read_s,
                  "fit_s": report.fit_s, "events": report.events, "items": report.items,
                  "modelled": report.modelled, "sessions": report.sessions}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=50_000, help="catalogue size")
    parser.add_argument("--max-items", type=int, default=10_000, help="items modelled")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="item-model-scale-") as tmp:
        home = Path(tmp) / "home"
        config = replace(
            GeneratorConfig(),
            n_events=args.events,
            n_users=max(1000, args.events // 40),
            n_items=args.items,
            concurrent_sessions=5_000,
            seed=7,
        )
        t0 = time.perf_counter()
        writer = EventLogWriter(home / "events")
        stream = generate(config)
        while chunk := list(islice(stream, 200_000)):
            writer.write(chunk)
        print(f"generated and logged {args.events:,} events in {time.perf_counter() - t0:.0f} s")
        done = subprocess.run(
            [sys.executable, "-c", TRAIN, str(home), str(args.max_items)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        print(done.stdout.strip())
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"train-model on {result['events']:,} events ({result['sessions']:,} sessions, "
            f"{result['items']:,} items, {result['modelled']:,} modelled): wall "
            f"{result['wall_s']:.1f} s (read {result['read_s']:.1f} s, fit {result['fit_s']:.1f} "
            f"s), peak RSS {result['peak_rss_mb']:,.0f} MB; load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )


if __name__ == "__main__":
    main()
