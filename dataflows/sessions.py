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
from typing import Final, NamedTuple, TypeAlias, TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.outputs import Sink

from dataflows import metrics
from dataflows.batching import micro_batch, shard_chunks
from dataflows.gc_tuning import tune_gc
from dataflows.metrics import FlowStats
from dataflows.sinks import DeadLetterSink, EventLogSink, FeatureSink, WriterFactory
from dataflows.sources import FileReplaySource, RedisStreamSource, SourceItem
from featrec.core.events import Event
from featrec.core.formats import DeadLetter, decode
from featrec.core.ports import FeatureWriter
from featrec.core.rows import FeatureRow
from featrec.core.sessions import Outcome, SessionPolicy, SessionState, fold, new_state, session_row
from featrec.errors import ConfigError
from featrec.settings import Settings

FLOW_ID: Final = "featrec_sessions"
#: Keys the row and event-log batches are sharded over, so several workers share the writes.
#: Bytewax routes a key to a worker by its own hash: with 4 shards on 2 workers all four
#: landed on one worker (measured); 16 split 6/10.
DEFAULT_SHARDS: Final = 16
#: Event-log batch bounds: large files, but never more than this late on disk.
EVENT_LOG_MAX_ROWS: Final = 20_000
EVENT_LOG_DEADLINE: Final = timedelta(seconds=5)


class Arrival(NamedTuple):
    """A decoded event, with when it entered featrec and where it came from."""

    event: Event
    ingested_at: float
    origin: str


SessionOutput: TypeAlias = FeatureRow | DeadLetter


class SessionLogic(StatefulBatchLogic[Arrival, SessionOutput, SessionState]):
    """Wraps :func:`featrec.core.sessions.fold` for one session key.

    A ``StatefulBatchLogic`` (the batch form of ``StatefulLogic``): bytewax hands over all of
    the key's items of one activation at once. Each is folded in order; a late one becomes a
    dead letter; then the session's row is emitted once, for the newest state (the rows of
    the intermediate states would be coalesced away by the micro-batch anyway, and building
    them was the flow's largest cost after decoding).

    The system-time timer (``ttl`` after the key's last activity) discards the state:
    event-time gaps are the fold's business, the timer only bounds memory.
    """

    def __init__(
        self,
        policy: SessionPolicy,
        ttl: timedelta,
        stats: FlowStats,
        resume: SessionState | None = None,
    ) -> None:
        self.policy = policy
        self.ttl = ttl
        self.stats = stats
        self.state = resume.copy() if resume is not None else None
        self.live = True
        metrics.LIVE_SESSIONS.inc()

    def on_batch(self, values: list[Arrival]) -> tuple[Iterable[SessionOutput], bool]:
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


def decode_batch(records: list[SourceItem], stats: FlowStats) -> list[Arrival | DeadLetter]:
    """Decode a source batch; events carry their record's ``ingested_at`` and origin."""
    out: list[Arrival | DeadLetter] = []
    letters: list[DeadLetter] = []
    n_events = 0
    for record in records:
        if isinstance(record, DeadLetter):
            out.append(record)
            letters.append(record)
            continue
        at, origin = record.ingested_at, record.origin
        for item in decode(record):
            if isinstance(item, Event):
                out.append(Arrival(item, at, origin))
                n_events += 1
            else:
                out.append(item)
                letters.append(item)
    if n_events:
        metrics.EVENTS_IN.inc(n_events)
    if letters:
        metrics.count_dead_letters(letters)
    stats.add(events_in=n_events, dead_letters=len(letters))
    return out


def build_flow(
    source: Source[SourceItem],
    settings: Settings,
    *,
    writer_factory: WriterFactory,
    dead_letter_sink: Sink[DeadLetter],
    event_log_sink: Sink[list[Event]],
    shards: int = DEFAULT_SHARDS,
    status_home: Path | None = None,
    stats: FlowStats | None = None,
) -> Dataflow:
    """The sessions dataflow over ``source``, writing rows through ``writer_factory()``.

    ``event_log_sink`` receives lists of events (batched here, so a sink never buffers).
    ``status_home`` enables the status file (see :class:`dataflows.sinks.FeatureSink`).
    """
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    stats = stats if stats is not None else FlowStats()
    policy = settings.session_policy
    ttl = timedelta(seconds=settings.state_ttl)
    if ttl <= timedelta(0):
        raise ConfigError(f"state TTL must be positive, got {settings.state_ttl} s")
    deadline = timedelta(milliseconds=settings.batch_deadline_ms)

    def session_builder(resume: SessionState | None) -> SessionLogic:
        return SessionLogic(policy, ttl, stats, resume)

    def is_arrival(item: Arrival | DeadLetter) -> TypeGuard[Arrival]:
        return isinstance(item, Arrival)

    def is_row(kv: tuple[str, SessionOutput]) -> TypeGuard[tuple[str, FeatureRow]]:
        return isinstance(kv[1], FeatureRow)

    def shard_rows(kvs: list[tuple[str, FeatureRow]]) -> list[tuple[str, list[FeatureRow]]]:
        return shard_chunks((row for _, row in kvs), _row_key, shards)

    turns = itertools.count()

    def shard_events(arrivals: list[Arrival]) -> list[tuple[str, list[Event]]]:
        # The event log needs no per-session order: one chunk per activation, shards in turn.
        return [(str(next(turns) % shards), [a.event for a in arrivals])]

    flow = Dataflow(FLOW_ID)
    records = op.input("input", flow, source)
    decoded = op.flat_map_batch("decode", records, partial(decode_batch, stats=stats))
    split = op.branch("split", decoded, is_arrival)
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
    op.output("event_log", op.key_rm("unkey_events", event_batches), event_log_sink)
    return flow


def _session_key(arrival: Arrival) -> str:
    return arrival.event.session_id


def _row_key(row: FeatureRow) -> str:
    return row.key


def _value(kv: tuple[str, DeadLetter]) -> DeadLetter:
    return kv[1]


def source_from_env(environ: Mapping[str, str], settings: Settings) -> Source[SourceItem]:
    """The source named by ``FEATREC_SOURCE`` (file paths joined by ``os.pathsep``, or
    ``redis``), ``FEATREC_SOURCE_FORMAT`` and ``FEATREC_REPLAY_SPEED``."""
    spec = environ.get("FEATREC_SOURCE", "").strip()
    if not spec:
        raise ConfigError(
            "set FEATREC_SOURCE to an event file (several joined by "
            f"{os.pathsep!r}) or to 'redis' to read the stream {settings.stream!r}"
        )
    if spec == "redis":
        streams = [s.strip() for s in settings.stream.split(",") if s.strip()]
        return RedisStreamSource(settings.redis_url, streams, batch_size=1000)
    fmt = environ.get("FEATREC_SOURCE_FORMAT", "").strip() or None
    raw_speed = environ.get("FEATREC_REPLAY_SPEED", "").strip() or "0"
    try:
        speed = float(raw_speed)
    except ValueError:
        raise ConfigError(f"FEATREC_REPLAY_SPEED={raw_speed!r} is not a number") from None
    paths = [p for p in spec.split(os.pathsep) if p]
    return FileReplaySource(paths, fmt=fmt, speed=speed)


def open_online_writer(settings: Settings) -> FeatureWriter:
    """The configured online-store writer (imported here: Feast is slow to import)."""
    from featrec.adapters.online_writers import open_writer

    writer: FeatureWriter = open_writer(settings)
    return writer


def flow(environ: Mapping[str, str] | None = None) -> Dataflow:
    """Factory for ``python -m bytewax.run "dataflows.sessions:flow()"``.

    Settings come from ``FEATREC_*`` variables, read once here. Dead letters go to the Redis
    dead-letter stream when the source is Redis, else to ``<home>/deadletters.jsonl``.
    """
    env = os.environ if environ is None else environ
    tune_gc()
    settings = Settings.from_env(env)
    source = source_from_env(env, settings)
    dead: DeadLetterSink
    if isinstance(source, RedisStreamSource):
        dead = DeadLetterSink(redis_url=settings.redis_url, stream=settings.dead_letter_stream)
    else:
        dead = DeadLetterSink(file=settings.dead_letter_file)
    factory: Callable[[], FeatureWriter] = partial(open_online_writer, settings)
    return build_flow(
        source,
        settings,
        writer_factory=factory,
        dead_letter_sink=dead,
        event_log_sink=EventLogSink(settings.event_log_dir),
        status_home=settings.home,
    )
