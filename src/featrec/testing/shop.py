"""A small shop where the right recommendations are obvious (known-answer fixtures).

Items ``a1..a6`` are in category A, ``b1..b6`` in B. Session ``s1`` just viewed ``a1``, whose
co-visitation neighbours are ``a2`` (10), ``a3`` (5) and ``b1`` (1). User ``u1`` likes A
(share 0.8) and bought ``a3``. Trending: ``b2`` 50, ``b3`` 40, ``a5`` 30, ``b4`` 20, ``a6`` 10.

Known answers (see tests/test_recommend.py):

- without a model, k=5: ``a1`` (re-view, reminder 4.0), ``a2`` (1.0), ``b1`` (0.1), then the
  trending items by score ``b2``, ``b3``; ``a3`` is dropped (already bought);
- degraded (no session), k=5: the user's category first, by popularity: ``a5``, ``a6``, then
  ``b2``, ``b3``, ``b4``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from featrec.core.features import catalog
from featrec.core.features.rows import FeatureRow

if TYPE_CHECKING:
    from featrec.app.serving.steps import LoadedModel

T0_S = 1_700_000_000
T0 = T0_S * 1_000_000
NOW_S = T0_S + 10.0

TRENDING = {"b2": 50.0, "b3": 40.0, "a5": 30.0, "b4": 20.0, "a6": 10.0}
NEIGHBOURS = {"a1": [("a2", 10.0), ("a3", 5.0), ("b1", 1.0)], "a2": [("a1", 4.0), ("a4", 2.0)]}
ITEMS = [f"{c}{i}" for c in "ab" for i in range(1, 7)]


def full(view: catalog.View, **values: object) -> dict[str, object]:
    out: dict[str, object] = dict.fromkeys(view.feature_names)
    unknown = set(values) - set(out)
    assert not unknown, unknown
    out.update(values)
    return out


def session_row(
    session_id: str = "s1",
    last_items: Iterable[str] = ("a1",),
    version: int = T0,
    user_id: str | None = "u1",
    **values: object,
) -> FeatureRow:
    items = list(last_items)
    category = None if not items else ("A" if items[0].startswith("a") else "B")
    defaults: dict[str, object] = {
        "user_id": user_id,
        "n_events": len(items),
        "n_views": len(items),
        "n_clicks": 0,
        "n_carts": 0,
        "n_purchases": 0,
        "n_distinct_items": len(set(items)),
        "duration_s": 30.0,
        "mean_dwell_s": 10.0,
        "last_items": items,
        "last_category": category,
        "last_price": 12.0,
        "cart_value": 0.0,
        "started_at_s": version / 1e6 - 30,
        "last_event_at_s": version / 1e6,
        "version": version,
    }
    defaults.update(values)
    return FeatureRow(catalog.SESSION_FEATURES.name, session_id, defaults, version)


def user_row(user_id: str = "u1", version: int = T0 - 3_600_000_000) -> FeatureRow:
    return FeatureRow(
        catalog.USER_FEATURES.name,
        user_id,
        full(
            catalog.USER_FEATURES,
            top_categories=["A"],
            top_category_shares=[0.8],
            recent_purchases=["a3"],
            n_sessions_90d=4,
            avg_price_viewed_90d=11.0,
        ),
        version,
    )


def neighbour_row(key: str, pairs: list[tuple[str, float]], version: int = T0 - 1) -> FeatureRow:
    return FeatureRow(
        catalog.ITEM_NEIGHBOURS.name,
        key,
        {
            "neighbour_ids": [i for i, _ in pairs],
            "neighbour_weights": [w for _, w in pairs],
            "as_of_s": version / 1e6,
        },
        version,
    )


def world_rows() -> list[FeatureRow]:
    rows = [session_row(), user_row()]
    rows += [neighbour_row(anchor, pairs) for anchor, pairs in NEIGHBOURS.items()]
    ranked = sorted(TRENDING.items(), key=lambda e: -e[1])
    rows.append(neighbour_row("__trending__", ranked))
    for category in "ab":
        pairs = [(i, s) for i, s in ranked if i.startswith(category)]
        rows.append(neighbour_row(f"__trending__:{category.upper()}", pairs))
    for n, item in enumerate(ITEMS):
        category = item[0].upper()
        rows.append(
            FeatureRow(
                catalog.ITEM_FEATURES.name,
                item,
                full(
                    catalog.ITEM_FEATURES,
                    price=10.0 + n,
                    category=category,
                    n_view_7d=10 * n,
                    conversion_rate_30d=0.01 * n,
                    first_seen_s=T0_S - 86_400.0 * n,
                ),
                T0 - 86_400_000_000,
            )
        )
        trend = TRENDING.get(item, 0.0)
        rows.append(
            FeatureRow(
                catalog.ITEM_TRENDING.name,
                item,
                full(
                    catalog.ITEM_TRENDING,
                    trend_view=trend,
                    trend_click=0.0,
                    trend_cart=0.0,
                    trend_purchase=0.0,
                    trend_score=trend,
                    category=category,
                    as_of_s=NOW_S,
                ),
                T0 - 2,
            )
        )
    return rows


def toy_model(version: str = "m-test") -> LoadedModel:
    """A real fitted Ranker (deterministic): it learned to like a high base share and the same
    category. Imports scikit-learn, unlike the rest of this module."""
    import numpy as np

    from featrec.app.serving.steps import LoadedModel
    from featrec.core.ranking.ranker import RANKING_FEATURES, Ranker

    # Drawn over the columns the ranker had before the item model's, which stay constant (0),
    # so the model, and every score in request logs written with it, stays the same.
    later = ("model_score", "model_share", "src_model")
    drawn = [name for name in RANKING_FEATURES if name not in later]
    rng = np.random.default_rng(0)
    X_drawn = rng.random((600, len(drawn)))
    share = drawn.index("base_share")
    same = drawn.index("same_category")
    X_drawn[:, same] = rng.integers(0, 2, 600)
    y = ((X_drawn[:, share] > 0.6) | (X_drawn[:, same] > 0.5) & (X_drawn[:, share] > 0.2)).astype(
        int
    )
    X = np.zeros((600, len(RANKING_FEATURES)))
    X[:, [RANKING_FEATURES.index(name) for name in drawn]] = X_drawn
    ranker = Ranker(feature_names=RANKING_FEATURES, max_iter=15, min_samples_leaf=5).fit(X, y)
    return LoadedModel(version, ranker)
