"""Candidates for one recommendation request: which items the ranker scores, and why.

:func:`generate` unions five sources, each capped on its own, and records for every candidate
the sources that admitted it and every source's score for it:

- ``covisit``: co-visitation neighbours of the session's newest items, weighted by recency
  and (when known) event type (:func:`featrec.core.items.session_scorer.score_session` without
  its reminder term);
- ``session``: the session's own items (re-view, re-buy), scored by that reminder term;
- ``history``: neighbours of the user's long-term items (their recent purchases), and the
  items themselves when ``include_history_items`` (re-buy) is on;
- ``trending``: the trending lists of the context's categories (the session's last category,
  the user's top categories) and the head of the global list;
- ``popular``: the rest of the global trending list, only to top the pool up to
  ``min_total`` (the last resort when the session says little).

``covisit`` + ``session`` is the tuned co-visitation scorer (RSC15 HR@20 0.663): candidates
are ordered by it, then by their best other source. ``Candidate.details`` adds finer
co-visitation facts for the ranker (:data:`DETAILS`: per-anchor weights and list ranks).
Everything is deterministic: ties are
broken by item id, never by hash order.

:class:`SignalLookup` is the port the sources are read through: the Feast rows when serving,
:class:`InMemorySignals` (a covisit index, a trending board and purchase lists that can also
learn from a replay) for tests, training and evaluation. :class:`SignalCandidates` plugs the
same generation into the training-set builder (:mod:`featrec.core.candidates.point_generators`), so
a model is trained on the candidates serving will score.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Protocol, runtime_checkable

from featrec.core.candidates.point_generators import PredictionContext
from featrec.core.events.model import PURCHASE, Event
from featrec.core.features.catalog import LAST_ITEMS_N, NEIGHBOURS_K, RECENT_PURCHASES_N
from featrec.core.features.rows import micros
from featrec.core.items import covisit
from featrec.core.items.covisit import CovisitConfig, CovisitIndex
from featrec.core.items.order import best_first
from featrec.core.items.session_scorer import ScorerConfig, score_session
from featrec.core.items.trending import TrendingBoard, TrendingConfig
from featrec.errors import ConfigError

COVISIT: Final = "covisit"
SESSION: Final = "session"
HISTORY: Final = "history"
TRENDING: Final = "trending"
POPULAR: Final = "popular"
#: Every source, in the order candidates list them.
SOURCES: Final = (COVISIT, SESSION, HISTORY, TRENDING, POPULAR)

#: Items per trending list (what an online trending list row carries).
TRENDING_N: Final = 50

#: The finer co-visitation facts a neighbour of the session's items carries in
#: ``Candidate.details``: its normalised weight from the newest distinct item and from the one
#: before, its raw (decayed) weight and 1-based rank in the newest item's list, the best rank
#: it has in any session item's list, and how many session items list it.
DETAILS: Final = (
    "covisit_last",
    "covisit_second",
    "covisit_last_raw",
    "covisit_last_rank",
    "covisit_best_rank",
    "covisit_anchors",
)

#: Human-readable reason per source, for responses and the request log.
SOURCE_REASONS: Final = {
    COVISIT: "often viewed with the items in this session",
    SESSION: "already in this session",
    HISTORY: "related to what this user bought before",
    TRENDING: "trending in a category of interest",
    POPULAR: "popular right now",
}


@dataclass(frozen=True, slots=True)
class Candidate:
    """One candidate item: the sources that admitted it, and every source's score for it
    (also sources whose cap it missed: a trending item may still carry a covisit score)."""

    item_id: str
    sources: tuple[str, ...]
    scores: Mapping[str, float]
    #: Finer co-visitation facts for the ranker (:data:`DETAILS`; absent = not a neighbour).
    details: Mapping[str, float] = field(default_factory=dict)

    def score(self, source: str) -> float:
        return self.scores.get(source, 0.0)

    @property
    def base_score(self) -> float:
        """The co-visitation scorer's score: neighbours plus the session reminder."""
        return self.scores.get(COVISIT, 0.0) + self.scores.get(SESSION, 0.0)

    def reasons(self) -> tuple[str, ...]:
        return tuple(SOURCE_REASONS[s] for s in self.sources if s in SOURCE_REASONS)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form that :meth:`from_dict` restores exactly (floats round-trip)."""
        return {
            "item_id": self.item_id,
            "sources": list(self.sources),
            "scores": dict(self.scores),
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Candidate:
        item, sources, scores = data.get("item_id"), data.get("sources"), data.get("scores")
        if not isinstance(item, str) or not item:
            raise ValueError(f"candidate item_id must be a non-empty string, got {item!r}")
        if not isinstance(sources, list | tuple) or not all(s in SOURCES for s in sources):
            raise ValueError(
                f"candidate {item!r}: sources must be some of {SOURCES}, got {sources}"
            )
        if not isinstance(scores, Mapping) or not all(
            k in SOURCES and isinstance(v, int | float) for k, v in scores.items()
        ):
            raise ValueError(f"candidate {item!r}: scores must map sources to numbers")
        details = data.get("details", {})
        if not isinstance(details, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int | float) for k, v in details.items()
        ):
            raise ValueError(f"candidate {item!r}: details must map names to numbers")
        return cls(
            item,
            tuple(sources),
            {k: float(v) for k, v in scores.items()},
            {k: float(v) for k, v in details.items()},
        )


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


def _count(name: str, value: int, low: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"candidate {name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True, slots=True)
class CandidateConfig:
    """Caps per source and what to include. Validated.

    ``scoring`` weights the session's items (recency, event type, normalisation, reminder)
    exactly as the tuned co-visitation scorer does.
    """

    scoring: ScorerConfig = field(default_factory=ScorerConfig)
    max_covisit: int = 50
    #: Re-view / re-buy: offer the session's own items.
    include_session_items: bool = True
    max_session: int = LAST_ITEMS_N
    #: History items used as anchors, and neighbours of them admitted.
    history_anchors: int = RECENT_PURCHASES_N
    max_history: int = 10
    #: Re-buy across sessions: offer the history items themselves.
    include_history_items: bool = False
    #: Head of the global trending list always admitted.
    max_trending: int = 10
    #: Items admitted per context category, and how many categories are used.
    max_category_trending: int = 10
    max_categories: int = 3
    #: Popular items top the pool up to ``min_total``, at most ``max_popular`` of them.
    min_total: int = 50
    max_popular: int = 50
    #: The pool is cut to this size, in candidate order.
    max_total: int = 100
    _plain: ScorerConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.scoring, ScorerConfig):
            raise ConfigError(f"candidate scoring must be a ScorerConfig, got {self.scoring!r}")
        for name in (
            "max_covisit",
            "max_session",
            "history_anchors",
            "max_history",
            "max_trending",
            "max_category_trending",
            "max_categories",
            "min_total",
            "max_popular",
        ):
            _count(name, getattr(self, name))
        _count("max_total", self.max_total, 1)
        # The same weights without the reminder term: the covisit and history sources.
        object.__setattr__(self, "_plain", replace(self.scoring, reminder_weight=0.0))


DEFAULT_CONFIG: Final = CandidateConfig()


def context_categories(
    session: Mapping[str, object] | None, user: Mapping[str, object] | None
) -> list[str]:
    """Categories whose trending lists fit the request: the session's last category, then
    the user's top categories (from ``session_features`` / ``user_features`` rows)."""
    out: list[str] = []
    last = session.get("last_category") if session is not None else None
    if isinstance(last, str) and last:
        out.append(last)
    top = user.get("top_categories") if user is not None else None
    if isinstance(top, list | tuple):
        out.extend(c for c in top if isinstance(c, str) and c and c not in out)
    return out


def generate(
    session_items: Sequence[str],
    session_types: Sequence[str] | None,
    user_id: str | None,
    signals: SignalLookup,
    config: CandidateConfig = DEFAULT_CONFIG,
    *,
    categories: Sequence[str] = (),
) -> list[Candidate]:
    """The candidates of one request, in candidate order (see the module docstring).

    ``session_items`` are newest first (a ``session_features.last_items`` list);
    ``session_types`` are aligned with them, or ``None``/empty when unknown (every event then
    weighs 1). ``categories`` name trending lists to draw from (:func:`context_categories`).
    """
    types: Sequence[str] | None = session_types or None
    if types is not None and len(types) != len(session_items):
        raise ValueError(f"session_types has {len(types)} entries for {len(session_items)} items")
    scoring = config.scoring
    anchors = list(session_items[: scoring.last_n])
    history: list[str] = []
    if (
        user_id is not None
        and config.history_anchors
        and (config.max_history or config.include_history_items)
    ):
        history = list(dict.fromkeys(signals.user_history(user_id)))[: config.history_anchors]
    wanted = list(dict.fromkeys([*anchors, *history]))
    found = signals.neighbours(wanted) if wanted else {}

    def lookup(anchor: str) -> Sequence[tuple[str, float]]:
        return found.get(anchor, ())

    scores: dict[str, dict[str, float]] = {}
    admitted: dict[str, set[str]] = {}

    def add(source: str, item: str, score: float) -> None:
        scores.setdefault(item, {})[source] = score

    def admit(source: str, items: Iterable[str]) -> None:
        for item in items:
            admitted.setdefault(item, set()).add(source)

    neighbour_scores = score_session(anchors, lookup, config._plain, types)
    for item, score in neighbour_scores.items():
        add(COVISIT, item, score)
    admit(COVISIT, _top(neighbour_scores, config.max_covisit))

    details = _covisit_details(anchors, lookup, scoring.normalise)
    reminders = _reminders(anchors, types, scoring)
    for item, score in reminders.items():
        add(SESSION, item, score)
    if config.include_session_items and config.max_session:
        own = list(dict.fromkeys(session_items))[: config.max_session]
        for item in own:
            if item not in reminders:
                add(SESSION, item, 0.0)
        admit(SESSION, own)

    if history:
        history_scores = score_session(history, lookup, config._plain)
        if not config.include_history_items:
            for item in history:
                history_scores.pop(item, None)
        else:
            for p, item in enumerate(history, start=1):
                history_scores[item] = history_scores.get(item, 0.0) + p**-scoring.recency_decay
        for item, score in history_scores.items():
            add(HISTORY, item, score)
        admit(HISTORY, _top(history_scores, config.max_history))

    global_list = list(signals.trending(None)) if config.max_trending or config.max_popular else []
    for category in list(dict.fromkeys(categories))[: config.max_categories]:
        head = list(signals.trending(category))[: config.max_category_trending]
        for item, score in head:
            add(TRENDING, item, score)
        admit(TRENDING, (item for item, _ in head))
    head = global_list[: config.max_trending]
    for item, score in head:
        add(TRENDING, item, score)
    admit(TRENDING, (item for item, _ in head))

    popular_n = 0
    for item, score in global_list[config.max_trending :]:
        if len(admitted) >= config.min_total or popular_n >= config.max_popular:
            break
        if item in admitted:
            continue
        add(POPULAR, item, score)
        admit(POPULAR, (item,))
        popular_n += 1

    out = [
        Candidate(
            item,
            tuple(s for s in SOURCES if s in sources),
            {s: scores[item][s] for s in SOURCES if s in scores[item]},
            details.get(item, {}),
        )
        for item, sources in admitted.items()
    ]
    out.sort(key=_candidate_order)
    return out[: config.max_total]


def _top(scores: Mapping[str, float], n: int) -> list[str]:
    if n <= 0:
        return []
    best = heapq.nsmallest(n, scores.items(), key=best_first)
    return [item for item, score in best if score > 0]


def _covisit_details(
    anchors: Sequence[str],
    lookup: Callable[[str], Sequence[tuple[str, float]]],
    normalise: str,
) -> dict[str, dict[str, float]]:
    """Per neighbour of the session's distinct anchors (newest first): see :data:`DETAILS`."""
    out: dict[str, dict[str, float]] = {}
    for p, anchor in enumerate(dict.fromkeys(anchors)):
        row = lookup(anchor)
        if not row:
            continue
        norm = _norm(row, normalise) if p < 2 else 1.0
        for rank, (item, w) in enumerate(row, start=1):
            entry = out.get(item)
            if entry is None:
                entry = out[item] = {"covisit_anchors": 0.0, "covisit_best_rank": float(rank)}
            entry["covisit_anchors"] += 1.0
            if p == 0:
                entry["covisit_last"] = w / norm
                entry["covisit_last_rank"] = float(rank)
                entry["covisit_last_raw"] = w
            elif p == 1:
                entry["covisit_second"] = w / norm
            if rank < entry["covisit_best_rank"]:
                entry["covisit_best_rank"] = float(rank)
    return out


def _norm(row: Sequence[tuple[str, float]], how: str) -> float:
    if how == "max":
        norm = max(w for _, w in row)
    elif how == "sum":
        norm = sum(w for _, w in row)
    else:
        norm = 1.0
    return norm if norm > 0 else 1.0


def _reminders(
    anchors: Sequence[str], types: Sequence[str] | None, scoring: ScorerConfig
) -> dict[str, float]:
    """The reminder term of :func:`score_session` alone (what the session's items score)."""
    out: dict[str, float] = {}
    if scoring.reminder_weight <= 0:
        return out
    for p, item in enumerate(anchors, start=1):
        t = 1.0
        if types is not None:
            t = scoring.type_weights.get(types[p - 1], scoring.default_type_weight)
        if t == 0:
            continue
        out[item] = out.get(item, 0.0) + t * scoring.reminder_weight * p**-scoring.reminder_decay
    return out


#: Order of the sources that come after the co-visitation scorer's candidates.
_LATER: Final = (SESSION, HISTORY, TRENDING, POPULAR)


def _candidate_order(c: Candidate) -> tuple[int, float, str]:
    base = c.base_score
    if base > 0:
        return (0, -base, c.item_id)
    for rank, source in enumerate(_LATER, start=1):
        if source in c.sources:
            return (rank, -c.score(source), c.item_id)
    return (len(_LATER) + 1, 0.0, c.item_id)


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

    def forget_session(self, session_id: str) -> None:
        """Drop a finished session's pairing buffer (bounded memory on long replays)."""
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


def _trending_lists(board: TrendingBoard, n: int) -> dict[str | None, list[tuple[str, float]]]:
    """Global (key ``None``) and per-category top ``n`` at the board's watermark, one pass
    (the lists ``TrendingBoard.top`` returns: positive scores, ties by item id)."""
    now, config = board.watermark_us, board.config
    everything: list[tuple[str, float]] = []
    by_category: dict[str | None, list[tuple[str, float]]] = {}
    for item, trend in board.items.items():
        score = trend.score(config, now)
        if score <= 0:
            continue
        everything.append((item, score))
        if trend.category is not None:
            by_category.setdefault(trend.category, []).append((item, score))
    out: dict[str | None, list[tuple[str, float]]] = {
        None: heapq.nsmallest(n, everything, key=best_first)
    }
    for category, entries in by_category.items():
        out[category] = heapq.nsmallest(n, entries, key=best_first)
    return out


class SignalCandidates:
    """:func:`generate` as a training-set candidate generator
    (:class:`~featrec.core.candidates.point_generators.CandidateGenerator` and ``EventObserver``).

    It sees what serving sees: the session's newest ``LAST_ITEMS_N`` items (the
    ``last_items`` of its ``session_features`` row, no event types), the session's last
    category, and the ``top_categories`` categories with the user's most events so far (the
    live twin of ``user_features.top_categories``).
    """

    def __init__(
        self,
        config: CandidateConfig = DEFAULT_CONFIG,
        signals: InMemorySignals | None = None,
        top_categories: int = 3,
    ) -> None:
        self.config = config
        self.signals = signals if signals is not None else InMemorySignals()
        self.top_categories = top_categories
        self._last_category: dict[str, str | None] = {}
        self._user_categories: dict[str, dict[str, int]] = {}
        self.last_us = 0

    def observe(self, event: Event) -> None:
        self.signals.observe(event)
        self._last_category[event.session_id] = event.category
        if event.user_id is not None and event.category is not None:
            counts = self._user_categories.setdefault(event.user_id, {})
            counts[event.category] = counts.get(event.category, 0) + 1
        self.last_us = micros(event.ts)

    def categories(self, session_id: str, user_id: str | None) -> list[str]:
        out: list[str] = []
        last = self._last_category.get(session_id)
        if last is not None:
            out.append(last)
        if user_id is not None:
            counts = self._user_categories.get(user_id, {})
            top = sorted(counts, key=lambda c: (-counts[c], c))[: self.top_categories]
            out.extend(c for c in top if c not in out)
        return out

    def generate(self, context: PredictionContext) -> list[Candidate]:
        recent = list(reversed(context.items[-LAST_ITEMS_N:]))
        return generate(
            recent,
            None,
            context.user_id,
            self.signals,
            self.config,
            categories=self.categories(context.session_id, context.user_id),
        )

    def candidates(self, context: PredictionContext) -> list[str]:
        return [c.item_id for c in self.generate(context)]
