"""The stream engine's state for one declaration and one entity key: bucketed partial aggregates.

Each aggregation with an event-time window ``W`` sliding by ``H`` keeps one partial aggregate
per hop bucket (``ts // H``) in a dict shared by every aggregation with the same hop; buckets
older than the longest window of that hop are dropped as the key's event time advances, so the
state holds at most ``W / H`` buckets per hop. Session-window aggregations keep one partial.

An event of any lateness is handled exactly: if its bucket is still inside some window it is
added there; if not, it lies outside every window as of this or any later as-of time (as-of
times only grow), so the batch engine would not count it either. The stream therefore needs
no lateness cut-off for declared features; their memory is bounded by the windows.

This is a pure fold (no IO): :meth:`DeclaredState.update` per event, :meth:`DeclaredState.values`
for the row. The bytewax flow only calls it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from featrec.core.events.model import Event
from featrec.core.features.declared.model import AS_OF, Aggregation, Declaration, Function
from featrec.core.features.rows import FeatureRow, micros

Entry = tuple[int, str, Any]  # (ts µs, event_id, value): the order of last/last_N


class Partial:
    """One aggregation's partial aggregate over one bucket (or over the session)."""

    __slots__ = ("a", "b")

    def __init__(self, function: Function) -> None:
        self.a: Any
        self.b: Any = 0
        if function in (Function.COUNT, Function.MEAN):
            self.a = 0 if function is Function.COUNT else 0.0
        elif function is Function.SUM:
            self.a = 0.0
        elif function is Function.COUNT_DISTINCT:
            self.a = set()
        elif function is Function.LAST_N:
            self.a = []
        else:  # min, max, last
            self.a = None

    def add(self, agg: Aggregation, ts: int, event_id: str, value: Any) -> None:
        f = agg.function
        if f is Function.COUNT:
            self.a += 1
        elif f is Function.SUM:
            self.a += value
        elif f is Function.MEAN:
            self.a += value
            self.b += 1
        elif f is Function.MIN:
            if self.a is None or value < self.a:
                self.a = value
        elif f is Function.MAX:
            if self.a is None or value > self.a:
                self.a = value
        elif f is Function.LAST:
            entry = (ts, event_id, value)
            if self.a is None or entry[:2] > self.a[:2]:
                self.a = entry
        elif f is Function.COUNT_DISTINCT:
            self.a.add(value)
        else:  # LAST_N: newest first, at most n
            self.a.append((ts, event_id, value))
            self.a.sort(key=_order, reverse=True)
            del self.a[agg.n :]


def _order(entry: Entry) -> tuple[int, str]:
    return entry[0], entry[1]


def combine(agg: Aggregation, partials: Iterable[Partial]) -> Any:
    """The feature value from the partials of the buckets in its window."""
    f = agg.function
    parts = list(partials)
    if f is Function.COUNT:
        return sum(p.a for p in parts)
    if f is Function.SUM:
        return float(sum(p.a for p in parts))
    if f is Function.MEAN:
        n = sum(p.b for p in parts)
        return sum(p.a for p in parts) / n if n else None
    if f in (Function.MIN, Function.MAX):
        values = [p.a for p in parts if p.a is not None]
        if not values:
            return None
        return min(values) if f is Function.MIN else max(values)
    if f is Function.LAST:
        entries = [p.a for p in parts if p.a is not None]
        return max(entries, key=_order)[2] if entries else None
    if f is Function.COUNT_DISTINCT:
        return len(set().union(*(p.a for p in parts)))
    merged = sorted((e for p in parts for e in p.a), key=_order, reverse=True)
    return [e[2] for e in merged[: agg.n]]


class _HopGroup:
    """The aggregations sharing one hop ``H``: buckets ``ts // H`` -> partials (aligned)."""

    __slots__ = ("aggs", "buckets", "hop", "keep", "spans")

    def __init__(self, hop: int, aggs: list[tuple[int, Aggregation]]) -> None:
        self.hop = hop
        self.aggs = aggs
        self.spans = [agg.window_us // hop for _, agg in aggs]  # type: ignore[operator]
        self.keep = max(self.spans)
        self.buckets: dict[int, list[Partial]] = {}


class DeclaredState:
    """One key's state for one declaration; ``update`` per event, ``row`` for the store."""

    __slots__ = ("as_of_us", "decl", "groups", "key", "session", "version")

    def __init__(self, decl: Declaration, key: str) -> None:
        self.decl = decl
        self.key = key
        self.as_of_us = -1
        self.version = 0
        self.session = [
            (i, agg, Partial(agg.function))
            for i, agg in enumerate(decl.aggregations)
            if agg.window_us is None
        ]
        by_hop: dict[int, list[tuple[int, Aggregation]]] = {}
        for i, agg in enumerate(decl.aggregations):
            if agg.window_us is not None:
                by_hop.setdefault(agg.hop_us or agg.window_us, []).append((i, agg))
        self.groups = [_HopGroup(hop, aggs) for hop, aggs in sorted(by_hop.items())]

    def update(self, event: Event) -> None:
        """Fold one event of this key (any arrival order)."""
        ts = micros(event.ts)
        self.as_of_us = max(self.as_of_us, ts)
        as_of = self.as_of_us
        matches = self.decl.filters.matches(event)
        if matches:
            for _, agg, partial in self.session:
                value = _value(event, agg)
                if value is not None:
                    partial.add(agg, ts, event.event_id, value)
        for group in self.groups:
            oldest = as_of // group.hop - group.keep + 1
            if group.buckets and min(group.buckets) < oldest:
                for b in [b for b in group.buckets if b < oldest]:
                    del group.buckets[b]
            b = ts // group.hop
            if not matches or b < oldest:
                continue
            partials = group.buckets.get(b)
            for slot, (_, agg) in enumerate(group.aggs):
                value = _value(event, agg)
                if value is None:
                    continue
                if partials is None:
                    partials = group.buckets[b] = [Partial(a.function) for _, a in group.aggs]
                partials[slot].add(agg, ts, event.event_id, value)

    def values(self) -> dict[str, Any]:
        """Every declared feature as of the key's newest event time, plus ``as_of_us``."""
        out: list[Any] = [None] * len(self.decl.aggregations)
        for i, agg, partial in self.session:
            out[i] = combine(agg, [partial])
        as_of = self.as_of_us
        for group in self.groups:
            current = as_of // group.hop
            for slot, (i, agg) in enumerate(group.aggs):
                first = current - group.spans[slot] + 1
                out[i] = combine(agg, (ps[slot] for b, ps in group.buckets.items() if b >= first))
        values = {agg.name: v for agg, v in zip(self.decl.aggregations, out, strict=True)}
        values[AS_OF] = as_of
        return values

    def row(self, ingested_at: float | None = None) -> FeatureRow:
        """The key's row; its version strictly increases with every call (Feast skips a write
        whose timestamp is not newer), staying at the as-of time when that moved on."""
        self.version = max(self.as_of_us, self.version + 1)
        return FeatureRow(self.decl.name, self.key, self.values(), self.version, ingested_at)

    def n_buckets(self) -> int:
        return sum(len(g.buckets) for g in self.groups)


def _value(event: Event, agg: Aggregation) -> Any:
    value = getattr(event, agg.column)
    if value is None or isinstance(value, str):
        return value
    return float(value)
