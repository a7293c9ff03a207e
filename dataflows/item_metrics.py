"""Prometheus metrics of the item signals flow (default registry, served by bytewax's API).

The flow's feature sink also counts into the shared ``featrec_rows_written``,
``featrec_store_retries`` and ``featrec_freshness_seconds`` of :mod:`dataflows.metrics`; a
process runs one flow, so those never mix two flows. Counters move once per batch or key;
labelled children are looked up once (``labels()`` costs about a microsecond a call).
"""

from __future__ import annotations

import functools
from typing import Any, Final

from prometheus_client import Counter, Gauge

EVENTS_IN: Final = Counter(
    "featrec_items_events_in", "Valid events decoded by the item signals dataflow."
)
REFUSED: Final = Counter(
    "featrec_items_refused",
    "Records the item signals dataflow refused (sent to its dead letters), by field.",
    ["field"],
)
PAIR_UPDATES: Final = Counter(
    "featrec_items_pair_updates", "Co-visitation pair updates made by the session step."
)
LIVE_STATES: Final = Gauge(
    "featrec_items_live_states",
    "Keys whose state the item signals flow holds in memory, by kind "
    "(sessions, neighbours, trending, board).",
    ["kind"],
)
STATES_DROPPED: Final = Counter(
    "featrec_items_states_dropped",
    "Keys discarded by a timer: idle sessions, negligible neighbours and trends.",
    ["kind"],
)
COLD_SESSIONS: Final = Counter(
    "featrec_items_cold_sessions",
    "Sessions the pair step moved out of memory into its store of idle sessions (cooled) or "
    "back (revived).",
    ["way"],
)
ROWS_DEFERRED: Final = Counter(
    "featrec_items_rows_deferred",
    "Times the rate limit held back a key's row (its newest state is written later).",
    ["kind"],
)


@functools.cache
def live_states(kind: str) -> Any:
    return LIVE_STATES.labels(kind=kind)


@functools.cache
def states_dropped(kind: str) -> Any:
    return STATES_DROPPED.labels(kind=kind)


@functools.cache
def rows_deferred(kind: str) -> Any:
    return ROWS_DEFERRED.labels(kind=kind)


@functools.cache
def cold_sessions(way: str) -> Any:
    return COLD_SESSIONS.labels(way=way)
