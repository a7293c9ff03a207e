"""The item signals flow's snapshots as its state grows: time per epoch in each shard step's
``snapshot()``, and the run's wall time.

Generates ``--events`` events (``--concurrent`` sessions at a time), replays them from a file
through the production flow (``dataflows.items.build_flow``, in-memory rows, one worker) with
``--epoch-s`` epochs, and times every shard's ``snapshot()`` (grouped per epoch; the one at
the end of input is left out). ``--tree DIR`` runs the flow code of another checkout (a
``git archive`` of an older commit) for an A/B in one hold of the lock. ``--cool-s S`` gives
the pair step a store of idle sessions (a temporary directory) with that cool-down, as the
launcher does inside a recovery store; run with and without it, alternated, for the ratio.

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/item_snapshots.py
    git archive OLD | tar -x -C /tmp/old && flock /tmp/featrec-heavy.lock \\
        .venv/bin/python benchmarks/item_snapshots.py --tree /tmp/old
    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/item_snapshots.py --cool-s 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--concurrent", type=int, default=10_000)
    ap.add_argument("--epoch-s", type=float, default=2.0)
    ap.add_argument("--tree", type=Path, default=REPO_ROOT, help="whose dataflows/ to run")
    ap.add_argument(
        "--cool-s", type=float, default=None, help="the pair step's cool-down (default: no store)"
    )
    args = ap.parse_args()
    sys.path.insert(0, str(args.tree))

    from bytewax.testing import TestingSink, run_main

    from dataflows import item_shards
    from dataflows.gc_tuning import ITEMS_GC_THRESHOLDS, tune_gc
    from dataflows.items import build_flow
    from dataflows.sources import FileReplaySource
    from featrec.adapters.files.event_files import write_events
    from featrec.core.events.generator import GeneratorConfig, generate
    from featrec.core.ports.features import InMemoryFeatureStore
    from featrec.settings import Settings

    cooling = "no store of idle sessions" if args.cool_s is None else f"cool-down {args.cool_s:g} s"
    print(
        f"flow code: {Path(item_shards.__file__).parent}; pair step: {cooling}; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    snaps: list[tuple[float, float, int, str]] = []
    steps = (item_shards.PairShardLogic, item_shards.NeighbourShardLogic)
    for cls in (*steps, item_shards.TrendShardLogic):
        original = cls.snapshot

        def timed(self: Any, original: Any = original, name: str = cls.__name__) -> bytes:
            t = time.perf_counter()
            blob: bytes = original(self)
            snaps.append((t, time.perf_counter() - t, len(blob), name))
            return blob

        cls.snapshot = timed  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="featrec-item-snapshots-") as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "events.jsonl"
        config = GeneratorConfig(n_events=args.events, seed=3, concurrent_sessions=args.concurrent)
        write_events(path, list(generate(config)))
        tune_gc(ITEMS_GC_THRESHOLDS)
        store = InMemoryFeatureStore()
        extra: dict[str, Any] = {}
        if args.cool_s is not None:
            from dataflows.session_shards import Cooling
            from featrec.adapters.sqlite.cold_sessions import ColdSessions

            extra["cooling"] = Cooling(ColdSessions(tmp / "cold"), args.cool_s)
        flow = build_flow(
            FileReplaySource([path]),
            Settings(home=tmp),
            writer_factory=lambda: store,
            dead_letter_sink=TestingSink([]),
            **extra,
        )
        t0, c0 = time.perf_counter(), time.process_time()
        run_main(flow, epoch_interval=timedelta(seconds=args.epoch_s))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    epochs: list[tuple[float, dict[str, float], int]] = []
    last = -1.0
    for at, took, size, name in sorted(snaps):
        if at - last < 0.05:
            total, by, n = epochs[-1]
            by[name] = by.get(name, 0.0) + took
            epochs[-1] = (total + took, by, n + size)
        else:
            epochs.append((took, {name: took}, size))
        last = at + took
    steady = epochs[:-1]
    per_step: dict[str, list[float]] = {}
    for _, by, _ in steady:
        for name, took in by.items():
            per_step.setdefault(name, []).append(took)
    print(
        f"{args.events:,} events in {wall:.1f} s ({args.events / wall:,.0f} events/s, "
        f"{cpu / args.events * 1e6:.1f} CPU-us/event), {len(steady)} epochs of {args.epoch_s:g} s"
    )
    print(
        "snapshot() per epoch, all shards: median "
        f"{statistics.median(e[0] for e in steady) * 1000:.0f} ms, max "
        f"{max(e[0] for e in steady) * 1000:.0f} ms; by step: "
        + ", ".join(
            f"{name} median {statistics.median(v) * 1000:.0f} / max {max(v) * 1000:.0f} ms"
            for name, v in per_step.items()
        )
        + f"; bytes per shard snapshot: {sum(s[2] for s in snaps) / len(snaps) / 1e6:.2f} MB; "
        f"load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
