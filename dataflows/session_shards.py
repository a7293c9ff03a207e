"""The batch-shaped sessions dataflow: one bytewax item is a shard's share of a source batch.

Steps (ids in quotes)::

    "input" -> "decode" -> "split" --(shard, arrivals)--> "sessions" -> "split_late"
                  |           |   (fold a shard's sessions; TTL,     |rows        |late events
                  |           |    newest row per session per flush) |            v
                  |           |                         "unkey_rows" -> "write"  |
                  |           +--(shard, arrivals)--> "log_events" -> "event_log" |
                  +--dead letters--> "all_dead_letters" <-------------------------+
                                     -> "dead_letters"

"decode" decodes a whole source batch natively (:mod:`featrec.core.events.batch_decode`)
and groups the arrivals per shard of their session, in order. "sessions" is one
``StatefulBatchLogic`` per shard around a :class:`~featrec.core.sessions.shard.SessionShard`:
bytewax sees ``shards`` keys, Python a dict of sessions. It folds every event, dead-letters
late ones, and flushes the newest row of every session folded since the last flush when
``batch_max_rows`` sessions are pending or ``batch_deadline_ms`` after the first of them
(the deadline is armed by the first pending session, never moved). Its timer also drops
sessions idle for the state TTL (their pending row first). Its snapshot is one msgpack blob;
between batches it encodes ahead the sessions idle for ``ENCODE_IDLE_S`` (a few hundred at a
time), and every changed one within ``SNAPSHOT_LEAD_S`` of the next expected snapshot, so that
the end-of-epoch snapshots, taken one shard after another while events wait, encode only the
sessions changed in the last moments.

With a store of idle sessions (:class:`Cooling`, which the launcher sets up inside the
recovery store), a shard also *cools* sessions idle for ``Cooling.idle_s``: their state
leaves memory and the snapshots for the store
(:class:`~featrec.adapters.sqlite.cold_sessions.ColdSessions`), and comes back when their next
event arrives, before it is folded. Snapshots then cost what the recently active sessions
cost, not what every session the TTL keeps costs. The store tags its writes with the shard's
snapshot count, and a resumed shard rolls it back to its snapshot, so state stays
exactly-once (see that module).

Guarantees are the per-event flow's (:mod:`dataflows.sessions`): state exactly-once under
recovery (pending rows are part of the snapshot), output at-least-once and idempotent,
dead letters with reasons, the deny-list and tombstones, the metrics. Step ids differ from
the per-event shape's (``sessions`` holds shard blobs, not session states): a recovery
store written by the per-event shape needs a fresh start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypeAlias, TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, Sink

from dataflows import metrics
from dataflows.batching import shard_of
from dataflows.metrics import FlowStats
from dataflows.sessions import FORGOTTEN, DenySource, allowed_rows
from dataflows.sinks import FeatureSink, WriterFactory
from dataflows.sources import SourceItem
from featrec.adapters.sqlite.cold_sessions import ColdSessions, ColdShard
from featrec.core.events.batch_decode import Arrival, decode_records
from featrec.core.events.formats import DeadLetter, RawRecord
from featrec.core.events.model import Event
from featrec.core.features.rows import FeatureRow
from featrec.core.privacy import (
    TOMBSTONE_FORMAT,
    DenySet,
    is_denied,
    is_denied_payload,
    parse_tombstone,
)
from featrec.core.sessions.fold import SessionPolicy, SessionState
from featrec.core.sessions.shard import Forget, SessionShard, late_letter
from featrec.errors import InvalidEvent
from featrec.settings import Settings

#: The stateful step's id (the per-event shape's is ``session``).
SESSIONS_STEP: Final = "sessions"
#: A changed session idle this long (seconds) is encoded for the next snapshot ahead of it
#: (:meth:`SessionShard.encode_idle`); one that changes again is encoded again, so a shorter
#: wait costs more CPU and leaves less for the snapshot.
ENCODE_IDLE_S: Final = 1.0
#: At most this many sessions encoded ahead per batch or timer call (~0.5-1 ms of work).
ENCODE_LIMIT: Final = 256
#: This long before the next end-of-epoch snapshot is expected (the interval between a
#: shard's last two snapshots), every changed session is encoded ahead, idle or not.
SNAPSHOT_LEAD_S: Final = 0.3
#: At most this many sessions cooled per batch or timer call (one store transaction).
COOL_LIMIT: Final = 2000
#: A shard cools at most once per this many seconds (each time, every session idle enough, up
#: to ``COOL_LIMIT``): few, large store transactions rather than one per batch.
COOL_EVERY_S: Final = 1.0

ShardValue: TypeAlias = list[Arrival] | Forget
ShardItem: TypeAlias = tuple[str, ShardValue]
Decoded: TypeAlias = ShardItem | DeadLetter
RowBatch: TypeAlias = list[FeatureRow]
ShardOutput: TypeAlias = RowBatch | DeadLetter


@dataclass(frozen=True)
class Cooling:
    """Sessions idle for ``idle_s`` (system time) leave memory for ``store``."""

    store: ColdSessions
    idle_s: float


def decode_to_shards(
    records: list[SourceItem], shards: int, stats: FlowStats, deny: DenySource
) -> list[Decoded]:
    """A source batch as one ``(shard, arrivals)`` chunk per shard, plus dead letters.

    Tombstones become :class:`Forget` items at their place in their session's shard (the
    chunks before and after them are separate items, so order per shard is kept). Events of
    forgotten users or sessions are dropped and counted, not dead-lettered.
    """
    denied = deny.current()
    out: list[Decoded] = []
    letters: list[DeadLetter] = []
    chunks: dict[str, list[Arrival]] = {}
    run: list[RawRecord] = []
    counts = [0, 0]  # events in, dropped

    def flush_run() -> None:
        if run:
            _route(decode_records(run), shards, denied, chunks, letters, counts)
            run.clear()

    for record in records:
        if isinstance(record, DeadLetter):
            letters.append(record)
        elif record.fmt == TOMBSTONE_FORMAT:
            flush_run()
            out.extend(chunks.items())
            chunks = {}
            denied = deny.refresh()
            out.extend(_forgets(record, shards, letters))
        else:
            run.append(record)
    flush_run()
    out.extend(chunks.items())
    out.extend(letters)
    n_events, n_dropped = counts
    if n_events:
        metrics.EVENTS_IN.inc(n_events)
    if n_dropped:
        FORGOTTEN.labels(what="event").inc(n_dropped)
    if letters:
        metrics.count_dead_letters(letters)
    stats.add(events_in=n_events, dead_letters=len(letters))
    return out


def _route(
    decoded: list[Arrival | DeadLetter],
    shards: int,
    denied: DenySet,
    chunks: dict[str, list[Arrival]],
    letters: list[DeadLetter],
    counts: list[int],
) -> None:
    n_events = n_dropped = 0
    # One crc32 per session per batch, not per event.
    shard_names: dict[str, str] = {}
    for item in decoded:
        if type(item) is Arrival:
            event = item.event
            if denied and is_denied(event, denied):
                n_dropped += 1
                continue
            sid = event.session_id
            shard = shard_names.get(sid)
            if shard is None:
                shard = shard_names[sid] = shard_of(sid, shards)
            chunk = chunks.get(shard)
            if chunk is None:
                chunks[shard] = [item]
            else:
                chunk.append(item)
            n_events += 1
        else:
            letter = cast(DeadLetter, item)
            if denied and is_denied_payload(letter.payload, denied):
                n_dropped += 1
            else:
                letters.append(letter)
    counts[0] += n_events
    counts[1] += n_dropped


def _forgets(record: RawRecord, shards: int, letters: list[DeadLetter]) -> list[Decoded]:
    return [(shard_of(s, shards), Forget(s)) for s in tombstone_sessions(record, letters)]


def tombstone_sessions(record: RawRecord, letters: list[DeadLetter]) -> list[str]:
    """A tombstone's sessions; a malformed tombstone is a dead letter (it holds no event)."""
    assert isinstance(record.payload, str)
    try:
        return parse_tombstone(record.payload)
    except InvalidEvent as exc:
        letters.append(DeadLetter(record.origin, str(exc), record.payload[:4096]))
        return []


def _denied_state(denied: DenySet) -> Callable[[SessionState], bool]:
    def check(state: SessionState) -> bool:
        return denied.contains("session", state.session_id) or denied.contains(
            "user", state.user_id
        )

    return check


class ShardLogic(StatefulBatchLogic[ShardValue, ShardOutput, bytes]):
    """One shard's sessions in the engine (see the module docstring)."""

    def __init__(
        self,
        shard: SessionShard,
        *,
        deadline_s: float,
        max_rows: int,
        stats: FlowStats,
        deny: DenySource,
        cooling: Cooling | None = None,
        key_of: Callable[[str], str] | None = None,
    ) -> None:
        self.shard = shard
        self.deadline_s = deadline_s
        self.max_rows = max_rows
        self.stats = stats
        self.deny = deny
        self.policy: SessionPolicy = shard.policy
        self.live = len(shard)
        metrics.LIVE_SESSIONS.inc(self.live)
        self.flush_at: float | None = time.time() + deadline_s if shard.dirty else None
        #: When this shard's last snapshot was taken, and the interval before it.
        self.snapshot_at: float | None = None
        self.epoch_s: float | None = None
        self.cooling = cooling if cooling is not None and cooling.idle_s < shard.ttl_s else None
        self.key_of = key_of
        #: This shard's store of idle sessions, once in step with the shard (rolled back to
        #: its snapshot): opened when the shard's key is known.
        self.cold: ColdShard | None = None
        self.cooled_at = 0.0
        if self.cooling is not None and shard.key is not None:
            self._attach(shard.key)

    def on_batch(self, values: list[ShardValue]) -> tuple[Iterable[ShardOutput], bool]:
        now = time.time()
        shard = self.shard
        out: list[ShardOutput] = []
        created = 0
        cooling = self.cooling
        if cooling is not None and self.cold is None and values:
            self._attach(self._key_from(values[0]))
        for value in values:
            if type(value) is Forget:
                if shard.forget(value.session_id):
                    self.live -= 1
                    metrics.LIVE_SESSIONS.dec()
                if self.cold is not None:
                    self.cold.forget(value.session_id)
                FORGOTTEN.labels(what="session state").inc()
                continue
            arrivals = cast(list[Arrival], value)
            if self.cold is not None:
                self._revive(self.cold, arrivals, now)
            late, new = shard.fold_batch(arrivals, now)
            created += new
            if late:
                policy = self.policy
                for i, newest_us in late:
                    a = arrivals[i]
                    out.append(late_letter(a.event, a.origin, newest_us, policy))
                metrics.DEAD_LETTERS.labels(field="late event").inc(len(late))
                self.stats.add(dead_letters=len(late))
        if created:
            self.live += created
            metrics.LIVE_SESSIONS.inc(created)
        if shard.dirty:
            if self.flush_at is None:
                self.flush_at = now + self.deadline_s
            if len(shard.dirty) >= self.max_rows:
                self._flush(out)
        self._expire(now, out)
        self._cool(now)
        shard.encode_idle(now, self._idle_s(now), ENCODE_LIMIT)
        return out, self._keep()

    def on_notify(self) -> tuple[Iterable[ShardOutput], bool]:
        now = time.time()
        out: list[ShardOutput] = []
        if self.flush_at is not None and self.flush_at <= now:
            self._flush(out)
        self._expire(now, out)
        self._cool(now)
        self.shard.encode_idle(now, self._idle_s(now), ENCODE_LIMIT)
        return out, self._keep()

    def on_eof(self) -> tuple[Iterable[ShardOutput], bool]:
        out: list[ShardOutput] = []
        self._flush(out)
        # Keep the state for the recovery snapshot (a later execution may continue the
        # sessions), but this execution no longer holds it live.
        metrics.LIVE_SESSIONS.dec(self.live)
        self.live = 0
        return out, self._keep()

    def notify_at(self) -> datetime | None:
        due = self.shard.next_expiry()
        if self.flush_at is not None and (due is None or self.flush_at < due):
            due = self.flush_at
        now = time.time()
        idle = self.shard.next_idle(self._idle_s(now))
        lead = self._lead_from()
        if idle is not None and lead is not None and now < lead:
            idle = min(idle, lead)
        if idle is not None and (due is None or idle < due):
            due = idle
        if self.cooling is not None:
            cool = self.shard.next_cool(self.cooling.idle_s)
            if cool is not None:
                cool = max(cool, self.cooled_at + COOL_EVERY_S)
                if cool <= now and self.flush_at is not None:
                    # The least recently touched session may have a pending row: after the flush.
                    cool = max(cool, self.flush_at)
            if cool is not None and (due is None or cool < due):
                due = cool
        return None if due is None else datetime.fromtimestamp(due, UTC)

    def snapshot(self) -> bytes:
        now = time.time()
        if self.snapshot_at is not None:
            self.epoch_s = now - self.snapshot_at
        self.snapshot_at = now
        shard = self.shard
        if self.cold is not None:
            self.cold.expire(now - shard.ttl_s, shard.snapshots)
        return shard.to_bytes()

    def _key_from(self, value: ShardValue) -> str:
        assert self.key_of is not None, "a shard that cools sessions needs key_of"
        if type(value) is Forget:
            return self.key_of(value.session_id)
        return self.key_of(cast(list[Arrival], value)[0].event.session_id)

    def _attach(self, key: str) -> None:
        """Bring the store in step with this shard: undo what was written after its snapshot
        (all of it for a new shard), and drop the sessions the deny-list names."""
        assert self.cooling is not None
        cold = self.cooling.store.shard(key)
        self.shard.key = key
        cold.rollback(self.shard.snapshots - 1)
        denied = self.deny.current()
        if denied:
            gone = cold.forget_where(
                lambda sid, user: denied.contains("session", sid) or denied.contains("user", user)
            )
            if gone:
                FORGOTTEN.labels(what="session state").inc(gone)
        self.cold = cold

    def _revive(self, cold: ColdShard, arrivals: list[Arrival], now: float) -> None:
        shard = self.shard
        missing = shard.missing(arrivals)
        if not missing:
            return
        blobs = cold.take(missing, shard.snapshots, now - shard.ttl_s)
        if blobs:
            revived = shard.revive(blobs, now)
            self.live += revived
            metrics.LIVE_SESSIONS.inc(revived)
            metrics.COLD_SESSIONS.labels(way="revived").inc(revived)

    def _cool(self, now: float) -> None:
        cooling, cold = self.cooling, self.cold
        if cooling is None or cold is None:
            return
        due = self.shard.next_cool(cooling.idle_s)
        if due is None or due > now or now < self.cooled_at + COOL_EVERY_S:
            return
        self.cooled_at = now
        cooled = self.shard.cool(now, cooling.idle_s, COOL_LIMIT)
        if cooled:
            cold.put(cooled, self.shard.snapshots)
            n = min(len(cooled), self.live)
            self.live -= n
            metrics.LIVE_SESSIONS.dec(n)
            metrics.COLD_SESSIONS.labels(way="cooled").inc(len(cooled))

    def _lead_from(self) -> float | None:
        """When the encode-everything window before the expected next snapshot opens (the
        snapshot is expected one interval after the last), or None before two snapshots."""
        if self.epoch_s is None or self.snapshot_at is None:
            return None
        return self.snapshot_at + self.epoch_s - SNAPSHOT_LEAD_S

    def _idle_s(self, now: float) -> float:
        """How long a changed session must have been idle to be encoded ahead now: 0 within
        ``SNAPSHOT_LEAD_S`` either side of the expected snapshot (a missed guess falls back)."""
        lead = self._lead_from()
        if lead is not None and lead <= now <= lead + 2 * SNAPSHOT_LEAD_S:
            return 0.0
        return ENCODE_IDLE_S

    def _keep(self) -> bool:
        # With cooling, a shard is never discarded: its snapshot count tags the store.
        if self.cooling is not None or len(self.shard) or self.shard.dirty:
            return StatefulBatchLogic.RETAIN
        return StatefulBatchLogic.DISCARD

    def _flush(self, out: list[ShardOutput]) -> None:
        self.flush_at = None
        rows = self.shard.take_rows()
        if rows:
            rows = allowed_rows(rows, self.deny.current())
        if rows:
            out.append(rows)

    def _expire(self, now: float, out: list[ShardOutput]) -> None:
        due = self.shard.next_expiry()
        if due is None or due > now:
            return
        rows, gone = self.shard.expire(now)
        if gone:
            dec = min(gone, self.live)
            self.live -= dec
            metrics.LIVE_SESSIONS.dec(dec)
        if rows:
            rows = allowed_rows(rows, self.deny.current())
            if rows:
                out.append(rows)
        if not self.shard.dirty:
            self.flush_at = None


def build_batch_flow(
    flow_id: str,
    source: Source[SourceItem],
    settings: Settings,
    *,
    writer_factory: WriterFactory,
    dead_letter_sink: Sink[DeadLetter],
    event_log_sink: Sink[list[Event]] | FixedPartitionedSink[list[Event], object],
    shards: int,
    stats: FlowStats,
    deny: DenySource,
    status_home: Path | None = None,
    cooling: Cooling | None = None,
) -> Dataflow:
    """The batch-shaped sessions dataflow (see the module docstring)."""
    policy = settings.session_policy
    ttl_s = settings.state_ttl
    deadline_s = settings.batch_deadline_ms / 1000.0
    max_rows = settings.batch_max_rows

    def builder(resume: bytes | None) -> ShardLogic:
        if resume is None:
            shard = SessionShard(policy, ttl_s)
        else:
            shard = SessionShard.from_bytes(resume, policy, ttl_s, now=time.time())
            denied = deny.current()
            if denied:
                gone = shard.drop_where(_denied_state(denied))
                if gone:
                    FORGOTTEN.labels(what="session state").inc(gone)
        return ShardLogic(
            shard,
            deadline_s=deadline_s,
            max_rows=max_rows,
            stats=stats,
            deny=deny,
            cooling=cooling,
            key_of=lambda sid: shard_of(sid, shards),
        )

    def decode(records: list[SourceItem]) -> list[Decoded]:
        return decode_to_shards(records, shards, stats, deny)

    def is_chunk(item: Decoded) -> TypeGuard[ShardItem]:
        return type(item) is tuple

    def is_rows(kv: tuple[str, ShardOutput]) -> TypeGuard[tuple[str, RowBatch]]:
        return type(kv[1]) is list

    def log_events(kvs: list[ShardItem]) -> list[tuple[str, list[Event]]]:
        return [(k, [a.event for a in v]) for k, v in kvs if type(v) is list]

    flow = Dataflow(flow_id)
    records = op.input("input", flow, source)
    decoded = op.flat_map_batch("decode", records, decode)
    split = op.branch("split", decoded, is_chunk)
    chunks: KeyedStream[ShardValue] = split.trues
    bad = cast(Stream[DeadLetter], split.falses)

    outputs = op.stateful_batch(SESSIONS_STEP, chunks, builder)
    by_kind = op.branch("split_late", outputs, is_rows)
    sink = FeatureSink(writer_factory, stats=stats, status_home=status_home)
    op.output("write", op.key_rm("unkey_rows", by_kind.trues), sink)

    late = op.map("late_letters", cast(KeyedStream[DeadLetter], by_kind.falses), _value)
    op.output("dead_letters", op.merge("all_dead_letters", bad, late), dead_letter_sink)

    logged = op.flat_map_batch("log_events", chunks, log_events)
    if isinstance(event_log_sink, FixedPartitionedSink):
        op.output("event_log", logged, event_log_sink)
    else:
        op.output("event_log", op.key_rm("unkey_events", logged), event_log_sink)
    return flow


def _value(kv: tuple[str, DeadLetter]) -> DeadLetter:
    return kv[1]
