"""The item signals dataflow: raw records -> co-visitation neighbours and trending -> store.

Steps (ids in quotes)::

    "input" -> "decode" -> "split" --events--> "key_sessions" -> "pairs" -> "shard_pairs"
                              |                 (recent items per session; pair updates)
                              |         -> "neighbours" (sketch per anchor) ---------------+
                              |--events--> "key_items" -> "trending" -> "split_trends"     |
                              |                (trend per item)  |rows     |trends         |
                              |                                  |         v               |
                              |                                  |   "key_board" -> "board"|
                              |                                  v     (trending lists)    v
                              |        "all_rows" -> "shard_rows" -> "batch_rows" -> "unkey_rows"
                              |                  -> "write" (feature store)
                              +--dead letters--> "dead_letters"

The logic is in :mod:`dataflows.item_logic` (rate limit, order, bounded memory) and in the core.
``python -m bytewax.run "dataflows.items:flow()"`` runs it; ``featrec run items`` launches that.

**Step ids are the recovery schema** (state lives under ``pairs``, ``neighbours``,
``trending``, ``board``, ``batch_rows`` and the input position under ``input``): add steps
freely, rename only together with a fresh recovery store. Do not share a recovery store with
the sessions flow.

Semantics as in the sessions flow: state is exactly-once under recovery, output at-least-once
and idempotent (rows carry strictly increasing versions). Every refused record (undecodable,
invalid, or with an item id reserved for the trending lists) reaches the dead-letter sink.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Final, TypeAlias, TypeGuard, TypeVar, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import KeyedStream
from bytewax.outputs import Sink

from dataflows import item_metrics
from dataflows.batching import micro_batch, shard_chunks, shard_of
from dataflows.gc_tuning import ITEMS_GC_THRESHOLDS, frozen_after, tune_gc
from dataflows.item_logic import (
    BoardLogic,
    BoardState,
    EventClock,
    EventPairs,
    NeighbourLogic,
    PairChunk,
    PairLogic,
    Sequenced,
    Throttled,
    TrendLogic,
    TrendOutput,
    TrendUpdate,
)
from dataflows.item_shards import (
    NeighbourShardLogic,
    PairShardLogic,
    TrendShardLogic,
    session_of,
)
from dataflows.metrics import FlowStats, reason_field
from dataflows.session_shards import Cooling, tombstone_sessions
from dataflows.sessions import (
    FORGOTTEN,
    ITEMS_DEAD_LETTER_FILE,
    DenySource,
    open_deny_watcher,
    open_online_writer,
    source_from_env,
)
from dataflows.sessions import dead_letter_sink as dead_letter_sink_for
from dataflows.sinks import FeatureSink, WriterFactory
from dataflows.sources import SourceItem
from featrec.adapters.sqlite.cold_sessions import ColdSessions
from featrec.app.item_signals import (
    TRENDING_KEY,
    ItemSignalsConfig,
    is_reserved,
    reserved_reason,
)
from featrec.core.events.batch_decode import Arrival, decode_records
from featrec.core.events.formats import DeadLetter, RawRecord
from featrec.core.events.model import Event
from featrec.core.features.rows import FeatureRow, micros
from featrec.core.items.covisit import NeighbourSketch, Pair, RecentItems
from featrec.core.items.trending import ItemTrend
from featrec.core.privacy import EMPTY, TOMBSTONE_FORMAT, DenySet, is_denied
from featrec.core.sessions.shard import Forget
from featrec.errors import ConfigError
from featrec.settings import FlowSettings, Settings

FLOW_ID: Final = "featrec_items"
#: Keys the row batches are sharded over (so several workers share them).
DEFAULT_SHARDS: Final = 4
#: Where a file-fed flow's dead letters go, under the featrec home.
DEAD_LETTER_FILE: Final = ITEMS_DEAD_LETTER_FILE
#: Suffix of the Redis dead-letter stream of a stream-fed flow (after the sessions' stream).

K = TypeVar("K")
X = TypeVar("X")
Decoded: TypeAlias = Sequenced | Forget | DeadLetter
#: What the batch shape's steps take: events, and tombstones' sessions at their place.
Input: TypeAlias = Sequenced | Forget


def decode_batch(
    records: list[SourceItem],
    seq: Iterator[int],
    clock: EventClock,
    stats: FlowStats,
    deny: DenySource | None = None,
) -> list[Decoded]:
    """Decode a source batch; each event gets the next arrival sequence number, and the
    process's event clock moves to the newest event time. Events of forgotten users or
    sessions are dropped and counted (``featrec_forgotten_events{what="item event"}``), as
    the sessions flow drops them: a replay of old history must not re-add their pairs. A
    tombstone (``featrec forget`` on a Redis stream) becomes a :class:`Forget` per session it
    names, at its place among the events (the pair step discards those sessions' items); a
    malformed one is a dead letter."""
    out: list[Decoded] = []
    letters: list[DeadLetter] = []
    newest: list[datetime] = []
    denied = deny.current() if deny is not None else EMPTY
    n_dropped = 0
    raw: list[RawRecord] = []

    def flush_run() -> None:
        nonlocal n_dropped
        if raw:
            n_dropped += _decode_run(raw, seq, denied, out, letters, newest)
            raw.clear()

    for record in records:
        if isinstance(record, DeadLetter):
            flush_run()
            out.append(record)
            letters.append(record)
        elif record.fmt == TOMBSTONE_FORMAT:
            flush_run()
            out.extend(_forgets(record, out, letters))
            if deny is not None:
                denied = deny.refresh()
        else:
            raw.append(record)
    flush_run()
    n_events = sum(1 for item in out if type(item) is Sequenced)
    if n_dropped:
        FORGOTTEN.labels(what="item event").inc(n_dropped)
    if newest:
        clock.advance(micros(max(newest)))
    if n_events:
        item_metrics.EVENTS_IN.inc(n_events)
    for letter in letters:
        item_metrics.REFUSED.labels(field=reason_field(letter.reason)).inc()
    stats.add(events_in=n_events, dead_letters=len(letters))
    return out


def _decode_run(
    raw: list[RawRecord],
    seq: Iterator[int],
    denied: DenySet,
    out: list[Decoded],
    letters: list[DeadLetter],
    newest: list[datetime],
) -> int:
    """Decode a run of records natively (one bad record costs only itself) into ``out``;
    how many events were dropped as forgotten."""
    dropped = 0
    latest: datetime | None = None
    for item in decode_records(raw):
        if type(item) is Arrival:
            event = item.event
            if denied and is_denied(event, denied):
                dropped += 1
                continue
            if not is_reserved(event.item_id):
                out.append(Sequenced(next(seq), event, item.ingested_at))
                if latest is None or event.ts > latest:
                    latest = event.ts
                continue
            letter = _reserved_letter(event, item.origin)
        else:
            letter = cast(DeadLetter, item)
        out.append(letter)
        letters.append(letter)
    if latest is not None:
        newest.append(latest)
    return dropped


def _forgets(record: RawRecord, out: list[Decoded], letters: list[DeadLetter]) -> list[Forget]:
    """A tombstone's sessions; a malformed one is a dead letter, in ``out`` too."""
    known = len(letters)
    sessions = tombstone_sessions(record, letters)
    out.extend(letters[known:])
    return [Forget(s) for s in sessions]


def _reserved_letter(event: Event, origin: str) -> DeadLetter:
    payload = json.dumps(event.to_dict(), separators=(",", ":"))
    return DeadLetter(origin, reserved_reason(event.item_id), payload)


def group_by(
    key: Callable[[Sequenced], str], batch: list[Sequenced]
) -> list[tuple[str, list[Sequenced]]]:
    """One ``(key, events)`` chunk per key of a batch, arrival order kept: keyed routing is
    paid per chunk, not per event."""
    groups: dict[str, list[Sequenced]] = {}
    for arrival in batch:
        k = key(arrival)
        group = groups.get(k)
        if group is None:
            groups[k] = [arrival]
        else:
            group.append(arrival)
    return list(groups.items())


def group_pairs(kvs: list[tuple[str, EventPairs]]) -> list[tuple[str, PairChunk]]:
    """Regroup the session step's pair updates by anchor, in arrival order of their events
    (the session step emits its keys in key order; the sequence number restores the order)."""
    return _grouped(sorted((m for _, m in kvs), key=_seq_of), _same)


def shard_pairs(
    shards: int, kvs: list[tuple[str, list[EventPairs]]]
) -> list[tuple[str, PairChunk]]:
    """:func:`group_pairs` for the batch shape: one chunk per shard of the anchors."""
    return _grouped(
        sorted((m for _, ms in kvs for m in ms), key=_seq_of), partial(shard_of, shards=shards)
    )


def _grouped(made: list[EventPairs], route: Callable[[str], str]) -> list[tuple[str, PairChunk]]:
    """The pair updates of ``made`` grouped by ``route(anchor)`` (order kept), counted.

    ``route`` is called once per anchor and batch (for the batch shape it is a crc32); this
    loop runs ~9 times per event, so it is kept flat."""
    keys: dict[str, str] = {}
    groups: dict[str, list[Pair]] = {}
    newest = 0.0
    n_updates = 0
    for event_pairs in made:
        newest = max(newest, event_pairs.ingested_at)
        updates = event_pairs.updates
        n_updates += len(updates)
        for update in updates:
            anchor = update[0]
            k = keys.get(anchor)
            if k is None:
                k = keys[anchor] = route(anchor)
            group = groups.get(k)
            if group is None:
                groups[k] = [update]
            else:
                group.append(update)
    if n_updates:
        item_metrics.PAIR_UPDATES.inc(n_updates)
    return [(k, PairChunk(newest, updates)) for k, updates in groups.items()]


def shard_by(key: Callable[[X], str], shards: int, batch: list[X]) -> list[tuple[str, list[X]]]:
    """One ``(shard, events)`` chunk per shard of ``key`` (arrival order kept)."""
    return shard_chunks(batch, key, shards)


def shard_events(
    key: Callable[[Sequenced], str], shards: int, batch: list[Input]
) -> list[tuple[str, list[Sequenced]]]:
    """:func:`shard_by` over the events of ``batch`` (a tombstone's sessions left out)."""
    return shard_chunks([x for x in batch if type(x) is Sequenced], key, shards)


def add_item_signals(
    arrivals: Stream[Sequenced],
    settings: Settings,
    config: ItemSignalsConfig,
    clock: EventClock,
) -> KeyedStream[FeatureRow]:
    """Add the item signal steps to ``arrivals``' flow; returns the rows to write (keyed by
    entity, rate-limited per key)."""
    interval = timedelta(seconds=settings.item_write_interval_s)
    idle = timedelta(seconds=settings.item_idle_s)
    # A session buffer must live at least as long as its items can still pair.
    ttl = timedelta(seconds=max(settings.state_ttl, config.covisit.window_s))
    if ttl <= timedelta(0):
        raise ConfigError(f"state TTL must be positive, got {settings.state_ttl} s")

    def pairs_builder(resume: RecentItems | None) -> PairLogic:
        return PairLogic(config, ttl, resume)

    def neighbours_builder(resume: Throttled[NeighbourSketch] | None) -> NeighbourLogic:
        return NeighbourLogic(config, interval, idle, clock, resume)

    def trending_builder(resume: Throttled[ItemTrend] | None) -> TrendLogic:
        return TrendLogic(config, interval, idle, clock, resume)

    def board_builder(resume: Throttled[BoardState] | None) -> BoardLogic:
        return BoardLogic(config, interval, idle, resume)

    def is_row(kv: tuple[str, TrendOutput]) -> TypeGuard[tuple[str, FeatureRow]]:
        return isinstance(kv[1], FeatureRow)

    def to_board(kvs: list[tuple[str, TrendUpdate]]) -> list[tuple[str, list[TrendUpdate]]]:
        return [(TRENDING_KEY, [update for _, update in kvs])]

    by_session = op.flat_map_batch("key_sessions", arrivals, partial(group_by, session_of))
    made = op.stateful_batch("pairs", by_session, pairs_builder)
    by_anchor = op.flat_map_batch("shard_pairs", made, group_pairs)
    neighbour_rows = op.stateful_batch("neighbours", by_anchor, neighbours_builder)

    by_item = op.flat_map_batch("key_items", arrivals, partial(group_by, _item_of))
    trends = op.stateful_batch("trending", by_item, trending_builder)
    split = op.branch("split_trends", trends, is_row)
    trend_rows = split.trues
    updates = cast(KeyedStream[TrendUpdate], split.falses)
    board_rows = op.stateful_batch(
        "board", op.flat_map_batch("key_board", updates, to_board), board_builder
    )
    return op.merge("all_rows", neighbour_rows, trend_rows, board_rows)


def add_sharded_item_signals(
    arrivals: Stream[Input],
    settings: Settings,
    config: ItemSignalsConfig,
    clock: EventClock,
    shards: int,
    cooling: Cooling | None = None,
    deny: DenySource | None = None,
) -> KeyedStream[list[FeatureRow]]:
    """:func:`add_item_signals` in the batch shape (:mod:`dataflows.item_shards`): sessions,
    anchors and items folded per shard; rows leave as one list per shard and activation.
    ``cooling``: the pair step's store of idle sessions (default: none)."""
    interval_s = settings.item_write_interval_s
    idle_s = settings.item_idle_s
    ttl_s = max(settings.state_ttl, config.covisit.window_s)
    if ttl_s <= 0:
        raise ConfigError(f"state TTL must be positive, got {settings.state_ttl} s")

    def pairs_builder(resume: bytes | None) -> PairShardLogic:
        return PairShardLogic(
            config,
            ttl_s,
            resume,
            cooling=cooling,
            key_of=partial(shard_of, shards=shards),
            deny=deny,
        )

    def neighbours_builder(resume: bytes | None) -> NeighbourShardLogic:
        return NeighbourShardLogic(config, interval_s, idle_s, clock, resume)

    def trending_builder(resume: bytes | None) -> TrendShardLogic:
        return TrendShardLogic(config, interval_s, idle_s, clock, resume)

    def board_builder(resume: Throttled[BoardState] | None) -> BoardLogic:
        return BoardLogic(config, timedelta(seconds=interval_s), timedelta(seconds=idle_s), resume)

    def rows_of(out: list[FeatureRow | TrendUpdate]) -> list[FeatureRow]:
        return [x for x in out if type(x) is FeatureRow]

    def to_board(
        kvs: list[tuple[str, list[FeatureRow | TrendUpdate]]],
    ) -> list[tuple[str, list[TrendUpdate]]]:
        updates = [x for _, out in kvs for x in out if type(x) is TrendUpdate]
        return [(TRENDING_KEY, updates)] if updates else []

    by_session = op.flat_map_batch(
        "shard_sessions", arrivals, partial(shard_by, session_of, shards)
    )
    made = op.stateful_batch("pair_shards", by_session, pairs_builder)
    by_anchor = op.flat_map_batch("shard_pairs", made, partial(shard_pairs, shards))
    neighbour_rows = op.stateful_batch("neighbour_shards", by_anchor, neighbours_builder)

    by_item = op.flat_map_batch("shard_items", arrivals, partial(shard_events, _item_of, shards))
    trends = op.stateful_batch("trend_shards", by_item, trending_builder)
    trend_rows = op.map_value("trend_rows", trends, rows_of)
    board = op.stateful_batch(
        "board", op.flat_map_batch("key_board", trends, to_board), board_builder
    )
    # The board's few rows leave one at a time (as in the per-event shape): listed here, so
    # every step after "all_rows" sees lists of rows whatever the shape.
    board_rows = op.map_value("board_rows", board, _listed)
    return op.merge("all_rows", neighbour_rows, trend_rows, board_rows)


def build_flow(
    source: Source[SourceItem],
    settings: Settings,
    *,
    writer_factory: WriterFactory,
    dead_letter_sink: Sink[DeadLetter],
    config: ItemSignalsConfig | None = None,
    shards: int = DEFAULT_SHARDS,
    status_home: Path | None = None,
    stats: FlowStats | None = None,
    clock: EventClock | None = None,
    deny: DenySource | None = None,
    cooling: Cooling | None = None,
) -> Dataflow:
    """The item signals dataflow over ``source``, writing rows through ``writer_factory()``.

    ``config`` defaults to :meth:`ItemSignalsConfig.from_settings`; ``status_home`` enables
    the status file ``<home>/status/items-w<N>.json``; ``deny`` gives the deny-list of
    forgotten users (default: nothing denied); ``cooling`` the pair step's store of idle
    sessions (batch shape only; default: none, every session stays in memory for the TTL).
    """
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    config = config if config is not None else ItemSignalsConfig.from_settings(settings)
    stats = stats if stats is not None else FlowStats()
    clock = clock if clock is not None else EventClock()
    deadline = timedelta(milliseconds=settings.batch_deadline_ms)
    seq = itertools.count()

    def is_input(item: Decoded) -> TypeGuard[Input]:
        return not isinstance(item, DeadLetter)

    def shard_rows(kvs: list[tuple[str, list[FeatureRow]]]) -> list[tuple[str, list[FeatureRow]]]:
        return shard_chunks([row for _, out in kvs for row in out], _row_key, shards)

    flow = Dataflow(FLOW_ID)
    records = op.input("input", flow, source)
    decoded = op.flat_map_batch(
        "decode", records, partial(decode_batch, seq=seq, clock=clock, stats=stats, deny=deny)
    )
    split = op.branch("split", decoded, is_input)
    rows: KeyedStream[list[FeatureRow]]
    if settings.flow_shape == "per-event":
        # The baseline shape takes events only: a tombstone's sessions keep their recent items
        # there until the TTL (the batch shape discards them).
        events = op.filter("events_only", split.trues, _is_event)
        rows = op.map_value(
            "row_lists",
            add_item_signals(cast(Stream[Sequenced], events), settings, config, clock),
            _listed,
        )
    else:
        rows = add_sharded_item_signals(
            split.trues, settings, config, clock, shards, cooling=cooling, deny=deny
        )
    op.output("dead_letters", cast(Stream[DeadLetter], split.falses), dead_letter_sink)

    chunks = op.flat_map_batch("shard_rows", rows, shard_rows)
    batches = micro_batch("batch_rows", chunks, settings.batch_max_rows, deadline)
    sink = FeatureSink(writer_factory, stats=stats, status_home=status_home, flow_name="items")
    op.output("write", op.key_rm("unkey_rows", batches), sink)
    return flow


def _listed(row: FeatureRow) -> list[FeatureRow]:
    return [row]


def _seq_of(made: EventPairs) -> int:
    return made.seq


def _is_event(item: Input) -> bool:
    return type(item) is Sequenced


def _item_of(arrival: Sequenced) -> str:
    return arrival.event.item_id


def _same(anchor: str) -> str:
    return anchor


def _row_key(row: FeatureRow) -> str:
    return row.key


def dead_letter_sink(
    settings: Settings, source: Source[SourceItem], environ: Mapping[str, str] | None = None
) -> Sink[DeadLetter]:
    """The flow's own dead letters (the sessions flow reports the same bad records in its
    own): the topic ``<dead-letter topic>.items`` for a Kafka source, the stream
    ``<dead-letter stream>:items`` for a Redis source, else ``<home>/deadletters-items.jsonl``."""
    env = os.environ if environ is None else environ
    return dead_letter_sink_for(env, settings, source, items=True)


def flow(environ: Mapping[str, str] | None = None) -> Dataflow:
    """Factory for ``python -m bytewax.run "dataflows.items:flow()"``.

    Settings and the source come from the same ``FEATREC_*`` variables as the sessions flow
    (``FEATREC_SOURCE``, ``FEATREC_SOURCE_FORMAT``, ``FEATREC_REPLAY_SPEED``).
    """
    env = os.environ if environ is None else environ
    tune_gc(ITEMS_GC_THRESHOLDS)
    settings = Settings.from_env(env)
    source = source_from_env(env, settings)
    # Not exclusive: `featrec items bootstrap` may write the same rows (each row is guarded).
    factory: WriterFactory = frozen_after(partial(open_online_writer, settings, exclusive=False))
    return build_flow(
        source,
        settings,
        writer_factory=factory,
        dead_letter_sink=dead_letter_sink(settings, source, env),
        status_home=settings.home,
        deny=open_deny_watcher(settings),
        cooling=cooling_from_env(env, settings),
    )


def cooling_from_env(environ: Mapping[str, str], settings: Settings) -> Cooling | None:
    """The pair step's store of idle sessions: the directory ``items`` inside the one
    ``FEATREC_COLD_SESSIONS`` names (so the two flows never share a shard's file), with
    ``FEATREC_SESSION_COOL_S``; None without one or in the per-event shape. (The pair step
    ignores a cool-down not shorter than its TTL, the longer of the state TTL and the
    co-visitation window.)"""
    flow_settings = FlowSettings.from_env(environ)
    path = flow_settings.cold_sessions
    if path is None or settings.flow_shape != "batch":
        return None
    return Cooling(ColdSessions(path / "items"), flow_settings.session_cool_s)
