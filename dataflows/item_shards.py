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
a deep copy), and incremental (:class:`Blobs`): each key's state is encoded when it has
changed since the last snapshot, the others' bytes are reused. Pickling every state at every
epoch cost 1.5-2.1 s per epoch for the pair step's ~130k sessions and ~0.5-0.7 s for the
neighbour step's ~47k anchors after 1M generated events. A state is encoded as its fields in
plain tuples and lists (:class:`Codec`), not as the dataclass. Snapshots of the previous
layouts (the whole dict pickled at once; one pickle per key of the state object) are still
read. The blob is only ever read back from the flow's own recovery store, which bytewax fills
with pickles anyway.

With a store of idle sessions (:class:`~dataflows.session_shards.Cooling`, set up by the
launcher inside the recovery store), the pair step also *cools* sessions idle for
``Cooling.idle_s``: their recent items leave memory and the snapshots for the store (the
sessions flow's :class:`~featrec.adapters.sqlite.cold_sessions.ColdSessions`, in its own
directory), and come back before their session's next event is observed. The pair step keeps
a session for the longer of the state TTL and the co-visitation window (1 h), so without the
store its snapshots grow with every session of the last hour, changed or not. Writes to the
store are tagged with the shard's snapshot count, and a resumed shard rolls the store back to
its snapshot, so state stays exactly-once, as in the sessions flow.
"""

from __future__ import annotations

import heapq
import pickle  # nosec B403
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Generic, NamedTuple, TypeVar, cast

from bytewax.operators import StatefulBatchLogic

from dataflows import item_metrics
from dataflows.item_logic import EventClock, EventPairs, PairChunk, Sequenced, TrendUpdate
from dataflows.session_shards import COOL_EVERY_S, COOL_LIMIT, Cooling
from dataflows.sessions import FORGOTTEN, DenySource
from featrec.adapters.sqlite.cold_sessions import ColdShard
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
from featrec.core.sessions.shard import Cooled, Forget

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


class Codec(NamedTuple, Generic[S]):
    """How a step's states become a snapshot's bytes and back. The steps pickle their states'
    fields as plain tuples and lists (``pack``): pickling the dataclass itself costs 2.5-5x
    more per state, which every changed key pays at every epoch end. ``unpack`` also reads a
    state pickled whole, as earlier snapshots hold them."""

    pack: Callable[[S], bytes]
    unpack: Callable[[bytes], S]


#: Whole objects pickled (the default).
PICKLED: Codec[Any] = Codec(_dumps, _loads)


class Blobs:
    """Each key's state as its own bytes, kept until the state changes: a snapshot encodes
    only the keys changed since the last one (:meth:`changed`) and reuses the others' bytes."""

    __slots__ = ("blobs", "pack", "stale")

    def __init__(self, pack: Callable[[Any], bytes] = _dumps) -> None:
        self.blobs: dict[str, bytes] = {}
        self.stale: set[str] = set()
        self.pack = pack

    def changed(self, key: str) -> None:
        self.stale.add(key)

    def dropped(self, key: str) -> None:
        self.blobs.pop(key, None)
        self.stale.discard(key)

    def encode(self, states: dict[str, Any]) -> tuple[list[str], list[bytes]]:
        """Every key and its state's bytes (changed ones encoded now)."""
        blobs, pack = self.blobs, self.pack
        for key in self.stale:
            blobs[key] = pack(states[key])
        self.stale = set()
        return list(blobs), list(blobs.values())

    @classmethod
    def decode(
        cls, keys: list[str], blobs: list[bytes], codec: Codec[Any] = PICKLED
    ) -> tuple[dict[str, Any], Blobs]:
        """The states of an incremental snapshot, and a cache holding their bytes."""
        cache = cls(codec.pack)
        cache.blobs = dict(zip(keys, blobs, strict=True))
        unpack = codec.unpack
        return {key: unpack(blob) for key, blob in cache.blobs.items()}, cache

    @classmethod
    def of(cls, states: dict[str, Any], codec: Codec[Any] = PICKLED) -> Blobs:
        """A cache for states read from the previous layout: every key encoded at the next
        snapshot."""
        cache = cls(codec.pack)
        cache.stale = set(states)
        return cache


def _resumed(
    resume: bytes, codec: Codec[Any] = PICKLED
) -> tuple[dict[str, Any], Blobs, tuple[Any, ...]]:
    """A shard's states, their bytes cache and the snapshot's other fields, from either
    layout: ``(SNAPSHOT_FORMAT, keys, blobs, *rest)`` or the previous ``states`` /
    ``(states, *rest)`` (every state encoded again at the next snapshot)."""
    fields = _loads(resume)
    if isinstance(fields, tuple) and fields and fields[0] == SNAPSHOT_FORMAT:
        states, blobs = Blobs.decode(fields[1], fields[2], codec)
        return states, blobs, fields[3:]
    if isinstance(fields, dict):
        return fields, Blobs.of(fields, codec), ()
    return fields[0], Blobs.of(fields[0], codec), fields[1:]


def _pack_recent(recent: RecentItems) -> bytes:
    return _dumps(recent.entries)


def _unpack_recent(blob: bytes) -> RecentItems:
    state = _loads(blob)
    return state if isinstance(state, RecentItems) else RecentItems(state)


def _pack_sketch(s: NeighbourSketch) -> bytes:
    # The heap is not kept: it orders the counters, and is built again from them on resume
    # (a full sketch's heap pickled as tuples doubled the sketch's bytes and its time).
    return _dumps((s.counts, bool(s.heap), s.total, s.ref_us, s.last_us, s.version))


def _unpack_sketch(blob: bytes) -> NeighbourSketch:
    state = _loads(blob)
    if isinstance(state, NeighbourSketch):
        return state
    counts, full, total, ref_us, last_us, version = state
    return NeighbourSketch.restored(counts, bool(full), total, ref_us, last_us, version)


def _pack_trend(t: ItemTrend) -> bytes:
    return _dumps((t.counts, t.last_us, t.version, t.category))


def _unpack_trend(blob: bytes) -> ItemTrend:
    state = _loads(blob)
    return state if isinstance(state, ItemTrend) else ItemTrend(*state)


RECENT_ITEMS: Codec[RecentItems] = Codec(_pack_recent, _unpack_recent)
SKETCHES: Codec[NeighbourSketch] = Codec(_pack_sketch, _unpack_sketch)
TRENDS: Codec[ItemTrend] = Codec(_pack_trend, _unpack_trend)


def session_of(item: Sequenced | Forget) -> str:
    """The session of an event or of a tombstone's :class:`Forget`."""
    return item.session_id if type(item) is Forget else cast(Sequenced, item).event.session_id


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


class PairShardLogic(StatefulBatchLogic[list[Sequenced | Forget], list[EventPairs], bytes]):
    """The recent items of one shard's sessions (see the module docstring).

    With ``cooling`` (a store of idle sessions, and ``key_of`` giving a session's shard), a
    session idle for ``cooling.idle_s`` leaves memory and the snapshots for the store, and
    comes back before its next event is observed, as in the sessions flow
    (:class:`dataflows.session_shards.ShardLogic`): the store's writes are tagged with this
    shard's snapshot count, and a resumed shard rolls the store back to its snapshot.

    A :class:`~featrec.core.sessions.shard.Forget` among the events (a tombstone's session)
    discards that session's recent items, in memory and in the store.
    """

    def __init__(
        self,
        config: ItemSignalsConfig,
        ttl_s: float,
        resume: bytes | None,
        now: Now = time.time,
        *,
        cooling: Cooling | None = None,
        key_of: Callable[[str], str] | None = None,
        deny: DenySource | None = None,
    ) -> None:
        self.config = config.covisit
        self.ttl_s = ttl_s
        self.now = now
        self.states: dict[str, RecentItems] = {}
        self.blobs = Blobs(RECENT_ITEMS.pack)
        #: Snapshots taken (the tag of the store's writes), and this shard's key once known.
        self.snapshots = 0
        self.key: str | None = None
        if resume is not None:
            self.states, self.blobs, rest = _resumed(resume, RECENT_ITEMS)
            if rest:
                taken, self.key = rest
                self.snapshots = taken + 1
        t = now()
        #: session -> system time of its last event, oldest first.
        self.touched: dict[str, float] = dict.fromkeys(self.states, t)
        self.gauge = item_metrics.live_states("sessions")
        self.gauge.inc(len(self.states))
        self.cooling = cooling if cooling is not None and cooling.idle_s < ttl_s else None
        self.key_of = key_of
        self.deny = deny
        #: This shard's store of idle sessions, once in step with the shard.
        self.cold: ColdShard | None = None
        self.cooled_at = 0.0
        if self.cooling is not None and self.key is not None:
            self._attach(self.key)

    def on_batch(
        self, values: list[list[Sequenced | Forget]]
    ) -> tuple[Iterable[list[EventPairs]], bool]:
        now = self.now()
        if self.cooling is not None:
            if self.cold is None and values and values[0]:
                assert self.key_of is not None, "a shard that cools sessions needs key_of"
                self._attach(self.key_of(session_of(values[0][0])))
            if self.cold is not None:
                self._revive(self.cold, values, now)
        states, touched, config = self.states, self.touched, self.config
        stale = self.blobs.stale
        out: list[EventPairs] = []
        created = 0
        for chunk in values:
            for arrival in chunk:
                if type(arrival) is Forget:
                    self._forget(arrival.session_id)
                    continue
                seq, event, ingested_at = cast(Sequenced, arrival)
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
        self._cool(now)
        return ([out] if out else []), self._keep()

    def on_notify(self) -> tuple[Iterable[list[EventPairs]], bool]:
        now = self.now()
        self._expire(now)
        self._cool(now)
        return (), self._keep()

    def on_eof(self) -> tuple[Iterable[list[EventPairs]], bool]:
        # Retained for the recovery snapshot; this execution no longer holds them live.
        self.gauge.dec(len(self.states))
        self.gauge = _NoGauge()
        return (), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        oldest = _oldest(self.touched)
        if oldest is None:
            return None
        due = oldest + self.ttl_s
        if self.cooling is not None and self.cold is not None:
            due = min(due, max(oldest + self.cooling.idle_s, self.cooled_at + COOL_EVERY_S))
        return _at(due)

    def snapshot(self) -> bytes:
        taken = self.snapshots
        self.snapshots += 1
        if self.cold is not None:
            self.cold.expire(self.now() - self.ttl_s, taken)
        return _dumps((SNAPSHOT_FORMAT, *self.blobs.encode(self.states), taken, self.key))

    def _attach(self, key: str) -> None:
        """Bring the store in step with this shard: undo what was written after its snapshot
        (all of it for a new shard), and drop the sessions the deny-list names."""
        assert self.cooling is not None
        cold = self.cooling.store.shard(key)
        self.key = key
        cold.rollback(self.snapshots - 1)
        denied = self.deny.current() if self.deny is not None else None
        if denied:
            cold.forget_where(lambda sid, user: denied.contains("session", sid))
        self.cold = cold

    def _forget(self, sid: str) -> None:
        """Discard a session's recent items (a tombstone named it), in memory and cold."""
        if self.states.pop(sid, None) is not None:
            del self.touched[sid]
            self.blobs.dropped(sid)
            self.gauge.dec()
        if self.cold is not None:
            self.cold.forget(sid)
        FORGOTTEN.labels(what="item session state").inc()

    def _revive(self, cold: ColdShard, values: list[list[Sequenced | Forget]], now: float) -> None:
        states = self.states
        missing: dict[str, None] = {}
        for chunk in values:
            for arrival in chunk:
                if type(arrival) is Forget:
                    continue
                sid = cast(Sequenced, arrival).event.session_id
                if sid not in states:
                    missing[sid] = None
        if not missing:
            return
        blobs = cold.take(list(missing), self.snapshots, now - self.ttl_s)
        if not blobs:
            return
        # Each is about to observe an event, which marks it changed for the next snapshot.
        for blob in blobs:
            sid, entries = _loads(blob)
            states[sid] = RecentItems(entries)
            self.touched[sid] = now
        self.gauge.inc(len(blobs))
        item_metrics.cold_sessions("revived").inc(len(blobs))

    def _cool(self, now: float) -> None:
        cooling, cold = self.cooling, self.cold
        if cooling is None or cold is None or now < self.cooled_at + COOL_EVERY_S:
            return
        idle = _idle_since(self.touched, now - cooling.idle_s)[:COOL_LIMIT]
        if not idle:
            return
        self.cooled_at = now
        touched, states, blobs = self.touched, self.states, self.blobs
        cooled = []
        for sid in idle:
            at = touched.pop(sid)
            recent = states.pop(sid)
            blobs.dropped(sid)
            cooled.append(Cooled(sid, None, at, _dumps((sid, recent.entries))))
        cold.put(cooled, self.snapshots)
        self.gauge.dec(len(cooled))
        item_metrics.cold_sessions("cooled").inc(len(cooled))

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
        # With cooling, a shard is never discarded: its snapshot count tags the store.
        if self.cooling is not None or self.states:
            return StatefulBatchLogic.RETAIN
        return StatefulBatchLogic.DISCARD


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
    codec: Codec[Any] = PICKLED

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
        self.blobs = Blobs(self.codec.pack)
        if resume is not None:
            self.states, self.blobs, (self.ingested, dirty) = _resumed(resume, self.codec)
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
    codec = SKETCHES

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
    codec = TRENDS

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
