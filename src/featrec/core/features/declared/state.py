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
    """The aggregations sharing one hop ``H`` (the plan; buckets live in the state)."""

    __slots__ = ("aggs", "hop", "keep", "spans")

    def __init__(self, hop: int, aggs: list[tuple[int, Aggregation]]) -> None:
        self.hop = hop
        self.aggs = aggs
        self.spans = [agg.window_us // hop for _, agg in aggs]  # type: ignore[operator]
        self.keep = max(self.spans)


Plan = tuple[list[tuple[int, Aggregation]], list[_HopGroup]]
# By id: hashing a Declaration walks all its aggregations (measurably slow per new key).
# The declaration is kept alongside, so its id cannot be reused while cached.
_PLANS: dict[int, tuple[Declaration, Plan]] = {}


def _plan(decl: Declaration) -> Plan:
    """Session aggregations and hop groups of a declaration, computed once per declaration."""
    cached = _PLANS.get(id(decl))
    if cached is not None and cached[0] is decl:
        return cached[1]
    plan = _make_plan(decl)
    _PLANS[id(decl)] = (decl, plan)
    return plan


def _make_plan(decl: Declaration) -> Plan:
    session = [(i, agg) for i, agg in enumerate(decl.aggregations) if agg.window_us is None]
    by_hop: dict[int, list[tuple[int, Aggregation]]] = {}
    for i, agg in enumerate(decl.aggregations):
        if agg.window_us is not None:
            by_hop.setdefault(agg.hop_us or agg.window_us, []).append((i, agg))
    return session, [_HopGroup(hop, aggs) for hop, aggs in sorted(by_hop.items())]


class DeclaredState:
    """One key's state for one declaration; ``update`` per event, ``row`` for the store.

    Holds only values: the session partials, and per hop group a dict ``bucket -> partials``
    plus its lowest bucket index (so eviction is checked in O(1) per event)."""

    __slots__ = ("as_of_us", "buckets", "decl", "key", "lows", "plan", "session", "version")

    def __init__(self, decl: Declaration, key: str) -> None:
        self.decl = decl
        self.key = key
        self.as_of_us = -1
        self.version = 0
        # Shared by every state of the declaration (one reference; pickle keeps it shared).
        self.plan = session, groups = _plan(decl)
        self.session = [Partial(agg.function) for _, agg in session]
        self.buckets: list[dict[int, list[Partial]]] = [{} for _ in groups]
        self.lows: list[int | None] = [None] * len(groups)

    def update(self, event: Event) -> None:
        """Fold one event of this key (any arrival order)."""
        ts = micros(event.ts)
        self.as_of_us = max(self.as_of_us, ts)
        as_of = self.as_of_us
        matches = self.decl.filters.matches(event)
        session, groups = self.plan
        if matches:
            for (_, agg), partial in zip(session, self.session, strict=True):
                value = _value(event, agg)
                if value is not None:
                    partial.add(agg, ts, event.event_id, value)
        for g, group in enumerate(groups):
            buckets = self.buckets[g]
            oldest = as_of // group.hop - group.keep + 1
            low = self.lows[g]
            if low is not None and low < oldest:
                for b in [b for b in buckets if b < oldest]:
                    del buckets[b]
                low = self.lows[g] = min(buckets) if buckets else None
            b = ts // group.hop
            if not matches or b < oldest:
                continue
            partials = buckets.get(b)
            for slot, (_, agg) in enumerate(group.aggs):
                value = _value(event, agg)
                if value is None:
                    continue
                if partials is None:
                    partials = buckets[b] = [Partial(a.function) for _, a in group.aggs]
                    if low is None or b < low:
                        low = self.lows[g] = b
                partials[slot].add(agg, ts, event.event_id, value)

    def values(self) -> dict[str, Any]:
        """Every declared feature as of the key's newest event time, plus ``as_of_us``."""
        out: list[Any] = [None] * len(self.decl.aggregations)
        session, groups = self.plan
        for (i, agg), partial in zip(session, self.session, strict=True):
            out[i] = combine(agg, [partial])
        as_of = self.as_of_us
        for g, group in enumerate(groups):
            current = as_of // group.hop
            buckets = self.buckets[g]
            for slot, (i, agg) in enumerate(group.aggs):
                first = current - group.spans[slot] + 1
                out[i] = combine(agg, (ps[slot] for b, ps in buckets.items() if b >= first))
        values = {agg.name: v for agg, v in zip(self.decl.aggregations, out, strict=True)}
        values[AS_OF] = as_of
        return values

    def row(self, ingested_at: float | None = None) -> FeatureRow:
        """The key's row; its version strictly increases with every call (Feast skips a write
        whose timestamp is not newer), staying at the as-of time when that moved on."""
        self.version = max(self.as_of_us, self.version + 1)
        return FeatureRow(self.decl.name, self.key, self.values(), self.version, ingested_at)

    def held(self, column: str) -> set[Any]:
        """The values of ``column`` this state keeps (last, last_N and count_distinct keep
        values; the other functions only numbers): what forgetting an id must look at."""
        out: set[Any] = set()
        session, groups = self.plan
        slots = [(agg, partial) for (_, agg), partial in zip(session, self.session, strict=True)]
        for g, group in enumerate(groups):
            for partials in self.buckets[g].values():
                slots.extend((agg, p) for (_, agg), p in zip(group.aggs, partials, strict=True))
        for agg, partial in slots:
            if agg.column != column or partial.a is None:
                continue
            if agg.function is Function.LAST:
                out.add(partial.a[2])
            elif agg.function is Function.LAST_N:
                out.update(e[2] for e in partial.a)
            elif agg.function is Function.COUNT_DISTINCT:
                out.update(partial.a)
        return out

    def n_buckets(self) -> int:
        return sum(len(b) for b in self.buckets)


def _value(event: Event, agg: Aggregation) -> Any:
    value = getattr(event, agg.column)
    if value is None or isinstance(value, str):
        return value
    return float(value)
