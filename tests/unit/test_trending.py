"""Trending core: known answers, closed-form oracle, streaming == batch, bounded memory."""

from __future__ import annotations

import math
import pickle
from collections import defaultdict
from datetime import UTC, datetime

import numpy as np
import pytest

from featrec.core.events.model import Event
from featrec.core.features.catalog import ITEM_TRENDING
from featrec.core.items.trending import (
    ItemTrend,
    TrendingBoard,
    TrendingConfig,
    bootstrap,
    fold,
    trending_row,
)
from featrec.errors import ConfigError

T0 = 1_700_000_000.0
US = 1_000_000
HOUR = 3600.0


def ev(item: str, t: float, type_: str = "view", category: str | None = None) -> Event:
    return Event(
        event_id=f"{item}@{t}",
        session_id="s",
        item_id=item,
        type=type_,
        ts=datetime.fromtimestamp(T0 + t, tz=UTC),
        category=category,
    )


def us(t: float) -> int:
    return int((T0 + t) * US)


CONFIG = TrendingConfig(
    half_lives_s={"view": 6 * HOUR, "purchase": 24 * HOUR},
    type_weights={"view": 1.0, "purchase": 6.0},
)


def test_counts_halve_per_half_life_per_type() -> None:
    trend = ItemTrend()
    fold(trend, ev("a", 0), CONFIG)
    fold(trend, ev("a", 6 * HOUR), CONFIG)
    fold(trend, ev("a", 6 * HOUR, "purchase"), CONFIG)
    assert trend.counts_at(CONFIG) == {"view": 1.5, "purchase": 1.0}
    assert trend.score(CONFIG) == 1.5 + 6.0
    later = us(30 * HOUR)  # 4 view half-lives, 1 purchase half-life
    assert trend.counts_at(CONFIG, later) == {"view": 1.5 / 16, "purchase": 0.5}
    assert trend.score(CONFIG, later) == 1.5 / 16 + 3.0
    assert trend.score(CONFIG, later, event_type="purchase") == 0.5
    assert trend.score(CONFIG, later, event_type="cart") == 0.0


def test_late_event_counts_as_if_it_arrived_in_order() -> None:
    in_order, late = ItemTrend(), ItemTrend()
    fold(in_order, ev("a", 0, category="old"), CONFIG)
    fold(in_order, ev("a", 6 * HOUR, category="new"), CONFIG)
    fold(late, ev("a", 6 * HOUR, category="new"), CONFIG)
    fold(late, ev("a", 0, category="old"), CONFIG)
    assert late.counts == in_order.counts == {"view": 1.5}
    assert late.last_us == in_order.last_us == us(6 * HOUR)
    assert late.category == in_order.category == "new", "the newest event's category wins"


def test_unknown_types_use_the_defaults() -> None:
    trend = ItemTrend()
    fold(trend, ev("a", 0, "wishlist"), CONFIG)
    at = us(CONFIG.default_half_life_s)
    assert trend.counts_at(CONFIG, at) == {"wishlist": 0.5}
    assert trend.score(CONFIG, at) == 0.5 * CONFIG.default_type_weight


def test_rows_match_the_catalog_and_versions_strictly_increase() -> None:
    trend = ItemTrend()
    versions = []
    for _ in range(3):
        fold(trend, ev("a", HOUR, "purchase", category="shoes"), CONFIG)
        versions.append(trending_row("a", trend, CONFIG).version)
    assert versions == [us(HOUR), us(HOUR) + 1, us(HOUR) + 2]
    row = trending_row("a", trend, CONFIG)
    assert row.view == ITEM_TRENDING.name and row.key == "a"
    assert tuple(row.values) == ITEM_TRENDING.feature_names
    assert row.values["trend_purchase"] == 3.0
    assert row.values["trend_view"] == 0.0
    assert row.values["trend_score"] == 18.0
    assert row.values["category"] == "shoes"
    assert row.values["as_of_s"] == T0 + HOUR


def test_global_and_category_top_n() -> None:
    board = TrendingBoard(CONFIG)
    for item, n, cat in [("a", 3, "x"), ("b", 5, "y"), ("c", 3, "x"), ("d", 1, "y")]:
        for _ in range(n):
            board.observe(ev(item, 0, category=cat))
    board.observe(ev("e", 0, "purchase", category="y"))
    assert board.top(3) == [("e", 6.0), ("b", 5.0), ("a", 3.0)]  # a/c tie: by id
    assert board.top(10, category="x") == [("a", 3.0), ("c", 3.0)]
    assert board.top(1, category="y", event_type="view") == [("b", 5.0)]
    assert board.top(5, category="none") == []
    # A day later the views are 1/16, the purchase 1/2: e leads by more.
    assert board.top(2, now_us=us(24 * HOUR)) == [("e", 3.0), ("b", 5.0 / 16)]
    with pytest.raises(ValueError, match="n must be"):
        board.top(0)


def test_top_lists_equal_top_per_category_at_any_time() -> None:
    board = TrendingBoard(CONFIG)
    for i in range(60):
        board.observe(
            ev(f"i{i % 17}", i * 600.0, "purchase" if i % 7 == 0 else "view", f"c{i % 3}")
        )
    board.observe(ev("nocat", 0))
    for n in (1, 3, 50):
        for now in (None, us(40 * HOUR), us(10_000 * HOUR)):
            top, by_category = board.top_lists(n, now)
            assert top == board.top(n, now_us=now)
            categories = {t.category for t in board.items.values()} - {None}
            assert by_category == {
                c: got for c in categories if (got := board.top(n, category=c, now_us=now))
            }
    with pytest.raises(ValueError, match="n must be"):
        board.top_lists(0)


def test_board_equals_closed_form_and_item_keyed_fold_at_every_checkpoint() -> None:
    """Oracle: each count equals sum(2 ** -(now - t) / h) over the item's events; the
    per-item states of a keyed stream (with snapshots) equal the board bit for bit."""
    rng = np.random.default_rng(5)
    types = ["view", "purchase", "cart"]
    events = [
        ev(
            f"i{int(rng.zipf(1.5)) % 50}",
            float(rng.uniform(0, 72 * HOUR)),
            types[int(rng.integers(0, 3))],
        )
        for _ in range(800)
    ]
    events.sort(key=lambda e: e.ts.timestamp() + rng.normal(0, 600))  # some disorder
    config = TrendingConfig(
        half_lives_s={"view": 6 * HOUR, "purchase": 24 * HOUR},
        epsilon=1e-12,  # keep everything so the closed form covers every item
    )
    board = TrendingBoard(config)
    states: dict[str, ItemTrend] = {}
    for n, event in enumerate(events, start=1):
        board.observe(event)
        fold(states.setdefault(event.item_id, ItemTrend()), event, config)
        if n % 50 == 0:
            states = pickle.loads(pickle.dumps({k: v.copy() for k, v in states.items()}))
        if n % 100 == 0:
            prefix = events[:n]
            now = max(us(e.ts.timestamp() - T0) for e in prefix)
            expected: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
            for e in prefix:
                h = config.half_life_us(e.type)
                expected[e.item_id][e.type] += 2.0 ** -((now - us(e.ts.timestamp() - T0)) / h)
            assert set(board.items) == set(expected)
            for item, trend in board.items.items():
                assert trend.counts_at(config, now) == pytest.approx(expected[item], rel=1e-9)
                assert states[item] == trend
            assert bootstrap(prefix, config).items == board.items


def test_memory_is_bounded_by_pruning() -> None:
    """One new item a minute for two weeks: a view falls below epsilon after
    6 h x log2(100) = 2,392 minutes, so at most ~2,392 items survive a pruning."""
    config = TrendingConfig(half_lives_s={"view": 6 * HOUR}, epsilon=0.01)
    survive = math.ceil(6 * 60 * math.log2(1 / config.epsilon))
    board = TrendingBoard(config)
    largest = 0
    for minute in range(20_000):
        board.observe(ev(f"i{minute}", minute * 60.0))
        largest = max(largest, len(board.items))
    assert largest <= 2 * survive
    board.prune()
    assert survive - 2 <= len(board.items) <= survive
    assert board.items["i19999"].counts == {"view": 1.0}
    assert "i0" not in board.items
    assert board.top(1) == [("i19999", 1.0)]


def test_is_negligible() -> None:
    trend = ItemTrend()
    fold(trend, ev("a", 0), CONFIG)
    assert not trend.is_negligible(CONFIG, us(6 * HOUR * 6))  # 1/64 > 0.01
    assert trend.is_negligible(CONFIG, us(6 * HOUR * 7))  # 1/128 < 0.01


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"half_lives_s": {"view": 0.0}}, "half-life 'view'"),
        ({"default_half_life_s": math.nan}, "half-life 'default'"),
        ({"type_weights": {"cart": -2.0}}, "weight 'cart'"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": 1.0}, "epsilon"),
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrendingConfig(**kwargs)  # type: ignore[arg-type]
