"""Declared features: edit this file to add a feature, then `featrec apply` (see the README).

Each ``declared_view`` is a stock Feast ``StreamFeatureView`` on one entity (session, user or
item) with ``Aggregation(column, function, time_window, slide_interval, name)``:

- functions: count, sum, mean, min, max, last, count_distinct, last_<N> (a list, newest first);
- columns: item_id, session_id, user_id, category, type, price, quantity;
- windows: no ``time_window`` = the whole session (session entity only), else an event-time
  window sliding by ``slide_interval`` (which must divide it; default: the window itself);
- ``filters``: event types, categories, a price range [min, max).

featrec computes them in the stream (``featrec run declared``) and in batch from the event log
(``featrec declared backfill``), and ``featrec skew`` checks that the two agree. The ranker
reads the ones listed in the feature service ``ranker_declared`` (see the end of this file).
"""

from datetime import timedelta
from pathlib import Path

from feast.aggregation import Aggregation
from featrec_entities import item, session, user

from featrec.adapters.feast.declared import Filters, declared_view

# Absolute, for the same reason as in featrec_views.py: re-apply after moving the repo.
DATA = Path(__file__).resolve().parent / "data"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

session_browsing = declared_view(
    name="session_browsing",
    entity=session,
    data_dir=DATA,
    aggregations=[
        Aggregation(column="item_id", function="last_5", name="recent_items"),
        Aggregation(column="category", function="count_distinct", name="n_categories"),
        Aggregation(column="price", function="mean", name="mean_price"),
        Aggregation(
            column="item_id",
            function="count",
            time_window=timedelta(minutes=10),
            slide_interval=timedelta(minutes=1),
            name="n_events_10m",
        ),
    ],
)

user_carts = declared_view(
    name="user_carts",
    entity=user,
    data_dir=DATA,
    filters=Filters(event_types=("cart", "purchase")),
    aggregations=[
        Aggregation(
            column="item_id",
            function="count",
            time_window=HOUR,
            slide_interval=timedelta(minutes=5),
            name="n_carts_1h",
        ),
        Aggregation(
            column="price",
            function="sum",
            time_window=DAY,
            slide_interval=HOUR,
            name="cart_value_24h",
        ),
        Aggregation(
            column="item_id",
            function="count_distinct",
            time_window=7 * DAY,
            slide_interval=DAY,
            name="n_items_carted_7d",
        ),
        Aggregation(
            column="price",
            function="max",
            time_window=30 * DAY,
            slide_interval=DAY,
            name="max_cart_price_30d",
        ),
    ],
)

item_popularity = declared_view(
    name="item_popularity",
    entity=item,
    data_dir=DATA,
    aggregations=[
        Aggregation(
            column="item_id",
            function="count",
            time_window=HOUR,
            slide_interval=timedelta(minutes=5),
            name="n_events_1h",
        ),
        Aggregation(
            column="session_id",
            function="count_distinct",
            time_window=DAY,
            slide_interval=HOUR,
            name="n_sessions_24h",
        ),
        Aggregation(
            column="price",
            function="last",
            time_window=7 * DAY,
            slide_interval=DAY,
            name="last_price_7d",
        ),
    ],
)

user_premium = declared_view(
    name="user_premium",
    entity=user,
    data_dir=DATA,
    filters=Filters(event_types=("view",), price_min=100.0),
    aggregations=[
        Aggregation(
            column="item_id",
            function="count",
            time_window=7 * DAY,
            slide_interval=DAY,
            name="n_premium_views_7d",
        ),
        Aggregation(
            column="category",
            function="last",
            time_window=30 * DAY,
            slide_interval=DAY,
            name="last_premium_category",
        ),
    ],
)

# The ranker reads declared features by name from the feature service "ranker_declared":
# list some here, `featrec apply`, `featrec declared backfill`, `featrec dataset build`,
# `featrec train`; serving then reads them for every request the new model scores (numbers as
# they are, lists by their length). None are listed by default: the shipped ranker needs no
# declared flow. For example:
#
#   from feast import FeatureService
#
#   ranker_declared = FeatureService(
#       name="ranker_declared",
#       features=[
#           session_browsing[["n_categories", "mean_price", "n_events_10m"]],
#           user_carts[["n_carts_1h", "cart_value_24h"]],
#           item_popularity[["n_events_1h", "n_sessions_24h"]],
#       ],
#   )
