"""Co-visitation neighbours: pair updates from sessions, a bounded decayed top-K per item.

Two pure steps, one per keyed stage of a dataflow:

1. **Session-keyed.** :func:`observe` pairs an
   event's item with up to ``window_n`` previous items of the same session seen within
   ``window_s`` seconds, and returns :data:`Pair` s. The session's :class:`RecentItems`
   buffer is the only state.
2. **Item-keyed** (by a pair's anchor, its first field). :meth:`NeighbourSketch.add` folds an
   update into the anchor's sketch; :func:`neighbour_row` turns a sketch into an
   ``item_neighbours`` row.

:class:`CovisitIndex` holds one sketch per anchor for batch use; :func:`bootstrap` runs exactly
the same calls over a sequence of events, so it produces exactly the same lists as the
streaming fold when each anchor receives its updates in the same order (one worker, or any
partitioning that keeps the event order). Ties are always broken by item id.

**Pair weight** = type weight of the *neighbour's* event (a cart of Y after a view of X counts
more than a view of Y) x ``distance ** -distance_decay`` (distance 1 = the previous event) x
``forward_weight`` when the anchor happened before the neighbour (in event time; ties in
arrival order), else ``backward_weight``. Forward pairs are sequential rules ("after X comes Y");
backward pairs add symmetric co-occurrence. A repeat of the same item gives one forward
self-pair when ``self_pairs`` is on: it is the signal that the item tends to be revisited.

**Time decay.** A pair observed at time t weighs ``w * 2 ** -((T - t) / half_life)`` at time
T (event time). Sketches use *forward decay* (Cormode et al., ICDE 2009): a weight is stored
scaled by ``2 ** ((t - ref) / half_life)`` against a per-anchor reference time, so an update
costs O(1) whatever the order of event times, and all neighbours of an anchor decay by the
same factor (ranking never changes with the clock alone). The reference moves forward, and
every count is rescaled, once the scale exceeds ``2 ** 60``.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple, TypeAlias

from featrec.core.events.model import CART, CLICK, PURCHASE, VIEW, Event
from featrec.core.features.catalog import ITEM_NEIGHBOURS, NEIGHBOURS_K
from featrec.core.features.rows import FeatureRow, micros
from featrec.core.items.order import best_n
from featrec.errors import ConfigError

#: Default weights of event types: an order says more than a click.
DEFAULT_TYPE_WEIGHTS: Final = {VIEW: 1.0, CLICK: 1.0, CART: 3.0, PURCHASE: 6.0}

#: Rescale a sketch once its forward-decay scale reaches 2**RENORMALISE_HALF_LIVES.
RENORMALISE_HALF_LIVES: Final = 60.0


@dataclass(frozen=True, slots=True)
class CovisitConfig:
    """How pairs are formed and weighted, and how much each anchor keeps. Validated.

    Defaults were tuned for next-item HR@20/MRR@20 on RSC15-100k (``benchmarks/
    rsc15_covisit.py``); the optimum is flat around them: backward weight 0.25..1, half-life
    1..4 days or none, window_n 5..20 each move HR@20 or MRR@20 by at most 0.006.
    """

    window_n: int = 10
    window_s: float = 3600.0
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    #: Weight of event types not in ``type_weights`` (e.g. ``wishlist``); 0 means "never pairs".
    default_type_weight: float = 1.0
    forward_weight: float = 1.0
    backward_weight: float = 0.5
    distance_decay: float = 2.0
    #: Off by default: repeats are better served by the candidate step's reminder term, and
    #: neighbour lists without the item itself are what "similar items" should show.
    self_pairs: bool = False
    #: Event-time half-life of pair weights; ``None`` disables time decay.
    half_life_s: float | None = 2 * 86_400.0
    #: Neighbours kept per anchor (space-saving counters).
    capacity: int = 200

    def __post_init__(self) -> None:
        if not 1 <= self.window_n <= 1000:
            raise ConfigError(f"covisit window_n must be in [1, 1000], got {self.window_n}")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ConfigError(f"covisit window_s must be a positive number, got {self.window_s}")
        weights = dict(self.type_weights)
        for name, w in [*weights.items(), ("default_type_weight", self.default_type_weight)]:
            _check_weight(f"type weight {name!r}", w)
        _check_weight("forward_weight", self.forward_weight)
        _check_weight("backward_weight", self.backward_weight)
        if not (math.isfinite(self.distance_decay) and self.distance_decay >= 0):
            raise ConfigError(f"distance_decay must be >= 0, got {self.distance_decay}")
        if self.half_life_s is not None and not (
            math.isfinite(self.half_life_s) and self.half_life_s > 0
        ):
            raise ConfigError(f"half_life_s must be positive or None, got {self.half_life_s}")
        if self.capacity < 1:
            raise ConfigError(f"covisit capacity must be >= 1, got {self.capacity}")
        # A private copy: later changes to the caller's mapping must not change the config.
        object.__setattr__(self, "type_weights", weights)

    def type_weight(self, event_type: str) -> float:
        return self.type_weights.get(event_type, self.default_type_weight)

    @property
    def window_us(self) -> int:
        return int(self.window_s * 1_000_000)

    @property
    def half_life_us(self) -> float | None:
        return None if self.half_life_s is None else self.half_life_s * 1_000_000


#: One pair update, ``(anchor, neighbour, weight, ts_us)``: add ``weight`` (observed at event
#: time ``ts_us``) to ``neighbour`` in ``anchor``'s list. A plain tuple: the flow makes ~9 per
#: event, and a named tuple's Python-level ``__new__`` was the largest single cost in a py-spy
#: profile of the items flow (README, Item signals).
Pair: TypeAlias = tuple[str, str, float, int]


class PairUpdate(NamedTuple):
    """A :data:`Pair` with named fields (equal to the plain tuple), for readable tests and
    callers; the hot path makes plain tuples."""

    anchor: str
    neighbour: str
    weight: float
    ts_us: int


@dataclass(slots=True)
class RecentItems:
    """A session's recent events as ``(ts_us, item_id, type)``, in arrival order, oldest first."""

    entries: list[tuple[int, str, str]] = field(default_factory=list)

    def copy(self) -> RecentItems:
        return RecentItems(list(self.entries))


def observe(recent: RecentItems, event: Event, config: CovisitConfig) -> list[Pair]:
    """Pair ``event`` with the recent items, then remember it: the session-step fold.

    The buffer keeps at most ``window_n`` entries, none older than the window."""
    ts = micros(event.ts)
    updates = _pairs(recent, ts, event.item_id, event.type, config)
    _remember(recent, ts, event.item_id, event.type, config)
    return updates


def _pairs(
    recent: RecentItems, ts: int, item: str, type_: str, config: CovisitConfig
) -> list[Pair]:
    out: list[Pair] = []
    entries = recent.entries
    n = len(entries)
    window_us = config.window_us
    weights, default = config.type_weights, config.default_type_weight
    w_item = weights.get(type_, default)
    fwd, bwd = config.forward_weight, config.backward_weight
    distance_weights = _distance_weights(config.window_n, config.distance_decay)
    for d in range(1, min(n, config.window_n) + 1):
        # Branches, not abs() and max(): this runs ~5 times per event.
        p_ts, p_item, p_type = entries[n - d]
        if p_ts <= ts:
            if ts - p_ts > window_us:
                continue
            pair_ts = ts
            first, first_w, second, second_w = p_item, weights.get(p_type, default), item, w_item
        else:
            if p_ts - ts > window_us:
                continue
            pair_ts = p_ts
            first, first_w, second, second_w = item, w_item, p_item, weights.get(p_type, default)
        w_dist = distance_weights[d]
        if first == second:
            if config.self_pairs and (w := second_w * w_dist * fwd) > 0:
                out.append((first, second, w, pair_ts))
            continue
        if (w := second_w * w_dist * fwd) > 0:
            out.append((first, second, w, pair_ts))
        if (w := first_w * w_dist * bwd) > 0:
            out.append((second, first, w, pair_ts))
    return out


@functools.cache
def _distance_weights(window_n: int, decay: float) -> tuple[float, ...]:
    """``d ** -decay`` for d = 0..window_n (index 0 unused)."""
    return (0.0, *(d**-decay for d in range(1, window_n + 1)))


def _remember(recent: RecentItems, ts: int, item: str, type_: str, config: CovisitConfig) -> None:
    entries = recent.entries
    entries.append((ts, item, type_))
    excess = len(entries) - config.window_n
    if excess > 0:
        del entries[:excess]
    # Entries older than the window can never pair with an in-order event again.
    horizon = ts - config.window_us
    drop = 0
    while drop < len(entries) - 1 and entries[drop][0] < horizon:
        drop += 1
    if drop:
        del entries[:drop]


@dataclass(slots=True)
class NeighbourSketch:
    """One anchor's neighbours: a weighted, forward-decayed space-saving summary.

    At most ``capacity`` counters. A neighbour already counted gets its weight added; a new one
    takes a free counter or, when all are used, replaces the smallest counter (ties: smallest
    item id) and starts from that counter's value plus its own weight (Metwally et al., 2005).

    **Error bound.** Let ``m`` be the smallest counter and ``W`` the anchor's total weight, all
    decayed to the same time. For every kept neighbour, ``true <= estimate <= true + m``; every
    neighbour whose true weight exceeds ``m`` is kept; and ``m <= W / capacity``. Until the
    sketch is full, ``m`` is taken as 0 and the estimates are exact. The bound holds under
    forward decay because all counters of an anchor share one scale. :meth:`error_bound`
    returns ``m``. In practice keep ``capacity`` several times the ``k`` you read: on Zipf
    data with a heavy tail, 5x gave a recall of the exact top-20 of about 0.99 (tested).

    State is small and picklable: ``copy()`` is what a dataflow's ``snapshot`` should return.
    """

    counts: dict[str, float] = field(default_factory=dict)
    #: Lazy min-heap of ``(count, item)``, built once the sketch is full. An entry may lag
    #: behind its counter (counts only grow); it is refreshed when it reaches the top.
    heap: list[tuple[float, str]] = field(default_factory=list)
    #: Total weight added, on the same scale as ``counts``.
    total: float = 0.0
    ref_us: int = 0
    last_us: int = 0
    #: Strictly increasing µs clock (event time, +1 per update): the row version.
    version: int = 0

    def copy(self) -> NeighbourSketch:
        return NeighbourSketch(
            counts=dict(self.counts),
            heap=list(self.heap),
            total=self.total,
            ref_us=self.ref_us,
            last_us=self.last_us,
            version=self.version,
        )

    @classmethod
    def restored(
        cls,
        counts: dict[str, float],
        full: bool,
        total: float,
        ref_us: int,
        last_us: int,
        version: int,
    ) -> NeighbourSketch:
        """A sketch from its counters and scalars, its heap built afresh when ``full`` (the
        sketch had reached its capacity). It folds later updates exactly as the sketch it was
        taken from: the lazy heap's entries only ever lag behind their counters, and the
        smallest counter is found by refreshing them, so a fresh heap picks the same one."""
        heap: list[tuple[float, str]] = []
        if full:
            heap = [(c, i) for i, c in counts.items()]
            heapq.heapify(heap)
        return cls(counts, heap, total, ref_us, last_us, version)

    def add(self, neighbour: str, weight: float, ts_us: int, config: CovisitConfig) -> None:
        """Fold one pair update (of this anchor) into the sketch."""
        self.add_pairs((("", neighbour, weight, ts_us),), config)

    def add_pairs(self, pairs: Iterable[Pair], config: CovisitConfig) -> None:
        """Fold pair updates of this anchor (their first field is not read), in order: the
        same as :meth:`add` for each, with the sketch's fields read and written once."""
        half_life = config.half_life_us
        capacity = config.capacity
        counts = self.counts
        version, last, total, ref = self.version, self.last_us, self.total, self.ref_us
        for _, neighbour, added, ts_us in pairs:
            weight = added
            if version == 0:
                ref = ts_us
            if half_life is not None:
                exponent = (ts_us - ref) / half_life
                if exponent > RENORMALISE_HALF_LIVES:
                    self.total = total
                    self._rescale(2.0**-exponent, ts_us)
                    counts, total, ref = self.counts, self.total, ts_us
                    exponent = 0.0
                weight *= 2.0**exponent
            # Plain comparisons, not max(): this runs once per pair update (~8 per event).
            version = version + 1 if version >= ts_us else ts_us
            last = ts_us if ts_us > last else last
            total += weight
            old = counts.get(neighbour)
            if old is not None:
                counts[neighbour] = old + weight
            elif len(counts) < capacity:
                counts[neighbour] = weight
                if len(counts) == capacity:
                    self.heap = [(c, i) for i, c in counts.items()]
                    heapq.heapify(self.heap)
            else:
                smallest, floor = self._smallest()
                del counts[smallest]
                counts[neighbour] = floor + weight
                heapq.heapreplace(self.heap, (floor + weight, neighbour))
        self.version, self.last_us, self.total, self.ref_us = version, last, total, ref

    def top(
        self, k: int, config: CovisitConfig, now_us: int | None = None
    ) -> list[tuple[str, float]]:
        """The ``k`` heaviest neighbours with weights decayed to ``now_us`` (default: newest
        event seen); heaviest first, ties by item id."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        factor = self._decay(config, now_us)
        best = best_n(self.counts.items(), k)
        return [(item, count * factor) for item, count in best]

    def weight(self, neighbour: str, config: CovisitConfig, now_us: int | None = None) -> float:
        """Estimated decayed weight of one neighbour (0 if not kept)."""
        return self.counts.get(neighbour, 0.0) * self._decay(config, now_us)

    def error_bound(self, config: CovisitConfig, now_us: int | None = None) -> float:
        """``m``: the largest possible overestimate of any kept neighbour, and the largest
        possible true weight of a neighbour that is not kept (0 while not full)."""
        if len(self.counts) < config.capacity:
            return 0.0
        return min(self.counts.values()) * self._decay(config, now_us)

    def total_weight(self, config: CovisitConfig, now_us: int | None = None) -> float:
        """Total decayed weight ever added to this anchor."""
        return self.total * self._decay(config, now_us)

    def _smallest(self) -> tuple[str, float]:
        heap, counts = self.heap, self.counts
        while True:
            count, item = heap[0]
            current = counts[item]
            if current == count:
                return item, count
            heapq.heapreplace(heap, (current, item))

    def _rescale(self, factor: float, ref_us: int) -> None:
        self.counts = {i: c * factor for i, c in self.counts.items()}
        self.total *= factor
        self.ref_us = ref_us
        if self.heap:
            self.heap = [(c, i) for i, c in self.counts.items()]
            heapq.heapify(self.heap)

    def _decay(self, config: CovisitConfig, now_us: int | None) -> float:
        half_life = config.half_life_us
        if half_life is None:
            return 1.0
        now = self.last_us if now_us is None else now_us
        return float(2.0 ** -((now - self.ref_us) / half_life))


class CovisitIndex:
    """One :class:`NeighbourSketch` per anchor item: the batch (single-process) holder."""

    def __init__(self, config: CovisitConfig) -> None:
        self.config = config
        self.sketches: dict[str, NeighbourSketch] = {}

    def add(self, update: Pair) -> None:
        anchor, neighbour, weight, ts_us = update
        sketch = self.sketches.get(anchor)
        if sketch is None:
            sketch = self.sketches[anchor] = NeighbourSketch()
        sketch.add(neighbour, weight, ts_us, self.config)

    def add_all(self, updates: Iterable[Pair]) -> None:
        for update in updates:
            self.add(update)

    def top(self, anchor: str, k: int, now_us: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` heaviest neighbours of ``anchor`` (empty if the item was never paired)."""
        sketch = self.sketches.get(anchor)
        return [] if sketch is None else sketch.top(k, self.config, now_us)

    def prune(self, now_us: int, epsilon: float) -> int:
        """Drop anchors whose total decayed weight fell below ``epsilon``; returns how many."""
        stale = [
            a for a, s in self.sketches.items() if s.total_weight(self.config, now_us) < epsilon
        ]
        for anchor in stale:
            del self.sketches[anchor]
        return len(stale)

    @property
    def n_anchors(self) -> int:
        return len(self.sketches)

    @property
    def n_pairs(self) -> int:
        """Stored (anchor, neighbour) counters: at most ``n_anchors * capacity``."""
        return sum(len(s.counts) for s in self.sketches.values())


def bootstrap(
    events: Iterable[Event],
    config: CovisitConfig,
    *,
    session_idle_s: float | None = None,
    index: CovisitIndex | None = None,
) -> CovisitIndex:
    """Fold a sequence of events (e.g. the event log) into an index, in the given order.

    The same calls as the streaming flow: one :class:`RecentItems` per session, then
    :func:`observe`, then :meth:`CovisitIndex.add` for each update. With ``session_idle_s``, a
    session's buffer is forgotten once the newest event time seen has moved on by more than that
    since the session's last event arrived (bounded memory on long logs; match the flow's
    session expiry).
    """
    index = CovisitIndex(config) if index is None else index
    buffers: OrderedDict[str, tuple[int, RecentItems]] = OrderedDict()
    idle_us = None if session_idle_s is None else int(session_idle_s * 1_000_000)
    watermark = 0
    for event in events:
        watermark = max(watermark, micros(event.ts))
        entry = buffers.pop(event.session_id, None)
        recent = RecentItems() if entry is None else entry[1]
        index.add_all(observe(recent, event, config))
        buffers[event.session_id] = (watermark, recent)
        if idle_us is not None:
            while buffers:
                session, (touched, _) = next(iter(buffers.items()))
                if touched >= watermark - idle_us:
                    break
                del buffers[session]
    return index


def neighbour_row(
    anchor: str,
    sketch: NeighbourSketch,
    config: CovisitConfig,
    k: int = NEIGHBOURS_K,
    ingested_at: float | None = None,
) -> FeatureRow:
    """The ``item_neighbours`` row of ``anchor``: its top ``k`` neighbours, weights decayed to
    the anchor's newest event time."""
    best = sketch.top(k, config)
    return FeatureRow(
        view=ITEM_NEIGHBOURS.name,
        key=anchor,
        values={
            "neighbour_ids": [item for item, _ in best],
            "neighbour_weights": [weight for _, weight in best],
            "as_of_s": sketch.last_us / 1_000_000,
        },
        version=sketch.version,
        ingested_at=ingested_at,
    )


def _check_weight(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"covisit {name} must be a finite number >= 0, got {value!r}")
