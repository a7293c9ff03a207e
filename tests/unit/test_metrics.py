"""Offline metrics against hand-computed values."""

from __future__ import annotations

import pytest

from featrec.core.evaluation.metrics import (
    coverage_at_k,
    hit_rate_at_k,
    mean_popularity_percentile,
    mrr_at_k,
    rank_of,
)

# Three prediction points: target at rank 1, at rank 3, and missing.
RECS = [["a", "b", "c"], ["b", "c", "a"], ["c", "d", "e"]]
TARGETS = ["a", "a", "b"]


def test_rank_of() -> None:
    assert rank_of(["x", "y", "z"], "z") == 3
    assert rank_of(["x", "y", "x"], "x") == 1
    assert rank_of([], "x") is None


def test_hit_rate_and_mrr_by_hand() -> None:
    assert hit_rate_at_k(RECS, TARGETS, 3) == 2 / 3
    assert mrr_at_k(RECS, TARGETS, 3) == pytest.approx((1 + 1 / 3 + 0) / 3)
    # At K = 2 the rank-3 hit no longer counts.
    assert hit_rate_at_k(RECS, TARGETS, 2) == 1 / 3
    assert mrr_at_k(RECS, TARGETS, 2) == pytest.approx(1 / 3)
    # K larger than the lists is fine: lists may be shorter than K.
    assert hit_rate_at_k(RECS, TARGETS, 20) == 2 / 3


def test_coverage_by_hand() -> None:
    catalogue = ["a", "b", "c", "d", "e", "f", "g", "h"]
    assert coverage_at_k(RECS, catalogue, 3) == 5 / 8
    assert coverage_at_k(RECS, catalogue, 1) == 3 / 8  # a, b, c
    with pytest.raises(ValueError, match="not in the catalogue"):
        coverage_at_k([["zz"]], catalogue, 1)


def test_mean_popularity_percentile_by_hand() -> None:
    # Sorted popularities: d=1, c=2, b=2, a=10 -> percentiles d 0, b/c share ranks 1..2 -> 50,
    # a 100 (N - 1 = 3 steps).
    popularity = {"a": 10.0, "b": 2.0, "c": 2.0, "d": 1.0}
    assert mean_popularity_percentile([["a"]], popularity, 1) == 100.0
    assert mean_popularity_percentile([["d"]], popularity, 1) == 0.0
    assert mean_popularity_percentile([["b"], ["c"]], popularity, 1) == 50.0
    assert mean_popularity_percentile([["a", "d"], ["b", "a"]], popularity, 2) == pytest.approx(
        (100 + 0 + 50 + 100) / 4
    )
    with pytest.raises(ValueError, match="no popularity"):
        mean_popularity_percentile([["zz"]], popularity, 1)
    with pytest.raises(ValueError, match="at least 2"):
        mean_popularity_percentile([["a"]], {"a": 1.0}, 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: hit_rate_at_k(RECS, TARGETS[:2], 3), "3 recommendation lists for 2 targets"),
        (lambda: mrr_at_k([], [], 3), "no prediction points"),
        (lambda: hit_rate_at_k(RECS, TARGETS, 0), "k must be >= 1"),
        (lambda: coverage_at_k(RECS, [], 3), "catalogue is empty"),
        (lambda: mean_popularity_percentile([[]], {"a": 1.0, "b": 2.0}, 3), "no recommended"),
    ],
)
def test_bad_input_names_the_problem(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]
