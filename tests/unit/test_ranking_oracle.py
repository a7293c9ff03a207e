"""The columnar ranking matrix (item columns computed once per row, gathered per request) equals
the row-at-a-time one it replaced (``tests/unit/ranking_reference.py``) bit for bit, NaNs
included, on random requests: candidates with any mix of sources, scores and co-visitation
details; item rows missing, partial, with ints, bools, strings, NaN, negative or zero prices
and trends taken before, at or after now; sessions and users absent or partial; two-stage
heads of any size; and trending configs other than the default. Both ways of passing the items
are compared: a mapping of merged rows and :class:`ItemColumns` gathered from an
:class:`ItemTable`."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from _lanes import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from featrec.core.candidates.model import DETAILS, SOURCES, Candidate
from featrec.core.features.catalog import TRENDING_TYPES
from featrec.core.items.trending import TrendingConfig
from featrec.core.ranking.item_table import ItemColumns, ItemTable
from featrec.core.ranking.ranker import ranking_matrix
from tests.unit.ranking_reference import ranking_matrix as reference_matrix

NOW = 1_780_000_000.0
CATEGORIES = ["c0", "c1", "c2", "", None, 7]


def _number(rng: random.Random) -> object:
    return rng.choice(
        [
            rng.uniform(-5.0, 50.0),
            float(rng.randint(0, 20)),
            rng.randint(-3, 30),
            0.0,
            -0.0,
            math.nan,
            True,
            None,
            "12",
            rng.expovariate(0.01),
        ]
    )


def _maybe(rng: random.Random, row: dict[str, object], name: str, value: object) -> None:
    if rng.random() < 0.85:
        row[name] = value


def _item(rng: random.Random, now_s: float) -> dict[str, object] | None:
    if rng.random() < 0.1:
        return None
    row: dict[str, object] = {}
    for name in ("price", "n_view_7d", "n_purchase_30d", "conversion_rate_30d"):
        _maybe(rng, row, name, _number(rng))
    _maybe(rng, row, "category", rng.choice(CATEGORIES))
    _maybe(rng, row, "first_seen_s", now_s - rng.choice([0.0, 3600.0, rng.uniform(-1e5, 1e7)]))
    if rng.random() < 0.8:  # a trending row
        for t in TRENDING_TYPES:
            _maybe(rng, row, f"trend_{t}", _number(rng))
        as_of = rng.choice(
            [
                now_s,
                now_s - 600.0,  # shared by many items, as in serving
                now_s - 600.0,
                now_s + 5.0,  # newer than the request: no decay
                now_s - rng.uniform(0, 1e6),
                math.nan,
            ]
        )
        _maybe(rng, row, "as_of_s", as_of)
    return row


def _candidate(rng: random.Random, item: str) -> Candidate:
    sources = tuple(rng.sample(SOURCES, rng.randint(0, 3)))
    scores = {
        s: rng.choice([rng.uniform(0, 5), 0.0, float(rng.randint(1, 4))])
        for s in SOURCES
        if s in sources or rng.random() < 0.2
    }
    details = {
        d: rng.choice([rng.uniform(0, 3), float(rng.randint(1, 50))])
        for d in DETAILS
        if rng.random() < 0.4
    }
    return Candidate(item, sources, scores, details)


def _session(rng: random.Random, ids: list[str], now_s: float) -> dict[str, object] | None:
    if rng.random() < 0.15:
        return None
    row: dict[str, object] = {}
    for name in ("n_events", "n_distinct_items", "duration_s", "mean_dwell_s", "n_carts"):
        _maybe(rng, row, name, _number(rng))
    _maybe(rng, row, "n_purchases", _number(rng))
    last = [
        rng.choice(ids) if ids and rng.random() < 0.7 else "zz" for _ in range(rng.randint(0, 8))
    ]
    _maybe(rng, row, "last_items", last)
    _maybe(rng, row, "last_category", rng.choice(CATEGORIES))
    _maybe(rng, row, "last_price", _number(rng))
    _maybe(rng, row, "last_event_at_s", now_s - rng.uniform(0, 900))
    return row


def _user(rng: random.Random, ids: list[str]) -> dict[str, object] | None:
    if rng.random() < 0.3:
        return None
    row: dict[str, object] = {}
    top = rng.sample(["c0", "c1", "c2", "c3"], rng.randint(0, 4))
    _maybe(rng, row, "top_categories", top)
    _maybe(rng, row, "top_category_shares", [rng.random() for _ in range(rng.randint(0, 4))])
    bought = [rng.choice(ids) for _ in range(rng.randint(0, 3))] if ids else []
    _maybe(rng, row, "recent_purchases", bought)
    for name in ("avg_price_viewed_90d", "n_sessions_90d", "n_view_30d", "purchase_rate_90d"):
        _maybe(rng, row, name, _number(rng))
    for name in ("repeat_purchase_rate", "days_since_last_event"):
        _maybe(rng, row, name, _number(rng))
    return row


def _bits(matrix: np.ndarray) -> bytes:
    return np.ascontiguousarray(matrix, dtype=np.float64).tobytes()


def _request(seed: int) -> tuple[object, ...]:
    rng = random.Random(seed)
    now_s = rng.choice([NOW, NOW + 0.25, float(rng.randint(0, 2_000_000_000))])
    n = rng.choice([0, 1, 2, 5, 30, 80, 200])
    ids = [f"i{k}" for k in rng.sample(range(1000), n)]
    candidates = [_candidate(rng, item) for item in ids]
    items = {item: _item(rng, now_s) for item in ids if rng.random() < 0.9}
    rows = rng.choice([None, 0, 1, 3, 50, 500])
    config = rng.choice(
        [
            TrendingConfig(),
            TrendingConfig(
                half_lives_s={"view": 60.0, "purchase": 7 * 86_400.0},
                type_weights={"cart": 0.0, "purchase": 9.5},
                default_half_life_s=1234.5,
            ),
        ]
    )
    return candidates, _session(rng, ids, now_s), _user(rng, ids), items, now_s, rows, config


@settings(max_examples=examples(1000), deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_columnar_matrix_equals_row_at_a_time(seed: int) -> None:
    candidates, session, user, items, now_s, rows, config = _request(seed)
    expected = reference_matrix(
        candidates, session, user, items, now_s, trending_config=config, rows=rows
    )
    got = ranking_matrix(candidates, session, user, items, now_s, trending_config=config, rows=rows)
    assert got.shape == expected.shape
    assert _bits(got) == _bits(expected)

    # The serving path: the item columns computed once per row in a table, gathered by slot
    # (in another order than the table was filled, with rows of other items in between).
    table = ItemTable(initial=2)
    ids = [c.item_id for c in candidates]
    slots = {}
    for item in reversed(ids):
        table.add({"price": 1.0})
        slots[item] = table.add(items.get(item))
    columns = table.gather(ids, [items.get(i) for i in ids], [slots[i] for i in ids])
    gathered = ranking_matrix(
        candidates, session, user, columns, now_s, trending_config=config, rows=rows
    )
    assert _bits(gathered) == _bits(expected)


def test_the_oracle_can_fail() -> None:
    """A matrix that differs in one bit of one value is told apart (the check is not vacuous)."""
    for seed in range(50):
        candidates, session, user, items, now_s, _, config = _request(seed)
        got = ranking_matrix(candidates, session, user, items, now_s, trending_config=config)
        if got.size:
            break
    flipped = got.copy()
    flipped.view(np.int64)[0, 1] ^= 1
    assert _bits(flipped) != _bits(got)


def test_item_columns_must_be_aligned_with_the_candidates() -> None:
    candidates, session, user, items, now_s, _, _ = _request(3)
    while len(candidates) < 2:
        candidates, session, user, items, now_s, _, _ = _request(len(candidates) + 17)
    ids = [c.item_id for c in candidates]
    columns = ItemColumns.of(list(reversed(ids)), items)
    with pytest.raises(ValueError, match="not aligned"):
        ranking_matrix(candidates, session, user, columns, now_s)
