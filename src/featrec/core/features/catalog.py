"""The feature catalog: the one place where feature names and types are declared.

``feature_repo/`` builds its Feast schema from this module, the dataflows emit rows keyed by
these names, and the ranker reads them by these names, so the stream, the store and the model
cannot drift apart. Types are featrec's own small vocabulary (core may not import Feast); the
Feast adapter maps them onto Feast types.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from featrec.core.events.model import KNOWN_TYPES


class Dtype(StrEnum):
    """Value types a feature may have (mapped onto Feast types by the adapter)."""

    INT64 = "int64"
    FLOAT64 = "float64"
    STRING = "string"
    STRING_LIST = "string_list"
    FLOAT64_LIST = "float64_list"


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    dtype: Dtype
    description: str


@dataclass(frozen=True, slots=True)
class Entity:
    name: str
    join_key: str
    description: str


@dataclass(frozen=True, slots=True)
class View:
    """A group of features on one entity, written together (one Feast FeatureView)."""

    name: str
    entity: Entity
    features: tuple[Feature, ...]
    description: str

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"view {self.name!r} has no feature {name!r}")


SESSION: Final = Entity("session", "session_id", "A shopping session (one visit).")
USER: Final = Entity("user", "user_id", "A known shopper across sessions.")
ITEM: Final = Entity("item", "item_id", "A product in the catalogue.")

#: How many recent item ids a session row carries (most recent first).
LAST_ITEMS_N: Final = 10

SESSION_FEATURES: Final = View(
    name="session_features",
    entity=SESSION,
    description="Streaming in-session features, updated by the sessions dataflow on every event.",
    features=(
        Feature("user_id", Dtype.STRING, "User of the session, if known."),
        Feature("n_events", Dtype.INT64, "Events in the session."),
        Feature("n_views", Dtype.INT64, "View events."),
        Feature("n_clicks", Dtype.INT64, "Click events."),
        Feature("n_carts", Dtype.INT64, "Add-to-cart events."),
        Feature("n_purchases", Dtype.INT64, "Purchase events."),
        Feature("n_distinct_items", Dtype.INT64, "Distinct items touched."),
        Feature("duration_s", Dtype.FLOAT64, "Seconds between first and last event."),
        Feature("mean_dwell_s", Dtype.FLOAT64, "Mean seconds between consecutive events."),
        Feature(
            "last_items",
            Dtype.STRING_LIST,
            f"Up to {LAST_ITEMS_N} most recent item ids, newest first.",
        ),
        Feature("last_category", Dtype.STRING, "Category of the newest event's item."),
        Feature("last_price", Dtype.FLOAT64, "Price of the newest event's item."),
        Feature("cart_value", Dtype.FLOAT64, "Sum of price x quantity over cart events."),
        Feature("started_at_s", Dtype.FLOAT64, "Unix seconds of the first event."),
        Feature("last_event_at_s", Dtype.FLOAT64, "Unix seconds of the newest event."),
        Feature(
            "version",
            Dtype.INT64,
            "State version: strictly increases with every accepted event (a µs event-time "
            "clock, never reset); the Feast event timestamp and a cache key for serving.",
        ),
    ),
)

SESSION_SERVICE: Final = "session_v1"

#: How many neighbours an ``item_neighbours`` row carries by default (heaviest first).
NEIGHBOURS_K: Final = 50
#: How many items a trending list (an ``item_neighbours`` row under a trending key) carries.
TRENDING_N: Final = 50

ITEM_NEIGHBOURS: Final = View(
    name="item_neighbours",
    entity=ITEM,
    description="Co-visitation neighbours of an item, decayed in event time (item signals flow).",
    features=(
        Feature("neighbour_ids", Dtype.STRING_LIST, "Neighbour item ids, heaviest first."),
        Feature(
            "neighbour_weights",
            Dtype.FLOAT64_LIST,
            "Decayed co-visitation weights, aligned with neighbour_ids.",
        ),
        Feature("as_of_s", Dtype.FLOAT64, "Unix seconds the weights are decayed to."),
    ),
)

#: How many entries an ``item_model`` row carries by default (heaviest first).
ITEM_MODEL_K: Final = 100

ITEM_MODEL: Final = View(
    name="item_model",
    entity=ITEM,
    description=(
        "The batch-trained item model's top entries for an item (SLIST, featrec items "
        "train-model): what tends to follow or accompany it, learned from the event log."
    ),
    features=(
        Feature("model_ids", Dtype.STRING_LIST, "Item ids, heaviest model weight first."),
        Feature(
            "model_weights",
            Dtype.FLOAT64_LIST,
            "The model's item-to-item weights, aligned with model_ids.",
        ),
        Feature("model_version", Dtype.STRING, "Version of the item model that wrote the row."),
        Feature("trained_at_s", Dtype.FLOAT64, "Unix seconds of the newest training event."),
    ),
)

#: Event types with their own trending score column.
TRENDING_TYPES: Final = KNOWN_TYPES

ITEM_TRENDING: Final = View(
    name="item_trending",
    entity=ITEM,
    description="Decayed popularity of an item per event type (item signals flow).",
    features=(
        *(
            Feature(f"trend_{t}", Dtype.FLOAT64, f"Decayed count of {t} events.")
            for t in TRENDING_TYPES
        ),
        Feature("trend_score", Dtype.FLOAT64, "Type-weighted sum of the decayed counts."),
        Feature("category", Dtype.STRING, "Newest known category of the item."),
        Feature("as_of_s", Dtype.FLOAT64, "Unix seconds the scores are decayed to."),
    ),
)

#: Trailing windows, in days, of the batch count features (``n_<type>_<days>d``).
BATCH_WINDOWS_DAYS: Final = (1, 7, 30, 90)
#: Trailing window, in days, of the batch shares, averages and rates named ``..._90d``.
LONG_WINDOW_DAYS: Final = 90
#: Trailing window, in days, of an item's conversion rate.
CONVERSION_WINDOW_DAYS: Final = 30
TOP_CATEGORIES_N: Final = 3
RECENT_PURCHASES_N: Final = 10


def count_feature(event_type: str, days: int) -> str:
    """Name of the batch feature counting ``event_type`` events over the trailing ``days``."""
    return f"n_{event_type}_{days}d"


def _count_features(whose: str) -> tuple[Feature, ...]:
    return tuple(
        Feature(
            count_feature(t, days),
            Dtype.INT64,
            f"{t.capitalize()} events {whose} in the {days} days before the snapshot.",
        )
        for t in KNOWN_TYPES
        for days in BATCH_WINDOWS_DAYS
    )


# Batch views are daily snapshots computed from the event log by `featrec batch run --as-of T`:
# each row describes the entity from the events strictly before T and carries T as its event
# timestamp, so a point-in-time join at time t only sees snapshots computed from events < t.
USER_FEATURES: Final = View(
    name="user_features",
    entity=USER,
    description="Long-term user features: daily snapshots computed from the event log.",
    features=(
        *_count_features("of the user"),
        Feature("n_sessions_90d", Dtype.INT64, "Sessions with an event in the last 90 days."),
        Feature(
            "top_categories",
            Dtype.STRING_LIST,
            f"Up to {TOP_CATEGORIES_N} categories with the most events in the last 90 days, "
            "most first (ties by name).",
        ),
        Feature(
            "top_category_shares",
            Dtype.FLOAT64_LIST,
            "Share of the last 90 days' events with a category, per top category (aligned).",
        ),
        Feature("days_since_last_event", Dtype.FLOAT64, "Days from the newest event to T."),
        Feature(
            "days_since_last_purchase",
            Dtype.FLOAT64,
            "Days from the newest purchase to T (null if none).",
        ),
        Feature(
            "avg_price_viewed_90d",
            Dtype.FLOAT64,
            "Mean price of viewed items in the last 90 days (null if none).",
        ),
        Feature(
            "avg_price_bought_90d",
            Dtype.FLOAT64,
            "Mean price of purchase events in the last 90 days (null if none).",
        ),
        Feature(
            "purchase_rate_90d",
            Dtype.FLOAT64,
            "Share of the last 90 days' sessions with a purchase (null if no session).",
        ),
        Feature(
            "repeat_purchase_rate",
            Dtype.FLOAT64,
            "Share of the distinct items ever bought that were bought in two or more sessions "
            "(null if nothing bought).",
        ),
        Feature(
            "recent_purchases",
            Dtype.STRING_LIST,
            f"Up to {RECENT_PURCHASES_N} distinct items bought, most recently bought first.",
        ),
    ),
)

ITEM_FEATURES: Final = View(
    name="item_features",
    entity=ITEM,
    description="Long-term item features: daily snapshots computed from the event log.",
    features=(
        *_count_features("on the item"),
        Feature(
            "conversion_rate_30d",
            Dtype.FLOAT64,
            "Purchase events per view event in the last 30 days (null without views).",
        ),
        Feature("price", Dtype.FLOAT64, "Price on the newest event that carries one."),
        Feature("category", Dtype.STRING, "Category on the newest event that carries one."),
        Feature("first_seen_s", Dtype.FLOAT64, "Unix seconds of the item's first event."),
        Feature("days_since_first_seen", Dtype.FLOAT64, "Days from the first event to T."),
    ),
)

#: Views computed by the batch job (daily snapshots), by name.
BATCH_VIEWS: Final = {v.name: v for v in (USER_FEATURES, ITEM_FEATURES)}

LONG_TERM_SERVICE: Final = "long_term_v1"

#: Every view featrec writes, by name.
VIEWS: Final = {
    v.name: v
    for v in (
        SESSION_FEATURES,
        ITEM_NEIGHBOURS,
        ITEM_TRENDING,
        ITEM_MODEL,
        USER_FEATURES,
        ITEM_FEATURES,
    )
}
