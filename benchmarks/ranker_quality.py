"""Does the learned ranker beat the candidate order? HR@20 / MRR@20 on held-out points.

The candidate order is :func:`featrec.core.candidates.generation.generate`'s: the tuned
co-visitation
scorer (neighbours + session reminder), then history, trending and popular candidates. The
ranker reorders the same candidates, so HR@20 can only move by what enters or leaves the top
20; a target that is not a candidate is a miss for both.

Generated data (default): a time split of the prediction points (the newest 20% held out).
Without ``--feast`` the points come straight from the events and carry no long-term
(user/item batch) features; with ``--feast`` the full pipeline runs in a temp dir: event log,
``featrec batch run`` snapshots, a training set built by ``build_training_set`` with the
serving candidates (Feast point-in-time join, DuckDB offline store), then training.

``--rsc15``: train_tr -> train_valid (../shared/data/README.md), through the production entry
point :func:`featrec.app.training.fit_on_events`: the ranker trains on train_tr alone (every
next-item point after its first 10%, repeats kept, signals replayed as they were at each point
and learning a session only once it has ended). It is then measured on every train_valid event
except each session's last (12,455 points, repeats kept), with the signals frozen at the end of
train_tr, against the candidate order on the same candidates. No users, categories or prices
exist there.

    .venv/bin/python benchmarks/ranker_quality.py
    .venv/bin/python benchmarks/ranker_quality.py --feast
    .venv/bin/python benchmarks/ranker_quality.py --rsc15
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from featrec.app.training import (
    EVENTS_CONFIG,
    FeatureSet,
    LabelledPoint,
    TrainingConfig,
    evaluate,
    fit_on_events,
    fit_ranker,
    points_from_events,
    points_from_table,
    replay_features,
    split_by_time,
)
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import CLICK, Event
from featrec.core.ranking.ranker import RANKING_FEATURES
from featrec.core.ranking.two_stage import head_size, with_tail

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15-100k"
REPO = Path(__file__).resolve().parents[1] / "feature_repo"
K = 20


def report(
    features: FeatureSet,
    metrics: dict[str, float],
    seconds: dict[str, float],
    held_out: list[int] | None = None,
) -> None:
    m = dict(metrics)
    # A second baseline: co-visitation neighbours alone (no session reminder), which is fairer
    # where repeats are not prediction targets (generated data collapses them).
    test = held_out if held_out is not None else split_by_time(features, 0.2)[1]
    covisit = features.X[:, RANKING_FEATURES.index("covisit_score")]
    for name, value in evaluate(features, test, covisit, K).items():
        m[f"holdout_covisit_only_{name}"] = value
    print(
        f"points: {int(m['points']):,} ({int(m['train_points']):,} train, "
        f"{int(m['holdout_points']):,} held out), rows {int(m['rows']):,} "
        f"(fit on {int(m['train_rows']):,})"
    )
    print(f"next item among the candidates: {m['candidate_recall']:.4f} of all points")
    for name in ("candidate_order", "covisit_only", "model"):
        print(
            f"{name.replace('_', ' '):>16}: HR@{K} {m[f'holdout_{name}_hr@{K}']:.4f}  "
            f"MRR@{K} {m[f'holdout_{name}_mrr@{K}']:.4f}"
        )
    print("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))


def generated(args: argparse.Namespace) -> None:
    config = GeneratorConfig(
        n_events=args.events,
        n_users=args.users,
        n_items=args.items,
        concurrent_sessions=args.concurrent,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    events = list(generate(config))
    span = f"{events[0].ts:%Y-%m-%d %H:%M} .. {events[-1].ts:%Y-%m-%d %H:%M}"
    print(f"generated {len(events):,} events, {span}")
    seconds: dict[str, float] = {"generate": time.perf_counter() - t0}
    if args.feast:
        points = feast_points(events, args, seconds)
    else:
        # Skip the first 10% of the stream: the signals are still empty there.
        points = points_from_events(
            events,
            max_points=args.points or 20_000,
            since=events[len(events) // 10].ts,
            seed=args.seed,
        )
    t0 = time.perf_counter()
    features = replay_features(events, points)
    seconds["replay"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = fit_ranker(features, TrainingConfig(holdout=0.2, max_iter=args.max_iter or 100))
    seconds["fit"] = time.perf_counter() - t0
    report(features, result.metrics, seconds)


def feast_points(
    events: list[Event], args: argparse.Namespace, seconds: dict[str, float]
) -> list[LabelledPoint]:
    """The full offline pipeline in a temp dir: log, batch snapshots, Feast training set."""
    import shutil

    import pyarrow.parquet as pq

    from featrec.adapters.duckdb.features import EventLogDB
    from featrec.adapters.feast.repo import apply_repo, open_store
    from featrec.adapters.files.event_log import EventLogWriter
    from featrec.core.candidates.point_generators import SignalCandidates
    from featrec.jobs.batch import plan_batch, run_batch
    from featrec.jobs.training_sets import build_training_set
    from featrec.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="featrec-ranker-"))
    try:
        repo = root / "repo"
        repo.mkdir()
        for pattern in ("*.py", "*.yaml"):
            for path in REPO.glob(pattern):
                shutil.copy(path, repo / path.name)
        settings = Settings(home=root / "home", repo=repo)
        t0 = time.perf_counter()
        EventLogWriter(settings.event_log_dir).write(events)
        apply_repo(settings)
        with EventLogDB(settings.event_log_dir, temp_dir=root / "duckdb") as db:
            plan = plan_batch(db, None, events[0].ts.date(), datetime.now(UTC))
            run_batch(db, repo / "data", plan.days)
        seconds["log + apply + batch"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        built = build_training_set(
            open_store(settings),
            settings.event_log_dir,
            root / "training.parquet",
            generator=SignalCandidates(),
            since=events[len(events) // 10].ts.date(),
            max_points=args.points or 20_000,
            seed=args.seed,
        )
        seconds["dataset build"] = time.perf_counter() - t0
        print(
            f"training set: {built.rows:,} rows, {built.points:,} points "
            f"({len(plan.days)} daily snapshots)"
        )
        return points_from_table(pq.read_table(built.path))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def read_clicks(path: Path, first: int) -> list[Event]:
    with path.open(newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        if next(reader) != ["SessionId", "ItemId", "Time"]:
            raise SystemExit(f"{path}: unexpected header")
        rows = sorted(((float(t), s, i) for s, i, t in reader), key=lambda r: r[0])
    return [
        Event(f"rsc-{first + n}", s, i, CLICK, datetime.fromtimestamp(t, tz=UTC))
        for n, (t, s, i) in enumerate(rows)
    ]


def rsc15(args: argparse.Namespace) -> None:
    """The production training entry point on train_tr, measured on every train_valid point."""
    t0 = time.perf_counter()
    train = read_clicks(DATA / "yoochoose-clicks-100k_train_tr.txt", 0)
    valid = read_clicks(DATA / "yoochoose-clicks-100k_train_valid.txt", len(train))
    train_sessions = {e.session_id for e in train}
    valid_sessions = {e.session_id for e in valid}
    if train_sessions & valid_sessions:
        raise SystemExit("train_tr and train_valid share sessions")
    seconds = {"read": time.perf_counter() - t0}
    t0 = time.perf_counter()
    config = EVENTS_CONFIG
    if args.max_iter is not None:
        config = replace(config, max_iter=args.max_iter)
    fitted = fit_on_events(train, config=config, max_points=args.points, seed=args.seed)
    seconds["fit_on_events"] = time.perf_counter() - t0
    m = fitted.metrics
    print(
        f"train_tr {len(train):,} events -> {int(m['points']):,} training points "
        f"({int(m['train_rows']):,} rows fitted); train_valid {len(valid):,} events"
    )

    # Signals frozen at the end of train_tr: the valid sessions never update them.
    t0 = time.perf_counter()
    events = sorted(train + valid, key=lambda e: e.ts)
    test = [
        replace(p, point_id=n)
        for n, p in enumerate(
            p
            for p in points_from_events(events, collapse_repeats=False)
            if p.session_id in valid_sessions
        )
    ]
    features = replay_features(events, test, learns=lambda e: e.session_id in train_sessions)
    seconds["replay valid"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ranker = fitted.ranker
    ranker.set_params(prediction_threads=None)
    scores = ranker.score_candidates(features.X)
    seconds["score"] = time.perf_counter() - t0
    everything = list(range(len(features.points)))
    hits = np.zeros(len(features.points), dtype=bool)
    hits[features.group[features.y == 1]] = True
    print(
        f"valid points: {len(test):,}, next item among the candidates at {hits.mean():.4f}, "
        f"{len(features.y) / max(len(test), 1):.1f} candidates per point"
    )
    covisit = features.X[:, RANKING_FEATURES.index("covisit_score")]
    for name, values in (("candidate order", None), ("covisit only", covisit), ("model", scores)):
        found = evaluate(features, everything, values, K)
        print(f"{name:>16}: HR@{K} {found[f'hr@{K}']:.4f}  MRR@{K} {found[f'mrr@{K}']:.4f}")
    # Two-stage: the ranker scores the first N candidates of the candidate order, the rest
    # follow in that order. Rows are scored independently and the head's request-relative
    # columns are computed over all candidates, so the head's scores are these scores.
    slices = features.point_slices()
    sizes = np.asarray([s.stop - s.start for s in slices])
    print(f"candidates per point: mean {sizes.mean():.1f}, p50 {np.median(sizes):.0f}")
    for keep in [int(n) for n in args.first_stage.split(",") if n]:
        staged = np.empty_like(scores)
        for rows in slices:
            n = rows.stop - rows.start
            m = head_size(n, keep)
            staged[rows] = with_tail(scores[rows][:m], n)
        found = evaluate(features, everything, staged, K)
        print(
            f"{f'two-stage N={keep}':>16}: HR@{K} {found[f'hr@{K}']:.4f}  "
            f"MRR@{K} {found[f'mrr@{K}']:.4f}"
        )
    print("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--points",
        type=int,
        default=None,
        help="points sampled for training (default: generated data 20,000; --rsc15 all)",
    )
    parser.add_argument(
        "--max-iter", type=int, default=None, help="boosting iterations (default: TrainingConfig's)"
    )
    parser.add_argument("--feast", action="store_true", help="full offline pipeline with Feast")
    parser.add_argument("--rsc15", action="store_true", help="RSC15-100k train_tr -> train_valid")
    parser.add_argument(
        "--first-stage",
        default="20,50,100,200",
        help="--rsc15: also measure two-stage ranking with the ranker on the first N candidates",
    )
    args = parser.parse_args()
    if args.rsc15:
        if not DATA.is_dir():
            sys.exit(f"shared data missing: {DATA}")
        rsc15(args)
    else:
        generated(args)


if __name__ == "__main__":
    main()
