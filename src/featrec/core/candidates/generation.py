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
  ``min_total`` (the last resort when the session says little);
- ``model``: the batch-trained item model's best items for the session
  (:func:`featrec.core.items.slist.score_session` over ``item_model`` rows).

``covisit`` + ``session`` is the tuned co-visitation scorer (RSC15 HR@20 0.663): candidates
are ordered by it, then by their best other source (``order="model"``: by the item model's
score first, the item-model policy). ``Candidate.details`` adds finer
co-visitation facts for the ranker (:data:`~featrec.core.candidates.model.DETAILS`: per-anchor
weights and list ranks). Everything is deterministic: ties are broken by item id, never by hash
order.

The sources are read through :class:`~featrec.core.candidates.signals.SignalLookup`;
:class:`~featrec.core.candidates.point_generators.SignalCandidates` plugs the same generation
into the training-set builder, so a model is trained on the candidates serving will score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import compress
from operator import itemgetter
from typing import Final

import numpy as np

from featrec.core.candidates.config import DEFAULT_CONFIG, CandidateConfig
from featrec.core.candidates.model import (
    COVISIT,
    HISTORY,
    MODEL,
    POPULAR,
    SESSION,
    SOURCES,
    TRENDING,
    Candidate,
    new_candidate,
)
from featrec.core.candidates.signals import PrefetchingSignals, SignalLookup
from featrec.core.items import slist
from featrec.core.items.session_scorer import ScorerConfig, score_session


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
    session_id: str | None = None,
) -> list[Candidate]:
    """The candidates of one request, in candidate order (see the module docstring).

    ``session_items`` are newest first (a ``session_features.last_items`` list);
    ``session_types`` are aligned with them, or ``None``/empty when unknown (every event then
    weighs 1). ``categories`` name trending lists to draw from (:func:`context_categories`).
    ``session_id`` is passed on to the item model lookup.
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
    use_model = bool(config.max_model) or config.order == "model"
    model_items = list(dict.fromkeys(session_items[: config.model_last_n])) if use_model else []
    read_global = bool(config.max_trending or config.max_popular)
    context = list(dict.fromkeys(categories))[: config.max_categories]
    if isinstance(signals, PrefetchingSignals):  # every list below, read in one go
        signals.prefetch(wanted, model_items, [None, *context] if read_global else context)
    found = signals.neighbours(wanted) if wanted else {}

    def lookup(anchor: str) -> Sequence[tuple[str, float]]:
        return found.get(anchor, ())

    # One score dict per source (a later write of a source wins, as for trending lists that
    # share an item) and the admitting sources of each item as a bit mask (bit i: SOURCES[i]).
    by_source: dict[str, dict[str, float]] = {source: {} for source in SOURCES}
    admitted: dict[str, int] = {}

    def admit(source: str, items: Iterable[str]) -> None:
        bit = _BIT[source]
        get = admitted.get
        for item in items:
            admitted[item] = get(item, 0) | bit

    neighbour_scores = score_session(anchors, lookup, config._plain, types)
    by_source[COVISIT] = neighbour_scores
    admit(COVISIT, _top(neighbour_scores, config.max_covisit))

    reminders = _reminders(anchors, types, scoring)
    session_scores = by_source[SESSION] = dict(reminders)
    if config.include_session_items and config.max_session:
        own = list(dict.fromkeys(session_items))[: config.max_session]
        for item in own:
            if item not in reminders:
                session_scores[item] = 0.0
        admit(SESSION, own)

    if history:
        history_scores = score_session(history, lookup, config._plain)
        if not config.include_history_items:
            for item in history:
                history_scores.pop(item, None)
        else:
            for p, item in enumerate(history, start=1):
                history_scores[item] = history_scores.get(item, 0.0) + p**-scoring.recency_decay
        by_source[HISTORY] = history_scores
        admit(HISTORY, _top(history_scores, config.max_history))

    if use_model:
        model_rows = signals.model_neighbours(model_items, session_id)
        if model_rows:
            model_scores = slist.score_session(
                session_items,
                lambda item: model_rows.get(item, ()),
                config.model_predict_weight,
                config.model_last_n,
            )
            by_source[MODEL] = model_scores
            admit(MODEL, _top(model_scores, config.max_model))

    trending_scores = by_source[TRENDING]
    global_list = list(signals.trending(None)) if read_global else []
    for category in context:
        head = list(signals.trending(category))[: config.max_category_trending]
        trending_scores.update(head)
        admit(TRENDING, (item for item, _ in head))
    head = global_list[: config.max_trending]
    trending_scores.update(head)
    admit(TRENDING, (item for item, _ in head))

    popular_n = 0
    popular_scores = by_source[POPULAR]
    popular_bit = _BIT[POPULAR]
    for item, score in global_list[config.max_trending :]:
        if len(admitted) >= config.min_total or popular_n >= config.max_popular:
            break
        if item in admitted:
            continue
        popular_scores[item] = score
        admitted[item] = popular_bit  # admit(POPULAR, (item,)) of an item not admitted yet
        popular_n += 1

    # The candidate order on plain numbers; Candidate objects only for the pool that is kept.
    if config.order == "model":
        keys = [_model_order_key(item, mask, by_source) for item, mask in admitted.items()]
    else:
        keys = _order_keys(admitted, by_source)
    keys.sort()
    kept = [key[2] for key in keys[: config.max_total]]
    details = _covisit_details(anchors, lookup, scoring.normalise, set(kept))
    # Each kept item's scores, source by source in SOURCES order (so each dict lists its
    # sources in that order), walking the smaller of the source's dict and the pool.
    scores_of: dict[str, dict[str, float]] = {item: {} for item in kept}
    for source in SOURCES:
        scores = by_source[source]
        if len(scores) < len(scores_of):
            for item, value in scores.items():
                entry = scores_of.get(item)
                if entry is not None:
                    entry[source] = value
        else:
            for item, entry in scores_of.items():
                if item in scores:
                    entry[source] = scores[item]
    return [
        new_candidate(item, _SOURCES_OF[admitted[item]], scores_of[item], details.get(item, {}))
        for item in kept
    ]


#: Bit of each source in an admitted item's mask, and the sources (in SOURCES order) per mask.
_BIT: Final = {source: 1 << i for i, source in enumerate(SOURCES)}
_SOURCES_OF: Final = tuple(
    tuple(s for i, s in enumerate(SOURCES) if mask & (1 << i)) for mask in range(1 << len(SOURCES))
)


def _top(scores: Mapping[str, float], n: int) -> list[str]:
    """The ``n`` best-scored items with a positive score, ties by item id (the first ``n``
    of :func:`featrec.core.items.order.best_first`'s order, as a set: the caller only admits
    them). Over the scores as an array: every item above the ``n``-th best score, then the
    smallest item ids of those equal to it; no ``(-score, item)`` tuple per item."""
    if n <= 0 or not scores:
        return []
    values = np.fromiter(scores.values(), np.float64, len(scores))
    positive = values > 0
    if int(np.count_nonzero(positive)) <= n:
        return list(compress(scores, positive.tolist()))
    threshold = np.partition(values, len(values) - n)[len(values) - n]  # the n-th best
    out = list(compress(scores, (values > threshold).tolist()))
    tied = sorted(compress(scores, (values == threshold).tolist()))
    return out + tied[: n - len(out)]


def _covisit_details(
    anchors: Sequence[str],
    lookup: Callable[[str], Sequence[tuple[str, float]]],
    normalise: str,
    wanted: set[str],
) -> dict[str, dict[str, float]]:
    """Per neighbour of the session's distinct anchors (newest first) that is in ``wanted``
    (the candidates kept): see :data:`~featrec.core.candidates.model.DETAILS`."""
    out: dict[str, dict[str, float]] = {}
    get = out.get
    for p, anchor in enumerate(dict.fromkeys(anchors)):
        row = lookup(anchor)
        if not row:
            continue
        norm = _norm(row, normalise) if p < 2 else 1.0
        for rank, (item, w) in enumerate(row, start=1):
            if item not in wanted:
                continue
            entry = get(item)
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
        norm = max(row, key=_weight)[1]
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


_weight: Final = itemgetter(1)

#: Order of the sources that come after the co-visitation scorer's candidates.
_LATER: Final = (SESSION, MODEL, HISTORY, TRENDING, POPULAR)
#: Per mask, the rank of the first later source it has (1-based in :data:`_LATER`) and that
#: source (None: none of them, rank ``len(_LATER) + 1``).
_FIRST_LATER: Final[tuple[tuple[int, str | None], ...]] = tuple(
    next(
        ((rank, s) for rank, s in enumerate(_LATER, start=1) if mask & (1 << SOURCES.index(s))),
        (len(_LATER) + 1, None),
    )
    for mask in range(1 << len(SOURCES))
)


def _order_key(
    item: str, mask: int, by_source: Mapping[str, Mapping[str, float]]
) -> tuple[int, float, str]:
    """The candidate order: the co-visitation scorer's score (covisit + session) first, then
    the best later source that admitted the item (its score), ties by item id."""
    base = by_source[COVISIT].get(item, 0.0) + by_source[SESSION].get(item, 0.0)
    if base > 0:
        return (0, -base, item)
    for rank, source in enumerate(_LATER, start=1):
        if mask & _BIT[source]:
            return (rank, -by_source[source].get(item, 0.0), item)
    return (len(_LATER) + 1, 0.0, item)


def _order_keys(
    admitted: Mapping[str, int], by_source: Mapping[str, Mapping[str, float]]
) -> list[tuple[int, float, str]]:
    """:func:`_order_key` of every admitted item (the same tuples, inlined: one per
    candidate per request), the first later source of each mask looked up once."""
    covisit = by_source[COVISIT]
    session = by_source[SESSION]
    later = [(rank, None if source is None else by_source[source]) for rank, source in _FIRST_LATER]
    out: list[tuple[int, float, str]] = []
    append = out.append
    for item, mask in admitted.items():
        base = covisit.get(item, 0.0) + session.get(item, 0.0)
        if base > 0:
            append((0, -base, item))
            continue
        rank, scores = later[mask]
        append((rank, -scores.get(item, 0.0), item) if scores is not None else (rank, 0.0, item))
    return out


def _model_order_key(
    item: str, mask: int, by_source: Mapping[str, Mapping[str, float]]
) -> tuple[int, float, str]:
    """The item model's score first, then the candidate order (the item-model policy)."""
    model = by_source[MODEL].get(item, 0.0)
    if model > 0:
        return (0, -model, item)
    rank, score, _ = _order_key(item, mask, by_source)
    return (1 + rank, score, item)
