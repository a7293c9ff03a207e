"""The ranking matrix as it was built one row at a time, before it was built column by column:
the oracle ``tests/unit/test_matrix_oracle.py`` compares the current one with (kept verbatim
below, with the helpers it used from :mod:`featrec.core.ranking.ranker`)."""

# ruff: noqa
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from featrec.core.candidates.model import COVISIT, HISTORY, POPULAR, SESSION, SOURCES, TRENDING
from featrec.core.ranking.ranker import (
    _DEFAULT_TRENDING,
    _PURCHASES_30D,
    _TREND_NOW,
    _TREND_SHARE,
    _USER_VIEWS_30D,
    _VIEWS_7D,
    NAN,
    RANKING_FEATURES,
    Candidate,
    Matrix,
    Row,
    TrendingConfig,
    _float,
    _head_run,
    _list_floats,
    _log_ratio,
    _num,
    _repeat_share,
    _strings,
    _text,
    _trend_now,
    _trend_terms,
)


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
                _trend_now(item, now_s, terms),
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
        tail = [_trend_now(item, now_s, terms) for item in rest if item is not None]
        trend = np.concatenate([trend, np.asarray(tail, dtype=np.float64)])
    top_trend = np.nanmax(trend) if not np.isnan(trend).all() else NAN
    trend = matrix[:, _TREND_NOW]
    matrix[:, _TREND_SHARE] = trend / top_trend if top_trend > 0 else NAN
    return matrix
