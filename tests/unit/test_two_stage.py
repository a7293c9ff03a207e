"""Two-stage ranking: the head's rows equal the full matrix's, the tail stays below the head in
candidate order, and a recommender that ranks only the head is explained bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from featrec.app.serving.recommender import ServingConfig
from featrec.core.ranking.ranker import ranking_matrix
from featrec.core.ranking.two_stage import head_size, two_stage_scores, with_tail
from featrec.errors import ConfigError
from tests.unit.test_ranking import CANDIDATES, ITEMS, NOW, SESSION_ROW, USER_ROW
from tests.unit.test_recommend import make, toy_model


@pytest.mark.parametrize("rows", [0, 1, 2, 3, 10])
def test_the_head_rows_equal_the_full_matrix_rows(rows: int) -> None:
    full = ranking_matrix(CANDIDATES, SESSION_ROW, USER_ROW, ITEMS, NOW)
    head = ranking_matrix(CANDIDATES, SESSION_ROW, USER_ROW, ITEMS, NOW, rows=rows)
    assert head.shape == (min(rows, len(CANDIDATES)), full.shape[1])
    assert head.tobytes() == full[:rows].tobytes()


@given(
    head=st.lists(st.floats(1e-12, 1.0), min_size=1, max_size=30),
    extra=st.integers(0, 300),
)
def test_the_tail_is_positive_below_the_head_and_in_candidate_order(
    head: list[float], extra: int
) -> None:
    scores = with_tail(np.asarray(head), len(head) + extra)
    assert scores.shape == (len(head) + extra,)
    assert scores[: len(head)].tolist() == head
    tail = scores[len(head) :]
    assert (tail > 0).all() and (tail < min(head)).all()
    assert (np.diff(tail) < 0).all()


def test_the_ranker_scores_only_the_head() -> None:
    asked: list[int] = []

    def score(m: int) -> np.ndarray:
        asked.append(m)
        return np.linspace(0.9, 0.5, m)

    assert two_stage_scores(score, 200, 50).shape == (200,) and asked == [50]
    assert two_stage_scores(score, 20, 50).shape == (20,) and asked[-1] == 20
    assert head_size(200, None) == 200


def test_a_bad_head_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="positive number"):
        ServingConfig(rank_top=0)


def test_a_two_stage_recommender_is_logged_and_explained_bit_for_bit() -> None:
    model = toy_model()
    recommender, _, log = make(model=model, config=ServingConfig(rank_top=2))
    answer = recommender.recommend("s1", "u1", k=5)
    record = log.get(answer.request_id)
    assert record is not None and record.body["rank_top"] == 2
    assert len(record.body["candidates"]["item_ids"]) > 2
    explanation = recommender.explain(answer.request_id)
    assert explanation.reproduced and explanation.mismatches == ()
    full, _, _ = make(model=model, config=ServingConfig(rank_top=None))
    raw_full = full.recommend("s1", "u1", k=5)
    full_record = full.log.get(raw_full.request_id)  # type: ignore[attr-defined]
    assert full_record is not None
    # the head's scores are the one-stage scores of the same candidates
    assert record.body["raw_scores"][:2] == full_record.body["raw_scores"][:2]
