"""Candidate generation as it was before it kept per-source score dicts and built Candidates only
for the kept pool (with the item model source, as the itemmodel branch left it): the oracle
``tests/unit/test_generation_oracle.py`` compares the current one with it (kept verbatim below)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

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
)
from featrec.core.candidates.signals import SignalLookup
from featrec.core.items import slist
from featrec.core.items.order import best_first
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

    if config.max_model or config.order == "model":
        model_rows = signals.model_neighbours(
            list(dict.fromkeys(session_items[: config.model_last_n])), session_id
        )
        if model_rows:
            model_scores = slist.score_session(
                session_items,
                lambda item: model_rows.get(item, ()),
                config.model_predict_weight,
                config.model_last_n,
            )
            for item, score in model_scores.items():
                add(MODEL, item, score)
            admit(MODEL, _top(model_scores, config.max_model))

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
    out.sort(key=_model_order if config.order == "model" else _candidate_order)
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
    """Per neighbour of the session's distinct anchors (newest first): see
    :data:`~featrec.core.candidates.model.DETAILS`."""
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
_LATER: Final = (SESSION, MODEL, HISTORY, TRENDING, POPULAR)


def _candidate_order(c: Candidate) -> tuple[int, float, str]:
    base = c.base_score
    if base > 0:
        return (0, -base, c.item_id)
    for rank, source in enumerate(_LATER, start=1):
        if source in c.sources:
            return (rank, -c.score(source), c.item_id)
    return (len(_LATER) + 1, 0.0, c.item_id)


def _model_order(c: Candidate) -> tuple[int, float, float, str]:
    """The item model's score first, then the candidate order (the item-model policy)."""
    model = c.score(MODEL)
    rank, score, item = _candidate_order(c)
    if model > 0:
        return (0, -model, 0.0, item)
    return (1 + rank, score, 0.0, item)
