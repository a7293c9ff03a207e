"""Next-item quality of co-visitation candidates on RSC15-100k (train_tr -> train_valid).

Protocol (../shared/data/README.md): the index is built from the training split only, by the
streaming core (events in time order); for every event of a validation session except the
last, recommend 20 items from the session's events so far, and check the next item. Repeats
are kept; validation sessions never update the index. Prints HR@20, MRR@20, the number of
prediction points (12,455 on this split), coverage, popularity bias, wall times, and the
throughput of the two streaming stages (session step: events -> pair updates; item step: pair
updates -> sketches), in CPU seconds, best of 3, measured separately on the training events.

    .venv/bin/python benchmarks/rsc15_covisit.py
    # roughly session-rec's sequential rules (last item only, forward pairs, 1/d, no decay):
    .venv/bin/python benchmarks/rsc15_covisit.py --backward-weight 0 --last-n 1 \
        --distance-decay 1 --half-life-days 0 --reminder-weight 0 --normalise none
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from featrec.core.evaluation.metrics import (
    coverage_at_k,
    hit_rate_at_k,
    mean_popularity_percentile,
    mrr_at_k,
)
from featrec.core.events.model import CLICK, Event
from featrec.core.features.catalog import NEIGHBOURS_K
from featrec.core.items import covisit, trending
from featrec.core.items.session_scorer import ScorerConfig, recommend

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15-100k"
TRAIN = DATA / "yoochoose-clicks-100k_train_tr.txt"
VALID = DATA / "yoochoose-clicks-100k_train_valid.txt"
K = 20

#: Tuned on this split (train_tr -> train_valid); see the report in the issue.
DEFAULTS = covisit.CovisitConfig()
CANDIDATE_DEFAULTS = ScorerConfig()


@dataclass(frozen=True, slots=True)
class Click:
    session: str
    item: str
    ts: float


def read_clicks(path: Path) -> list[Click]:
    """Rows of a session-rec TSV, sorted by (time, file order) like a stream."""
    with path.open(newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        if header != ["SessionId", "ItemId", "Time"]:
            raise SystemExit(f"{path}: unexpected header {header}")
        clicks = [Click(s, i, float(t)) for s, i, t in reader]
    return sorted(clicks, key=lambda c: c.ts)


def to_event(click: Click, n: int) -> Event:
    return Event(
        event_id=f"rsc-{n}",
        session_id=click.session,
        item_id=click.item,
        type=CLICK,
        ts=datetime.fromtimestamp(click.ts, tz=UTC),
    )


def sessions_of(clicks: list[Click]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in clicks:
        out.setdefault(c.session, []).append(c.item)
    return out


def build_index(
    events: list[Event], config: covisit.CovisitConfig, repeats: int = 3
) -> tuple[list[covisit.PairUpdate], covisit.CovisitIndex, float, float]:
    """The two keyed stages of the streaming flow (the calls ``bootstrap`` makes), each timed
    in CPU seconds, best of ``repeats`` (the machine is shared: wall time is noisy)."""
    t_session = t_item = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        session_step(events, config, keep=False)
        t_session = min(t_session, time.process_time() - t0)
        # Kept for the item step, untimed: retaining 200k tuples only adds GC work that a
        # stream, whose updates are transient, does not have.
        updates = session_step(events, config, keep=True)
        t0 = time.process_time()
        index = covisit.CovisitIndex(config)
        for update in updates:
            index.add(update)
        t_item = min(t_item, time.process_time() - t0)
    return updates, index, t_session, t_item


def session_step(
    events: list[Event], config: covisit.CovisitConfig, keep: bool
) -> list[covisit.PairUpdate]:
    sessions: dict[str, covisit.RecentItems] = {}
    updates: list[covisit.PairUpdate] = []
    for event in events:
        recent = sessions.get(event.session_id)
        if recent is None:
            recent = sessions[event.session_id] = covisit.RecentItems()
        emitted = covisit.observe(recent, event, config)
        if keep:
            updates.extend(emitted)
    return updates


def best_cpu_seconds(run: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        run()
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window-n", type=int, default=DEFAULTS.window_n)
    parser.add_argument("--window-s", type=float, default=DEFAULTS.window_s)
    parser.add_argument("--forward-weight", type=float, default=DEFAULTS.forward_weight)
    parser.add_argument("--backward-weight", type=float, default=DEFAULTS.backward_weight)
    parser.add_argument("--distance-decay", type=float, default=DEFAULTS.distance_decay)
    parser.add_argument(
        "--self-pairs", action=argparse.BooleanOptionalAction, default=DEFAULTS.self_pairs
    )
    parser.add_argument(
        "--half-life-days",
        type=float,
        default=None if DEFAULTS.half_life_s is None else DEFAULTS.half_life_s / 86_400,
        help="0 disables time decay",
    )
    parser.add_argument("--capacity", type=int, default=DEFAULTS.capacity)
    parser.add_argument(
        "--neighbours",
        type=int,
        default=NEIGHBOURS_K,
        help="neighbours read per anchor (what an item_neighbours row carries)",
    )
    parser.add_argument("--last-n", type=int, default=CANDIDATE_DEFAULTS.last_n)
    parser.add_argument("--recency-decay", type=float, default=CANDIDATE_DEFAULTS.recency_decay)
    parser.add_argument("--normalise", default=CANDIDATE_DEFAULTS.normalise)
    parser.add_argument("--reminder-weight", type=float, default=CANDIDATE_DEFAULTS.reminder_weight)
    parser.add_argument("--reminder-decay", type=float, default=CANDIDATE_DEFAULTS.reminder_decay)
    args = parser.parse_args()

    config = covisit.CovisitConfig(
        window_n=args.window_n,
        window_s=args.window_s,
        forward_weight=args.forward_weight,
        backward_weight=args.backward_weight,
        distance_decay=args.distance_decay,
        self_pairs=args.self_pairs,
        half_life_s=args.half_life_days * 86_400 if args.half_life_days else None,
        capacity=args.capacity,
    )
    candidates = ScorerConfig(
        last_n=args.last_n,
        recency_decay=args.recency_decay,
        normalise=args.normalise,
        reminder_weight=args.reminder_weight,
        reminder_decay=args.reminder_decay,
    )
    print(f"covisit: {config}")
    print(f"candidates: {candidates}, neighbours per anchor: {args.neighbours}")

    t0 = time.perf_counter()
    train = read_clicks(TRAIN)
    valid = read_clicks(VALID)
    events = [to_event(c, n) for n, c in enumerate(train)]
    t_read = time.perf_counter() - t0

    updates, index, t_session, t_item = build_index(events, config)
    t_trend = best_cpu_seconds(lambda: trending.bootstrap(events, trending.TrendingConfig()))
    board = trending.bootstrap(events, trending.TrendingConfig())
    fallback = [item for item, _ in board.top(K)]

    lists: dict[str, list[tuple[str, float]]] = {}

    def neighbours(anchor: str) -> list[tuple[str, float]]:
        found = lists.get(anchor)
        if found is None:
            found = lists[anchor] = index.top(anchor, args.neighbours)
        return found

    t0 = time.perf_counter()
    recommended: list[list[str]] = []
    targets: list[str] = []
    for items in sessions_of(valid).values():
        for i in range(len(items) - 1):
            recent = items[i::-1]
            recommended.append(recommend(recent, neighbours, K, candidates, fallback=fallback))
            targets.append(items[i + 1])
    t_eval = time.perf_counter() - t0

    popularity = Counter(c.item for c in train)
    print(f"prediction points: {len(targets):,}")
    print(f"HR@{K}:  {hit_rate_at_k(recommended, targets, K):.4f}")
    print(f"MRR@{K}: {mrr_at_k(recommended, targets, K):.4f}")
    print(f"coverage@{K}: {coverage_at_k(recommended, popularity.keys(), K):.4f}")
    print(
        f"mean popularity percentile@{K}: "
        f"{mean_popularity_percentile(recommended, popularity, K):.1f}"
    )
    print(f"index: {index.n_anchors:,} anchors, {index.n_pairs:,} stored pairs")
    n_events, n_updates = len(events), len(updates)
    print(
        f"session step: {n_events:,} events -> {n_updates:,} pair updates in {t_session:.2f} "
        "CPU s "
        f"({n_events / t_session:,.0f} events/s, {n_updates / t_session:,.0f} pair updates/s)"
    )
    print(
        f"item step: {n_updates:,} pair updates in {t_item:.2f} CPU s "
        f"({n_updates / t_item:,.0f} pair updates/s); both steps "
        f"{n_events / (t_session + t_item):,.0f} events/s"
    )
    print(
        f"trending: {n_events:,} events in {t_trend:.2f} CPU s ({n_events / t_trend:,.0f} events/s)"
    )
    print(
        f"wall time: read {t_read:.2f} s, replay {t_eval:.2f} s "
        f"({len(targets) / t_eval:,.0f} recommendations/s)"
    )


if __name__ == "__main__":
    main()
