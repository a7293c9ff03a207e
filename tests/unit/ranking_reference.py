"""``ranking_matrix`` as it was before the item columns were computed once per row read and
gathered per request (:mod:`featrec.core.ranking.item_table`): the row-at-a-time version, kept
verbatim below as the oracle of ``tests/unit/test_ranking_oracle.py``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

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
from featrec.core.events.model import PURCHASE, VIEW
from featrec.core.features.catalog import TRENDING_TYPES, count_feature
from featrec.core.items.trending import TrendingConfig
from featrec.core.ranking.ranker import RANKING_FEATURES

Row = Mapping[str, object]
Matrix = npt.NDArray[np.float64]

NAN: Final = math.nan
_TREND_NOW: Final = RANKING_FEATURES.index("item_trend_now")
_TREND_SHARE: Final = RANKING_FEATURES.index("item_trend_share")
_DEFAULT_TRENDING: Final = TrendingConfig()
_VIEWS_7D: Final = count_feature(VIEW, 7)
_PURCHASES_30D: Final = count_feature(PURCHASE, 30)
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


def _float(value: object) -> float:
    """``value`` as a float when it is a number (not a bool), else NaN."""
    if value.__class__ is float:
        return value  # type: ignore[return-value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return NAN


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
    items: Mapping[str, Row | None],
    now_s: float,
    *,
    trending_config: TrendingConfig = _DEFAULT_TRENDING,
    rows: int | None = None,
) -> Matrix:
    """One row per candidate, columns :data:`RANKING_FEATURES` (float64, NaN = unknown).

    ``items`` maps item ids to :func:`item_row` mappings (a missing key is a missing row).
    ``now_s`` is the request time in unix seconds. ``rows``: only the first ``rows``
    candidates' rows (two-stage ranking), equal to those rows of the full matrix (the
    request-relative columns still compare with every candidate).
    """
    n = len(candidates) if rows is None else min(rows, len(candidates))
    max_base = max((c.base_score for c in candidates), default=0.0)
    max_covisit = max((c.score(COVISIT) for c in candidates), default=0.0)
    max_model = max((c.score(MODEL) for c in candidates), default=0.0)

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

    terms = _trend_terms(trending_config)
    decays: _Decays = {}
    #: The item columns of a candidate without any item row.
    unknown_item = [NAN] * 8
    out: list[list[float]] = []
    for rank, c in enumerate(candidates[:n]):
        item_id, scores, sources, details = c.item_id, c.scores, c.sources, c.details
        covisit = scores.get(COVISIT, 0.0)
        base = covisit + scores.get(SESSION, 0.0)
        item = items.get(item_id)
        category: str | None = None
        if item is None:
            price = NAN
            item_part = unknown_item
        else:
            get = item.get
            price = _float(get("price"))
            raw_category = get("category")
            category = raw_category if isinstance(raw_category, str) and raw_category else None
            trend_view, trend_purchase = _float(get("trend_view")), _float(get("trend_purchase"))
            item_part = [
                _trend_now(item, now_s, terms, decays),
                NAN,  # item_trend_share, filled in below
                trend_purchase / trend_view if trend_view > 0 else NAN,
                _float(get(_VIEWS_7D)),
                _float(get(_PURCHASES_30D)),
                _float(get("conversion_rate_30d")),
                (now_s - _float(get("first_seen_s"))) / 86_400.0,
                math.log1p(price) if price >= 0 else NAN,
            ]
        if last_category is not None and category is not None:
            same_category = 1.0 if category == last_category else 0.0
        else:
            same_category = NAN
        user_share = shares.get(category, 0.0) if has_user and category is not None else NAN
        out.append(
            [
                float(rank),
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
                scores.get(MODEL, 0.0),
                scores.get(MODEL, 0.0) / max_model if max_model > 0 else 0.0,
                *[1.0 if s in sources else 0.0 for s in SOURCES],
                float(len(sources)),
                *item_part,
                _log_ratio(price, last_price),
                same_category,
                position.get(item_id, NAN) if has_session else NAN,
                count.get(item_id, 0.0) if has_session else NAN,
                user_share,
                (1.0 if item_id in bought else 0.0) if has_user else NAN,
                _log_ratio(price, user_price),
                *context,
            ]
        )
    if not out:
        return np.empty((0, len(RANKING_FEATURES)), dtype=np.float64)
    matrix = np.array(out, dtype=np.float64)
    assert matrix.shape == (n, len(RANKING_FEATURES))
    # Popularity relative to the request's most popular candidate: unlike the absolute trend,
    # it does not drift when every trend decays together (signals frozen or lagging).
    trend = matrix[:, _TREND_NOW]
    if n < len(candidates):
        rest = [items.get(c.item_id) for c in candidates[n:]]
        tail = [_trend_now(item, now_s, terms, decays) for item in rest if item is not None]
        trend = np.concatenate([trend, np.asarray(tail, dtype=np.float64)])
    top_trend = np.nanmax(trend) if not np.isnan(trend).all() else NAN
    trend = matrix[:, _TREND_NOW]
    matrix[:, _TREND_SHARE] = trend / top_trend if top_trend > 0 else NAN
    return matrix


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
