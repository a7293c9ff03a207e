"""The item signals flow's stateful steps in the batch shape: one bytewax key per shard.

The per-event shape (:mod:`dataflows.item_logic`) gives every session, anchor and item its
own key in the engine, and bytewax's per-key cost then dominates (one ``StatefulBatchLogic``,
one timer and one snapshot per key). Here each step holds a plain dict of states for all keys
hashed to one shard, as the sessions flow's :mod:`dataflows.session_shards` does:

- :class:`PairShardLogic` (sessions): each session's :class:`RecentItems`; emits, per
  activation, one list of :class:`EventPairs`; a session idle for ``ttl`` (system time) is
  dropped (oldest first, in O(dropped)).
- :class:`NeighbourShardLogic` (anchors) and :class:`TrendShardLogic` (items): the same
  folds as :class:`~dataflows.item_logic.NeighbourLogic` and
  :class:`~dataflows.item_logic.TrendLogic`, with their **rate limit per key** kept inside the
  shard (:class:`ThrottledShardLogic`): a key's first update after a quiet ``interval`` is
  written at once, later ones mark it dirty and a heap of due times writes its newest state
  once the interval is over; end of input writes every dirty key. A key idle for ``idle`` is
  dropped once negligible at the flow's event clock, else checked again ``idle`` later.

Order per key is the per-event shape's (a shard's chunks arrive in order, and a chunk keeps
arrival order), so with one worker the rows equal :func:`featrec.app.item_signals.bootstrap`'s.

Snapshots are one ``pickle`` blob per shard (immutable bytes: bytewax would otherwise pickle
a deep copy), and incremental (:class:`Blobs`): each key's state is pickled when it has
changed since the last snapshot, the others' bytes are reused. Pickling every state at every
epoch cost 1.5-2.1 s per epoch for the pair step's ~130k sessions and ~0.5-0.7 s for the
neighbour step's ~47k anchors after 1M generated events. A snapshot of the previous layout
(the whole dict pickled at once) is still read. The blob is only ever read back from the
flow's own recovery store, which bytewax fills with pickles anyway.
"""

from __future__ import annotations

import heapq
import pickle  # nosec B403
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from bytewax.operators import StatefulBatchLogic

from dataflows import item_metrics
from dataflows.item_logic import EventClock, EventPairs, PairChunk, Sequenced, TrendUpdate
from featrec.app.item_signals import ItemSignalsConfig
from featrec.core.features.rows import FeatureRow
from featrec.core.items.covisit import (
    NeighbourSketch,
    Pair,
    RecentItems,
    neighbour_row,
    observe,
)
from featrec.core.items.trending import ItemTrend, fold, trending_row

S = TypeVar("S")
V = TypeVar("V")
W = TypeVar("W")

Now = Callable[[], float]


def _dumps(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _loads(data: bytes) -> Any:
    # Our own snapshot, read back from the flow's own recovery store.
    return pickle.loads(data)  # nosec B301


#: Marks the incremental snapshot layout (the previous one pickled the states dict itself).
SNAPSHOT_FORMAT = "featrec.item_shards/2"


class Blobs:
    """Each key's state as its own pickle, kept until the state changes: a snapshot pickles
    only the keys changed since the last one (:meth:`changed`) and reuses the others' bytes."""

    __slots__ = ("blobs", "stale")

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.stale: set[str] = set()

    def changed(self, key: str) -> None:
        self.stale.add(key)

    def dropped(self, key: str) -> None:
        self.blobs.pop(key, None)
        self.stale.discard(key)

    def encode(self, states: dict[str, Any]) -> tuple[list[str], list[bytes]]:
        """Every key and its state's bytes (changed ones pickled now)."""
        blobs = self.blobs
        for key in self.stale:
            blobs[key] = _dumps(states[key])
        self.stale = set()
        return list(blobs), list(blobs.values())

    @classmethod
    def decode(cls, keys: list[str], blobs: list[bytes]) -> tuple[dict[str, Any], Blobs]:
        """The states of an incremental snapshot, and a cache holding their bytes."""
        cache = cls()
        cache.blobs = dict(zip(keys, blobs, strict=True))
        return {key: _loads(blob) for key, blob in cache.blobs.items()}, cache

    @classmethod
    def of(cls, states: dict[str, Any]) -> Blobs:
        """A cache for states read from the previous layout: every key pickled at the next
        snapshot."""
        cache = cls()
        cache.stale = set(states)
        return cache


def _resumed(resume: bytes) -> tuple[dict[str, Any], Blobs, tuple[Any, ...]]:
    """A shard's states, their bytes cache and the snapshot's other fields, from either
    layout: ``(SNAPSHOT_FORMAT, keys, blobs, *rest)`` or the previous ``states`` /
    ``(states, *rest)`` (every state pickled again at the next snapshot)."""
    fields = _loads(resume)
    if isinstance(fields, tuple) and fields and fields[0] == SNAPSHOT_FORMAT:
        states, blobs = Blobs.decode(fields[1], fields[2])
        return states, blobs, fields[3:]
    if isinstance(fields, dict):
        return fields, Blobs.of(fields), ()
    return fields[0], Blobs.of(fields[0]), fields[1:]


def _at(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _oldest(touched: dict[str, float]) -> float | None:
    """The first (oldest) time of a dict kept in touch order."""
    for at in touched.values():
        return at
    return None


def _idle_since(touched: dict[str, float], horizon: float) -> list[str]:
    """The keys of a dict kept in touch order touched at or before ``horizon`` (O(found))."""
    found = []
    for key, at in touched.items():
        if at > horizon:
            break
        found.append(key)
    return found


class PairShardLogic(StatefulBatchLogic[list[Sequenced], list[EventPairs], bytes]):
    """The recent items of one shard's sessions (see the module docstring)."""

    def __init__(
        self, config: ItemSignalsConfig, ttl_s: float, resume: bytes | None, now: Now = time.time
    ) -> None:
        self.config = config.covisit
        self.ttl_s = ttl_s
        self.now = now
        self.states: dict[str, RecentItems] = {}
        self.blobs = Blobs()
        if resume is not None:
            self.states, self.blobs, _ = _resumed(resume)
        t = now()
        #: session -> system time of its last event, oldest first.
        self.touched: dict[str, float] = dict.fromkeys(self.states, t)
        self.gauge = item_metrics.live_states("sessions")
        self.gauge.inc(len(self.states))

    def on_batch(self, values: list[list[Sequenced]]) -> tuple[Iterable[list[EventPairs]], bool]:
        now = self.now()
        states, touched, config = self.states, self.touched, self.config
        stale = self.blobs.stale
        out: list[EventPairs] = []
        created = 0
        for chunk in values:
            for seq, event, ingested_at in chunk:
                sid = event.session_id
                stale.add(sid)
                recent = states.get(sid)
                if recent is None:
                    recent = states[sid] = RecentItems()
                    created += 1
                touched.pop(sid, None)
                touched[sid] = now
                updates = observe(recent, event, config)
                if updates:
                    out.append(EventPairs(seq, ingested_at, updates))
        if created:
            self.gauge.inc(created)
        self._expire(now)
        return ([out] if out else []), self._keep()

    def on_notify(self) -> tuple[Iterable[list[EventPairs]], bool]:
        self._expire(self.now())
        return (), self._keep()

    def on_eof(self) -> tuple[Iterable[list[EventPairs]], bool]:
        # Retained for the recovery snapshot; this execution no longer holds them live.
        self.gauge.dec(len(self.states))
        self.gauge = _NoGauge()
        return (), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        oldest = _oldest(self.touched)
        return None if oldest is None else _at(oldest + self.ttl_s)

    def snapshot(self) -> bytes:
        return _dumps((SNAPSHOT_FORMAT, *self.blobs.encode(self.states)))

    def _expire(self, now: float) -> None:
        gone = _idle_since(self.touched, now - self.ttl_s)
        for sid in gone:
            del self.touched[sid]
            del self.states[sid]
            self.blobs.dropped(sid)
        if gone:
            self.gauge.dec(len(gone))
            item_metrics.states_dropped("sessions").inc(len(gone))

    def _keep(self) -> bool:
        return StatefulBatchLogic.RETAIN if self.states else StatefulBatchLogic.DISCARD


class _NoGauge:
    """Stands in for the live-states gauge after end of input (nothing is live any more)."""

    def inc(self, n: float = 1) -> None:
        pass

    def dec(self, n: float = 1) -> None:
        pass


class ThrottledShardLogic(StatefulBatchLogic[V, list[W], bytes], Generic[V, W, S]):
    """Rate-limited rows and idle discard for the many keys of one shard.

    Subclasses fold a batch in :meth:`fold` (returning the keys it touched, first touch
    first), build a key's output in :meth:`emit` and say in :meth:`negligible` when an idle
    key may be dropped. ``states`` and ``ingested`` (newest ingestion time per key) are theirs
    to fill; this class keeps the timers. ``config`` and ``clock`` (the flow's event time)
    are the subclasses' to read.
    """

    kind = "state"

    def __init__(
        self,
        config: ItemSignalsConfig,
        interval_s: float,
        idle_s: float,
        clock: EventClock,
        resume: bytes | None = None,
        now: Now = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.interval_s = interval_s
        self.idle_s = idle_s
        self.now = now
        t = now()
        self.states: dict[str, S] = {}
        self.ingested: dict[str, float] = {}
        #: key -> the earliest system time of its next row (absent: at once).
        self.write_at: dict[str, float] = {}
        #: keys owing a row, and a lazy min-heap of (due time, key) for them.
        self.dirty: set[str] = set()
        self.due: list[tuple[float, str]] = []
        self.blobs = Blobs()
        if resume is not None:
            self.states, self.blobs, (self.ingested, dirty) = _resumed(resume)
            # A key restored dirty owes a row: write it at the first opportunity.
            for key in dirty:
                self.dirty.add(key)
                self.write_at[key] = t
                self.due.append((t, key))
        #: key -> system time of its last update, oldest first (the idle checks).
        self.touched: dict[str, float] = dict.fromkeys(self.states, t)
        self.gauge: Any = item_metrics.live_states(self.kind)
        self.gauge.inc(len(self.states))

    def fold(self, values: list[V]) -> Iterable[str]:
        raise NotImplementedError

    def emit(self, key: str) -> list[W]:
        raise NotImplementedError

    def negligible(self, key: str) -> bool:
        raise NotImplementedError

    def created(self, n: int) -> None:
        """Subclasses call this when their fold added ``n`` keys."""
        self.gauge.inc(n)

    def on_batch(self, values: list[V]) -> tuple[Iterable[list[W]], bool]:
        now = self.now()
        touched, write_at, dirty = self.touched, self.write_at, self.dirty
        out: list[W] = []
        deferred = 0
        stale = self.blobs.stale
        for key in self.fold(values):
            stale.add(key)
            touched.pop(key, None)
            touched[key] = now
            at = write_at.get(key)
            if at is None or now >= at:
                self._write(key, now, out)
            elif key not in dirty:
                dirty.add(key)
                heapq.heappush(self.due, (at, key))
                deferred += 1
        if deferred:
            item_metrics.rows_deferred(self.kind).inc(deferred)
        self._timers(now, out)
        return ([out] if out else []), self._keep()

    def on_notify(self) -> tuple[Iterable[list[W]], bool]:
        out: list[W] = []
        self._timers(self.now(), out)
        return ([out] if out else []), self._keep()

    def on_eof(self) -> tuple[Iterable[list[W]], bool]:
        now = self.now()
        out: list[W] = []
        for key in sorted(self.dirty):
            self._write(key, now, out)
        self.due = []
        # Retained for the recovery snapshot; this execution no longer holds them live.
        self.gauge.dec(len(self.states))
        self.gauge = _NoGauge()
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = self.due[0][0] if self.due else None
        oldest = _oldest(self.touched)
        if oldest is not None and (due is None or oldest + self.idle_s < due):
            due = oldest + self.idle_s
        return _at(due)

    def snapshot(self) -> bytes:
        keys, blobs = self.blobs.encode(self.states)
        return _dumps((SNAPSHOT_FORMAT, keys, blobs, self.ingested, sorted(self.dirty)))

    def _write(self, key: str, now: float, out: list[W]) -> None:
        self.dirty.discard(key)
        self.write_at[key] = now + self.interval_s
        out.extend(self.emit(key))

    def _timers(self, now: float, out: list[W]) -> None:
        due, dirty, write_at = self.due, self.dirty, self.write_at
        while due and due[0][0] <= now:
            _, key = heapq.heappop(due)
            # Stale entries (the key was written since, or is due later) are skipped.
            if key in dirty and write_at[key] <= now:
                self._write(key, now, out)
        self._idle(now)

    def _idle(self, now: float) -> None:
        touched = self.touched
        checked = _idle_since(touched, now - self.idle_s)
        if not checked:
            return
        dropped = 0
        for key in checked:
            del touched[key]
            if key in self.dirty or not self.negligible(key):
                touched[key] = now  # checked again ``idle`` later
                continue
            del self.states[key]
            self.blobs.dropped(key)
            self.ingested.pop(key, None)
            self.write_at.pop(key, None)
            dropped += 1
        if dropped:
            self.gauge.dec(dropped)
            item_metrics.states_dropped(self.kind).inc(dropped)

    def _keep(self) -> bool:
        return StatefulBatchLogic.RETAIN if self.states else StatefulBatchLogic.DISCARD


class NeighbourShardLogic(ThrottledShardLogic[PairChunk, FeatureRow, NeighbourSketch]):
    """The neighbour sketches of one shard's anchors; emits ``item_neighbours`` rows."""

    kind = "neighbours"

    def fold(self, values: list[PairChunk]) -> Iterable[str]:
        states, ingested, config = self.states, self.ingested, self.config.covisit
        #: anchor -> newest ingestion time of its updates here (first touch first).
        touched: dict[str, float] = {}
        #: anchor -> its updates here, in order: each sketch folds its own run in one call.
        runs: dict[str, list[Pair]] = {}
        for chunk in values:
            at = chunk.ingested_at
            here: dict[str, list[Pair]] = {}
            for update in chunk.updates:
                run = here.get(update[0])
                if run is None:
                    here[update[0]] = [update]
                else:
                    run.append(update)
            for anchor, run in here.items():
                before = runs.get(anchor)
                if before is None:
                    runs[anchor] = run
                else:
                    before.extend(run)
                if touched.get(anchor, 0.0) < at:
                    touched[anchor] = at
        created = 0
        for anchor, run in runs.items():
            sketch = states.get(anchor)
            if sketch is None:
                sketch = states[anchor] = NeighbourSketch()
                created += 1
            sketch.add_pairs(run, config)
        for anchor, at in touched.items():
            if at > ingested.get(anchor, 0.0):
                ingested[anchor] = at
        if created:
            self.created(created)
        return touched

    def emit(self, key: str) -> list[FeatureRow]:
        cfg = self.config
        sketch = self.states[key]
        return [neighbour_row(key, sketch, cfg.covisit, cfg.neighbours_k, self.ingested.get(key))]

    def negligible(self, key: str) -> bool:
        weight = self.states[key].total_weight(self.config.covisit, self.clock.newest_us)
        return weight < self.config.epsilon


class TrendShardLogic(ThrottledShardLogic[list[Sequenced], FeatureRow | TrendUpdate, ItemTrend]):
    """The trends of one shard's items; emits ``item_trending`` rows and copies for the board."""

    kind = "trending"

    def fold(self, values: list[list[Sequenced]]) -> Iterable[str]:
        states, ingested, config = self.states, self.ingested, self.config.trending
        touched: dict[str, None] = {}
        created = 0
        for chunk in values:
            for arrival in chunk:
                event = arrival.event
                item = event.item_id
                trend = states.get(item)
                if trend is None:
                    trend = states[item] = ItemTrend()
                    created += 1
                fold(trend, event, config)
                if item not in touched:
                    touched[item] = None
                if arrival.ingested_at > ingested.get(item, 0.0):
                    ingested[item] = arrival.ingested_at
        if created:
            self.created(created)
        return touched

    def emit(self, key: str) -> list[FeatureRow | TrendUpdate]:
        trend = self.states[key]
        row = trending_row(key, trend, self.config.trending, self.ingested.get(key))
        return [row, TrendUpdate(key, trend.copy())]

    def negligible(self, key: str) -> bool:
        return self.states[key].is_negligible(self.config.trending, self.clock.newest_us)
