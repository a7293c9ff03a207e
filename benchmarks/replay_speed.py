"""Replay speed of ``featrec evaluate``: events/s of the replay phase alone, at several
concurrencies, on one prepared work directory, and a check that the answers are the same.

The training phase (item signals, batch features, item model, ranker) runs once into
``--work DIR/prepared`` (kept between runs: give the same ``--work`` to skip it); each replay
runs on a fresh copy of it (``DIR/run-<concurrency>``), through the real dataflow process
(:func:`featrec.jobs.evaluation.run_replay`), then is scored. Printed per run: events/s, the
CPU of the replay process (its children's rusage), HR@K / MRR@K per policy; and whether every
policy's list at every point is identical to the first run's (the first concurrency given is
the baseline the ratios are against).

    D=../shared/data/rsc15-100k
    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/replay_speed.py \
        --train $D/yoochoose-clicks-100k_train_tr.txt \
        --test $D/yoochoose-clicks-100k_train_valid.txt --format session-rec \
        --work /tmp/featrec-replay-bench --concurrency 1,64,64x2

``--concurrency 64x2``: 64 sessions in flight, their points answered by 2 worker processes
(``featrec evaluate --workers``).

``--cprofile FILE`` runs the replay process under cProfile (one run only) and prints its top
functions by cumulative time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from featrec.app.evaluation.replay import POLICIES
from featrec.jobs.evaluation import EvalSpec, WorkDir, prepare, read_answers, run_replay, score
from featrec.jobs.project_init import feature_repo_template


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def prepared(args: argparse.Namespace, root: Path) -> WorkDir:
    work = WorkDir(root / "prepared")
    if work.spec.is_file() and (work.root / "prepared.ok").is_file():
        print(f"reusing the training phase in {work.root}")
        return work
    if work.root.exists():
        shutil.rmtree(work.root)
    spec = EvalSpec(
        train=str(Path(args.train).resolve()),
        test=str(Path(args.test).resolve()),
        fmt=args.format,
        k=args.k,
        policies=tuple(args.policies.split(",")) if args.policies != "all" else POLICIES,
        seed=0,
    )
    t0 = time.perf_counter()
    prepare(work, spec, feature_repo_template())
    (work.root / "prepared.ok").write_text("")
    print(f"training phase {time.perf_counter() - t0:.1f} s")
    return work


def copy_for(
    work: WorkDir, root: Path, concurrency: int, events: int | None, workers: int = 1
) -> WorkDir:
    run = WorkDir(root / (f"run-{concurrency}" + (f"x{workers}" if workers > 1 else "")))
    if run.root.exists():
        shutil.rmtree(run.root)
    shutil.copytree(work.root, run.root)
    if events is not None:
        with run.test_events.open() as f:
            head = [line for _, line in zip(range(events), f, strict=False)]
        run.test_events.write_text("".join(head))
    spec = EvalSpec.from_json(run.spec.read_text())
    run.spec.write_text(
        dataclasses.replace(spec, concurrency=concurrency, workers=workers).to_json()
    )
    return run


def lists_of(work: WorkDir) -> list[tuple[int, dict[str, list[str]]]]:
    return [(int(a["point"]["event_index"]), a["lists"]) for a in read_answers(work)]


def profiled(run: WorkDir, out: Path) -> float:
    env = {**os.environ, "FEATREC_EVAL_DIR": str(run.root), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "cProfile", "-o", str(out)]
    cmd += ["-m", "bytewax.run", "dataflows.evaluation:flow()"]
    subprocess.run(cmd, env=env, check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--format", default=None)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--policies", default="all")
    parser.add_argument("--work", type=Path, default=Path("/tmp/featrec-replay-bench"))
    parser.add_argument(
        "--concurrency",
        default="1,64",
        help="comma-separated, first = baseline; CxW: concurrency C answered by W processes",
    )
    parser.add_argument("--events", type=int, default=None, help="replay only the first N")
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--cprofile", type=Path, default=None)
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    work = prepared(args, args.work)
    if args.prepare_only:
        return
    print(f"load average {os.getloadavg()[0]:.2f} at start")
    runs: list[dict[str, Any]] = []
    first: list[tuple[int, dict[str, list[str]]]] | None = None
    for run_spec in args.concurrency.split(","):
        concurrency, _, n = run_spec.partition("x")
        concurrency, workers = int(concurrency), int(n or 1)
        run = copy_for(work, args.work, concurrency, args.events, workers)
        cpu0 = children_cpu()
        profile = args.cprofile
        seconds = profiled(run, profile) if profile is not None else run_replay(run)
        cpu = children_cpu() - cpu0
        results = score(run, None, seconds)
        events = results["replay"]["events"]
        lists = lists_of(run)
        same = "baseline" if first is None else ("identical" if lists == first else "DIFFERENT")
        if first is None:
            first = lists
        row = {
            "concurrency": concurrency,
            "workers": workers,
            "events": events,
            "seconds": seconds,
            "events_per_s": events / seconds,
            "cpu_ms_per_event": 1000 * cpu / events,
            "answers": same,
            "figures": {
                p["policy"]: (round(p[f"hr@{args.k}"], 4), round(p[f"mrr@{args.k}"], 4))
                for p in results["policies"]
            },
        }
        runs.append(row)
        print(
            f"concurrency {concurrency:>4}, {workers} answering: {events:,} events in "
            f"{seconds:.1f} s = "
            f"{row['events_per_s']:,.0f} events/s, {row['cpu_ms_per_event']:.2f} CPU-ms/event "
            f"(replay process), load {os.getloadavg()[0]:.2f}; answers {same}"
        )
        for policy, (hr, mrr) in row["figures"].items():
            print(f"    {policy:>14}  HR@{args.k} {hr:.4f}  MRR@{args.k} {mrr:.4f}")
        if args.cprofile is not None:
            pstats.Stats(str(args.cprofile)).sort_stats("cumulative").print_stats(45)
            break
    base = runs[0]
    for row in runs[1:]:
        print(
            f"concurrency {row['concurrency']}x{row['workers']} / "
            f"{base['concurrency']}x{base['workers']}: "
            f"{row['events_per_s'] / base['events_per_s']:.2f}x events/s"
        )
    (args.work / "replay_speed.json").write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
