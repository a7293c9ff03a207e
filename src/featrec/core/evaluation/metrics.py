"""Offline recommendation metrics for the next-item protocol (pure functions).

One *prediction point* is a recommended list and the item that actually came next. Lists are
ranked best first; rank 1 is the first position. Definitions (as in session-rec / GRU4Rec):

- ``HR@K``   share of points whose target is in the top ``K``.
- ``MRR@K``  mean of ``1 / rank`` of the target, 0 when it is not in the top ``K``.
- ``coverage@K``  share of the catalogue that appears in at least one top ``K``.
- ``mean popularity percentile@K``  mean, over every recommended item in every top ``K``, of the
  item's popularity percentile in the catalogue: 0 = least popular, 100 = most popular, ties
  share the mean of their ranks (``100 * (less + (equal - 1) / 2) / (N - 1)``). High values
  mean the recommender mostly shows what is popular anyway.

Bad input (different lengths, ``K < 1``, no points, items outside the catalogue) raises
``ValueError`` naming the problem.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Collection, Mapping, Sequence


def rank_of(recommended: Sequence[str], target: str) -> int | None:
    """1-based position of ``target`` in ``recommended``, or ``None`` if absent."""
    for position, item in enumerate(recommended, start=1):
        if item == target:
            return position
    return None


def hit_rate_at_k(recommended: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> float:
    """HR@K over prediction points: share of targets found in the top ``k``."""
    ranks = _ranks(recommended, targets, k)
    return sum(1 for r in ranks if r is not None) / len(ranks)


def mrr_at_k(recommended: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> float:
    """MRR@K over prediction points: mean reciprocal rank, 0 outside the top ``k``."""
    ranks = _ranks(recommended, targets, k)
    return sum(1.0 / r for r in ranks if r is not None) / len(ranks)


def coverage_at_k(
    recommended: Sequence[Sequence[str]], catalogue: Collection[str], k: int
) -> float:
    """Share of ``catalogue`` items that appear in at least one top-``k`` list."""
    _check_k(k)
    if not catalogue:
        raise ValueError("catalogue is empty")
    shown = {item for recs in recommended for item in recs[:k]}
    outside = shown.difference(catalogue)
    if outside:
        raise ValueError(f"recommended items not in the catalogue, e.g. {min(outside)!r}")
    return len(shown) / len(set(catalogue))


def mean_popularity_percentile(
    recommended: Sequence[Sequence[str]], popularity: Mapping[str, float], k: int
) -> float:
    """Mean popularity percentile (0..100) of every item in every top-``k`` list.

    ``popularity`` maps every catalogue item to its popularity (e.g. training clicks).
    """
    _check_k(k)
    if len(popularity) < 2:
        raise ValueError("popularity needs at least 2 catalogue items to define percentiles")
    ordered = sorted(popularity.values())
    last = len(ordered) - 1
    total, count = 0.0, 0
    for recs in recommended:
        for item in recs[:k]:
            pop = popularity.get(item)
            if pop is None:
                raise ValueError(f"recommended item {item!r} has no popularity")
            less = bisect_left(ordered, pop)
            equal = bisect_right(ordered, pop) - less
            total += 100.0 * (less + (equal - 1) / 2) / last
            count += 1
    if count == 0:
        raise ValueError("no recommended items")
    return total / count


def _ranks(
    recommended: Sequence[Sequence[str]], targets: Sequence[str], k: int
) -> list[int | None]:
    _check_k(k)
    if len(recommended) != len(targets):
        raise ValueError(f"{len(recommended)} recommendation lists for {len(targets)} targets")
    if not targets:
        raise ValueError("no prediction points")
    return [rank_of(recs[:k], target) for recs, target in zip(recommended, targets, strict=True)]


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
