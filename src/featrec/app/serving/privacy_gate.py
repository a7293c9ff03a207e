"""Privacy at the door: a request that names a forgotten user or session is not personalised
and leaves nothing behind.

``featrec forget`` deny-lists the user and their sessions (:mod:`featrec.core.privacy`). A
request naming either is answered before the recommender sees it: no session or user row is
read, the version cache is neither read nor written (it may still hold the user's answers
from before the forget), and nothing is written to the request log. The answer is the
anonymous one, popularity alone (the degraded path's fallback scorer over trending
candidates), flagged ``degraded_code: "forgotten"`` and ``logged: false``; it does not echo
the user id back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Final

from featrec.app.serving import steps
from featrec.app.serving.recommender import (
    Recommendation,
    RecommendedItem,
    Recommender,
    RowSignals,
)
from featrec.core.candidates.generation import generate
from featrec.core.features.catalog import ITEM_FEATURES, ITEM_TRENDING
from featrec.core.privacy import DenySet
from featrec.core.ranking.ranker import item_row
from featrec.errors import StoreError

#: Degraded code of the answer to a forgotten user or session.
FORGOTTEN: Final = "forgotten"
FORGOTTEN_REASON: Final = "forgotten user or session: a non-personalised answer, not logged"

#: The current deny-set (a :class:`~featrec.adapters.files.deny_list.DenyWatcher`'s).
DenySource = Callable[[], DenySet]


def is_forgotten(deny: DenySet, session_id: str, user_id: str | None) -> bool:
    return deny.contains("session", session_id) or deny.contains("user", user_id)


def non_personalised(recommender: Recommender, session_id: str, k: int) -> Recommendation:
    """The anonymous answer: trending candidates scored by popularity, nothing logged."""
    try:
        return _anonymous(recommender, session_id, k, offline=False)
    except StoreError:  # the store is down: the cached rows, however old
        return _anonymous(recommender, session_id, k, offline=True)


def _anonymous(
    recommender: Recommender, session_id: str, k: int, *, offline: bool
) -> Recommendation:
    cfg = recommender.config
    now_s = recommender.now()
    signals = RowSignals(recommender.item_cache, None, offline=offline)
    candidates = generate([], None, None, signals, cfg.candidates)
    ids = [c.item_id for c in candidates]
    found = recommender.item_cache.get(
        {ITEM_FEATURES.name: ids, ITEM_TRENDING.name: ids}, offline=offline
    )
    items = {
        item: item_row(steps.values_of(f), steps.values_of(t))
        for item, f, t in zip(
            ids, found[ITEM_FEATURES.name], found[ITEM_TRENDING.name], strict=True
        )
    }
    raw = steps.score(steps.SCORER_FALLBACK, None, candidates, None, None, items, now_s)
    decisions = steps.post_process(candidates, raw, items, now_s, frozenset(), None, k, cfg.rerank)
    by_id = {c.item_id: c for c in candidates}
    return Recommendation(
        request_id=uuid.uuid4().hex,
        session_id=session_id,
        user_id=None,
        items=tuple(
            RecommendedItem(d.item_id, d.score, d.rank, by_id[d.item_id].reasons() + d.reasons)
            for d in decisions
            if d.kept and d.rank is not None
        ),
        degraded=True,
        degraded_reason=FORGOTTEN_REASON,
        degraded_code=FORGOTTEN,
        model_version=None,
        scorer=steps.SCORER_FALLBACK,
        session_version=None,
        logged=False,
    )
