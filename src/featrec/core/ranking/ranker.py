"""Ranking features and the learned ranker.

:func:`ranking_matrix` turns one request's candidates and the rows the store holds for it
(``session_features``, ``user_features``, and per item ``item_features`` merged with
``item_trending`` by :func:`item_row`) into a float64 matrix whose columns are
:data:`RANKING_FEATURES`, NaN where a value is unknown. Training replays the event log and
calls the same function at every prediction point, so the model sees at training time exactly
what it will see when serving. The function is pure: the same inputs give bit-identical
matrices, and :class:`Ranker` gives bit-identical scores for them (``explain`` relies on it).

Some columns are relative to the request (``base_share``, ``covisit_share``,
``candidate_rank``): a pointwise model cannot compare rows, so the comparison is made a
feature.

:func:`fallback_scores` ranks without the session (degraded mode): the user's category
affinity, the item's popularity now, and whether the user's history proposed it.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y
from threadpoolctl import ThreadpoolController

from featrec.core.candidates.model import (
    COVISIT,
    DETAILS,
    HISTORY,
    MODEL,
    POPULAR,
    SESSION,
    SOURCES,
    TRENDING,
    Candidate,
)
from featrec.core.events.model import VIEW
from featrec.core.features.catalog import TRENDING_TYPES, count_feature
from featrec.core.items.trending import TrendingConfig
from featrec.core.ranking.item_table import (
    AS_OF,
    CONVERSION,
    FIRST_SEEN,
    LOG_PRICE,
    PRICE,
    TREND_COUNTS,
    TREND_PURCHASE_SHARE,
    ItemColumns,
    _float,
)

Row = Mapping[str, object]
Matrix = npt.NDArray[np.float64]

#: The ranker's input columns, in order. Changing this list changes the feature-list hash in
#: model manifests: a model trained on another list is refused at load time.
RANKING_FEATURES: Final[tuple[str, ...]] = (
    # the candidate and its sources
    "candidate_rank",
    "base_score",
    "base_share",
    "covisit_score",
    "covisit_share",
    *DETAILS,
    "session_score",
    "history_score",
    "trending_score",
    "model_score",
    "model_share",
    *(f"src_{s}" for s in SOURCES),
    "n_sources",
    # the item
    "item_trend_now",
    "item_trend_share",
    "item_trend_purchase_share",
    "item_views_7d",
    "item_purchases_30d",
    "item_conversion_30d",
    "item_age_days",
    "item_log_price",
    # the item in this context
    "price_vs_session",
    "same_category",
    "session_position",
    "session_count",
    "user_category_share",
    "user_bought_item",
    "price_vs_user",
    # the session
    "session_n_events",
    "session_n_distinct_items",
    "session_duration_s",
    "session_mean_dwell_s",
    "session_n_carts",
    "session_n_purchases",
    "session_idle_s",
    "session_repeat_share",
    "session_last_run",
    # the user
    "user_n_sessions_90d",
    "user_views_30d",
    "user_purchase_rate_90d",
    "user_repeat_purchase_rate",
    "user_days_since_last_event",
)

NAN: Final = math.nan
_TREND_NOW: Final = RANKING_FEATURES.index("item_trend_now")
_TREND_SHARE: Final = RANKING_FEATURES.index("item_trend_share")
_TREND_PURCHASE_SHARE: Final = RANKING_FEATURES.index("item_trend_purchase_share")
_AGE_DAYS: Final = RANKING_FEATURES.index("item_age_days")
_LOG_PRICE: Final = RANKING_FEATURES.index("item_log_price")
_PRICE_VS_SESSION: Final = RANKING_FEATURES.index("price_vs_session")
_CONTEXT_START: Final = RANKING_FEATURES.index("session_n_events")
_DEFAULT_TRENDING: Final = TrendingConfig()
_USER_VIEWS_30D: Final = count_feature(VIEW, 30)


def item_row(features: Row | None, trending: Row | None) -> dict[str, object] | None:
    """One item's ``item_features`` and ``item_trending`` rows as one mapping (plain feature
    names); ``category`` is the streaming one when known. ``None`` when both are missing."""
    if features is None and trending is None:
        return None
    merged: dict[str, object] = dict(features or {})
    if trending is not None:
        batch_category = merged.get("category")
        merged.update(trending)
        if merged.get("category") is None:
            merged["category"] = batch_category
    return merged


def _num(row: Row | None, name: str) -> float:
    """A numeric value of a row as float, NaN when the row or value is missing."""
    return NAN if row is None else _float(row.get(name))


def _text(row: Row | None, name: str) -> str | None:
    value = None if row is None else row.get(name)
    return value if isinstance(value, str) and value else None


def _strings(row: Row | None, name: str) -> list[str]:
    value = None if row is None else row.get(name)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list | tuple) else []


def _log_ratio(a: float, b: float) -> float:
    return math.log(a / b) if a > 0 and b > 0 else NAN


_TrendTerms = tuple[tuple[str, float, float], ...]


def _trend_terms(config: TrendingConfig) -> _TrendTerms:
    """``(column, weight, half-life in s)`` per trending type."""
    return tuple(
        (
            f"trend_{t}",
            config.type_weight(t),
            config.half_lives_s.get(t, config.default_half_life_s),
        )
        for t in TRENDING_TYPES
    )


_Decays = dict[float, tuple[float, ...]]


def _trend_now(item: Row, now_s: float, terms: _TrendTerms, decays: _Decays | None = None) -> float:
    """``decays``: a memo of the decay factors per elapsed time, shared by the items of one
    request (their trending rows mostly share an ``as_of_s``); the sum is the same, bit for
    bit, with or without it."""
    as_of = _float(item.get("as_of_s"))
    elapsed = now_s - as_of if as_of < now_s else 0.0  # False for NaN: no decay
    factors = None if decays is None else decays.get(elapsed)
    if factors is None:
        factors = tuple(2.0 ** -(elapsed / half_life) for _, _, half_life in terms)
        if decays is not None:
            decays[elapsed] = factors
    total, seen = 0.0, False
    for (column, weight, _), factor in zip(terms, factors, strict=True):
        count = _float(item.get(column))
        if not math.isnan(count):
            seen = True
            total += weight * count * factor
    return total if seen else NAN


def trend_now(item: Row | None, now_s: float, config: TrendingConfig = _DEFAULT_TRENDING) -> float:
    """The item's trend score decayed from its row's ``as_of_s`` to ``now_s`` (NaN without
    a trending row). A row newer than ``now_s`` is taken as is."""
    return NAN if item is None else _trend_now(item, now_s, _trend_terms(config))


def ranking_matrix(
    candidates: Sequence[Candidate],
    session: Row | None,
    user: Row | None,
    items: Mapping[str, Row | None] | ItemColumns,
    now_s: float,
    *,
    trending_config: TrendingConfig = _DEFAULT_TRENDING,
    rows: int | None = None,
) -> Matrix:
    """One row per candidate, columns :data:`RANKING_FEATURES` (float64, NaN = unknown).

    ``items`` maps item ids to :func:`item_row` mappings (a missing key is a missing row), or is
    the candidates' :class:`~featrec.core.ranking.item_table.ItemColumns` (aligned with them:
    what serving gathers from rows whose item columns were computed once per read).
    ``now_s`` is the request time in unix seconds. ``rows``: only the first ``rows``
    candidates' rows (two-stage ranking), equal to those rows of the full matrix (the
    request-relative columns still compare with every candidate).
    """
    ids = [c.item_id for c in candidates]
    if isinstance(items, ItemColumns):
        if list(items.ids) != ids:
            raise ValueError("the item columns are not aligned with the candidates")
        columns = items
    else:
        columns = ItemColumns.of(ids, items)
    total = len(candidates)
    if rows is not None and rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    n = total if rows is None else min(rows, total)
    if n == 0:
        return np.empty((0, len(RANKING_FEATURES)), dtype=np.float64)
    all_scores = [c.scores for c in candidates]
    covisits = [s.get(COVISIT, 0.0) for s in all_scores]
    sessions = [s.get(SESSION, 0.0) for s in all_scores]
    models = [s.get(MODEL, 0.0) for s in all_scores]
    bases = [a + b for a, b in zip(covisits, sessions, strict=True)]
    max_base = max(bases, default=0.0)
    max_covisit = max(covisits, default=0.0)
    max_model = max(models, default=0.0)

    last_items = _strings(session, "last_items")
    position: dict[str, float] = {}
    count: dict[str, float] = {}
    for p, seen in enumerate(last_items, start=1):
        position.setdefault(seen, float(p))
        count[seen] = count.get(seen, 0.0) + 1.0
    last_category = _text(session, "last_category")
    last_price = _num(session, "last_price")
    has_session = session is not None

    has_user = user is not None
    shares: dict[str, float] = {}
    for top_category, share in zip(
        _strings(user, "top_categories"), _list_floats(user, "top_category_shares"), strict=False
    ):
        shares.setdefault(top_category, share)
    bought = set(_strings(user, "recent_purchases"))
    user_price = _num(user, "avg_price_viewed_90d")

    context = [
        _num(session, "n_events"),
        _num(session, "n_distinct_items"),
        _num(session, "duration_s"),
        _num(session, "mean_dwell_s"),
        _num(session, "n_carts"),
        _num(session, "n_purchases"),
        now_s - _num(session, "last_event_at_s"),
        _repeat_share(session),
        _head_run(last_items) if has_session else NAN,
        _num(user, "n_sessions_90d"),
        _num(user, _USER_VIEWS_30D),
        _num(user, "purchase_rate_90d"),
        _num(user, "repeat_purchase_rate"),
        _num(user, "days_since_last_event"),
    ]

    values = columns.values
    head = values[:n]
    prices = head[:, PRICE].tolist()
    categories = [c if c else None for c in columns.categories[:n]]
    matrix = np.empty((n, len(RANKING_FEATURES)), dtype=np.float64)
    out: list[list[float]] = []
    for c, base, covisit, price, category in zip(
        candidates[:n], bases, covisits, prices, categories, strict=False
    ):
        item_id, scores, sources, details = c.item_id, c.scores, c.sources, c.details
        model = scores.get(MODEL, 0.0)
        out.append(
            [
                base,
                base / max_base if max_base > 0 else 0.0,
                covisit,
                covisit / max_covisit if max_covisit > 0 else 0.0,
                details.get("covisit_last", 0.0),
                details.get("covisit_second", 0.0),
                details.get("covisit_last_raw", 0.0),
                details.get("covisit_last_rank", NAN),
                details.get("covisit_best_rank", NAN),
                details.get("covisit_anchors", 0.0),
                scores.get(SESSION, 0.0),
                scores.get(HISTORY, 0.0),
                max(scores.get(TRENDING, 0.0), scores.get(POPULAR, 0.0)),
                model,
                model / max_model if max_model > 0 else 0.0,
                *_source_bits(sources),
                _log_ratio(price, last_price),
                (
                    (1.0 if category == last_category else 0.0)
                    if last_category is not None and category is not None
                    else NAN
                ),
                position.get(item_id, NAN) if has_session else NAN,
                count.get(item_id, 0.0) if has_session else NAN,
                shares.get(category, 0.0) if has_user and category is not None else NAN,
                (1.0 if item_id in bought else 0.0) if has_user else NAN,
                _log_ratio(price, user_price),
            ]
        )
    per_candidate = np.array(out, dtype=np.float64)
    matrix[:, 0] = np.arange(n, dtype=np.float64)
    matrix[:, 1:_TREND_NOW] = per_candidate[:, : _TREND_NOW - 1]
    matrix[:, _PRICE_VS_SESSION:_CONTEXT_START] = per_candidate[:, _TREND_NOW - 1 :]
    # The item's own columns: gathered, and the trend decayed to now for every candidate (the
    # share compares with the most popular candidate of the request, head or tail).
    trend = _trend_column(values, now_s, _trend_terms(trending_config))
    head_trend = trend[:n]
    matrix[:, _TREND_NOW] = head_trend
    # item_trend_purchase_share .. item_conversion_30d: the same four columns in both
    matrix[:, _TREND_PURCHASE_SHARE : _TREND_PURCHASE_SHARE + 4] = head[
        :, TREND_PURCHASE_SHARE : CONVERSION + 1
    ]
    matrix[:, _AGE_DAYS] = (now_s - head[:, FIRST_SEEN]) / 86_400.0
    matrix[:, _LOG_PRICE] = head[:, LOG_PRICE]
    matrix[:, _CONTEXT_START:] = context
    # Popularity relative to the request's most popular candidate: unlike the absolute trend,
    # it does not drift when every trend decays together (signals frozen or lagging).
    top_trend = np.nanmax(trend) if not np.isnan(trend).all() else NAN
    matrix[:, _TREND_SHARE] = head_trend / top_trend if top_trend > 0 else NAN
    return matrix


def _trend_column(values: Matrix, now_s: float, terms: _TrendTerms) -> npt.NDArray[np.float64]:
    """:func:`_trend_now` of every row of :func:`~featrec.core.ranking.item_table.item_values`
    columns (NaN for an item without a row or trending counts), the same float operations in
    the same order; the decay factors are computed once per distinct elapsed time."""
    as_of = values[:, AS_OF]
    elapsed = np.where(as_of < now_s, now_s - as_of, 0.0)  # False for NaN: no decay
    distinct, inverse = np.unique(elapsed, return_inverse=True)
    factors = np.array(
        [[2.0 ** -(e / half_life) for _, _, half_life in terms] for e in distinct.tolist()],
        dtype=np.float64,
    ).reshape(len(distinct), len(terms))[inverse.reshape(-1)]
    total = np.zeros(len(values), dtype=np.float64)
    seen = np.zeros(len(values), dtype=bool)
    with np.errstate(all="ignore"):
        for j, (_, weight, _) in enumerate(terms):
            counts = values[:, TREND_COUNTS + j]
            known = ~np.isnan(counts)
            total = np.where(known, total + weight * counts * factors[:, j], total)
            seen |= known
    return np.where(seen, total, NAN)


_SourceBits = tuple[float, ...]
#: :func:`_source_bits` by sources tuple (a few distinct tuples occur: memoised).
_SOURCE_BITS: dict[tuple[str, ...], _SourceBits] = {}


def _source_bits(sources: tuple[str, ...]) -> _SourceBits:
    """The ``src_*`` columns (1.0 per source in :data:`SOURCES` that admitted the candidate)
    and ``n_sources``."""
    bits = _SOURCE_BITS.get(sources)
    if bits is None:
        bits = (*[1.0 if s in sources else 0.0 for s in SOURCES], float(len(sources)))
        if len(_SOURCE_BITS) < 4096:
            _SOURCE_BITS[sources] = bits
    return bits


def _repeat_share(session: Row | None) -> float:
    """The share of the session's events that revisited an item it had already seen."""
    n_events, distinct = _num(session, "n_events"), _num(session, "n_distinct_items")
    return 1.0 - distinct / n_events if n_events > 0 and distinct >= 0 else NAN


def _head_run(last_items: Sequence[str]) -> float:
    """How many of the newest events in a row were on the newest item."""
    run = 0
    for item in last_items:
        if item != last_items[0]:
            break
        run += 1
    return float(run)


def _list_floats(row: Row | None, name: str) -> list[float]:
    value = None if row is None else row.get(name)
    if not isinstance(value, list | tuple):
        return []
    return [float(v) if isinstance(v, int | float) else NAN for v in value]


def popularity_score(
    candidates: Sequence[Candidate],
    items: Mapping[str, Row | None] | None = None,
    now_s: float | None = None,
    *,
    trending_config: TrendingConfig = _DEFAULT_TRENDING,
) -> npt.NDArray[np.float64]:
    """Each candidate's popularity now: its trend score decayed to ``now_s`` from ``items``
    rows, else its trending/popular source score; 0 when nothing is known."""
    out = np.zeros(len(candidates), dtype=np.float64)
    for i, c in enumerate(candidates):
        value = NAN
        if items is not None and now_s is not None:
            value = trend_now(items.get(c.item_id), now_s, trending_config)
        if math.isnan(value):
            value = max(c.score(TRENDING), c.score(POPULAR))
        out[i] = value
    return out


#: Weights of the degraded-mode score (see :func:`fallback_scores`).
FALLBACK_WEIGHTS: Final = {"affinity": 0.5, "popularity": 0.4, "history": 0.1}


def fallback_scores(
    candidates: Sequence[Candidate],
    user: Row | None,
    items: Mapping[str, Row | None],
    now_s: float | None = None,
    *,
    trending_config: TrendingConfig = _DEFAULT_TRENDING,
) -> npt.NDArray[np.float64]:
    """Scores in [0, 1] without session features (degraded mode), deterministic.

    ``0.5 x`` the user's share of the item's category among their top categories ``+ 0.4 x``
    the item's popularity (``log1p``, relative to the most popular candidate) ``+ 0.1`` when
    the user's history proposed it. Anonymous users get popularity alone.
    """
    popularity = popularity_score(candidates, items, now_s, trending_config=trending_config)
    logs = np.log1p(np.maximum(popularity, 0.0))
    top = float(logs.max()) if len(logs) else 0.0
    relative = logs / top if top > 0 else np.zeros_like(logs)
    shares: dict[str, float] = {}
    for category, share in zip(
        _strings(user, "top_categories"), _list_floats(user, "top_category_shares"), strict=False
    ):
        if not math.isnan(share):
            shares.setdefault(category, share)
    out = np.empty(len(candidates), dtype=np.float64)
    w = FALLBACK_WEIGHTS
    for i, c in enumerate(candidates):
        item_category = _text(items.get(c.item_id), "category")
        affinity = shares.get(item_category, 0.0) if item_category is not None else 0.0
        history = 1.0 if HISTORY in c.sources else 0.0
        out[i] = w["affinity"] * affinity + w["popularity"] * relative[i] + w["history"] * history
    return out


@functools.cache
def _thread_controller() -> ThreadpoolController:
    """One controller per process: building one scans the loaded libraries (~ms)."""
    return ThreadpoolController()


class Ranker(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Scores candidates: the probability that a candidate is the next item.

    A scikit-learn estimator (``__init__`` stores parameters, ``fit`` returns ``self``,
    fitted attributes end in ``_``) around a ``HistGradientBoostingClassifier`` with early
    stopping off and a fixed seed, so training is reproducible and prediction deterministic.
    ``feature_names`` names the columns of ``X`` (``None``: any width, named ``x0``, ...).

    ``prediction_threads`` caps OpenMP threads while predicting (``None``: OpenMP's default).
    One thread is the default because a request scores a few hundred rows: on this project's
    2-core machine the default thread team gave p99 ~1 s at 200 rows under load (threads
    waiting for busy cores) against ~3 ms single-threaded; scores are identical either way.
    The cap is process-wide while a prediction runs (threadpoolctl); a server may as well
    start with ``OMP_NUM_THREADS=1``.
    """

    def __init__(
        self,
        feature_names: Sequence[str] | None = None,
        learning_rate: float = 0.1,
        max_iter: int = 200,
        max_leaf_nodes: int = 31,
        min_samples_leaf: int = 40,
        l2_regularization: float = 1.0,
        random_state: int = 0,
        prediction_threads: int | None = 1,
    ) -> None:
        self.feature_names = feature_names
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.l2_regularization = l2_regularization
        self.random_state = random_state
        self.prediction_threads = prediction_threads

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN means "unknown", as for the wrapped model
        return tags

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Ranker:
        matrix, labels = check_X_y(X, y, dtype=np.float64, ensure_all_finite="allow-nan")
        check_classification_targets(labels)
        if self.feature_names is not None and matrix.shape[1] != len(self.feature_names):
            raise ValueError(
                f"X has {matrix.shape[1]} columns for {len(self.feature_names)} feature_names"
            )
        model = HistGradientBoostingClassifier(
            learning_rate=self.learning_rate,
            max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=self.min_samples_leaf,
            l2_regularization=self.l2_regularization,
            early_stopping=False,
            random_state=self.random_state,
        )
        # scikit-learn 1.9's binning fails on an all-NaN column ("window shape cannot be
        # larger than input array shape"). A constant column is never split on, so filling
        # it with 0 for fitting leaves predictions (NaN or not) unchanged.
        empty = np.isnan(matrix).all(axis=0)
        if empty.any():
            matrix = matrix.copy()
            matrix[:, empty] = 0.0
        model.fit(matrix, labels, sample_weight=sample_weight)
        self.model_ = model
        self.classes_ = model.classes_
        self.n_iter_ = model.n_iter_
        self.n_features_in_ = matrix.shape[1]
        names = (
            list(self.feature_names)
            if self.feature_names is not None
            else [f"x{i}" for i in range(matrix.shape[1])]
        )
        self.feature_names_in_ = np.asarray(names, dtype=object)
        return self

    def predict_proba(self, X: Any) -> npt.NDArray[np.float64]:
        check_is_fitted(self)
        matrix = self._matrix(X)
        with self._threads():
            proba: npt.NDArray[np.float64] = self.model_.predict_proba(matrix)
        return proba

    def predict(self, X: Any) -> npt.NDArray[Any]:
        check_is_fitted(self)
        matrix = self._matrix(X)
        with self._threads():
            predicted: npt.NDArray[Any] = self.model_.predict(matrix)
        return predicted

    def decision_function(self, X: Any) -> npt.NDArray[np.float64]:
        check_is_fitted(self)
        matrix = self._matrix(X)
        with self._threads():
            raw: npt.NDArray[np.float64] = self.model_.decision_function(matrix)
        return raw

    def score_candidates(self, X: Any) -> npt.NDArray[np.float64]:
        """P(next item) per row of a :func:`ranking_matrix` (deterministic: the same rows
        give bit-identical scores, whatever else is in the batch)."""
        check_is_fitted(self)
        if len(self.classes_) != 2:
            raise ValueError(f"score_candidates needs a binary ranker, classes {self.classes_}")
        matrix = self._matrix(X)
        if matrix.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        with self._threads():
            scores: npt.NDArray[np.float64] = self.model_.predict_proba(matrix)[:, 1]
        return np.ascontiguousarray(scores, dtype=np.float64)

    def _threads(self) -> contextlib.AbstractContextManager[Any]:
        # getattr: artifacts saved before the parameter existed lack the attribute.
        threads = getattr(self, "prediction_threads", 1)
        if threads is None:
            return contextlib.nullcontext()
        limit: contextlib.AbstractContextManager[Any] = _thread_controller().limit(
            limits=threads, user_api="openmp"
        )
        return limit

    def _matrix(self, X: Any) -> npt.NDArray[np.float64]:
        matrix: npt.NDArray[np.float64] = check_array(
            X, dtype=np.float64, ensure_all_finite="allow-nan"
        )
        if matrix.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {matrix.shape[1]} features, but Ranker is expecting "
                f"{self.n_features_in_} features as input"
            )
        return matrix
