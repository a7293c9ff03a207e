"""The column-by-column ranking matrix equals the row-at-a-time one it replaced, bit for bit, on
random requests: candidates with any sources, scores and co-visitation details, item rows with
missing, NaN, integer or wrong-typed values, sessions and users present or not, and two-stage
heads of any size. A model trained on the old matrices scores the new ones identically, and
explain keeps reproducing requests logged before the change."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from featrec.core.candidates.model import DETAILS, SOURCES, Candidate
from featrec.core.ranking.ranker import item_row, popularity_score, ranking_matrix, trend_now
from tests.unit.matrix_reference import ranking_matrix as reference_matrix

NOW = 1_700_000_000.0
ITEM_IDS = [f"i{n}" for n in range(12)]
CATEGORIES = ["c0", "c1", "c2", ""]

#: No magnitudes below 1e-6: a price ratio that underflows to 0 raises in ``math.log`` (old
#: and new alike).
finite = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: x == 0 or abs(x) > 1e-6)
numbers = st.one_of(
    finite,
    st.floats(0, 1e4).filter(lambda x: x == 0 or x > 1e-6),
    st.integers(-5, 500),
    st.just(math.nan),
    st.none(),
    st.booleans(),
    st.just("7"),
)


@st.composite
def candidate(draw: st.DrawFn, item: str) -> Candidate:
    scores = draw(st.dictionaries(st.sampled_from(SOURCES), st.floats(0, 50), max_size=5))
    sources = tuple(s for s in SOURCES if draw(st.booleans()))
    details = draw(st.dictionaries(st.sampled_from(DETAILS), st.floats(0, 60), max_size=6))
    return Candidate(item, sources, scores, details)


@st.composite
def item_rows(draw: st.DrawFn) -> dict[str, object] | None:
    features = draw(
        st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "price": numbers,
                "category": st.sampled_from([*CATEGORIES, None, 3]),
                "n_view_7d": numbers,
                "n_purchase_30d": numbers,
                "conversion_rate_30d": numbers,
                "first_seen_s": st.floats(NOW - 1e8, NOW + 10) | numbers,
            },
        )
    )
    trending = draw(
        st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "trend_view": numbers,
                "trend_click": numbers,
                "trend_cart": numbers,
                "trend_purchase": numbers,
                "as_of_s": st.sampled_from([NOW - 5, NOW - 3600, NOW + 30]) | numbers,
                "category": st.sampled_from([*CATEGORIES, None]),
            },
        )
    )
    return item_row(features, trending)


@st.composite
def requests(draw: st.DrawFn) -> tuple[object, ...]:
    ids = draw(st.lists(st.sampled_from(ITEM_IDS), unique=True, max_size=12))
    candidates = [draw(candidate(i)) for i in ids]
    items = {i: draw(item_rows()) for i in ids if draw(st.integers(0, 5))}
    session = draw(
        st.none()
        | st.fixed_dictionaries(
            {
                "last_items": st.lists(st.sampled_from(ITEM_IDS), max_size=6),
                "last_category": st.sampled_from([*CATEGORIES, None]),
                "last_price": numbers,
                "n_events": numbers,
                "n_distinct_items": numbers,
                "last_event_at_s": st.floats(NOW - 1e4, NOW),
                "duration_s": numbers,
            }
        )
    )
    user = draw(
        st.none()
        | st.fixed_dictionaries(
            {
                "top_categories": st.lists(st.sampled_from(CATEGORIES), max_size=3),
                "top_category_shares": st.lists(st.floats(0, 1), max_size=3),
                "recent_purchases": st.lists(st.sampled_from(ITEM_IDS), max_size=4),
                "avg_price_viewed_90d": numbers,
                "n_sessions_90d": numbers,
            }
        )
    )
    rows = draw(st.none() | st.integers(0, 14))
    return candidates, session, user, items, rows


@settings(max_examples=80, deadline=None)
@given(request=requests())
def test_the_matrix_equals_the_row_at_a_time_oracle_bit_for_bit(
    request: tuple[object, ...],
) -> None:
    candidates, session, user, items, rows = request
    new = ranking_matrix(candidates, session, user, items, NOW, rows=rows)  # type: ignore[arg-type]
    old = reference_matrix(candidates, session, user, items, NOW, rows=rows)  # type: ignore[arg-type]
    assert new.shape == old.shape
    assert new.tobytes() == old.tobytes()


@settings(max_examples=40, deadline=None)
@given(request=requests())
def test_popularity_equals_the_per_item_trend_bit_for_bit(request: tuple[object, ...]) -> None:
    candidates, _, _, items, _ = request
    got = popularity_score(candidates, items, NOW)  # type: ignore[arg-type]
    for c, value in zip(candidates, got.tolist(), strict=True):  # type: ignore[attr-defined]
        expected = trend_now(items.get(c.item_id), NOW)  # type: ignore[attr-defined]
        if math.isnan(expected):
            expected = max(c.score("trending"), c.score("popular"))
        assert math.copysign(1, value) == math.copysign(1, expected)
        assert value == expected or (math.isnan(value) and math.isnan(expected))
