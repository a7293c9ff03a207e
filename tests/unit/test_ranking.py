"""Ranking features (known answers), the Ranker's estimator contract, determinism, the
degraded-mode scorer, and a model trained on generated data that finds the planted answer."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import check_estimator
from threadpoolctl import threadpool_limits

from featrec.core.candidates.model import HISTORY, POPULAR, TRENDING, Candidate
from featrec.core.ranking.ranker import (
    RANKING_FEATURES,
    Ranker,
    fallback_scores,
    item_row,
    popularity_score,
    ranking_matrix,
    trend_now,
)
from featrec.testing.ranking import CANDIDATES, DAY, HOUR, ITEMS, NOW, SESSION_ROW, USER_ROW


def features(matrix: np.ndarray, row: int) -> dict[str, float]:
    return dict(zip(RANKING_FEATURES, matrix[row].tolist(), strict=True))


def same(got: float, expected: float) -> bool:
    return (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def assert_features(got: dict[str, float], expected: dict[str, float]) -> None:
    wrong = {k: (got[k], v) for k, v in expected.items() if not same(got[k], v)}
    assert not wrong, wrong


def test_item_row_merges_batch_and_streaming_rows() -> None:
    assert ITEMS["X"] is not None
    assert ITEMS["X"]["category"] == "c1"  # the streaming row had none: keep the batch one
    assert item_row({"category": "old"}, {"category": "new"}) == {"category": "new"}
    assert item_row(None, None) is None


def test_known_answer_features() -> None:
    matrix = ranking_matrix(CANDIDATES, SESSION_ROW, USER_ROW, ITEMS, NOW)
    assert matrix.shape == (3, len(RANKING_FEATURES)) and matrix.dtype == np.float64
    trend_x = 1.0 * 2.0 * 2 ** -(6 * HOUR / (6 * HOUR)) + 6.0 * 1.0 * 2 ** -(6 * HOUR / DAY)
    session_part = {
        "session_n_events": 3,
        "session_n_distinct_items": 2,
        "session_duration_s": 60,
        "session_mean_dwell_s": 30,
        "session_n_carts": 1,
        "session_n_purchases": 0,
        "session_idle_s": 10,
        "session_repeat_share": 1 / 3,
        "session_last_run": 1,
        "user_n_sessions_90d": 4,
        "user_views_30d": 7,
        "user_purchase_rate_90d": 0.25,
        "user_repeat_purchase_rate": math.nan,
        "user_days_since_last_event": 2,
    }
    assert_features(
        features(matrix, 0),
        {
            "candidate_rank": 0,
            "base_score": 2.0,
            "base_share": 0.5,
            "covisit_score": 2.0,
            "covisit_share": 1.0,
            "covisit_last": 0.5,
            "covisit_second": 0.0,
            "covisit_last_raw": 0.0,
            "covisit_last_rank": math.nan,
            "covisit_best_rank": 3,
            "covisit_anchors": 2,
            "session_score": 0,
            "history_score": 0,
            "trending_score": 0,
            "src_covisit": 1,
            "src_session": 0,
            "src_history": 0,
            "n_sources": 1,
            "item_trend_now": trend_x,
            "item_trend_share": 1.0,
            "item_trend_purchase_share": 0.5,
            "item_views_7d": 5,
            "item_purchases_30d": 1,
            "item_conversion_30d": 0.1,
            "item_age_days": 2,
            "item_log_price": math.log1p(20),
            "price_vs_session": math.log(2),
            "same_category": 1,
            "session_position": math.nan,
            "session_count": 0,
            "user_category_share": 0.3,
            "user_bought_item": 0,
            "price_vs_user": 0,
            **session_part,
        },
    )
    assert_features(
        features(matrix, 1),
        {
            "candidate_rank": 1,
            "base_share": 1.0,
            "covisit_share": 0.0,
            "covisit_last": 0.0,
            "covisit_second": 0.0,
            "covisit_best_rank": math.nan,
            "covisit_anchors": 0.0,
            "session_score": 4.0,
            "item_trend_now": math.nan,
            "item_trend_share": math.nan,
            "price_vs_session": math.log(0.5),
            "same_category": 0,
            "session_position": 1,
            "session_count": 2,
            "user_category_share": 0.6,
            "item_age_days": math.nan,
            **session_part,
        },
    )
    assert_features(
        features(matrix, 2),
        {
            "trending_score": 5.0,
            "history_score": 0.5,
            "src_trending": 1,
            "src_history": 1,
            "n_sources": 2,
            "item_log_price": math.nan,
            "same_category": math.nan,
            "user_category_share": math.nan,  # unknown category
            "user_bought_item": 1,
            **session_part,
        },
    )


def test_request_relative_popularity_and_the_newest_items_run() -> None:
    """``item_trend_share`` is the trend over the request's most popular candidate's (so it
    does not move when every trend decays together); ``session_last_run`` counts the newest
    item's consecutive repeats."""
    rows = {
        "X": {"trend_view": 4.0, "as_of_s": NOW},
        "A": {"trend_view": 1.0, "as_of_s": NOW},
    }
    session = {**SESSION_ROW, "last_items": ["A", "A", "A", "B", "A"], "n_events": 5}
    now = features(ranking_matrix(CANDIDATES, session, None, rows, NOW), 1)
    later = features(ranking_matrix(CANDIDATES, session, None, rows, NOW + DAY), 1)
    assert now["item_trend_share"] == later["item_trend_share"] == 0.25
    assert later["item_trend_now"] < now["item_trend_now"]
    assert now["session_last_run"] == 3 and now["session_repeat_share"] == 1 - 2 / 5
    nothing = ranking_matrix(CANDIDATES, session, None, {}, NOW)
    assert np.isnan(nothing[:, RANKING_FEATURES.index("item_trend_share")]).all()


def test_missing_session_and_user_are_nan_not_zero() -> None:
    matrix = ranking_matrix(CANDIDATES, None, None, ITEMS, NOW)
    for row in range(3):
        got = features(matrix, row)
        for name in RANKING_FEATURES:
            if name.startswith(("session_", "user_", "same_category", "price_vs_")):
                assert math.isnan(got[name]) != (name == "session_score"), name
    assert ranking_matrix([], SESSION_ROW, USER_ROW, {}, NOW).shape == (0, len(RANKING_FEATURES))


def test_trend_decay_and_popularity() -> None:
    assert math.isnan(trend_now(None, NOW))
    row = {"trend_view": 4.0, "as_of_s": NOW}
    assert trend_now(row, NOW + 6 * HOUR) == 2.0  # a view half-life later
    assert trend_now(row, NOW - HOUR) == 4.0  # a row newer than now is taken as is
    pops = popularity_score(CANDIDATES, ITEMS, NOW)
    assert pops[0] == pytest.approx(trend_now(ITEMS["X"], NOW))
    assert pops[1] == 0.0 and pops[2] == 5.0  # no trending row: the source score
    no_rows = popularity_score([Candidate("P", (POPULAR,), {POPULAR: 3.0})])
    assert no_rows.tolist() == [3.0]


def test_fallback_known_answer() -> None:
    """Without the session: category affinity, then popularity, then history."""
    candidates = [
        Candidate("tv", (POPULAR,), {POPULAR: 100.0}),
        Candidate("shoe", (TRENDING,), {TRENDING: 1.0}),
        Candidate("sock", (HISTORY,), {HISTORY: 1.0}),
    ]
    items = {"tv": {"category": "tv"}, "shoe": {"category": "shoes"}, "sock": {"category": "x"}}
    user = {"top_categories": ["shoes"], "top_category_shares": [0.9]}
    scores = fallback_scores(candidates, user, items)
    # tv: 0.4 x 1; shoe: 0.5 x 0.9 + 0.4 x log(2) / log(101); sock: 0.1 (no popularity)
    rel = math.log(2) / math.log(101)
    assert scores.tolist() == pytest.approx([0.4, 0.45 + 0.4 * rel, 0.1])
    anonymous = fallback_scores(candidates, None, items)
    assert int(np.argmax(anonymous)) == 0  # popularity alone


def test_ranker_follows_the_estimator_contract() -> None:
    # One OpenMP thread: with two on a busy 2-core machine this check took minutes, not seconds.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")
        check_estimator(Ranker(max_iter=10))
    ranker = Ranker(feature_names=("a", "b"), max_iter=7)
    assert ranker.get_params()["max_iter"] == 7
    with pytest.raises(NotFittedError):
        ranker.score_candidates(np.zeros((1, 2)))
    X = np.random.default_rng(0).random((200, 2))
    X[::7, 1] = np.nan
    y = (X[:, 0] > 0.5).astype(int)
    assert ranker.fit(X, y) is ranker
    assert ranker.feature_names_in_.tolist() == ["a", "b"] and ranker.n_features_in_ == 2
    assert not hasattr(clone(ranker), "model_")
    with pytest.raises(ValueError, match="3 columns for 2 feature_names"):
        Ranker(feature_names=("a", "b")).fit(np.zeros((4, 3)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="expecting 2 features"):
        ranker.score_candidates(np.zeros((1, 3)))


def test_ranker_fits_an_all_nan_column() -> None:
    """scikit-learn 1.9 fails to bin an all-NaN column; the Ranker works around it."""
    X = np.random.default_rng(1).random((100, 3))
    X[:, 1] = np.nan
    y = (X[:, 0] > 0.5).astype(int)
    ranker = Ranker(max_iter=5).fit(X, y)
    with_values = X.copy()
    with_values[:, 1] = 123.0
    assert np.array_equal(ranker.score_candidates(X), ranker.score_candidates(with_values))
