"""The built-in session features that are natural declarations, written as declarations.

These say in declared terms what the sessions fold (:mod:`featrec.core.sessions.fold`)
computes by hand for ``session_features``; ``tests/contract/test_declared_builtins.py`` runs
both on the same traffic and finds them equal. The fold stays the serving path (one state per
session for every feature, the gap and lateness rules of :class:`SessionPolicy`); these are
what a data scientist copies to vary a built-in feature (another window, another filter).

Not expressible as a declaration, and why:

- ``cart_value`` (sum of price x quantity over carts): a declaration aggregates one column,
  there are no derived columns;
- ``duration_s``, ``mean_dwell_s``, ``started_at_s``, ``last_event_at_s``: functions of the
  event times themselves, not of a column (the row's ``as_of_us`` is the last one);
- ``user_id``: the session's link to its user, which serving needs before any feature;
- co-visitation neighbours and trending lists: pairwise and time-decayed aggregates over all
  sessions, not windowed aggregates of one key; the batch ``user_features``/``item_features``:
  ratios and top-k shares of other aggregates.
"""

from __future__ import annotations

from typing import Final

from featrec.core.events.model import CART, CLICK, PURCHASE, VIEW
from featrec.core.features.catalog import LAST_ITEMS_N
from featrec.core.features.declared.model import (
    Aggregation,
    Declaration,
    Filters,
    Function,
    validate,
)


def _session(name: str, filters: Filters, *aggs: Aggregation) -> Declaration:
    return validate(Declaration(name, "session", aggs, filters))


#: Declarations whose aggregations are named after the ``session_features`` column they equal.
BUILTIN_SESSION: Final[tuple[Declaration, ...]] = (
    _session(
        "builtin_session",
        Filters(),
        Aggregation("n_events", "item_id", Function.COUNT),
        Aggregation("n_distinct_items", "item_id", Function.COUNT_DISTINCT),
        Aggregation("last_items", "item_id", Function.LAST_N, LAST_ITEMS_N),
        Aggregation("last_category", "category", Function.LAST),
        Aggregation("last_price", "price", Function.LAST),
    ),
    _session(
        "builtin_session_views",
        Filters(event_types=(VIEW,)),
        Aggregation("n_views", "item_id", Function.COUNT),
    ),
    _session(
        "builtin_session_clicks",
        Filters(event_types=(CLICK,)),
        Aggregation("n_clicks", "item_id", Function.COUNT),
    ),
    _session(
        "builtin_session_carts",
        Filters(event_types=(CART,)),
        Aggregation("n_carts", "item_id", Function.COUNT),
    ),
    _session(
        "builtin_session_purchases",
        Filters(event_types=(PURCHASE,)),
        Aggregation("n_purchases", "item_id", Function.COUNT),
    ),
)
