"""The steps ``recommend`` and ``explain`` share: scoring and post-processing.

Both call the same functions on the same inputs, which is what makes a logged request
reproducible: :func:`score` (the ranker on :func:`~featrec.core.ranking.ranker.ranking_matrix`, the
candidate order without a model, :func:`~featrec.core.ranking.ranker.fallback_scores` when degraded)
and :func:`post_process` (:func:`~featrec.core.ranking.rerank.rerank` with the categories and
popularity of the candidates' item rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from featrec.core.candidates.model import Candidate
from featrec.core.events.model import PURCHASE, VIEW
from featrec.core.features.catalog import ITEM_FEATURES, count_feature
from featrec.core.features.declared.ranking import DeclaredColumn, declared_matrix
from featrec.core.ports.serving import StampedRow
from featrec.core.ranking.item_table import ItemColumns
from featrec.core.ranking.ranker import fallback_scores, popularity_score, ranking_matrix
from featrec.core.ranking.rerank import Decision, RerankConfig, rerank
from featrec.core.ranking.two_stage import two_stage_scores
from featrec.errors import ConfigError

#: The features serving reads of views it does not need whole: ``item_features`` has 21, the
#: ranking features and the fallback scorer use these (a test checks that the matrix and the
#: scores are the same with these alone). Readers fetch and decode, and the log keeps, only them.
SERVED_FEATURES: Final[Mapping[str, tuple[str, ...]]] = {
    ITEM_FEATURES.name: (
        count_feature(VIEW, 7),
        count_feature(PURCHASE, 30),
        "conversion_rate_30d",
        "price",
        "category",
        "first_seen_s",
    ),
}

SCORER_MODEL: Final = "model"
SCORER_ORDER: Final = "candidate-order"
SCORER_FALLBACK: Final = "fallback"

Scores = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float64]
#: The candidates' merged item rows: by item id, or as columns aligned with the candidates.
Items = Mapping[str, Mapping[str, object] | None] | ItemColumns


def _mapping(items: Items) -> Mapping[str, Mapping[str, object] | None]:
    return items.mapping() if isinstance(items, ItemColumns) else items


class ScoringModel(Protocol):
    """What the recommender needs of a ranker (:class:`featrec.core.ranking.ranker.Ranker`)."""

    def score_candidates(self, X: Any) -> Scores: ...


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A fitted ranker and the version that names it in responses and the request log."""

    version: str
    ranker: ScoringModel
    #: Declared features the model reads after the built-in columns (by name, in order).
    declared: tuple[DeclaredColumn, ...] = ()


#: Loads a model by version (for explaining requests answered by an older model).
ModelLoader = Callable[[str], LoadedModel]


def declared_block(
    model: LoadedModel | None,
    rows: Mapping[tuple[str, str], StampedRow | None],
    session_id: str,
    user_id: str | None,
    candidates: Sequence[Candidate],
) -> Matrix | None:
    """The model's declared columns for ``candidates`` from the rows read (None: none)."""
    if model is None or not model.declared:
        return None
    values = {k: (None if r is None else r.values) for k, r in rows.items()}
    ids = [c.item_id for c in candidates]
    return declared_matrix(model.declared, values, session_id, user_id, ids)


def values_of(row: StampedRow | None) -> Mapping[str, object] | None:
    return None if row is None else row.values


def strings(value: object) -> list[str]:
    if not isinstance(value, list | tuple):
        return []
    return [v for v in value if isinstance(v, str)]


def purchased_items(user: Mapping[str, object] | None) -> frozenset[str]:
    """What the user bought (``recent_purchases`` of their row): dropped by post-processing."""
    return frozenset(strings(user.get("recent_purchases"))) if user is not None else frozenset()


def candidate_order_scores(n: int) -> Scores:
    """Scores that keep the candidates' order (the co-visitation scorer's): 1, ..., 1/n."""
    return np.asarray([(n - i) / n for i in range(n)], dtype=np.float64)


def choose_scorer(
    reason: str | None, model: LoadedModel | None, override: str | None = None
) -> str:
    """The scorer of a request: the fallback when degraded (whatever the arm asks), else the
    arm's ``override`` (an experiment arm), else the model if one is loaded."""
    if reason is not None:
        return SCORER_FALLBACK
    if override is not None:
        if override == SCORER_MODEL and model is None:
            raise ConfigError("the arm scores with the model, but no model is loaded")
        return override
    return SCORER_MODEL if model is not None else SCORER_ORDER


def score(
    scorer: str,
    model: LoadedModel | None,
    candidates: Sequence[Candidate],
    session: Mapping[str, object] | None,
    user: Mapping[str, object] | None,
    items: Items,
    now_s: float,
    keep: int | None = None,
    declared: Matrix | None = None,
) -> Scores:
    """Raw scores of ``candidates`` by ``scorer``; the model scores the first ``keep``
    (two-stage ranking, :mod:`featrec.core.ranking.two_stage`; None: all). ``declared``: the
    model's declared columns for every candidate (:func:`declared_block`)."""
    if not candidates:
        return np.empty(0, dtype=np.float64)
    if scorer == SCORER_MODEL:
        assert model is not None
        ranker = model.ranker

        def head(m: int) -> Scores:
            matrix = ranking_matrix(candidates, session, user, items, now_s, rows=m)
            if model.declared:
                assert declared is not None, "the model reads declared features"
                matrix = np.hstack([matrix, declared[: len(matrix)]])
            return np.asarray(ranker.score_candidates(matrix), dtype=np.float64)

        return two_stage_scores(head, len(candidates), keep)
    if scorer == SCORER_ORDER:
        return candidate_order_scores(len(candidates))
    if scorer == SCORER_FALLBACK:
        return fallback_scores(candidates, user, _mapping(items), now_s)
    raise ConfigError(f"unknown scorer {scorer!r} in the request log")


def post_process(
    candidates: Sequence[Candidate],
    raw: Scores,
    items: Items,
    now_s: float,
    purchased: frozenset[str],
    shown_before: Sequence[str] | None,
    k: int,
    config: RerankConfig,
) -> list[Decision]:
    """:func:`~featrec.core.ranking.rerank.rerank` with the categories of the candidates' item rows
    and their popularity now (computed only when ``config`` damps popularity: nothing else
    reads it)."""
    if not candidates:
        return []
    categories: dict[str, str | None] = {}
    if isinstance(items, ItemColumns):
        categories = dict(zip(items.ids, items.categories, strict=True))
    else:
        for c in candidates:
            row = items.get(c.item_id)
            category = row.get("category") if row is not None else None
            categories[c.item_id] = category if isinstance(category, str) else None
    popularity: dict[str, float] = {}
    if config.popularity_damping > 0:
        scores = popularity_score(candidates, _mapping(items), now_s)
        popularity = {c.item_id: float(p) for c, p in zip(candidates, scores, strict=True)}
    return rerank(
        [c.item_id for c in candidates],
        raw.tolist(),
        categories,
        popularity,
        purchased,
        shown_before,
        k,
        config,
    )
