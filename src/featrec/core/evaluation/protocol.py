"""The next-item evaluation protocol and its figures (pure).

The protocol is the one of the session-based recommendation literature (session-rec, GRU4Rec;
see ``../shared/data/README.md``): replay the test events in time order; at **every event of a
session except its last**, ask for ``K`` items from the full training catalogue and check the
item the session touches next. Repeats are kept (a next click on the same item is a target like
any other). A *prediction point* is such an event.

Everything here is pure: :func:`prediction_points` labels the test events, :class:`PolicyScore`
turns the recommended lists of one policy into HR@K, MRR@K, coverage, popularity bias and
latency percentiles, and :func:`parse_external_list` reads another system's lists so that they
are scored on exactly the same points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from featrec.core.evaluation.metrics import (
    coverage_at_k,
    hit_rate_at_k,
    mean_popularity_percentile,
    mrr_at_k,
    rank_of,
)
from featrec.core.events.model import Event
from featrec.core.ranking.examples import next_item_targets
from featrec.errors import ConfigError

#: Percentiles reported for latencies (recommendation and freshness).
PERCENTILES: Final = (50.0, 90.0, 95.0, 99.0)


@dataclass(frozen=True, slots=True)
class PredictionPoint:
    """One event of a test session that is not the session's last."""

    #: Index of the point's event in the time-ordered test events.
    event_index: int
    session_id: str
    #: 1-based position of the event in its session (1 = the session's first event).
    position: int
    #: Event time of the point (unix seconds).
    at_s: float
    #: The item the session touched next.
    target: str
    user_id: str | None = None

    def key(self) -> tuple[str, int]:
        """How external lists name the point: ``(session_id, position)``."""
        return self.session_id, self.position

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_index": self.event_index,
            "session_id": self.session_id,
            "position": self.position,
            "at_s": self.at_s,
            "target": self.target,
            "user_id": self.user_id,
        }


def time_ordered(events: Iterable[Event]) -> list[Event]:
    """``events`` sorted by event time; ties keep their file order (a stable sort)."""
    return sorted(events, key=lambda e: e.ts)


def split_by_session_start(
    events: Sequence[Event], test_share: float
) -> tuple[list[Event], list[Event], datetime]:
    """A time split of time-ordered ``events`` into whole sessions: the split time is the
    event time by which ``1 - test_share`` of the events have happened; sessions that start at
    or after it are the test, the others the training events (a session never straddles).
    Returns (train, test, split time)."""
    if not 0 < test_share < 1:
        raise ConfigError(f"test share must be in (0, 1), got {test_share}")
    if len(events) < 2:
        raise ConfigError("a time split needs at least two events")
    cut = events[min(len(events) - 1, math.floor(len(events) * (1 - test_share)))].ts
    first: dict[str, datetime] = {}
    for event in events:
        first.setdefault(event.session_id, event.ts)
    train = [e for e in events if first[e.session_id] < cut]
    test = [e for e in events if first[e.session_id] >= cut]
    return train, test, cut


def prediction_points(events: Sequence[Event]) -> list[PredictionPoint | None]:
    """Per event of the time-ordered ``events``: its prediction point, or None for the last
    event of each session (nothing comes next)."""
    targets = next_item_targets(events, collapse_repeats=False)
    seen: dict[str, int] = {}
    out: list[PredictionPoint | None] = []
    for i, (event, target) in enumerate(zip(events, targets, strict=True)):
        position = seen[event.session_id] = seen.get(event.session_id, 0) + 1
        if target is None:
            out.append(None)
            continue
        out.append(
            PredictionPoint(
                i, event.session_id, position, event.ts.timestamp(), target, event.user_id
            )
        )
    return out


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99 (nearest-rank), mean and max of ``values``; empty input gives NaNs."""
    if not values:
        return {**{f"p{p:g}": math.nan for p in PERCENTILES}, "mean": math.nan, "max": math.nan}
    ordered = sorted(values)
    out = {f"p{p:g}": ordered[_nearest_rank(p, len(ordered))] for p in PERCENTILES}
    out["mean"] = math.fsum(ordered) / len(ordered)
    out["max"] = ordered[-1]
    return out


def _nearest_rank(p: float, n: int) -> int:
    return max(0, min(n - 1, math.ceil(p / 100 * n) - 1))


def hit_rate_curve(
    recommended: Sequence[Sequence[str]], targets: Sequence[str], k: int
) -> list[float]:
    """HR@1 .. HR@k in one pass (``out[j]`` is HR@(j+1))."""
    if len(recommended) != len(targets) or not targets:
        raise ValueError(f"{len(recommended)} lists for {len(targets)} targets")
    hits = [0] * (k + 1)
    for recs, target in zip(recommended, targets, strict=True):
        rank = rank_of(recs[:k], target)
        if rank is not None:
            hits[rank] += 1
    out: list[float] = []
    running = 0
    for j in range(1, k + 1):
        running += hits[j]
        out.append(running / len(targets))
    return out


@dataclass(frozen=True, slots=True)
class PolicyScore:
    """The figures of one policy over the prediction points."""

    policy: str
    k: int
    points: int
    hr: float
    mrr: float
    coverage: float
    popularity_percentile: float
    hr_curve: list[float]
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: Share of the points answered degraded (no usable session row, store trouble).
    degraded_share: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "k": self.k,
            "points": self.points,
            f"hr@{self.k}": self.hr,
            f"mrr@{self.k}": self.mrr,
            f"coverage@{self.k}": self.coverage,
            f"popularity_percentile@{self.k}": self.popularity_percentile,
            "hr_curve": self.hr_curve,
            "latency_ms": self.latency_ms,
            "degraded_share": self.degraded_share,
        }


def score_policy(
    policy: str,
    recommended: Sequence[Sequence[str]],
    targets: Sequence[str],
    popularity: Mapping[str, float],
    k: int,
    *,
    latencies_ms: Sequence[float] = (),
    degraded: int = 0,
) -> PolicyScore:
    """The figures of ``policy``'s lists (aligned with ``targets``).

    ``popularity`` maps every training item to its training count: it is the catalogue of the
    coverage figure and the scale of the popularity percentile. Items outside it (unknown to
    training) are left out of those two figures, never out of HR and MRR.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    known = [[item for item in recs[:k] if item in popularity] for recs in recommended]
    shown = any(known)
    return PolicyScore(
        policy=policy,
        k=k,
        points=len(targets),
        hr=hit_rate_at_k(recommended, targets, k),
        mrr=mrr_at_k(recommended, targets, k),
        coverage=coverage_at_k(known, popularity.keys(), k) if popularity else math.nan,
        popularity_percentile=(
            mean_popularity_percentile(known, popularity, k)
            if shown and len(popularity) >= 2
            else math.nan
        ),
        hr_curve=hit_rate_curve(recommended, targets, k),
        latency_ms=percentiles(latencies_ms),
        degraded_share=degraded / len(targets) if targets else 0.0,
    )


def parse_external_list(record: Mapping[str, Any], line: int) -> tuple[tuple[str, int], list[str]]:
    """One line of an external list file: ``{"session_id": str, "position": int,
    "items": [str, ...]}`` -> ``((session_id, position), items)``. Raises ConfigError naming
    the line and the problem."""
    session = record.get("session_id")
    position = record.get("position")
    items = record.get("items")
    if not isinstance(session, str | int) or isinstance(session, bool):
        raise ConfigError(f"line {line}: session_id must be a string, got {session!r}")
    if not isinstance(position, int) or isinstance(position, bool) or position < 1:
        raise ConfigError(f"line {line}: position must be an integer >= 1, got {position!r}")
    if not isinstance(items, list) or not all(isinstance(i, str | int) for i in items):
        raise ConfigError(f"line {line}: items must be a list of item ids")
    return (str(session), position), [str(i) for i in items]


def align_external(
    points: Sequence[PredictionPoint], lists: Mapping[tuple[str, int], Sequence[str]]
) -> tuple[list[list[str]], int]:
    """External ``lists`` in the order of ``points``; a point without a list gets an empty
    list (a miss). Returns the lists and how many points had none."""
    out: list[list[str]] = []
    missing = 0
    for point in points:
        found = lists.get(point.key())
        if found is None:
            missing += 1
            out.append([])
        else:
            out.append(list(found))
    return out, missing
