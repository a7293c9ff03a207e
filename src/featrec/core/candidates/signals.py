"""What candidate generation reads, and an in-memory version that learns from a replay.

:class:`SignalLookup` is the port the candidate sources are read through: the Feast rows when
serving (:mod:`featrec.app.serving.recommender`), :class:`InMemorySignals` (a covisit index, a
trending board and purchase lists that can also learn from a replay) for tests, training and
evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from featrec.core.events.model import PURCHASE, Event
from featrec.core.features.catalog import NEIGHBOURS_K, RECENT_PURCHASES_N, TRENDING_N
from featrec.core.items import covisit
from featrec.core.items.covisit import CovisitConfig, CovisitIndex
from featrec.core.items.slist import ItemModel, SessionFolds
from featrec.core.items.trending import TrendingBoard, TrendingConfig
from featrec.errors import ConfigError


@runtime_checkable
class SignalLookup(Protocol):
    """What candidate generation reads. Lists are best first."""

    def neighbours(self, items: Sequence[str]) -> Mapping[str, Sequence[tuple[str, float]]]:
        """Co-visitation neighbours ``[(item, weight), ...]`` per anchor; anchors without a
        list may be missing from the result."""
        ...

    def trending(self, category: str | None = None) -> Sequence[tuple[str, float]]:
        """The global trending list, or one category's: ``[(item, trend_score), ...]``."""
        ...

    def user_history(self, user_id: str) -> Sequence[str]:
        """The user's long-term items (recent purchases), most recent first."""
        ...

    def model_neighbours(
        self, items: Sequence[str], session_id: str | None = None
    ) -> Mapping[str, Sequence[tuple[str, float]]]:
        """The item model's top entries ``[(item, weight), ...]`` per item (``item_model``
        rows); items without a row may be missing, and no model means an empty mapping.
        ``session_id`` names the session asking (cross-fitted training models use it)."""
        ...


@runtime_checkable
class PrefetchingSignals(Protocol):
    """A :class:`SignalLookup` told up front which lists a request will read, so that it can
    read them together (one round trip to a store instead of one per kind of list).

    :func:`~featrec.core.candidates.generation.generate` calls :meth:`prefetch` once, before
    its first read, with every key it may read: the neighbour lists of ``items`` (the
    session's anchors and the user's history), the item model's lists of ``model`` and the
    trending lists of ``trending`` (``None``: the global list). The reads that follow answer
    what was read then."""

    def prefetch(
        self, items: Sequence[str], model: Sequence[str], trending: Sequence[str | None]
    ) -> None: ...


class InMemorySignals:
    """:class:`SignalLookup` over a covisit index, a trending board and purchase lists.

    Built from finished indexes, or empty and fed with :meth:`observe` in event-time order
    (a replay: the same core calls as the item signals flow). Neighbour lists are the
    ``neighbours_k`` heaviest decayed to the anchor's newest event, like ``item_neighbours``
    rows. Trending lists are recomputed whenever the newest event time enters a new period
    of ``trending_refresh_s`` seconds (the flow rewrites them every few seconds), so a replay
    does not re-sort the catalogue at every prediction point, and the lists at any time do
    not depend on when they were asked for (0: always current). ``user_history`` is the user's
    distinct purchased items, most recently bought first (``user_features.recent_purchases``,
    but live).
    """

    def __init__(
        self,
        index: CovisitIndex | None = None,
        board: TrendingBoard | None = None,
        history: Mapping[str, Sequence[str]] | None = None,
        *,
        neighbours_k: int = NEIGHBOURS_K,
        trending_n: int = TRENDING_N,
        history_n: int = RECENT_PURCHASES_N,
        trending_refresh_s: float = 300.0,
        model: ItemModel | SessionFolds | None = None,
    ) -> None:
        if neighbours_k < 1 or trending_n < 1 or history_n < 1:
            raise ConfigError("neighbours_k, trending_n and history_n must be >= 1")
        if not trending_refresh_s >= 0:
            raise ConfigError(f"trending_refresh_s must be >= 0, got {trending_refresh_s}")
        self.index = index if index is not None else CovisitIndex(CovisitConfig())
        self.board = board if board is not None else TrendingBoard(TrendingConfig())
        self.history: dict[str, list[str]] = {
            u: list(items) for u, items in (history or {}).items()
        }
        self.neighbours_k = neighbours_k
        self.trending_n = trending_n
        self.history_n = history_n
        self._refresh_us = int(trending_refresh_s * 1_000_000)
        self._recent: dict[str, covisit.RecentItems] = {}
        self._neighbour_cache: dict[str, tuple[int, list[tuple[str, float]]]] = {}
        self._lists: dict[str | None, list[tuple[str, float]]] | None = None
        self._period: int | None = None
        self.model = model

    def observe(self, event: Event) -> None:
        """Learn from one event (call in event-time order)."""
        recent = self._recent.get(event.session_id)
        if recent is None:
            recent = self._recent[event.session_id] = covisit.RecentItems()
        self.index.add_all(covisit.observe(recent, event, self.index.config))
        self.board.observe(event)
        if self._refresh_us:
            period = self.board.watermark_us // self._refresh_us
            if period != self._period:
                self._period = period
                self._lists = _trending_lists(self.board, self.trending_n)
        else:
            self._lists = None
        if event.type == PURCHASE and event.user_id is not None:
            bought = self.history.setdefault(event.user_id, [])
            if event.item_id in bought:
                bought.remove(event.item_id)
            bought.insert(0, event.item_id)
            del bought[self.history_n :]

    def end_session(self, session_id: str) -> None:
        """Forget the session's co-visitation buffer once it has ended (its last event
        observed): a replay of a long log then holds only the open sessions'."""
        self._recent.pop(session_id, None)

    def neighbours(self, items: Sequence[str]) -> dict[str, Sequence[tuple[str, float]]]:
        out: dict[str, Sequence[tuple[str, float]]] = {}
        sketches, cache = self.index.sketches, self._neighbour_cache
        for item in items:
            sketch = sketches.get(item)
            if sketch is None:
                continue
            cached = cache.get(item)
            if cached is None or cached[0] != sketch.version:
                cached = cache[item] = (
                    sketch.version,
                    sketch.top(self.neighbours_k, self.index.config),
                )
            out[item] = cached[1]
        return out

    def trending(self, category: str | None = None) -> Sequence[tuple[str, float]]:
        if self._lists is None:
            self._lists = _trending_lists(self.board, self.trending_n)
        return self._lists.get(category, ())

    def user_history(self, user_id: str) -> Sequence[str]:
        return self.history.get(user_id, ())

    def model_neighbours(
        self, items: Sequence[str], session_id: str | None = None
    ) -> dict[str, Sequence[tuple[str, float]]]:
        model = self.model
        if model is None:
            return {}
        if isinstance(model, SessionFolds):
            if session_id is None:
                raise ConfigError("cross-fitted item models answer only for a named session")
            model = model.for_session(session_id)
        found = model.neighbours
        return {item: found[item] for item in items if item in found}


def _trending_lists(board: TrendingBoard, n: int) -> dict[str | None, list[tuple[str, float]]]:
    """Global (key ``None``) and per-category top ``n`` at the board's watermark."""
    top, by_category = board.top_lists(n)
    out: dict[str | None, list[tuple[str, float]]] = {None: top}
    out.update(by_category)
    return out
