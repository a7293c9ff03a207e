"""The batch-shaped sessions flow against the per-event flow (the baseline shape) and the
oracle, run for real with run_main: same rows for any interleaving of sessions, any source
batch size, any row batch bound and shard count; one bad record costs only itself."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflows import session_shards
from dataflows.metrics import FlowStats
from dataflows.session_shards import ENCODE_IDLE_S, SNAPSHOT_LEAD_S, ShardLogic
from dataflows.sessions import NothingDenied, build_flow
from featrec.core.events.batch_decode import Arrival
from featrec.core.events.formats import DeadLetter, RawRecord
from featrec.core.events.model import Event
from featrec.core.features.catalog import SESSION_FEATURES
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.sessions.fold import Outcome, SessionState, fold, session_row
from featrec.core.sessions.shard import SessionShard
from featrec.settings import Settings

VIEW = SESSION_FEATURES.name
T0 = datetime(2024, 3, 1, tzinfo=UTC)


def run_shape(
    records: list[RawRecord], settings: Settings, batch_size: int, shards: int
) -> tuple[dict[str, tuple[object, int]], list[DeadLetter], int]:
    store = InMemoryFeatureStore()
    letters: list[DeadLetter] = []
    logged: list[list[Event]] = []
    flow = build_flow(
        TestingSource(records, batch_size=batch_size),
        settings,
        writer_factory=lambda: store,
        dead_letter_sink=TestingSink(letters),
        event_log_sink=TestingSink(logged),
        shards=shards,
    )
    run_main(flow)
    rows = {}
    for key in store.keys(VIEW):
        row = store.row(VIEW, key)
        assert row is not None
        rows[key] = (row.values, row.version)
    return rows, letters, sum(len(b) for b in logged)


def event(i: int, session: str, seconds: float, user: str | None, kind: str) -> Event:
    return Event(f"e{i}", session, f"i{i % 5}", kind, T0 + timedelta(seconds=seconds), user, 1.5)


spec = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.floats(0, 5000, allow_nan=False),
        st.sampled_from([None, "u1", "u2"]),
        st.sampled_from(["view", "click", "cart", "purchase"]),
    ),
    min_size=1,
    max_size=80,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    spec=spec,
    batch_size=st.integers(1, 50),
    max_rows=st.integers(1, 30),
    shards=st.integers(1, 5),
)
def test_the_batch_shape_writes_the_per_event_folds_rows(
    tmp_path: Path,
    spec: list[tuple[str, float, str | None, str]],
    batch_size: int,
    max_rows: int,
    shards: int,
) -> None:
    events = [event(i, *s) for i, s in enumerate(spec)]
    records = [
        RawRecord("featrec", f"t:{i}", json.dumps(e.to_dict()), 1.0) for i, e in enumerate(events)
    ]
    base = Settings(home=tmp_path, batch_max_rows=max_rows)
    batch = run_shape(records, base, batch_size, shards)
    per_event = run_shape(records, base.with_(flow_shape="per-event"), batch_size, shards)
    assert batch[0] == per_event[0]
    assert sorted(d.origin for d in batch[1]) == sorted(d.origin for d in per_event[1])
    assert batch[2] == per_event[2] == len(events)
    states: dict[str, SessionState] = {}
    late = 0
    for e in events:
        late += (
            fold(
                states.setdefault(e.session_id, SessionState(e.session_id)), e, base.session_policy
            )
            is Outcome.LATE
        )
    assert {
        k: (r.values, r.version) for k, r in ((k, session_row(s)) for k, s in states.items())
    } == batch[0]
    assert late == len(batch[1])


def test_one_bad_record_inside_a_batch_loses_only_itself(tmp_path: Path) -> None:
    events = [event(i, f"s{i % 40}", i, "u1", "view") for i in range(400)]
    records = [
        RawRecord("featrec", f"t:{i}", json.dumps(e.to_dict()), 1.0) for i, e in enumerate(events)
    ]
    bad = dict(events[0].to_dict(), event_id="bad", price="lots")
    records.insert(200, RawRecord("featrec", "t:bad", json.dumps(bad), 1.0))
    rows, letters, logged = run_shape(records, Settings(home=tmp_path), 1000, 4)
    assert [(d.origin, d.reason.split(":")[0]) for d in letters] == [("t:bad", "price")]
    assert logged == 400
    assert len(rows) == 40 and all(v[0]["n_events"] == 10 for v in rows.values())  # type: ignore[index]


def test_the_shard_step_encodes_idle_sessions_ahead_and_wakes_for_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between batches the step encodes sessions idle for ENCODE_IDLE_S (so the end-of-epoch
    snapshot has less to do), and its timer wakes when the oldest changed one is due."""
    policy = Settings().session_policy
    events = [
        Event(f"e{i}", f"s{i % 3}", "i1", "view", T0 + timedelta(seconds=i)) for i in range(6)
    ]
    arrivals = [Arrival(e, 1.0, "o") for e in events]

    def logic() -> ShardLogic:
        return ShardLogic(
            SessionShard(policy, 600.0),
            deadline_s=60.0,
            max_rows=1000,
            stats=FlowStats(),
            deny=NothingDenied(),
        )

    waiting = logic()
    before = time.time()
    waiting.on_batch([arrivals])
    assert set(waiting.shard.stale) == {"s0", "s1", "s2"} and not waiting.shard.blobs
    due = waiting.notify_at()
    assert due is not None
    assert before + ENCODE_IDLE_S - 1e-3 <= due.timestamp() <= time.time() + ENCODE_IDLE_S

    monkeypatch.setattr(session_shards, "ENCODE_IDLE_S", 0.0)
    ahead = logic()
    ahead.on_batch([arrivals])
    assert ahead.shard.stale == {} and set(ahead.shard.blobs) == {"s0", "s1", "s2"}
    # The snapshot reuses those bytes: the same as encoding every session at snapshot time.
    blob = ahead.snapshot()
    again = SessionShard.from_bytes(blob, policy, 600.0)  # nothing encoded yet
    assert again.snapshots == 1  # resumed from snapshot 0; taken again as number 0:
    again.snapshots = 0
    assert again.to_bytes() == blob
    assert again.states == ahead.shard.states == waiting.shard.states


def test_near_the_expected_snapshot_every_changed_session_is_encoded_ahead() -> None:
    """The next end-of-epoch snapshot is expected one interval after a shard's last one:
    within SNAPSHOT_LEAD_S of it, sessions are encoded ahead idle or not; before, only idle."""
    policy = Settings().session_policy
    arrivals = [
        Arrival(Event(f"e{i}", f"s{i}", "i1", "view", T0 + timedelta(seconds=i)), 1.0, "o")
        for i in range(3)
    ]
    logic = ShardLogic(
        SessionShard(policy, 600.0),
        deadline_s=60.0,
        max_rows=1000,
        stats=FlowStats(),
        deny=NothingDenied(),
    )
    logic.snapshot()
    logic.snapshot()
    assert logic.epoch_s is not None and logic.snapshot_at is not None
    # The last two snapshots 10 s apart, the next expected in 0.8 s: not near enough yet.
    logic.epoch_s, logic.snapshot_at = 10.0, time.time() - 10.0 + 0.8
    logic.on_batch([arrivals])
    assert set(logic.shard.stale) == {"s0", "s1", "s2"}
    due = logic.notify_at()  # wakes when the window opens (0.5 s), before the idle rule (1 s)
    assert due is not None
    assert abs(due.timestamp() - (logic.snapshot_at + 10.0 - SNAPSHOT_LEAD_S)) < 1e-3
    # The next snapshot is due in 0.1 s: everything changed is encoded now.
    logic.snapshot_at = time.time() - 10.0 + 0.1
    logic.on_notify()
    assert logic.shard.stale == {} and set(logic.shard.blobs) == {"s0", "s1", "s2"}
    # A guess missed by more than the lead falls back to the idle rule.
    logic.snapshot_at = time.time() - 10.0 - 2 * SNAPSHOT_LEAD_S - 0.1
    logic.on_batch([[Arrival(arrivals[0].event, 1.0, "o")]])
    assert set(logic.shard.stale) == {"s0"}
