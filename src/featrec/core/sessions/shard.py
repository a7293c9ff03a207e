"""A shard of sessions: many session states folded in one place, for batch-shaped dataflows.

The per-event dataflow gives each session its own key in the engine, and the engine's
per-item, per-key cost then dominates. A :class:`SessionShard` holds a plain dict of
:class:`~featrec.core.sessions.fold.SessionState` for all sessions hashed to one shard, so the
engine sees a few keys and whole batches, and Python sees many sessions. Everything here is
the same :func:`~featrec.core.sessions.fold.fold`; the shard only adds bookkeeping:

- **Pending rows.** A folded session becomes *dirty*; :meth:`take_rows` returns one row per
  dirty session, built from its newest state (the newest row per session per flush), with
  the newest ``ingested_at`` of the events folded since the last flush.
- **TTL.** Each session remembers when (system time) it was last touched, in touch order, so
  :meth:`expire` drops idle sessions from the front in O(expired), and :meth:`next_expiry`
  says when the next one is due. A dirty session's row is returned before it is dropped.
- **Forget.** :meth:`forget` drops a session's state and its pending row.
- **Snapshots.** :meth:`to_bytes` is one msgpack blob (immutable, and incremental: only the
  sessions changed since the last snapshot are encoded again, the others' bytes are reused;
  a deep copy would copy every object); :meth:`from_bytes` rebuilds the shard.
- **Cooling.** :meth:`cool` takes the sessions idle for a while out of the shard, as their
  snapshot bytes, for a store of idle sessions to keep (``dataflows.session_shards``);
  :meth:`missing` names the sessions of a batch the shard does not hold and :meth:`revive`
  puts back those the store had. A snapshot then holds only the recently active sessions, so
  its cost follows the active sessions, not all the sessions the TTL keeps. The shard's
  :attr:`key` and :attr:`snapshots` (how many it has taken) are part of its snapshot: the
  store tags what it writes with that count, and a resumed shard says which count it resumed
  from.
- **Encoding ahead.** The engine snapshots every shard at the end of an epoch, one after the
  other, while events wait: ~16 shards x ~1,400 changed sessions x 2.5-4 µs stopped the worker
  for ~85-120 ms per epoch at 16k events/s. :meth:`encode_idle` encodes, a few hundred at a
  time between batches, the changed sessions that have been idle for a while (most of them
  will not change again before the snapshot), so the snapshot itself encodes only the
  sessions touched in the last moments. The bytes are the same either way.

System time is always passed in (``now``, unix seconds), so tests drive it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import msgspec

from featrec.core.events.batch_decode import Arrival
from featrec.core.events.formats import DeadLetter
from featrec.core.events.model import Event
from featrec.core.features.rows import FeatureRow
from featrec.core.sessions.fold import Outcome, SessionPolicy, SessionState, fold, session_row

#: Version of the snapshot layout; a blob of another version is refused (format 2, without
#: the shard's key and snapshot count, is still read).
SNAPSHOT_FORMAT: Final = 3
_READABLE: Final = frozenset({2, SNAPSHOT_FORMAT})

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder()


class Forget(NamedTuple):
    """A tombstone for one session: its live state must be discarded."""

    session_id: str


class Cooled(NamedTuple):
    """A session taken out of a shard by :meth:`SessionShard.cool`."""

    session_id: str
    user_id: str | None
    #: system time of its last event
    touched_at: float
    #: its state as the snapshot encodes it (:meth:`SessionShard.revive` reads it back)
    state: bytes


class SessionShard:
    """The sessions of one shard (see the module docstring)."""

    __slots__ = (
        "blobs", "dirty", "key", "policy", "snapshots", "stale", "states", "touched", "ttl_s"
    )  # fmt: skip

    def __init__(self, policy: SessionPolicy, ttl_s: float) -> None:
        self.policy = policy
        self.ttl_s = ttl_s
        self.states: dict[str, SessionState] = {}
        #: session id -> system time of its last event, oldest first.
        self.touched: dict[str, float] = {}
        #: session id -> newest ``ingested_at`` folded since the session's last row.
        self.dirty: dict[str, float] = {}
        #: session id -> its state as msgpack, as of when it was last encoded (snapshots are
        #: incremental: only sessions changed since then, ``stale``, are encoded again).
        self.blobs: dict[str, bytes] = {}
        #: session id -> system time of its last change, for sessions whose blob is out of
        #: date; least recently changed first (:meth:`encode_idle` takes from the front).
        self.stale: dict[str, float] = {}
        #: The engine's key of this shard, once its owner knows it (kept in snapshots).
        self.key: str | None = None
        #: Snapshots taken so far, counting those of the run it resumed from: the tag of what
        #: is written elsewhere (cooled sessions) between this snapshot and the next.
        self.snapshots = 0

    def __len__(self) -> int:
        return len(self.states)

    def fold_batch(
        self, arrivals: Sequence[Arrival], now: float
    ) -> tuple[list[tuple[int, int]], int]:
        """Fold arrivals in order.

        Returns the late events as ``(index in arrivals, the session's newest µs then)``
        and how many sessions were created.
        """
        states, touched, dirty, policy = self.states, self.touched, self.dirty, self.policy
        stale = self.stale
        late: list[tuple[int, int]] = []
        created = 0
        for i, arrival in enumerate(arrivals):
            event = arrival[0]
            sid = event.session_id
            state = states.get(sid)
            if state is None:
                state = states[sid] = SessionState(session_id=sid)
                created += 1
            # Move to the back: the dict stays ordered by last activity.
            touched.pop(sid, None)
            touched[sid] = now
            newest_us = state.last_us
            if fold(state, event, policy) is Outcome.LATE:
                late.append((i, newest_us))
                continue
            stale.pop(sid, None)
            stale[sid] = now
            seen = dirty.get(sid)
            ingested_at = arrival[1]
            if seen is None or ingested_at > seen:
                dirty[sid] = ingested_at
        return late, created

    def take_rows(self) -> list[FeatureRow]:
        """The newest row of every session folded since the last call, then clean."""
        states = self.states
        rows = [session_row(states[sid], at) for sid, at in self.dirty.items()]
        self.dirty = {}
        return rows

    def expire(self, now: float) -> tuple[list[FeatureRow], int]:
        """Drop sessions idle for ``ttl_s``: their pending rows and how many were dropped."""
        horizon = now - self.ttl_s
        gone: list[str] = []
        for sid, at in self.touched.items():
            if at > horizon:
                break
            gone.append(sid)
        rows: list[FeatureRow] = []
        for sid in gone:
            del self.touched[sid]
            self.blobs.pop(sid, None)
            self.stale.pop(sid, None)
            state = self.states.pop(sid)
            pending = self.dirty.pop(sid, None)
            if pending is not None:
                rows.append(session_row(state, pending))
        return rows, len(gone)

    def next_expiry(self) -> float | None:
        """System time at which the least recently touched session expires."""
        for at in self.touched.values():
            return at + self.ttl_s
        return None

    def forget(self, session_id: str) -> bool:
        """Drop a session's state and pending row; whether it was held."""
        self.touched.pop(session_id, None)
        self.dirty.pop(session_id, None)
        self.blobs.pop(session_id, None)
        self.stale.pop(session_id, None)
        return self.states.pop(session_id, None) is not None

    def drop_where(self, denied: Callable[[SessionState], bool]) -> int:
        """Forget every session for which ``denied(state)``; how many."""
        gone = [sid for sid, state in self.states.items() if denied(state)]
        for sid in gone:
            self.forget(sid)
        return len(gone)

    def to_bytes(self) -> bytes:
        """The whole shard as one msgpack blob (touch order, pending rows, key and snapshot
        count included); counts as a snapshot taken (:attr:`snapshots`).

        Only sessions changed since the last call are encoded; the others' bytes are reused
        (``msgspec.Raw``), so a snapshot of mostly idle sessions costs little."""
        encode, blobs, states = _ENCODER.encode, self.blobs, self.states
        for sid in self.stale:
            blobs[sid] = encode(_state_list(states[sid]))
        self.stale = {}
        raw = [msgspec.Raw(blobs[sid]) for sid in self.touched]
        times = list(self.touched.values())
        dirty = [[sid, at] for sid, at in self.dirty.items()]
        taken = self.snapshots
        self.snapshots += 1
        return encode([SNAPSHOT_FORMAT, raw, times, dirty, self.key, taken])

    def missing(self, arrivals: Sequence[Arrival]) -> list[str]:
        """The sessions of ``arrivals`` this shard does not hold, each once, in order."""
        states = self.states
        out: dict[str, None] = {}
        for arrival in arrivals:
            sid = arrival[0].session_id
            if sid not in states:
                out[sid] = None
        return list(out)

    def cool(self, now: float, idle_s: float, limit: int) -> list[Cooled]:
        """Take out up to ``limit`` sessions untouched since ``now - idle_s`` that have no
        pending row, least recently touched first, as their snapshot bytes."""
        horizon = now - idle_s
        dirty = self.dirty
        picked: list[tuple[str, float]] = []
        for sid, at in self.touched.items():
            if at > horizon or len(picked) >= limit:
                break
            if sid not in dirty:
                picked.append((sid, at))
        out: list[Cooled] = []
        encode = _ENCODER.encode
        for sid, at in picked:
            del self.touched[sid]
            state = self.states.pop(sid)
            blob = self.blobs.pop(sid, None)
            if self.stale.pop(sid, None) is not None or blob is None:
                blob = encode(_state_list(state))
            out.append(Cooled(sid, state.user_id, at, blob))
        return out

    def next_cool(self, idle_s: float) -> float | None:
        """System time at which the least recently touched session has been idle ``idle_s``."""
        for at in self.touched.values():
            return at + idle_s
        return None

    def revive(self, blobs: Iterable[bytes], now: float) -> int:
        """Put back sessions taken out by :meth:`cool` (their bytes), touched at ``now``;
        how many. A session the shard holds already keeps its live state."""
        n = 0
        for blob in blobs:
            state = _state_of(_DECODER.decode(blob))
            sid = state.session_id
            if sid in self.states:
                continue
            self.states[sid] = state
            self.touched[sid] = now
            self.blobs[sid] = blob
            n += 1
        return n

    def encode_idle(self, now: float, idle_s: float, limit: int) -> int:
        """Encode up to ``limit`` changed sessions untouched since ``now - idle_s``, least
        recently changed first, ahead of the next snapshot; how many."""
        stale = self.stale
        if not stale:
            return 0
        horizon = now - idle_s
        done: list[str] = []
        for sid, at in stale.items():
            if at > horizon or len(done) >= limit:
                break
            done.append(sid)
        encode, blobs, states = _ENCODER.encode, self.blobs, self.states
        for sid in done:
            blobs[sid] = encode(_state_list(states[sid]))
            del stale[sid]
        return len(done)

    def next_idle(self, idle_s: float) -> float | None:
        """System time at which the least recently changed stale session has been idle
        ``idle_s`` (when :meth:`encode_idle` has work), or None."""
        for at in self.stale.values():
            return at + idle_s
        return None

    @classmethod
    def from_bytes(
        cls, data: bytes, policy: SessionPolicy, ttl_s: float, now: float | None = None
    ) -> SessionShard:
        """Rebuild a shard; with ``now``, every session counts as touched at ``now`` (a resumed
        flow gives its sessions a full TTL, as a fresh timer would). The snapshot it was made
        from is number ``shard.snapshots - 1`` (format 2: none, ``snapshots`` is 0)."""
        version, rows, times, dirty, *rest = _DECODER.decode(data)
        if version not in _READABLE:
            raise ValueError(f"session shard snapshot format {version}, expected {SNAPSHOT_FORMAT}")
        shard = cls(policy, ttl_s)
        if rest:
            shard.key, taken = rest
            shard.snapshots = taken + 1
        for fields, at in zip(rows, times, strict=True):
            state = _state_of(fields)
            shard.states[state.session_id] = state
            shard.touched[state.session_id] = at if now is None else now
        shard.dirty = {sid: at for sid, at in dirty}
        shard.stale = dict(shard.touched)
        return shard


def _state_list(s: SessionState) -> list[Any]:
    return [
        s.session_id, s.user_id, s.version, s.n_events, s.n_views, s.n_clicks, s.n_carts,
        s.n_purchases, list(s.items), s.recent, s.started_us, s.last_us, s.last_category,
        s.last_price, s.cart_value, s.user_key,
    ]  # fmt: skip


def _state_of(f: list[Any]) -> SessionState:
    return SessionState(
        session_id=f[0],
        user_id=f[1],
        version=f[2],
        n_events=f[3],
        n_views=f[4],
        n_clicks=f[5],
        n_carts=f[6],
        n_purchases=f[7],
        items=set(f[8]),
        recent=[(t, v, item) for t, v, item in f[9]],
        started_us=f[10],
        last_us=f[11],
        last_category=f[12],
        last_price=f[13],
        cart_value=f[14],
        user_key=(f[15][0], f[15][1]),
    )


def late_letter(event: Event, origin: str, newest_us: int, policy: SessionPolicy) -> DeadLetter:
    """The dead letter of an event later than the policy allows (reason names ``late event``)."""
    newest = datetime.fromtimestamp(newest_us / 1_000_000, UTC)
    reason = (
        f"late event: ts {event.ts.isoformat()} is more than "
        f"{policy.allowed_lateness_s:g} s before the session's newest event "
        f"({newest.isoformat()})"
    )
    payload = json.dumps(event.to_dict(), separators=(",", ":"))
    return DeadLetter(origin, reason, payload)
