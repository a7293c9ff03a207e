"""The sessions dataflow: raw records -> validated events -> per-session features -> store.

Steps (ids in quotes)::

    "input" -> "decode" -> "split" --events--> "key_session" -> "session" -> "split_late"
                              |                  (fold per session; a TTL timer frees the key)
                              |                                 |rows         |late events
                              |         "shard_rows" <----------+             v
                              |         -> "batch_rows" -> "unkey_rows"   "late_letters"
                              |         -> "write" (feature store)            |
                              |--events--> "shard_events" -> "batch_events"    |
                              |            -> "unkey_events" -> "event_log"    |
                              +--dead letters--> "all_dead_letters" <----------+
                                                 -> "dead_letters"

**Step ids are the recovery schema**: bytewax stores state under them (``session``,
``batch_rows``, ``batch_events``, and the input position under ``input``). Renaming or
removing one makes a recovery store written by the old flow unusable. Add steps freely;
rename only together with a fresh recovery store.

Forgetting (:mod:`featrec.core.privacy`): events of a forgotten user or session are dropped at
"decode" and counted in ``featrec_forgotten_events`` (not dead-lettered: that would keep them);
rows of such sessions are dropped before "shard_rows" (a row computed just before the forget).
A tombstone record reloads the deny-list at once and reaches each named session's "session"
state through "key_session", which then discards it; state resumed from a recovery snapshot
for a denied session is discarded at its first timer.

Semantics: session state is exactly-once under recovery; output is at-least-once, made
idempotent by the writers' version guard and the event log's dedup on read. Every refused
record (undecodable, invalid, or later than the allowed lateness) reaches the dead-letter sink
with its reason and is counted in ``featrec_dead_letters``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias, TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, Sink
from prometheus_client import Counter

from dataflows import metrics
from dataflows.batching import micro_batch, shard_chunks
from dataflows.gc_tuning import (
    SESSIONS_GC_THRESHOLDS,
    frozen_after,
    tune_gc,
    tune_switch_interval,
)
from dataflows.kafka import KafkaDeadLetterSink, KafkaEventSource
from dataflows.metrics import FlowStats
from dataflows.sinks import DeadLetterSink, EventLogSink, FeatureSink, WriterFactory
from dataflows.sources import (
    CollectorLogSource,
    FileReplaySource,
    RedisStreamSource,
    SourceItem,
)
from featrec.core.events.batch_decode import Arrival
from featrec.core.events.formats import DeadLetter, RawRecord, decode
from featrec.core.events.mapping import parse_mapping
from featrec.core.events.model import Event
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import FeatureWriter
from featrec.core.privacy import (
    EMPTY,
    TOMBSTONE_FORMAT,
    DenySet,
    is_denied,
    is_denied_payload,
    parse_tombstone,
)
from featrec.core.sessions.fold import (
    Outcome,
    SessionPolicy,
    SessionState,
    fold,
    new_state,
    session_row,
)
from featrec.core.sessions.shard import Forget
from featrec.errors import ConfigError, InvalidEvent
from featrec.settings import FlowSettings, KafkaSettings, Settings

if TYPE_CHECKING:
    from dataflows.session_shards import Cooling

FLOW_ID: Final = "featrec_sessions"
#: ``FEATREC_FLOW_SHAPE``: ``batch`` (one item per shard and source batch) or ``per-event``.
FLOW_SHAPES: Final = ("batch", "per-event")
#: Keys the row and event-log batches are sharded over, so several workers share the writes.
#: Bytewax routes a key to a worker by its own hash: with 4 shards on 2 workers all four
#: landed on one worker (measured); 16 split 6/10.
DEFAULT_SHARDS: Final = 16
#: Event-log batch bounds: large files, but never more than this late on disk.
#: The item signals flow's dead-letter file under ``<home>`` (for file sources).
ITEMS_DEAD_LETTER_FILE: Final = "deadletters-items.jsonl"
EVENT_LOG_MAX_ROWS: Final = 20_000
EVENT_LOG_DEADLINE: Final = timedelta(seconds=5)

FORGOTTEN: Final = Counter(
    "featrec_forgotten_events",
    "Events and rows dropped by the sessions dataflow because their user or session was forgotten.",
    ["what"],
)


class DenySource(Protocol):
    """Gives the current deny-list (:class:`featrec.adapters.files.deny_list.DenyWatcher`)."""

    def current(self) -> DenySet: ...

    def refresh(self) -> DenySet: ...


class NothingDenied:
    """A :class:`DenySource` for flows run without a deny-list (tests, benchmarks)."""

    def current(self) -> DenySet:
        return EMPTY

    def refresh(self) -> DenySet:
        return EMPTY


SessionInput: TypeAlias = Arrival | Forget
SessionOutput: TypeAlias = FeatureRow | DeadLetter


class SessionLogic(StatefulBatchLogic[SessionInput, SessionOutput, SessionState]):
    """Wraps :func:`featrec.core.sessions.fold.fold` for one session key.

    A ``StatefulBatchLogic`` (the batch form of ``StatefulLogic``): bytewax hands over all of
    the key's items of one activation at once. Each is folded in order; a late one becomes a
    dead letter; then the session's row is emitted once, for the newest state (the rows of
    the intermediate states would be coalesced away by the micro-batch anyway, and building
    them was the flow's largest cost after decoding).

    The system-time timer (``ttl`` after the key's last activity) discards the state:
    event-time gaps are the fold's business, the timer only bounds memory.

    A :class:`Forget` discards the state at once. State resumed for a session that is denied
    by then (its tombstone was lost with a crash) is discarded at the first timer, which is
    set to now.
    """

    def __init__(
        self,
        policy: SessionPolicy,
        ttl: timedelta,
        stats: FlowStats,
        resume: SessionState | None = None,
        deny: DenySet = EMPTY,
    ) -> None:
        self.policy = policy
        self.ttl = ttl
        self.stats = stats
        self.state = resume.copy() if resume is not None else None
        self.forgotten = resume is not None and (
            deny.contains("session", resume.session_id) or deny.contains("user", resume.user_id)
        )
        self.live = True
        metrics.LIVE_SESSIONS.inc()

    def on_batch(self, values: list[SessionInput]) -> tuple[Iterable[SessionOutput], bool]:
        if self.forgotten or any(isinstance(v, Forget) for v in values):
            FORGOTTEN.labels(what="session state").inc()
            self._leave()
            return (), StatefulBatchLogic.DISCARD
        return self._fold(cast(list[Arrival], values))

    def _fold(self, values: list[Arrival]) -> tuple[Iterable[SessionOutput], bool]:
        state = self.state
        if state is None:
            state = self.state = new_state(values[0].event.session_id)
        out: list[SessionOutput] = []
        ingested_at: float | None = None
        policy = self.policy
        for value in values:
            newest_us = state.last_us
            if fold(state, value.event, policy) is Outcome.LATE:
                out.append(self._late(value, newest_us))
            elif ingested_at is None or value.ingested_at > ingested_at:
                ingested_at = value.ingested_at
        if out:
            metrics.DEAD_LETTERS.labels(field="late event").inc(len(out))
            self.stats.add(dead_letters=len(out))
        if ingested_at is not None:
            out.append(session_row(state, ingested_at))
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[SessionOutput], bool]:
        if self.forgotten:
            FORGOTTEN.labels(what="session state").inc()
        self._leave()
        return (), StatefulBatchLogic.DISCARD

    def on_eof(self) -> tuple[Iterable[SessionOutput], bool]:
        # Keep the state for the recovery snapshot (a later execution may continue the
        # session), but this execution no longer holds it live.
        self._leave()
        return (), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime:
        # Called after each activation of the key (not per item, and not while the key is
        # idle): now + ttl is the deadline measured from the key's last activity.
        if self.forgotten:
            return datetime.now(UTC)
        return datetime.now(UTC) + self.ttl

    def snapshot(self) -> SessionState:
        assert self.state is not None, "snapshot before any item"
        return self.state.copy()

    def _leave(self) -> None:
        if self.live:
            self.live = False
            metrics.LIVE_SESSIONS.dec()

    def _late(self, value: Arrival, newest_us: int) -> DeadLetter:
        newest = datetime.fromtimestamp(newest_us / 1_000_000, UTC)
        reason = (
            f"late event: ts {value.event.ts.isoformat()} is more than "
            f"{self.policy.allowed_lateness_s:g} s before the session's newest event "
            f"({newest.isoformat()})"
        )
        payload = json.dumps(value.event.to_dict(), separators=(",", ":"))
        return DeadLetter(value.origin, reason, payload)


Decoded: TypeAlias = Arrival | Forget | DeadLetter


def decode_batch(
    records: list[SourceItem], stats: FlowStats, deny: DenySource | None = None
) -> list[Decoded]:
    """Decode a source batch; events carry their record's ``ingested_at`` and origin.

    Events of forgotten users or sessions are dropped (counted); a tombstone reloads the
    deny-list and becomes one :class:`Forget` per session it names.
    """
    deny = deny if deny is not None else NothingDenied()
    denied = deny.current()
    out: list[Decoded] = []
    letters: list[DeadLetter] = []
    n_events = n_dropped = 0
    for record in records:
        if isinstance(record, DeadLetter):
            out.append(record)
            letters.append(record)
            continue
        if record.fmt == TOMBSTONE_FORMAT:
            denied = deny.refresh()
            out.extend(_forgets(record, letters))
            continue
        at, origin = record.ingested_at, record.origin
        for item in decode(record):
            if isinstance(item, Event):
                if denied and is_denied(item, denied):
                    n_dropped += 1
                    continue
                out.append(Arrival(item, at, origin))
                n_events += 1
            elif denied and is_denied_payload(item.payload, denied):
                n_dropped += 1
            else:
                out.append(item)
                letters.append(item)
    if n_events:
        metrics.EVENTS_IN.inc(n_events)
    if n_dropped:
        FORGOTTEN.labels(what="event").inc(n_dropped)
    if letters:
        metrics.count_dead_letters(letters)
    stats.add(events_in=n_events, dead_letters=len(letters))
    return out


def _forgets(record: RawRecord, letters: list[DeadLetter]) -> list[Decoded]:
    """A tombstone's sessions; a malformed tombstone is a dead letter (it holds no event)."""
    assert isinstance(record.payload, str)
    try:
        return [Forget(s) for s in parse_tombstone(record.payload)]
    except InvalidEvent as exc:
        letter = DeadLetter(record.origin, str(exc), record.payload[:4096])
        letters.append(letter)
        return [letter]


def build_flow(
    source: Source[SourceItem],
    settings: Settings,
    *,
    writer_factory: WriterFactory,
    dead_letter_sink: Sink[DeadLetter],
    event_log_sink: Sink[list[Event]] | FixedPartitionedSink[list[Event], Any],
    shards: int = DEFAULT_SHARDS,
    status_home: Path | None = None,
    stats: FlowStats | None = None,
    deny: DenySource | None = None,
    cooling: Cooling | None = None,
) -> Dataflow:
    """The sessions dataflow over ``source``, writing rows through ``writer_factory()``.

    ``settings.flow_shape`` picks the shape: ``batch`` (default,
    :mod:`dataflows.session_shards`: one item per shard and source batch) or ``per-event``
    (:func:`build_per_event_flow`, one item per event; the benchmarks' baseline). The two
    write the same rows; their step ids (the recovery schema) differ.
    ``event_log_sink`` receives lists of events (keyed by shard when it is a
    ``FixedPartitionedSink``, such as :class:`dataflows.sinks.EventLogSink`).
    ``status_home`` enables the status file (see :class:`dataflows.sinks.FeatureSink`).
    ``deny`` gives the deny-list of forgotten users (default: nothing denied).
    ``cooling``: the store idle sessions move to (batch shape only; default: none).
    """
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    if settings.flow_shape not in FLOW_SHAPES:
        raise ConfigError(
            f"FEATREC_FLOW_SHAPE must be one of {', '.join(FLOW_SHAPES)}, "
            f"got {settings.flow_shape!r}"
        )
    if settings.state_ttl <= 0:
        raise ConfigError(f"state TTL must be positive, got {settings.state_ttl} s")
    deny_source: DenySource = deny if deny is not None else NothingDenied()
    stats = stats if stats is not None else FlowStats()
    if settings.flow_shape == "per-event":
        return build_per_event_flow(
            source,
            settings,
            writer_factory=writer_factory,
            dead_letter_sink=dead_letter_sink,
            event_log_sink=event_log_sink,
            shards=shards,
            status_home=status_home,
            stats=stats,
            deny=deny_source,
        )
    from dataflows.session_shards import build_batch_flow

    return build_batch_flow(
        FLOW_ID,
        source,
        settings,
        writer_factory=writer_factory,
        dead_letter_sink=dead_letter_sink,
        event_log_sink=event_log_sink,
        shards=shards,
        stats=stats,
        deny=deny_source,
        status_home=status_home,
        cooling=cooling,
    )


def build_per_event_flow(
    source: Source[SourceItem],
    settings: Settings,
    *,
    writer_factory: WriterFactory,
    dead_letter_sink: Sink[DeadLetter],
    event_log_sink: Sink[list[Event]] | FixedPartitionedSink[list[Event], Any],
    shards: int = DEFAULT_SHARDS,
    status_home: Path | None = None,
    stats: FlowStats | None = None,
    deny: DenySource | None = None,
) -> Dataflow:
    """The per-event sessions dataflow: one bytewax item and key per event and session.

    ``event_log_sink`` receives lists of events (batched here, so a sink never buffers).
    ``status_home`` enables the status file (see :class:`dataflows.sinks.FeatureSink`).
    ``deny`` gives the deny-list of forgotten users (default: nothing denied).
    """
    deny_source: DenySource = deny if deny is not None else NothingDenied()
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    stats = stats if stats is not None else FlowStats()
    policy = settings.session_policy
    ttl = timedelta(seconds=settings.state_ttl)
    if ttl <= timedelta(0):
        raise ConfigError(f"state TTL must be positive, got {settings.state_ttl} s")
    deadline = timedelta(milliseconds=settings.batch_deadline_ms)

    def session_builder(resume: SessionState | None) -> SessionLogic:
        denied = deny_source.current() if resume is not None else EMPTY
        return SessionLogic(policy, ttl, stats, resume, denied)

    def is_input(item: Decoded) -> TypeGuard[SessionInput]:
        return isinstance(item, Arrival | Forget)

    def is_row(kv: tuple[str, SessionOutput]) -> TypeGuard[tuple[str, FeatureRow]]:
        return isinstance(kv[1], FeatureRow)

    def shard_rows(kvs: list[tuple[str, FeatureRow]]) -> list[tuple[str, list[FeatureRow]]]:
        return shard_chunks(
            allowed_rows([row for _, row in kvs], deny_source.current()), _row_key, shards
        )

    turns = itertools.count()

    def shard_events(inputs: list[SessionInput]) -> list[tuple[str, list[Event]]]:
        # The event log needs no per-session order: one chunk per activation, shards in turn.
        events = [a.event for a in inputs if isinstance(a, Arrival)]
        return [(str(next(turns) % shards), events)] if events else []

    flow = Dataflow(FLOW_ID)
    records = op.input("input", flow, source)
    decode = partial(decode_batch, stats=stats, deny=deny_source)
    decoded = op.flat_map_batch("decode", records, decode)
    split = op.branch("split", decoded, is_input)
    arrivals = split.trues
    # A branch narrows only its true side; the false side holds exactly the other type.
    bad = cast(Stream[DeadLetter], split.falses)

    keyed = op.key_on("key_session", arrivals, _session_key)
    outputs = op.stateful_batch("session", keyed, session_builder)
    by_kind = op.branch("split_late", outputs, is_row)
    rows = op.flat_map_batch("shard_rows", by_kind.trues, shard_rows)
    row_batches = micro_batch("batch_rows", rows, settings.batch_max_rows, deadline)
    sink = FeatureSink(writer_factory, stats=stats, status_home=status_home)
    op.output("write", op.key_rm("unkey_rows", row_batches), sink)

    late = op.map("late_letters", cast(KeyedStream[DeadLetter], by_kind.falses), _value)
    letters = op.merge("all_dead_letters", bad, late)
    op.output("dead_letters", letters, dead_letter_sink)

    events = op.flat_map_batch("shard_events", arrivals, shard_events)
    event_batches = micro_batch("batch_events", events, EVENT_LOG_MAX_ROWS, EVENT_LOG_DEADLINE)
    if isinstance(event_log_sink, FixedPartitionedSink):
        op.output("event_log", event_batches, event_log_sink)
    else:
        op.output("event_log", op.key_rm("unkey_events", event_batches), event_log_sink)
    return flow


def _session_key(item: SessionInput) -> str:
    return item.event.session_id if isinstance(item, Arrival) else item.session_id


def allowed_rows(rows: list[FeatureRow], denied: DenySet) -> list[FeatureRow]:
    """``rows`` less those of forgotten sessions or users (counted)."""
    if not denied:
        return rows
    kept = [
        row
        for row in rows
        if not denied.contains("session", row.key) and not denied.contains("user", _user_of(row))
    ]
    if len(kept) < len(rows):
        FORGOTTEN.labels(what="row").inc(len(rows) - len(kept))
    return kept


def _user_of(row: FeatureRow) -> str | None:
    user = row.values.get("user_id")
    return user if isinstance(user, str) else None


def _row_key(row: FeatureRow) -> str:
    return row.key


def _value(kv: tuple[str, DeadLetter]) -> DeadLetter:
    return kv[1]


def source_from_env(
    environ: Mapping[str, str], settings: Settings, *, tombstones: bool = False
) -> Source[SourceItem]:
    """The source named by ``FEATREC_SOURCE`` (file paths joined by ``os.pathsep``, ``redis``
    or ``kafka``: the bus; or ``collector``: the collector log, tailed), ``FEATREC_SOURCE_FORMAT``
    (or ``FEATREC_SOURCE_MAPPING``, an event mapping as JSON), ``FEATREC_REPLAY_SPEED`` and
    ``FEATREC_SOURCE_UNTIL_END``; Kafka's from ``FEATREC_KAFKA_*``. ``tombstones``: a stream
    source emits (and then deletes) tombstones rather than skipping them."""
    flow_settings = FlowSettings.from_env(environ)
    spec = (flow_settings.source or "").strip()
    if not spec:
        raise ConfigError(
            "set FEATREC_SOURCE to an event file (several joined by "
            f"{os.pathsep!r}), to 'redis' to read the stream {settings.stream!r}, to "
            "'kafka' to read the topic FEATREC_KAFKA_TOPIC, or to 'collector' to tail the "
            "collector log"
        )
    if spec == "collector":
        return CollectorLogSource(settings.collector_log)
    if spec == "redis":
        streams = [s.strip() for s in settings.stream.split(",") if s.strip()]
        return RedisStreamSource(
            settings.stream_url, streams, batch_size=1000, tombstones=tombstones
        )
    if spec == "kafka":
        from featrec.adapters.kafka.config import client_config

        kafka = KafkaSettings.from_env(environ)
        return KafkaEventSource(
            client_config(kafka), kafka.topic, tail=not flow_settings.source_until_end
        )
    paths = [p for p in spec.split(os.pathsep) if p]
    mapping = (
        parse_mapping(flow_settings.source_mapping, "FEATREC_SOURCE_MAPPING")
        if flow_settings.source_mapping is not None
        else None
    )
    return FileReplaySource(
        paths, fmt=flow_settings.source_format, speed=flow_settings.replay_speed, mapping=mapping
    )


def dead_letter_sink(
    environ: Mapping[str, str], settings: Settings, source: Source[SourceItem], *, items: bool
) -> Sink[DeadLetter]:
    """Where a flow's refused records go, beside its source: the dead-letter topic for Kafka,
    the dead-letter stream for Redis, else a JSON-lines file under ``<home>``. ``items``: the
    item signals flow's own (``.items`` / ``:items`` / ``deadletters-items.jsonl``)."""
    if isinstance(source, KafkaEventSource):
        from featrec.adapters.kafka.config import producer_config

        kafka = KafkaSettings.from_env(environ)
        topic = kafka.items_dead_letter_topic if items else kafka.dead_letter_topic
        return KafkaDeadLetterSink(producer_config(kafka), topic)
    if isinstance(source, RedisStreamSource):
        stream = settings.items_dead_letter_stream if items else settings.dead_letter_stream
        return DeadLetterSink(redis_url=settings.stream_url, stream=stream)
    file = settings.home / ITEMS_DEAD_LETTER_FILE if items else settings.dead_letter_file
    return DeadLetterSink(file=file)


def open_online_writer(settings: Settings, *, exclusive: bool = False) -> FeatureWriter:
    """The configured online-store writer for a flow's sink (imported here: Feast is slow to
    import). ``exclusive``: the flow is the only writer of its entities (the sessions flow)."""
    from featrec.adapters.feast.writers import open_writer

    writer: FeatureWriter = open_writer(settings, flow=True, exclusive=exclusive)
    return writer


def flow(environ: Mapping[str, str] | None = None) -> Dataflow:
    """Factory for ``python -m bytewax.run "dataflows.sessions:flow()"``.

    Settings come from ``FEATREC_*`` variables, read once here. Dead letters go beside the
    source (:func:`dead_letter_sink`): the Kafka dead-letter topic, the Redis dead-letter
    stream, or ``<home>/deadletters.jsonl``.
    """
    env = os.environ if environ is None else environ
    tune_gc(SESSIONS_GC_THRESHOLDS)
    tune_switch_interval()
    settings = Settings.from_env(env)
    source = source_from_env(env, settings, tombstones=True)
    dead = dead_letter_sink(env, settings, source, items=False)
    factory: Callable[[], FeatureWriter] = frozen_after(
        partial(open_online_writer, settings, exclusive=True)
    )
    return build_flow(
        source,
        settings,
        writer_factory=factory,
        dead_letter_sink=dead,
        event_log_sink=EventLogSink(settings.event_log_dir),
        status_home=settings.home,
        deny=open_deny_watcher(settings),
        cooling=cooling_from_env(env, settings),
    )


def cooling_from_env(environ: Mapping[str, str], settings: Settings) -> Cooling | None:
    """The store of idle sessions ``FEATREC_COLD_SESSIONS`` names (batch shape only), with
    ``FEATREC_SESSION_COOL_S``; None without one, or when the state TTL is not longer."""
    flow_settings = FlowSettings.from_env(environ)
    path = flow_settings.cold_sessions
    if path is None or settings.flow_shape != "batch":
        return None
    if flow_settings.session_cool_s >= settings.state_ttl:
        return None
    from dataflows.session_shards import Cooling
    from featrec.adapters.sqlite.cold_sessions import ColdSessions

    return Cooling(ColdSessions(path), flow_settings.session_cool_s)


def open_deny_watcher(settings: Settings) -> DenySource:
    """The deny-list stores ``settings`` use, watched for changes."""
    from featrec.adapters.files.deny_list import DenyWatcher
    from featrec.adapters.redis.deny_list import stores_for

    return DenyWatcher(stores_for(settings))
