"""Known-answer inputs of the ranking features: one request's candidates, session, user and
item rows, with every kind of signal present once (shared by the ranking tests)."""

from __future__ import annotations

import numpy as np

from featrec.core.candidates.model import COVISIT, HISTORY, SESSION, TRENDING, Candidate
from featrec.core.ranking.ranker import RANKING_FEATURES, Ranker, item_row

NOW = 1_000_000.0
HOUR, DAY = 3600.0, 86_400.0
CANDIDATES = [
    Candidate(
        "X",
        (COVISIT,),
        {COVISIT: 2.0},
        {"covisit_last": 0.5, "covisit_anchors": 2.0, "covisit_best_rank": 3.0},
    ),
    Candidate("A", (SESSION,), {SESSION: 4.0}),
    Candidate("T", (TRENDING, HISTORY), {TRENDING: 5.0, HISTORY: 0.5}),
]
SESSION_ROW = {
    "n_events": 3,
    "n_distinct_items": 2,
    "duration_s": 60.0,
    "mean_dwell_s": 30.0,
    "n_carts": 1,
    "n_purchases": 0,
    "last_items": ["A", "B", "A"],
    "last_category": "c1",
    "last_price": 10.0,
    "last_event_at_s": NOW - 10,
}
USER_ROW = {
    "top_categories": ["c2", "c1"],
    "top_category_shares": [0.6, 0.3],
    "recent_purchases": ["T"],
    "avg_price_viewed_90d": 20.0,
    "n_sessions_90d": 4,
    "n_view_30d": 7,
    "purchase_rate_90d": 0.25,
    "repeat_purchase_rate": None,
    "days_since_last_event": 2.0,
}
ITEMS = {
    "X": item_row(
        {
            "price": 20.0,
            "category": "c1",
            "n_view_7d": 5,
            "n_purchase_30d": 1,
            "conversion_rate_30d": 0.1,
            "first_seen_s": NOW - 2 * DAY,
        },
        {
            "trend_view": 2.0,
            "trend_click": 0.0,
            "trend_cart": 0.0,
            "trend_purchase": 1.0,
            "trend_score": 8.0,
            "category": None,
            "as_of_s": NOW - 6 * HOUR,
        },
    ),
    "A": item_row({"price": 5.0, "category": "c2"}, None),
}


def fitted_ranker(features: tuple[str, ...] = RANKING_FEATURES, seed: int = 0) -> Ranker:
    """A small Ranker fitted on random rows (NaNs included) over ``features``."""
    rng = np.random.default_rng(seed)
    X = rng.random((300, len(features)))
    X[::5, 3] = np.nan
    y = (X[:, 0] + X[:, 1] > 1).astype(int)
    return Ranker(feature_names=features, max_iter=10).fit(X, y)
