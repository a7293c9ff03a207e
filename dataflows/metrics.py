"""Prometheus metrics of the dataflows, in prometheus_client's default registry.

Bytewax serves the default registry on ``:3030/metrics`` when ``BYTEWAX_DATAFLOW_API_ENABLED=1``.
Counters are incremented once per batch, not per item (a labelled counter costs ~1 µs a call).
Dead-letter reasons are labelled by their field (the text before the first ``:``), mapped onto
a bounded set so that bad input cannot create unbounded label values.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from featrec.adapters.files.raw_records import EVENT_FIELDS
from featrec.core.events.formats import DeadLetter

EVENTS_IN: Final = Counter(
    "featrec_sessions_events_in", "Valid events decoded by the sessions dataflow."
)
DEAD_LETTERS: Final = Counter(
    "featrec_dead_letters",
    "Records refused by the sessions dataflow, by the field the reason names.",
    ["field"],
)
ROWS_WRITTEN: Final = Counter(
    "featrec_rows_written", "Feature rows written to the online store (after coalescing)."
)
STORE_RETRIES: Final = Counter(
    "featrec_store_retries",
    "Writes retried because a store (online store, dead-letter stream) was unreachable.",
)
STORE_UP: Final = Gauge(
    "featrec_store_up",
    "1 while the flow's writes to a store succeed, 0 from the first failed write until one "
    "succeeds again (``store``: online, dead_letters).",
    ["store"],
)
STORE_OUTAGES: Final = Counter(
    "featrec_store_outages",
    "Outages of a store seen by the flow's writers: runs of failed writes (counted when the "
    "first write fails).",
    ["store"],
)
STORE_DOWN_SECONDS: Final = Counter(
    "featrec_store_down_seconds",
    "Seconds the flow's writers waited for an unreachable store (grows during an outage).",
    ["store"],
)
SOURCE_RETRIES: Final = Counter(
    "featrec_source_retries", "Reads retried because the event bus was unreachable.", ["stream"]
)
LIVE_SESSIONS: Final = Gauge(
    "featrec_live_sessions", "Sessions whose state the dataflow holds in memory."
)
COLD_SESSIONS: Final = Counter(
    "featrec_cold_sessions",
    "Sessions moved out of memory into the store of idle sessions (cooled) or back (revived).",
    ["way"],
)
FRESHNESS: Final = Histogram(
    "featrec_freshness_seconds",
    "Seconds from an event's ingestion to the write of the row it updated.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """``histogram.observe(a)`` for every ``a`` in ``amounts``, one lock per bucket touched.

    A flush writes a row per session and each row is a freshness sample: observing them one
    by one took a lock twice per row. The bucket counts are added up here (``amount <= le``,
    as ``observe`` counts) and added once each, through the client's own value objects; a
    client without them (another version) is served one ``observe`` at a time.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    counts: dict[int, int] = {}
    added = 0.0
    for amount in amounts:
        added += amount
        if amount == amount:  # noqa: PLR0124 - observe() counts NaN in the sum, in no bucket
            i = bisect_left(bounds, amount)
            counts[i] = counts.get(i, 0) + 1
    if not counts and added == 0.0:  # nothing observed (NaN alone still reaches the sum)
        return
    total.inc(added)
    for i, n in counts.items():
        buckets[i].inc(n)


#: Reason fields that may become label values; anything else is counted as "other".
_KNOWN_FIELDS: Final = frozenset(
    EVENT_FIELDS
    | {"json", "event", "session", "events", "row", "SessionId", "ItemId", "Time", "format"}
    | {"payload", "late event", "entry"}
)


def reason_field(reason: str) -> str:
    """The bounded label for a dead letter's reason (``"ts: missing"`` -> ``"ts"``)."""
    name = reason.split(":", 1)[0]
    return name if name in _KNOWN_FIELDS else "other"


def count_dead_letters(letters: Iterable[DeadLetter]) -> int:
    tally = Tally(reason_field(d.reason) for d in letters)
    for name, n in tally.items():
        DEAD_LETTERS.labels(field=name).inc(n)
    return sum(tally.values())


@dataclass
class FlowStats:
    """Per-process counters that a flow's feature sink writes to its status file.

    Prometheus holds the same numbers for scraping; this object exists so that
    ``featrec status`` can report a flow without a metrics server.
    """

    events_in: int = 0
    dead_letters: int = 0
    rows_written: int = 0
    last_write_at: float | None = None
    sink_workers: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, events_in: int = 0, dead_letters: int = 0) -> None:
        with self.lock:
            self.events_in += events_in
            self.dead_letters += dead_letters

    def wrote(self, rows: int, at: float) -> None:
        with self.lock:
            self.rows_written += rows
            self.last_write_at = at

    def as_dict(self) -> dict[str, float | int | None]:
        with self.lock:
            return {
                "events_in": self.events_in,
                "dead_letters": self.dead_letters,
                "rows_written": self.rows_written,
                "last_write_at": self.last_write_at,
            }
