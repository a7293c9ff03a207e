"""The sessions step's end-of-epoch stop as the sessions the TTL keeps grow, with and without
the store of idle sessions (``FEATREC_COLD_SESSIONS``); ``--step pairs``: the same for the
items flow's pair step, which keeps a session for the co-visitation window (1 h).

The production step (``dataflows.session_shards.ShardLogic``, or
``dataflows.item_shards.PairShardLogic`` with ``--step pairs``; 16 shards, one worker) runs in
``bytewax.testing.run_main`` with a real recovery store (``-b 0``, as the launcher runs
flows). Its input skips decoding (batches of decoded events, made in the source), because
this measures the state, not the stages before it:

1. ``--live`` sessions are created (3 events each), then the source waits ``--cool-s`` plus a
   little, so that with cooling on every one of them has gone idle into the store;
2. for ``--epochs`` epochs of ``--epoch-s``, ``--rate`` events/s go to ``--active`` sessions
   (a random subset: shoppers still browsing), as 100-event batches.

Printed per mode, over the steady epochs: the time in the shards' ``snapshot()`` calls per
epoch and the bytes they returned (what bytewax pickles and writes to its recovery store), the
longest pause between two source reads that contains an epoch's snapshots (the stop events
see: snapshots, bytewax writing them, the rest), and the process CPU per event; then the
ratios of the two modes, measured in the same run.

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/snapshot_scale.py
    .venv/bin/python benchmarks/snapshot_scale.py --live 50000 --epochs 3    # quick
    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/snapshot_scale.py --step pairs
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, run_main

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from dataflows.batching import shard_of  # noqa: E402
from dataflows.gc_tuning import ITEMS_GC_THRESHOLDS, SESSIONS_GC_THRESHOLDS, tune_gc  # noqa: E402
from dataflows.item_logic import Sequenced  # noqa: E402
from dataflows.item_shards import PairShardLogic  # noqa: E402
from dataflows.metrics import FlowStats  # noqa: E402
from dataflows.session_shards import Cooling, ShardLogic  # noqa: E402
from dataflows.sessions import NothingDenied  # noqa: E402
from featrec.adapters.sqlite.cold_sessions import ColdSessions  # noqa: E402
from featrec.app.item_signals import ItemSignalsConfig  # noqa: E402
from featrec.core.events.batch_decode import Arrival  # noqa: E402
from featrec.core.events.model import Event  # noqa: E402
from featrec.core.sessions.fold import SessionPolicy  # noqa: E402
from featrec.core.sessions.shard import SessionShard  # noqa: E402

SHARDS = 16
T0 = datetime(2024, 3, 1, tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", type=int, default=400_000, help="sessions created first")
    parser.add_argument("--active", type=int, default=20_000, help="sessions still active")
    parser.add_argument("--rate", type=int, default=10_000, help="events/s while steady")
    parser.add_argument("--epoch-s", type=float, default=5.0, help="the launcher's default")
    parser.add_argument("--epochs", type=int, default=4, help="steady epochs measured")
    parser.add_argument("--cool-s", type=float, default=3.0, help="idle time before cooling")
    parser.add_argument("--modes", default="hot,cooling", help="hot (no store), cooling")
    parser.add_argument(
        "--step", choices=("sessions", "pairs"), default="sessions", help="which flow's step"
    )
    args = parser.parse_args(argv)
    tune_gc(SESSIONS_GC_THRESHOLDS if args.step == "sessions" else ITEMS_GC_THRESHOLDS)
    results = {}
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix="featrec-snapscale-") as tmp:
            results[mode] = run(args, mode, Path(tmp))
    if {"hot", "cooling"} <= results.keys():
        hot, cold = results["hot"], results["cooling"]
        print(
            f"\ncooling / hot, same run: snapshot() time per epoch {cold[0] / hot[0]:.3f}x, "
            f"bytes per epoch {cold[1] / hot[1]:.3f}x, longest stop {cold[2] / hot[2]:.3f}x, "
            f"CPU per steady event {cold[3] / hot[3]:.2f}x; load {os.getloadavg()[0]:.2f}"
        )


def run(args: argparse.Namespace, mode: str, tmp: Path) -> tuple[float, float, float, float]:
    recovery = tmp / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    cooling = Cooling(ColdSessions(recovery / "featrec" / "cold"), args.cool_s)
    source = Source(args)
    snaps: list[tuple[float, float, int]] = []
    stats, deny = FlowStats(), NothingDenied()

    def timed(logic: ShardLogic | PairShardLogic) -> ShardLogic | PairShardLogic:
        """The step, its ``snapshot()`` calls timed into ``snaps``."""
        snapshot = logic.snapshot

        def run() -> bytes:
            t = time.perf_counter()
            blob = snapshot()
            snaps.append((t, time.perf_counter() - t, len(blob)))
            return blob

        logic.snapshot = run  # type: ignore[method-assign]
        return logic

    def builder(resume: bytes | None) -> ShardLogic | PairShardLogic:
        cools = cooling if mode == "cooling" else None
        if args.step == "pairs":
            pairs = PairShardLogic(
                ItemSignalsConfig(),
                3600.0,
                resume,
                cooling=cools,
                key_of=lambda sid: shard_of(sid, SHARDS),
            )
            return timed(pairs)
        shard = ShardLogic(
            SessionShard(SessionPolicy(), 3600.0),
            deadline_s=0.01,
            max_rows=1000,
            stats=stats,
            deny=deny,
            cooling=cools,
            key_of=lambda sid: shard_of(sid, SHARDS),
        )
        return timed(shard)

    flow = Dataflow("snapshot_scale")
    rows = op.stateful_batch("sessions", op.input("in", flow, source), builder)
    op.output("out", op.filter("none", rows, lambda kv: False), TestingSink([]))
    run_main(
        flow,
        epoch_interval=timedelta(seconds=args.epoch_s),
        recovery_config=RecoveryConfig(str(recovery), backup_interval=timedelta(0)),
    )
    # Group each epoch's snapshots (back to back) and find the source pause around them.
    epochs: list[list[float]] = []
    last = -1.0
    for at, took, size in sorted(snaps):
        if at - last < 0.05:
            epochs[-1][1] += took
            epochs[-1][2] += size
        else:
            epochs.append([at, took, size])
        last = at + took
    steady, stops = [], []
    for epoch in epochs:
        around = [gap for end, gap in source.gaps if end - gap <= epoch[0] <= end]
        # Steady epochs only: not the creation's, not the one at the end of input.
        if source.steady_from <= epoch[0] <= source.steady_until and around:
            steady.append(epoch)
            stops.append(around[0])
    took = statistics.median(e[1] for e in steady)
    size = statistics.median(e[2] for e in steady)
    stop = max(stops)
    cpu_us = source.steady_cpu / max(source.steady_events, 1) * 1e6
    cold = cooling.store.count() if mode == "cooling" else 0
    print(
        f"[{args.step}, {mode}] {args.live:,} sessions, then {args.rate:,} events/s to "
        f"{args.active:,} of them, {args.epoch_s:g} s epochs; {len(steady)} steady epochs: "
        f"snapshot() {', '.join(f'{e[1] * 1000:.0f}' for e in steady)} ms "
        f"({', '.join(f'{e[2] / 1e6:.1f}' for e in steady)} MB); the stop around each "
        f"{', '.join(f'{s * 1000:.0f}' for s in stops)} ms; {cpu_us:.1f} CPU-us per steady "
        f"event (process, all work); {cold:,} sessions cold at the end; load "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return took, size, stop, cpu_us


class Source(FixedPartitionedSource[Any, None]):
    """Creates the sessions, idles, then feeds the active ones at a steady rate."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.gaps: list[tuple[float, float]] = []
        self.steady_from = self.steady_until = 0.0
        self.steady_cpu = 0.0
        self.steady_events = 0

    def list_parts(self) -> list[str]:
        return ["p"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Part:
        return _Part(self)


class _Part(StatefulSourcePartition[Any, None]):
    def __init__(self, owner: Source) -> None:
        self.o = owner
        a = owner.args
        self.live, self.active = a.live, min(a.active, a.live)
        self.i = 0
        self.rng = random.Random(7)
        self.phase = "create"
        self.until = 0.0
        self.last: float | None = None
        self.next_at = 0.0
        self.cpu0 = 0.0

    def next_batch(self) -> list[tuple[str, list[Arrival]]]:
        now = time.perf_counter()
        o, a = self.o, self.o.args
        if self.phase == "create":
            sids = [f"s{(self.i + k) % self.live}" for k in range(2000)]
            if self.i + 2000 >= self.live * 3:
                self.phase, self.until = "idle", time.time() + a.cool_s + 1.0
        elif self.phase == "idle":
            if time.time() < self.until:
                return []
            self.phase = "steady"
            o.steady_from = now + a.epoch_s  # the first epoch end may still hold the idle one
            self.until = now + a.epoch_s * (a.epochs + 1.5)
            o.steady_until = self.until
            self.next_at, self.cpu0 = now, time.process_time()
            return []
        else:
            if now >= self.until:
                o.steady_cpu = time.process_time() - self.cpu0
                raise StopIteration
            if now < self.next_at:
                return []
            self.next_at += 100 / a.rate
            if self.last is not None:
                o.gaps.append((now, now - self.last))
            self.last = now
            sids = [f"s{self.rng.randrange(self.active)}" for _ in range(100)]
            o.steady_events += 100
        chunks: dict[str, list[Arrival] | list[Sequenced]] = {}
        at = time.time()
        pairs = a.step == "pairs"
        for k, sid in enumerate(sids):
            n = self.i + k
            event = Event(f"e{n}", sid, f"i{n % 977}", "view", T0 + timedelta(milliseconds=n))
            item = Sequenced(n, event, at) if pairs else Arrival(event, at, "bench")
            chunks.setdefault(shard_of(sid, SHARDS), []).append(item)  # type: ignore[arg-type]
        self.i += len(sids)
        return list(chunks.items())

    def next_awake(self) -> datetime | None:
        if self.phase == "steady":
            return datetime.fromtimestamp(
                time.time() + max(self.next_at - time.perf_counter(), 0.0), UTC
            )
        return None

    def snapshot(self) -> None:
        return None


if __name__ == "__main__":
    main()
