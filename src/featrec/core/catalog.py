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

from featrec.core.events import KNOWN_TYPES


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

#: Every view featrec writes, by name.
VIEWS: Final = {v.name: v for v in (SESSION_FEATURES, ITEM_NEIGHBOURS, ITEM_TRENDING)}
