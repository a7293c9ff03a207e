"""Replay evaluation: the production recommender asked at every prediction point of a replay.

``featrec evaluate`` replays the test events, in time order, through the real sessions dataflow
into the real online store. This module is the part that does not know about Bytewax or Feast:

- :class:`ReplayGate` hands the flow's source one event at a time and waits until that event's
  session row has been **written** (the flow's sink reports it) before releasing the next one.
  The flow coalesces a session's events that arrive together into one row; one event in flight
  at a time is what lets every prediction point see its own event, as a shopper would.
- When the row is written, the gate reads it back through the store (:class:`RowReader`): that
  read is the "readable" moment the freshness histogram measures from the event's release.
  The rows written since the source's last poll are read back together, in one store read
  (:meth:`ReplayGate.settle`, called before anything is released), and every policy sees the
  session row so read (the store holds it until the session's next event is released) rather
  than reading it again.
- Then every policy answers for the point through a
:class:`~featrec.app.serving.recommender.Recommender`
  (the serving code, not a re-implementation), each with its own view of the store:

  ============== ==================================================================
  popularity     the ``K`` most clicked training items, the same for everyone
  batch-only     the store as a nightly batch system has it: no session row (the
                 answer is the degraded one: user history, trending at the cutoff)
  session-only   the session row, candidates in their co-visitation order, no ranker
  full           session row + batch features + learned ranker (the item model among its
                 candidate sources and features)
  item-model     the session row's items scored by the batch-trained item model alone
                 (``item_model`` rows), no ranker
  stale-1s/1m/1h full, but the session row as it was that long ago (freshness ablation)
  ============== ==================================================================

Item signals (neighbours, trending) and batch features are frozen at the training cutoff, as
the protocol asks (statistics learned from training data only).
"""

from __future__ import annotations

import bisect
import heapq
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from featrec.app.serving.config import NO_SESSION, STORE_FAILED, STORE_UNREACHABLE
from featrec.app.serving.recommender import LoadedModel, Recommender, ServingConfig
from featrec.core.evaluation.protocol import PredictionPoint
from featrec.core.events.model import Event
from featrec.core.features.catalog import SESSION_FEATURES
from featrec.core.features.rows import FeatureRow
from featrec.core.items.order import best_first
from featrec.core.ports.serving import (
    Found,
    RequestRecord,
    RowReader,
    StampedRow,
    Wanted,
)
from featrec.core.ranking.rerank import RerankConfig
from featrec.errors import ConfigError, FeatrecError

POPULARITY: Final = "popularity"
BATCH_ONLY: Final = "batch-only"
SESSION_ONLY: Final = "session-only"
FULL: Final = "full"
ITEM_MODEL: Final = "item-model"
#: Staleness ablation: the full policy with the session row delayed by this many seconds.
STALE: Final = {"stale-1s": 1.0, "stale-1m": 60.0, "stale-1h": 3600.0}
POLICIES: Final = (POPULARITY, BATCH_ONLY, SESSION_ONLY, ITEM_MODEL, FULL, *STALE)
#: Policies that need a learned model.
NEEDS_MODEL: Final = frozenset({FULL, *STALE})
#: Policies that read the batch-trained item model.
NEEDS_ITEM_MODEL: Final = frozenset({ITEM_MODEL, *NEEDS_MODEL})


def parse_policies(spec: str) -> list[str]:
    """``"full,session-only"`` -> a checked list (``"all"``: every policy)."""
    names = [p.strip() for p in spec.split(",") if p.strip()]
    if names == ["all"]:
        return list(POLICIES)
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise ConfigError(
            f"unknown policy {', '.join(unknown) or '(none)'}: choose from {', '.join(POLICIES)}"
        )
    return list(dict.fromkeys(names))


def evaluation_config(base: ServingConfig | None = None) -> ServingConfig:
    """The serving config a replay measures with: accuracy only, so the rerank knobs that trade
    accuracy for user experience (category cap, list stability) are off, and a session row is
    never judged stale by the wall clock (the replay clock is event time). The candidate knobs,
    ``rank_top`` and the popularity damping are ``base``'s (tuned by a replay)."""
    cfg = base if base is not None else ServingConfig()
    return ServingConfig(
        max_session_age_s=max(cfg.max_session_age_s, 2 * max(STALE.values())),
        max_user_age_s=None,
        item_cache_s=3600.0,
        item_cache_rows=cfg.item_cache_rows,
        store_retry_s=cfg.store_retry_s,
        candidates=cfg.candidates,
        rerank=RerankConfig(drop_purchased=True, popularity_damping=cfg.rerank.popularity_damping),
        cache_sessions=cfg.cache_sessions,
        rank_top=cfg.rank_top,
    )


class ReplayClock:
    """Event time of the point being answered (the recommenders' clock)."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


class SessionHistory:
    """Every session row the replay read back, with the event time it became readable."""

    def __init__(self) -> None:
        self._times: dict[str, list[float]] = {}
        self._rows: dict[str, list[StampedRow]] = {}

    def record(self, session_id: str, at_s: float, row: StampedRow) -> None:
        self._times.setdefault(session_id, []).append(at_s)
        self._rows.setdefault(session_id, []).append(row)

    def as_of(self, session_id: str, at_s: float) -> StampedRow | None:
        """The newest row readable at ``at_s`` (None: the session had no row yet)."""
        times = self._times.get(session_id)
        if not times:
            return None
        i = bisect.bisect_right(times, at_s)
        return self._rows[session_id][i - 1] if i else None


class FrozenRows:
    """A :class:`RowReader` that reads each row of every view but ``session_features`` from
    ``base`` once and keeps it: in a replay those rows (item signals, batch features, the item
    model) are frozen at the training cutoff, so every policy's recommender shares one read of
    each instead of each reading it through its own cache. The replay gate refuses a write of
    any other view than ``session_features`` (:meth:`ReplayGate.rows_written`), which is what
    makes keeping them exact."""

    def __init__(self, base: RowReader) -> None:
        self.base = base
        self._views: dict[str, dict[str, StampedRow | None]] = {}

    def prefetch(self, wanted: Wanted, chunk: int = 1000) -> int:
        """Read and keep ``wanted`` (rows of views other than ``session_features``) now, in
        reads of at most ``chunk`` keys; returns how many rows were found. Before answering
        processes are forked, this spares each of them reading the same rows itself."""
        found = 0
        for view, keys in wanted.items():
            if view == SESSION_FEATURES.name:
                raise ValueError("session rows are not frozen")
            for start in range(0, len(keys), chunk):
                rows = self.read_rows({view: keys[start : start + chunk]})[view]
                found += sum(row is not None for row in rows)
        return found

    def read_rows(self, wanted: Wanted) -> Found:
        out: Found = {}
        missing: dict[str, list[str]] = {}
        for view, keys in wanted.items():
            if view == SESSION_FEATURES.name:
                missing[view] = list(keys)
                continue
            kept = self._views.setdefault(view, {})
            absent = [key for key in keys if key not in kept]
            if absent:
                missing[view] = list(dict.fromkeys(absent))
        fetched = self.base.read_rows(missing) if missing else {}
        for view, keys in wanted.items():
            if view == SESSION_FEATURES.name:
                out[view] = fetched[view]
                continue
            kept = self._views[view]
            if view in fetched:
                kept.update(zip(missing[view], fetched[view], strict=True))
            out[view] = [kept[key] for key in keys]
        return out


class SessionView:
    """A :class:`RowReader` that serves every view from ``base`` except ``session_features``,
    which comes from ``history`` as of ``delay_s`` before the clock (``delay_s=None``: never,
    the batch-only view)."""

    def __init__(
        self,
        base: RowReader,
        history: SessionHistory,
        clock: ReplayClock,
        delay_s: float | None,
    ) -> None:
        self.base = base
        self.history = history
        self.clock = clock
        self.delay_s = delay_s

    def session_row(self, session_id: str) -> StampedRow | None:
        """The session row this view serves now."""
        delay = self.delay_s
        return None if delay is None else self.history.as_of(session_id, self.clock.now_s - delay)

    def read_rows(self, wanted: Wanted) -> Found:
        rest = {view: keys for view, keys in wanted.items() if view != SESSION_FEATURES.name}
        found = self.base.read_rows(rest) if rest else {}
        keys = wanted.get(SESSION_FEATURES.name)
        if keys is not None:
            found[SESSION_FEATURES.name] = [self.session_row(key) for key in keys]
        return {view: found[view] for view in wanted}


@dataclass(slots=True)
class PointAnswer:
    """What every policy answered at one prediction point."""

    point: PredictionPoint
    lists: dict[str, list[str]] = field(default_factory=dict)
    degraded: dict[str, bool] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: Release of the event to the flow -> its session row read back from the store.
    freshness_ms: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "point": self.point.to_dict(),
            "lists": self.lists,
            "degraded": self.degraded,
            "latency_ms": self.latency_ms,
            "freshness_ms": self.freshness_ms,
        }


@dataclass(slots=True)
class ReplayStats:
    released: int = 0
    rows_written: int = 0
    dead_letters: int = 0
    points: int = 0
    #: Rows that were not readable right after their write (should stay 0).
    unreadable: int = 0
    freshness_ms: list[float] = field(default_factory=list)


class DiscardedRequestLog:
    """A request log that keeps nothing and never builds a record (a replay explains no
    request: building each log body would cost more than answering)."""

    def append(self, record: RequestRecord) -> None:
        return None

    def append_deferred(self, build: Callable[[], RequestRecord]) -> None:
        return None

    def get(self, request_id: str) -> RequestRecord | None:
        return None

    def close(self) -> None:
        return None


class Policies:
    """One recommender per policy, each with its own view of the store (see the module doc)."""

    def __init__(
        self,
        names: Sequence[str],
        rows: RowReader,
        model: LoadedModel | None,
        popular: Sequence[str],
        k: int,
        config: ServingConfig | None = None,
        *,
        share_degraded: bool = True,
    ) -> None:
        if model is None and NEEDS_MODEL.intersection(names):
            raise ConfigError(
                f"policies {', '.join(sorted(NEEDS_MODEL.intersection(names)))} need a model"
            )
        self.names = list(names)
        self.k = k
        self.popular = list(popular[:k])
        self.clock = ReplayClock()
        self.history = SessionHistory()
        self.rows = rows
        #: The rows every recommender reads besides the session's, read once (see FrozenRows).
        self.frozen = FrozenRows(rows)
        cfg = evaluation_config(config)
        # session-only stays the co-visitation scorer alone; item-model orders by the model.
        configs = {
            SESSION_ONLY: replace(cfg, candidates=replace(cfg.candidates, max_model=0)),
            ITEM_MODEL: replace(cfg, candidates=replace(cfg.candidates, order="model")),
        }
        self.recommenders: dict[str, Recommender] = {}
        self.views: dict[str, SessionView] = {}
        #: Whether a policy without a session row at a point may take the no-session answer
        #: another policy with the same serving config computed there (see :meth:`answer`);
        #: off for good after any answer degraded by the store.
        self.share_degraded = share_degraded
        #: Answers so taken instead of computed.
        self.shared = 0
        for name in self.names:
            if name == POPULARITY:
                continue
            # Every policy sees the session row the gate read back from the store when the
            # point's event settled (delay 0: that row itself, the store's content until
            # the session's next event is released), not a read of its own.
            delay: float | None = 0.0
            if name == BATCH_ONLY:
                delay = None
            elif name in STALE:
                delay = STALE[name]
            self.views[name] = SessionView(self.frozen, self.history, self.clock, delay)
            self.recommenders[name] = Recommender(
                self.views[name],
                DiscardedRequestLog(),
                model=None if name in (SESSION_ONLY, ITEM_MODEL) else model,
                config=configs.get(name, cfg),
                clock=self.clock,
            )

    def use_rows(self, rows: RowReader) -> None:
        """Read the store through ``rows`` from now on (an answering process opens its own
        reader: a store connection is not shared across ``fork``)."""
        self.rows = rows
        self.frozen.base = rows

    def add_variant(
        self, name: str, model: LoadedModel | None, config: ServingConfig | None = None
    ) -> None:
        """Answer also as ``name``: the full policy's view (the live session row) with its own
        ``model`` (None: the candidate order) and serving ``config`` (through
        :func:`evaluation_config`). Tuning replays many configurations in one pass this way."""
        if name in self.names or name in POLICIES:
            raise ConfigError(f"variant name {name!r} is a policy's or already answering")
        self.names.append(name)
        self.views[name] = SessionView(self.frozen, self.history, self.clock, 0.0)
        self.recommenders[name] = Recommender(
            self.views[name],
            DiscardedRequestLog(),
            model=model,
            config=evaluation_config(config),
            clock=self.clock,
        )

    def answer(self, point: PredictionPoint, answer: PointAnswer) -> None:
        """Every policy's list at ``point``.

        A policy that sees no session row at the point (batch-only always; a stale view
        before its delay has passed since the session's first event) answers the degraded,
        no-session answer, computed from the point (session id, user, time, ``k``), the rows
        frozen at the cutoff and its serving config alone: its model and its session view do
        not enter. So when another policy with the same config object computed that answer at
        this point, it takes that list (and that latency) instead of computing it again. A
        store failure anywhere turns this off: a failed read degrades differently."""
        self.clock.now_s = point.at_s
        no_session: dict[int, tuple[list[str], float]] = {}
        for name in self.names:
            t0 = time.perf_counter()
            if name == POPULARITY:
                items, degraded = list(self.popular), False
                latency = (time.perf_counter() - t0) * 1000
            else:
                recommender = self.recommenders[name]
                key = None
                if self.share_degraded and self.views[name].session_row(point.session_id) is None:
                    key = id(recommender.config)
                    taken = no_session.get(key)
                    if taken is not None:
                        answer.lists[name] = list(taken[0])
                        answer.degraded[name] = True
                        answer.latency_ms[name] = taken[1]
                        self.shared += 1
                        continue
                got = recommender.recommend(point.session_id, point.user_id, self.k)
                items, degraded = [i.item_id for i in got.items], got.degraded
                latency = (time.perf_counter() - t0) * 1000
                if got.degraded_code in (STORE_UNREACHABLE, STORE_FAILED):
                    self.share_degraded = False
                elif key is not None and got.degraded_code == NO_SESSION:
                    no_session[key] = (items, latency)
            answer.latency_ms[name] = latency
            answer.lists[name] = items
            answer.degraded[name] = degraded


class Answering(Protocol):
    """Where the gate sends each settled event: its session row as read back (None: not
    readable) and its prediction point (None: the session's last event), for every policy to
    answer in the session's order. :class:`SerialAnswers` answers in the gate's own process;
    :class:`featrec.app.evaluation.answer_pool.AnswerPool` in worker processes that each own
    whole sessions."""

    def settled(
        self,
        session_id: str,
        at_s: float,
        row: StampedRow | None,
        point: PredictionPoint | None,
        freshness_ms: float,
    ) -> None: ...

    def flush(self) -> None:
        """The gate settled a batch of events (a pool sends what it holds)."""

    def close(self) -> None:
        """Every event has settled: finish answering (a pool waits for its workers)."""


class SerialAnswers:
    """Every policy answers at once, in the caller's process, each point as it settles."""

    def __init__(self, policies: Policies, out: Callable[[PointAnswer], None]) -> None:
        self.policies = policies
        self.out = out

    def settled(
        self,
        session_id: str,
        at_s: float,
        row: StampedRow | None,
        point: PredictionPoint | None,
        freshness_ms: float,
    ) -> None:
        if row is not None:
            self.policies.history.record(session_id, at_s, row)
        if point is not None:
            answer = PointAnswer(point, freshness_ms=freshness_ms)
            self.policies.answer(point, answer)
            self.out(answer)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class ReplayGate:
    """Lock-step per session between the flow's source and its feature sink (module doc).

    Up to ``concurrency`` sessions have an event in flight at once, **never two events of one
    session**: an event is released only after its session's previous event has settled (its
    row written and read back, or its dead letter), so every point sees its own session's last
    event, whatever the concurrency. Events are released in time order, except that an event
    whose session is busy waits while later events of other sessions go ahead. With
    ``concurrency=1`` this is the one-event-at-a-time replay.

    The source calls :meth:`release_batch` (or :meth:`release`) until it returns None (all
    events released); it gets an empty list / ``False`` while nothing can be released. The
    sink calls :meth:`rows_written` after each successful write; the dead-letter sink calls
    :meth:`dead_lettered`.
    """

    def __init__(
        self,
        events: Sequence[Event],
        points: Sequence[PredictionPoint | None],
        rows: RowReader,
        policies: Policies,
        out: Callable[[PointAnswer], None],
        *,
        timeout_s: float = 30.0,
        monotonic: Callable[[], float] = time.perf_counter,
        on_finish: Callable[[ReplayStats], None] | None = None,
        concurrency: int = 1,
        answering: Answering | None = None,
    ) -> None:
        if len(events) != len(points):
            raise ValueError(f"{len(points)} points for {len(events)} events")
        if concurrency < 1:
            raise ConfigError(f"replay concurrency must be >= 1, got {concurrency}")
        self.events = events
        self.points = points
        self.rows = rows
        self.policies = policies
        self.out = out
        self.timeout_s = timeout_s
        self.monotonic = monotonic
        self.concurrency = concurrency
        #: Who answers the settled points (default: ``policies``, here, as they settle).
        self.answering: Answering = (
            answering if answering is not None else SerialAnswers(policies, out)
        )
        self.stats = ReplayStats()
        self._next = 0
        #: Session -> (index of its event in flight, release time).
        self._in_flight: dict[str, tuple[int, float]] = {}
        #: Events held back because their session was busy, per session in time order, and
        #: the heads of those queues that may go once their session settles.
        self._held: dict[str, deque[int]] = {}
        self._ready: list[int] = []
        #: Sessions whose row was written and not yet read back -> their flight.
        self._written: dict[str, tuple[int, float]] = {}
        self._on_finish = on_finish
        self._finished = False

    @property
    def done(self) -> bool:
        return (
            self._next >= len(self.events)
            and not self._in_flight
            and not self._ready
            and not self._held
        )

    def release(self) -> Event | bool | None:
        """One event to send, ``False`` to wait, None when every event has been sent."""
        batch = self.release_batch(1)
        if batch is None:
            return None
        return batch[0] if batch else False

    def release_batch(self, limit: int | None = None) -> list[Event] | None:
        """The events that may be sent now (at most ``limit``), ``[]`` to wait, None when
        every event has been sent and settled."""
        self.settle()
        self._check_timeouts()
        out: list[Event] = []
        room = self.concurrency - len(self._in_flight)
        if limit is not None:
            room = min(room, limit)
        while room > 0:
            index = self._take()
            if index is None:
                break
            event = self.events[index]
            if event.session_id in self._in_flight:
                self._held.setdefault(event.session_id, deque()).append(index)
                continue
            self._in_flight[event.session_id] = (index, self.monotonic())
            self.stats.released += 1
            out.append(event)
            room -= 1
        if not out and self.done:
            self._finish()
            return None
        return out

    def _take(self) -> int | None:
        """The earliest event not yet released or held."""
        if self._ready and (self._next >= len(self.events) or self._ready[0] < self._next):
            return heapq.heappop(self._ready)
        if self._next < len(self.events):
            self._next += 1
            return self._next - 1
        return None

    def _check_timeouts(self) -> None:
        now = self.monotonic()
        for index, released_at in self._in_flight.values():
            if now - released_at > self.timeout_s:
                event = self.events[index]
                raise FeatrecError(
                    f"event {event.event_id} (session {event.session_id}) produced neither a "
                    f"row nor a dead letter within {self.timeout_s:g} s"
                )

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self.answering.close()
            if self._on_finish is not None:
                self._on_finish(self.stats)

    def rows_written(self, rows: Sequence[FeatureRow]) -> None:
        """The sink wrote ``rows``: their events settle at the next :meth:`settle` (the source
        calls it before releasing anything), so that the rows written meanwhile are read back
        from the store in one read and their points answered together."""
        for row in rows:
            if row.view != SESSION_FEATURES.name:
                raise FeatrecError(
                    f"a {row.view!r} row was written during the replay: the replay keeps every "
                    "view but session_features frozen at the training cutoff"
                )
            self.stats.rows_written += 1
            flight = self._in_flight.get(row.key)
            if flight is None or row.key in self._written:
                raise FeatrecError(
                    f"session row {row.key!r} written while no event of that session was in "
                    "flight: the replay is not in lock-step"
                )
            self._written[row.key] = flight

    def settle(self) -> int:
        """Read back every session row written since the last call (one store read), answer
        their points in event order, and unblock their sessions; returns how many settled."""
        if not self._written:
            return 0
        written = sorted(self._written.items(), key=lambda kv: kv[1][0])
        self._written = {}
        keys = [session for session, _ in written]
        found = self.rows.read_rows({SESSION_FEATURES.name: keys})[SESSION_FEATURES.name]
        readable = self.monotonic()
        for (session, (index, released_at)), row in zip(written, found, strict=True):
            self._settle(session, index, released_at, row, readable)
        self.answering.flush()
        return len(written)

    def dead_lettered(self, count: int = 1, session_ids: Sequence[str | None] = ()) -> None:
        """``count`` events were refused; ``session_ids`` names their sessions where known
        (needed when several sessions are in flight)."""
        self.stats.dead_letters += count
        for n in range(count):
            session = session_ids[n] if n < len(session_ids) else None
            if session is None and len(self._in_flight) == 1:
                session = next(iter(self._in_flight))
            if session is None or session not in self._in_flight:
                raise FeatrecError(
                    "a dead letter whose session is not known while several events are in "
                    "flight: the replay cannot tell which event settled"
                )
            self._unblock(session)

    def _unblock(self, session_id: str) -> None:
        del self._in_flight[session_id]
        held = self._held.get(session_id)
        if held:
            heapq.heappush(self._ready, held.popleft())
            if not held:
                del self._held[session_id]

    def _settle(
        self,
        session_id: str,
        index: int,
        released_at: float,
        row: StampedRow | None,
        readable_at: float,
    ) -> None:
        event = self.events[index]
        freshness = (readable_at - released_at) * 1000
        self.stats.freshness_ms.append(freshness)
        at_s = event.ts.timestamp()
        if row is None:
            self.stats.unreadable += 1
        point = self.points[index]
        if point is not None:
            self.stats.points += 1
        self.answering.settled(event.session_id, at_s, row, point, freshness)
        self._unblock(session_id)


def most_popular(events: Sequence[Event], k: int) -> list[str]:
    """The ``k`` items with the most training events (ties by item id)."""
    counts = training_popularity(events)
    return [item for item, _ in sorted(counts.items(), key=best_first)[:k]]


def training_popularity(events: Sequence[Event]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for event in events:
        counts[event.item_id] = counts.get(event.item_id, 0.0) + 1.0
    return counts
