"""The learned ranker end to end on generated traffic: replayed events -> training set ->
fit -> held-out quality (it beats the candidate order, finds the planted answer, and scores
bit-identically whatever the batch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from featrec.app.training import (
    FeatureSet,
    TrainingConfig,
    evaluate,
    fit_ranker,
    points_from_events,
    replay_features,
    split_by_time,
)
from featrec.core.candidates.model import COVISIT, POPULAR, Candidate
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.ranking.ranker import (
    Ranker,
    item_row,
    ranking_matrix,
)
from featrec.testing.ranking import CANDIDATES, ITEMS, NOW, SESSION_ROW, USER_ROW


@dataclass
class Trained:
    features: FeatureSet
    ranker: Ranker
    metrics: dict[str, float]
    test: list[int]


@pytest.fixture(scope="module")
def trained() -> Trained:
    """A ranker trained on generated traffic (the next item comes from related items, the
    same category or the user's tastes), the newest 25% of points held out."""
    config = GeneratorConfig(
        n_events=24_000, n_users=600, n_items=800, concurrent_sessions=60, seed=11
    )
    events = list(generate(config))
    points = points_from_events(events, max_points=3000, since=events[len(events) // 5].ts)
    features = replay_features(events, points)
    result = fit_ranker(features, TrainingConfig(holdout=0.25, max_iter=60))
    _, test = split_by_time(features, 0.25)
    return Trained(features, result.ranker, result.metrics, test)


def test_trained_model_beats_the_candidate_order_on_held_out_points(trained: Trained) -> None:
    m = trained.metrics
    assert m["holdout_points"] == len(trained.test) >= 700
    # The candidate order is the co-visitation scorer; the model also sees categories,
    # popularity and the session, which the generator's walk depends on.
    assert m["holdout_model_mrr@20"] > m["holdout_candidate_order_mrr@20"] + 0.05
    assert m["holdout_model_hr@20"] >= m["holdout_candidate_order_hr@20"]
    again = evaluate(
        trained.features, trained.test, trained.ranker.score_candidates(trained.features.X), 20
    )
    assert again["mrr@20"] == m["holdout_model_mrr@20"]


def test_trained_model_ranks_the_planted_answer_first(trained: Trained) -> None:
    """A request where one candidate has every signal the data rewards (co-visited with the
    newest item, same category, the user's favourite, popular) and the others none."""
    session = {**SESSION_ROW, "last_items": ["s1", "s2"], "last_category": "c1"}
    user = {
        **USER_ROW,
        "top_categories": ["c1"],
        "top_category_shares": [0.9],
        "recent_purchases": [],
    }
    trend = {
        "trend_view": 20.0,
        "trend_click": 5.0,
        "trend_cart": 1.0,
        "trend_purchase": 0.0,
        "as_of_s": NOW,
    }
    planted = Candidate("planted", (COVISIT,), {COVISIT: 1.0})
    others = [Candidate(f"d{i}", (POPULAR,), {POPULAR: 0.5}) for i in range(30)]
    candidates = [*others[:10], planted, *others[10:]]
    items = {
        "planted": item_row({"price": 10.0, "category": "c1"}, {**trend, "category": "c1"}),
        **{
            c.item_id: item_row({"price": 10.0, "category": f"z{i}"}, None)
            for i, c in enumerate(others)
        },
    }
    X = ranking_matrix(candidates, session, user, items, NOW)
    scores = trained.ranker.score_candidates(X)
    assert int(np.argmax(scores)) == 10
    assert scores[10] > 2 * np.sort(scores)[-2]


def test_scores_are_bit_identical_and_independent_of_the_batch(trained: Trained) -> None:
    X = trained.features.X[:500]
    first = trained.ranker.score_candidates(X)
    again = trained.ranker.score_candidates(X.copy())
    assert first.tobytes() == again.tobytes()
    alone = np.concatenate(
        [trained.ranker.score_candidates(X[i : i + 1]) for i in range(0, 500, 37)]
    )
    assert alone.tobytes() == first[::37].tobytes()
    m1 = ranking_matrix(CANDIDATES, SESSION_ROW, USER_ROW, ITEMS, NOW)
    m2 = ranking_matrix(list(CANDIDATES), dict(SESSION_ROW), dict(USER_ROW), dict(ITEMS), NOW)
    assert m1.tobytes() == m2.tobytes()
