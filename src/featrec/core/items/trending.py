"""Trending items: decayed popularity per item and event type, global and per-category top-N.

Each event adds 1 to its item's counter for its type; a counter halves every ``half_life``
seconds of *event time* (each type has its own half-life: views go stale faster than orders).
The combined ``trend_score`` is the type-weighted sum of the decayed counters.

- :func:`fold` updates one item's :class:`ItemTrend` (the item-keyed dataflow state);
  :func:`trending_row` turns it into an ``item_trending`` row.
- :class:`TrendingBoard` folds every item and answers ``top(n, category=...)``; :func:`bootstrap`
  builds one from a sequence of events with exactly the same calls.

**Bounded memory.** An item whose every decayed counter is below ``epsilon`` is pruned (the
board prunes itself whenever it has doubled in size since its last pruning). One event decays
below ``epsilon`` after ``half_life * log2(1 / epsilon)`` seconds, and at any time the decayed
counters of all items sum to at most ``rate * max_half_life / ln 2`` (``rate`` in events per
second), so at most that sum divided by ``epsilon`` items survive a pruning.

Counters are stored decayed to the item's newest event time; an out-of-order event adds its
weight decayed by its lateness, so the result does not depend on arrival order (up to float
rounding). Ranking ties are broken by item id.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from featrec.core.events.model import CART, CLICK, PURCHASE, VIEW, Event
from featrec.core.features.catalog import ITEM_TRENDING, TRENDING_TYPES
from featrec.core.features.rows import FeatureRow, micros
from featrec.core.items.order import best_first, best_n
from featrec.errors import ConfigError

_HOUR: Final = 3600.0
DEFAULT_HALF_LIVES_S: Final = {
    VIEW: 6 * _HOUR,
    CLICK: 6 * _HOUR,
    CART: 12 * _HOUR,
    PURCHASE: 24 * _HOUR,
}
DEFAULT_TREND_WEIGHTS: Final = {VIEW: 1.0, CLICK: 1.0, CART: 3.0, PURCHASE: 6.0}

#: The board never prunes below this many items (pruning a small board is not worth it).
MIN_PRUNE_SIZE: Final = 1024


@dataclass(frozen=True, slots=True)
class TrendingConfig:
    """Half-lives and weights per event type, and the pruning threshold. Validated."""

    half_lives_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_HALF_LIVES_S))
    default_half_life_s: float = 6 * _HOUR
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TREND_WEIGHTS))
    default_type_weight: float = 1.0
    epsilon: float = 0.01

    def __post_init__(self) -> None:
        half_lives = dict(self.half_lives_s)
        for name, h in [*half_lives.items(), ("default", self.default_half_life_s)]:
            if not (isinstance(h, int | float) and math.isfinite(h) and h > 0):
                raise ConfigError(f"trending half-life {name!r} must be positive, got {h!r}")
        weights = dict(self.type_weights)
        for name, w in [*weights.items(), ("default", self.default_type_weight)]:
            if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
                raise ConfigError(f"trending weight {name!r} must be a number >= 0, got {w!r}")
        if not (math.isfinite(self.epsilon) and 0 < self.epsilon < 1):
            raise ConfigError(f"trending epsilon must be in (0, 1), got {self.epsilon}")
        object.__setattr__(self, "half_lives_s", half_lives)
        object.__setattr__(self, "type_weights", weights)

    def half_life_us(self, event_type: str) -> float:
        return self.half_lives_s.get(event_type, self.default_half_life_s) * 1_000_000

    def type_weight(self, event_type: str) -> float:
        return self.type_weights.get(event_type, self.default_type_weight)


@dataclass(slots=True)
class ItemTrend:
    """One item's decayed counters per event type, as of ``last_us``. Small and picklable."""

    counts: dict[str, float] = field(default_factory=dict)
    last_us: int = 0
    #: Strictly increasing µs clock (event time, +1 per event): the row version.
    version: int = 0
    category: str | None = None

    def copy(self) -> ItemTrend:
        return ItemTrend(dict(self.counts), self.last_us, self.version, self.category)

    def counts_at(self, config: TrendingConfig, now_us: int | None = None) -> dict[str, float]:
        """Every type's counter decayed to ``now_us`` (default: the item's newest event)."""
        now = self.last_us if now_us is None else now_us
        return {
            t: _decayed(c, now - self.last_us, config.half_life_us(t))
            for t, c in self.counts.items()
        }

    def score(
        self, config: TrendingConfig, now_us: int | None = None, event_type: str | None = None
    ) -> float:
        """One type's decayed count, or (``event_type=None``) the type-weighted sum."""
        counts = self.counts_at(config, now_us)
        if event_type is not None:
            return counts.get(event_type, 0.0)
        return sum(config.type_weight(t) * c for t, c in counts.items())

    def is_negligible(self, config: TrendingConfig, now_us: int) -> bool:
        """True when every counter has decayed below ``epsilon``: the state may be dropped."""
        return all(c < config.epsilon for c in self.counts_at(config, now_us).values())


def fold(trend: ItemTrend, event: Event, config: TrendingConfig) -> None:
    """Count ``event`` in its item's ``trend`` (in place)."""
    ts = micros(event.ts)
    if trend.version and ts > trend.last_us:
        elapsed = ts - trend.last_us
        trend.counts = {
            t: _decayed(c, elapsed, config.half_life_us(t)) for t, c in trend.counts.items()
        }
    if ts >= trend.last_us or not trend.version:
        trend.last_us = ts
        add = 1.0
        if event.category is not None:
            trend.category = event.category
    else:
        add = _decayed(1.0, trend.last_us - ts, config.half_life_us(event.type))
    trend.counts[event.type] = trend.counts.get(event.type, 0.0) + add
    trend.version = max(trend.version + 1, ts)


def trending_row(
    item: str, trend: ItemTrend, config: TrendingConfig, ingested_at: float | None = None
) -> FeatureRow:
    """The ``item_trending`` row of ``item``, counters decayed to its newest event time."""
    counts = trend.counts_at(config)
    values: dict[str, object] = {f"trend_{t}": counts.get(t, 0.0) for t in TRENDING_TYPES}
    values["trend_score"] = sum(config.type_weight(t) * c for t, c in counts.items())
    values["category"] = trend.category
    values["as_of_s"] = trend.last_us / 1_000_000
    return FeatureRow(
        view=ITEM_TRENDING.name,
        key=item,
        values=values,
        version=trend.version,
        ingested_at=ingested_at,
    )


class TrendingBoard:
    """Every item's trend, with global and per-category top-N; prunes negligible items."""

    def __init__(self, config: TrendingConfig) -> None:
        self.config = config
        self.items: dict[str, ItemTrend] = {}
        #: Newest event time seen: the default "now" of queries.
        self.watermark_us = 0
        self._prune_at = MIN_PRUNE_SIZE

    def observe(self, event: Event) -> ItemTrend:
        """Fold ``event`` into its item's trend and return that trend."""
        trend = self.items.get(event.item_id)
        if trend is None:
            trend = self.items[event.item_id] = ItemTrend()
        fold(trend, event, self.config)
        self.watermark_us = max(self.watermark_us, trend.last_us)
        if len(self.items) >= self._prune_at:
            self.prune()
            self._prune_at = max(MIN_PRUNE_SIZE, 2 * len(self.items))
        return trend

    def top(
        self,
        n: int,
        *,
        category: str | None = None,
        event_type: str | None = None,
        now_us: int | None = None,
    ) -> list[tuple[str, float]]:
        """The ``n`` highest scores at ``now_us`` (default: the watermark), best first.

        ``category`` restricts to items whose newest known category is that one;
        ``event_type`` ranks by that type's count instead of the combined score.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        now = self.watermark_us if now_us is None else now_us
        scored = (
            (item, trend.score(self.config, now, event_type))
            for item, trend in self.items.items()
            if category is None or trend.category == category
        )
        best = heapq.nsmallest(n, scored, key=best_first)
        return [(item, score) for item, score in best if score > 0]

    def top_lists(
        self, n: int, now_us: int | None = None
    ) -> tuple[list[tuple[str, float]], dict[str, list[tuple[str, float]]]]:
        """The global top ``n`` and every category's, in one pass over the items.

        Equal to ``top(n)`` and ``top(n, category=c)`` for every category present (same
        scores, ties by item id, only positive scores), at ``now_us`` (default: watermark).
        Categories are in the order their first item was seen.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        now = self.watermark_us if now_us is None else now_us
        everything: list[tuple[str, float]] = []
        by_category: dict[str, list[tuple[str, float]]] = {}
        for item, trend in self.items.items():
            score = trend.score(self.config, now)
            if score <= 0:
                continue
            entry = (item, score)
            everything.append(entry)
            if trend.category is not None:
                by_category.setdefault(trend.category, []).append(entry)
        return best_n(everything, n), {c: best_n(e, n) for c, e in by_category.items()}

    def prune(self, now_us: int | None = None) -> int:
        """Drop items whose counters all decayed below ``epsilon``; returns how many."""
        now = self.watermark_us if now_us is None else now_us
        stale = [i for i, t in self.items.items() if t.is_negligible(self.config, now)]
        for item in stale:
            del self.items[item]
        return len(stale)


def bootstrap(
    events: Iterable[Event], config: TrendingConfig, board: TrendingBoard | None = None
) -> TrendingBoard:
    """Fold a sequence of events into a board, in the given order (same calls as streaming)."""
    board = TrendingBoard(config) if board is None else board
    for event in events:
        board.observe(event)
    return board


def _decayed(count: float, elapsed_us: float, half_life_us: float) -> float:
    return count * float(2.0 ** -(elapsed_us / half_life_us))
