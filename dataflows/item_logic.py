"""The stateful steps of the item signals flow: thin wrappers around the pure core folds.

- :class:`PairLogic` (keyed by session) keeps the session's :class:`RecentItems` and turns each
  event into pair updates (:func:`featrec.core.items.covisit.observe`); a system-time TTL frees it.
- :class:`NeighbourLogic` (keyed by anchor item) folds updates into the anchor's
  :class:`NeighbourSketch` and emits its ``item_neighbours`` row.
- :class:`TrendLogic` (keyed by item) folds events into the item's :class:`ItemTrend` and emits
  its ``item_trending`` row, plus a copy of the trend for the board.
- :class:`BoardLogic` (one key) keeps the latest trend of every item and emits the trending
  lists (global and per category) as ``item_neighbours`` rows under pseudo-item keys.

**Rate limit** (:class:`ThrottledLogic`): a key emits at most one row per ``interval`` of system
time. The first update after a quiet period is written at once; later ones mark the key dirty
and a timer writes the newest state when the interval is over; end of input writes every dirty
key. So a hot item costs one row per interval, and the last update is never lost.

**Order.** Every event carries its arrival sequence number. The session step runs its keys in
key order, not arrival order (bytewax groups an activation's items by key), so the step that
regroups its output by anchor (``group_pairs`` in :mod:`dataflows.items`) first sorts it by
sequence number. Per key, bytewax keeps arrival order, so with one input partition and one
worker each anchor and each item sees its updates in exactly the order of
:func:`featrec.app.item_signals.bootstrap`, and the rows equal the bootstrap's. With several
workers, updates of one key that come from different workers may interleave otherwise: sums
then differ by float rounding (and, once a sketch is full, evictions may differ).

**Bounded memory.** A session's buffer is discarded ``ttl`` after its last activity. An anchor
or item is checked ``idle`` after its last activity, and discarded once its decayed weight at
the flow's event-time watermark is negligible (``epsilon``; the trend's own
``is_negligible``); otherwise it is checked again later. The board prunes negligible items
whenever it has doubled in size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Generic, NamedTuple, TypeVar

from bytewax.operators import StatefulBatchLogic

from dataflows import item_metrics
from featrec.app.item_signals import ItemSignalsConfig, list_rows, trending_lists
from featrec.core.events.model import Event
from featrec.core.features.rows import FeatureRow
from featrec.core.items.covisit import (
    NeighbourSketch,
    Pair,
    RecentItems,
    neighbour_row,
    observe,
)
from featrec.core.items.trending import MIN_PRUNE_SIZE, ItemTrend, TrendingBoard, fold, trending_row

V = TypeVar("V")
W = TypeVar("W")
S = TypeVar("S")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Sequenced(NamedTuple):
    """A decoded event with its arrival sequence number and ingestion time."""

    seq: int
    event: Event
    ingested_at: float


class PairChunk(NamedTuple):
    """Pair updates of one anchor, in arrival order of the events that made them;
    ``ingested_at`` is the newest ingestion time of the batch that made them."""

    ingested_at: float
    updates: list[Pair]


class EventPairs(NamedTuple):
    """The pair updates one event made, as the session step emits them."""

    seq: int
    ingested_at: float
    updates: list[Pair]


class TrendUpdate(NamedTuple):
    """An item's trend as of its latest row, for the board (a copy: never mutated)."""

    item: str
    trend: ItemTrend


class EventClock:
    """The newest event time this process has decoded (µs): the "now" of the GC checks.

    Shared by the steps of one process; each process of a cluster keeps its own (they differ
    by the skew between partitions, which only delays a discard).
    """

    def __init__(self) -> None:
        self.newest_us = 0

    def advance(self, ts_us: int) -> None:
        self.newest_us = max(self.newest_us, ts_us)


class PairLogic(StatefulBatchLogic[list[Sequenced], EventPairs, RecentItems]):
    """One session's recent items; emits the pair updates of each of its events."""

    def __init__(
        self,
        config: ItemSignalsConfig,
        ttl: timedelta,
        resume: RecentItems | None = None,
        now: Clock = utc_now,
    ) -> None:
        self.config = config.covisit
        self.ttl = ttl
        self.now = now
        self.recent = resume.copy() if resume is not None else RecentItems()
        self.live = True
        item_metrics.live_states("sessions").inc()

    def on_batch(self, values: list[list[Sequenced]]) -> tuple[Iterable[EventPairs], bool]:
        out: list[EventPairs] = []
        recent, config = self.recent, self.config
        for chunk in values:
            for seq, event, ingested_at in chunk:
                updates = observe(recent, event, config)
                if updates:
                    out.append(EventPairs(seq, ingested_at, updates))
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[EventPairs], bool]:
        self._leave()
        item_metrics.states_dropped("sessions").inc()
        return (), StatefulBatchLogic.DISCARD

    def on_eof(self) -> tuple[Iterable[EventPairs], bool]:
        self._leave()
        return (), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime:
        return self.now() + self.ttl

    def snapshot(self) -> RecentItems:
        return self.recent.copy()

    def _leave(self) -> None:
        if self.live:
            self.live = False
            item_metrics.live_states("sessions").dec()


class Throttled(NamedTuple, Generic[S]):
    """Recovery state of a rate-limited key: the key (bytewax does not hand it to a builder),
    its state, and whether a row is still owed."""

    key: str
    state: S
    dirty: bool


class ThrottledLogic(StatefulBatchLogic[V, W, Throttled[S]]):
    """Rate-limited emission and idle discard for one key (see the module docstring).

    Subclasses fold values in :meth:`fold` (and set ``key`` from them), build output in
    :meth:`emit`, copy state in :meth:`copy_state` and say when it may be dropped in
    :meth:`negligible`.
    """

    kind = "state"

    def __init__(
        self,
        interval: timedelta,
        idle: timedelta,
        resume: Throttled[S] | None,
        now: Clock,
    ) -> None:
        self.interval = interval
        self.idle = idle
        self.now = now
        t = now()
        self.key = resume.key if resume is not None else ""
        # A state restored dirty owes a row: write it at the first opportunity.
        self.dirty = resume is not None and resume.dirty
        self.write_at: datetime | None = t if self.dirty else None
        self.check_at = t + idle
        self.live = True
        item_metrics.live_states(self.kind).inc()

    def fold(self, values: list[V]) -> None:
        raise NotImplementedError

    def emit(self) -> list[W]:
        raise NotImplementedError

    def copy_state(self) -> S:
        raise NotImplementedError

    def negligible(self) -> bool:
        raise NotImplementedError

    def on_batch(self, values: list[V]) -> tuple[Iterable[W], bool]:
        self.fold(values)
        now = self.now()
        self.check_at = now + self.idle
        if self.write_at is None or now >= self.write_at:
            return self._write(now), StatefulBatchLogic.RETAIN
        if not self.dirty:
            self.dirty = True
            item_metrics.rows_deferred(self.kind).inc()
        return (), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[W], bool]:
        now = self.now()
        if self.dirty:
            if self.write_at is None or now >= self.write_at:
                return self._write(now), StatefulBatchLogic.RETAIN
            return (), StatefulBatchLogic.RETAIN
        if now >= self.check_at:
            if self.negligible():
                self._leave()
                item_metrics.states_dropped(self.kind).inc()
                return (), StatefulBatchLogic.DISCARD
            self.check_at = now + self.idle
        return (), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[W], bool]:
        out = self._write(self.now()) if self.dirty else []
        # Retained for the recovery snapshot; this execution no longer holds it live.
        self._leave()
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.dirty:
            return self.write_at
        return self.check_at

    def snapshot(self) -> Throttled[S]:
        return Throttled(self.key, self.copy_state(), self.dirty)

    def _write(self, now: datetime) -> list[W]:
        self.dirty = False
        self.write_at = now + self.interval
        return self.emit()

    def _leave(self) -> None:
        if self.live:
            self.live = False
            item_metrics.live_states(self.kind).dec()


class NeighbourLogic(ThrottledLogic[PairChunk, FeatureRow, NeighbourSketch]):
    """One anchor's neighbour sketch; emits its ``item_neighbours`` row (rate-limited)."""

    kind = "neighbours"

    def __init__(
        self,
        config: ItemSignalsConfig,
        interval: timedelta,
        idle: timedelta,
        clock: EventClock,
        resume: Throttled[NeighbourSketch] | None = None,
        now: Clock = utc_now,
    ) -> None:
        super().__init__(interval, idle, resume, now)
        self.config = config
        self.clock = clock
        self.sketch = resume.state.copy() if resume is not None else NeighbourSketch()
        self.ingested_at: float | None = None

    def fold(self, values: list[PairChunk]) -> None:
        sketch, config = self.sketch, self.config.covisit
        for chunk in values:  # every update here is of this key's anchor
            sketch.add_pairs(chunk.updates, config)
        self.key = values[0].updates[0][0]
        self.ingested_at = max(chunk.ingested_at for chunk in values)

    def emit(self) -> list[FeatureRow]:
        cfg = self.config
        return [
            neighbour_row(self.key, self.sketch, cfg.covisit, cfg.neighbours_k, self.ingested_at)
        ]

    def copy_state(self) -> NeighbourSketch:
        return self.sketch.copy()

    def negligible(self) -> bool:
        weight = self.sketch.total_weight(self.config.covisit, self.clock.newest_us)
        return weight < self.config.epsilon


TrendOutput = FeatureRow | TrendUpdate


class TrendLogic(ThrottledLogic[list[Sequenced], TrendOutput, ItemTrend]):
    """One item's trend; emits its ``item_trending`` row and a copy for the board."""

    kind = "trending"

    def __init__(
        self,
        config: ItemSignalsConfig,
        interval: timedelta,
        idle: timedelta,
        clock: EventClock,
        resume: Throttled[ItemTrend] | None = None,
        now: Clock = utc_now,
    ) -> None:
        super().__init__(interval, idle, resume, now)
        self.config = config
        self.clock = clock
        self.trend = resume.state.copy() if resume is not None else ItemTrend()
        self.ingested_at: float | None = None

    def fold(self, values: list[list[Sequenced]]) -> None:
        trend, config = self.trend, self.config.trending
        ingested_at = 0.0
        for chunk in values:
            for arrival in chunk:
                fold(trend, arrival.event, config)
                ingested_at = max(ingested_at, arrival.ingested_at)
        self.key = values[0][0].event.item_id
        self.ingested_at = ingested_at

    def emit(self) -> list[TrendOutput]:
        row = trending_row(self.key, self.trend, self.config.trending, self.ingested_at)
        return [row, TrendUpdate(self.key, self.trend.copy())]

    def copy_state(self) -> ItemTrend:
        return self.trend.copy()

    def negligible(self) -> bool:
        return self.trend.is_negligible(self.config.trending, self.clock.newest_us)


class BoardState(NamedTuple):
    """Recovery state of the board: each item's latest trend (never mutated once received),
    the watermark, and the version of the last lists."""

    items: dict[str, ItemTrend]
    watermark_us: int
    version: int


class BoardLogic(ThrottledLogic[list[TrendUpdate], FeatureRow, BoardState]):
    """Every item's latest trend; emits the global and per-category trending lists."""

    kind = "board"

    def __init__(
        self,
        config: ItemSignalsConfig,
        interval: timedelta,
        idle: timedelta,
        resume: Throttled[BoardState] | None = None,
        now: Clock = utc_now,
    ) -> None:
        super().__init__(interval, idle, resume, now)
        self.config = config
        self.board = TrendingBoard(config.trending)
        self.version = 0
        if resume is not None:
            self.board.items = dict(resume.state.items)
            self.board.watermark_us = resume.state.watermark_us
            self.version = resume.state.version
        self.prune_at = max(MIN_PRUNE_SIZE, 2 * len(self.board.items))
        self.ingested_at: float | None = None

    def fold(self, values: list[list[TrendUpdate]]) -> None:
        board = self.board
        for chunk in values:
            for item, trend in chunk:
                board.items[item] = trend
                board.watermark_us = max(board.watermark_us, trend.last_us)
        if len(board.items) >= self.prune_at:
            board.prune()
            self.prune_at = max(MIN_PRUNE_SIZE, 2 * len(board.items))

    def emit(self) -> list[FeatureRow]:
        board = self.board
        self.version = max(self.version + 1, board.watermark_us)
        lists = trending_lists(board, self.config.trending_n)
        return list_rows(lists, board.watermark_us, self.version)

    def copy_state(self) -> BoardState:
        # The trends are replaced, never mutated, so a shallow copy is a true snapshot.
        return BoardState(dict(self.board.items), self.board.watermark_us, self.version)

    def negligible(self) -> bool:
        # The board is one key for the whole flow: keep it.
        return False
