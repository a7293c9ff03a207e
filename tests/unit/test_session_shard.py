"""SessionShard: the per-session fold, many sessions at once, with TTL, forget and snapshots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from _lanes import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from featrec.core.events.batch_decode import Arrival
from featrec.core.events.model import Event
from featrec.core.features.rows import FeatureRow
from featrec.core.sessions.fold import Outcome, SessionPolicy, SessionState, fold, session_row
from featrec.core.sessions.shard import SessionShard, _state_list, late_letter

POLICY = SessionPolicy()
T0 = datetime(2024, 3, 1, tzinfo=UTC)


def ev(i: int, session: str, seconds: float, user: str | None = None, kind: str = "view") -> Event:
    return Event(f"e{i}", session, f"i{i % 7}", kind, T0 + timedelta(seconds=seconds), user, 2.5)


def oracle(events: list[Event]) -> tuple[dict[str, FeatureRow], int]:
    states: dict[str, SessionState] = {}
    late = 0
    for e in events:
        state = states.setdefault(e.session_id, SessionState(e.session_id))
        late += fold(state, e, POLICY) is Outcome.LATE
    return {k: session_row(s) for k, s in states.items()}, late


events_strategy = st.lists(
    st.builds(
        lambda i, s, t, u, k: (s, t, u, k),
        st.integers(),
        st.sampled_from(["a", "b", "c"]),
        st.floats(0, 4000, allow_nan=False),
        st.sampled_from([None, "u1", "u2"]),
        st.sampled_from(["view", "click", "cart", "purchase"]),
    ),
    max_size=60,
)


@settings(max_examples=examples(150), deadline=None)
@given(spec=events_strategy, cut=st.integers(1, 20))
def test_rows_equal_the_per_session_fold_for_any_batching(
    spec: list[tuple[str, float, str | None, str]], cut: int
) -> None:
    events = [ev(i, s, t, u, k) for i, (s, t, u, k) in enumerate(spec)]
    shard = SessionShard(POLICY, 1800.0)
    rows: dict[str, FeatureRow] = {}
    late = 0
    for start in range(0, len(events), cut):
        chunk = [Arrival(e, 1.0 + i, "o") for i, e in enumerate(events[start : start + cut])]
        refused, _ = shard.fold_batch(chunk, now=1.0)
        late += len(refused)
        for row in shard.take_rows():
            assert rows.get(row.key) is None or rows[row.key].version < row.version
            rows[row.key] = row
        # A snapshot taken anywhere resumes to the same rows.
        shard = SessionShard.from_bytes(shard.to_bytes(), POLICY, 1800.0)
    expected, expected_late = oracle(events)
    assert late == expected_late
    assert {k: (r.values, r.version) for k, r in rows.items()} == {
        k: (r.values, r.version) for k, r in expected.items()
    }


def test_only_the_newest_row_per_session_leaves_a_flush() -> None:
    shard = SessionShard(POLICY, 60.0)
    late, created = shard.fold_batch(
        [Arrival(ev(0, "a", 0), 10.0, "o"), Arrival(ev(1, "a", 5), 12.0, "o"),
         Arrival(ev(2, "b", 1), 11.0, "o")], now=100.0,
    )  # fmt: skip
    assert (late, created) == ([], 2)
    rows = shard.take_rows()
    assert [(r.key, r.values["n_events"], r.ingested_at) for r in rows] == [
        ("a", 2, 12.0),
        ("b", 1, 11.0),
    ]
    assert shard.take_rows() == []


def test_ttl_drops_idle_sessions_oldest_first_with_their_pending_rows() -> None:
    shard = SessionShard(POLICY, 60.0)
    shard.fold_batch([Arrival(ev(0, "a", 0), 1.0, "o")], now=100.0)
    shard.take_rows()
    shard.fold_batch([Arrival(ev(1, "b", 0), 1.0, "o")], now=130.0)
    assert shard.next_expiry() == 160.0
    assert shard.expire(159.0) == ([], 0)
    rows, gone = shard.expire(161.0)
    assert (rows, gone) == ([], 1) and set(shard.states) == {"b"}
    rows, gone = shard.expire(191.0)
    assert gone == 1 and [r.key for r in rows] == ["b"]  # b's row was still pending
    assert len(shard) == 0 and shard.next_expiry() is None


def test_forget_drops_state_and_pending_row() -> None:
    shard = SessionShard(POLICY, 60.0)
    shard.fold_batch(
        [Arrival(ev(0, "a", 0, "u1"), 1.0, "o"), Arrival(ev(1, "b", 0), 1.0, "o")], 1.0
    )
    assert shard.forget("a") and not shard.forget("zzz")
    assert [r.key for r in shard.take_rows()] == ["b"]
    assert shard.drop_where(lambda s: s.session_id == "b") == 1
    assert len(shard) == 0


def test_a_late_event_is_reported_with_the_sessions_newest_time() -> None:
    shard = SessionShard(POLICY, 60.0)
    arrivals = [Arrival(ev(0, "a", 1000), 1.0, "o:1"), Arrival(ev(1, "a", 0), 1.0, "o:2")]
    late, _ = shard.fold_batch(arrivals, 1.0)
    assert late == [(1, int((T0 + timedelta(seconds=1000)).timestamp() * 1_000_000))]
    letter = late_letter(arrivals[1].event, "o:2", late[0][1], POLICY)
    assert letter.origin == "o:2" and letter.reason.startswith("late event: ts ")


def test_snapshots_keep_touch_order_and_pending_rows() -> None:
    shard = SessionShard(POLICY, 60.0)
    shard.fold_batch([Arrival(ev(0, "a", 0), 5.0, "o"), Arrival(ev(1, "b", 0), 6.0, "o")], 10.0)
    again = SessionShard.from_bytes(shard.to_bytes(), POLICY, 60.0)
    assert list(again.touched.items()) == [("a", 10.0), ("b", 10.0)]
    assert [(r.key, r.values) for r in again.take_rows()] == [
        (r.key, r.values) for r in shard.take_rows()
    ]
    resumed = SessionShard.from_bytes(shard.to_bytes(), POLICY, 60.0, now=500.0)
    assert resumed.next_expiry() == 560.0  # a resumed flow gives its sessions a full TTL


def test_snapshots_are_incremental_and_exact() -> None:
    shard = SessionShard(POLICY, 60.0)
    shard.fold_batch([Arrival(ev(i, f"s{i % 5}", i), 1.0, "o") for i in range(20)], 1.0)
    first = shard.to_bytes()
    assert shard.stale == {}
    shard.fold_batch([Arrival(ev(99, "s1", 50), 1.0, "o")], 2.0)
    assert shard.stale == {"s1": 2.0}
    shard.forget("s2")
    second = shard.to_bytes()
    again = SessionShard.from_bytes(second, POLICY, 60.0)
    assert again.states == shard.states and list(again.touched) == list(shard.touched)
    assert SessionShard.from_bytes(first, POLICY, 60.0).states["s1"].n_events == 4
    assert again.states["s1"].n_events == 5 and "s2" not in again.states


def test_encode_idle_takes_the_least_recently_changed_idle_sessions_first() -> None:
    shard = SessionShard(POLICY, 600.0)
    for i, sid in enumerate(["a", "b", "c", "d"]):
        shard.fold_batch([Arrival(ev(i, sid, i), 1.0, "o")], now=10.0 + i)
    shard.fold_batch([Arrival(ev(9, "a", 9), 1.0, "o")], now=20.0)  # a changes again
    assert list(shard.stale) == ["b", "c", "d", "a"]
    assert shard.next_idle(5.0) == 16.0  # b, changed at 11, idle 5 s at 16
    assert shard.encode_idle(now=15.5, idle_s=5.0, limit=10) == 0
    assert shard.encode_idle(now=17.5, idle_s=5.0, limit=1) == 1  # the limit holds
    assert list(shard.stale) == ["c", "d", "a"] and set(shard.blobs) == {"b"}
    assert shard.encode_idle(now=100.0, idle_s=5.0, limit=10) == 3
    assert shard.stale == {} and shard.next_idle(5.0) is None
    # A session changed after it was encoded ahead is stale again, and encoded again.
    shard.fold_batch([Arrival(ev(10, "c", 10), 1.0, "o")], now=101.0)
    assert shard.stale == {"c": 101.0}
    assert SessionShard.from_bytes(shard.to_bytes(), POLICY, 600.0).states == shard.states


@settings(max_examples=examples(100), deadline=None)
@given(
    spec=events_strategy,
    cut=st.integers(1, 10),
    steps=st.lists(
        st.sampled_from(["fold", "fold", "ahead", "ahead", "snapshot", "forget", "expire"]),
        min_size=5,
        max_size=40,
    ),
    idle=st.floats(0, 3),
    limit=st.integers(1, 4),
)
def test_encoding_ahead_never_changes_a_snapshot(
    spec: list[tuple[str, float, str | None, str]],
    cut: int,
    steps: list[str],
    idle: float,
    limit: int,
) -> None:
    """A shard that encodes ahead (any idle wait, any limit, at any moment) snapshots to the
    same bytes as its twin that never does, and its snapshots resume to the same states."""
    events = [ev(i, s, t, u, k) for i, (s, t, u, k) in enumerate(spec)]
    ahead, plain = SessionShard(POLICY, 5.0), SessionShard(POLICY, 5.0)
    now, pos = 0.0, 0
    for step in steps:
        now += 0.7
        if step == "fold" and pos < len(events):
            chunk = [Arrival(e, now, "o") for e in events[pos : pos + cut]]
            pos += cut
            assert ahead.fold_batch(chunk, now) == plain.fold_batch(chunk, now)
        elif step == "ahead":
            ahead.encode_idle(now, idle, limit)
        elif step == "forget" and plain.states:
            sid = next(iter(plain.states))
            assert ahead.forget(sid) == plain.forget(sid)
        elif step == "expire":
            assert ahead.expire(now)[1] == plain.expire(now)[1]
        else:
            blob = ahead.to_bytes()
            assert blob == plain.to_bytes()
            assert SessionShard.from_bytes(blob, POLICY, 5.0).states == ahead.states
    blob = ahead.to_bytes()
    assert blob == plain.to_bytes()
    assert SessionShard.from_bytes(blob, POLICY, 5.0).states == ahead.states


def test_cooling_takes_out_idle_sessions_without_pending_rows_oldest_first() -> None:
    shard = SessionShard(POLICY, 600.0)
    shard.fold_batch(
        [Arrival(ev(0, "a", 0, "u1"), 1.0, "o"), Arrival(ev(1, "b", 1), 1.0, "o")], 10.0
    )
    shard.take_rows()
    shard.fold_batch([Arrival(ev(2, "c", 2), 1.0, "o")], now=20.0)  # c's row still pending
    assert shard.next_cool(30.0) == 40.0
    assert shard.cool(39.0, 30.0, 10) == []
    kept = {sid: shard.states[sid] for sid in ("a", "b")}
    cooled = shard.cool(45.0, 30.0, 1)  # the limit
    assert [(c.session_id, c.user_id, c.touched_at) for c in cooled] == [("a", "u1", 10.0)]
    cooled += shard.cool(60.0, 30.0, 10)  # c is idle too but has a pending row: it stays
    assert [c.session_id for c in cooled] == ["a", "b"] and set(shard.states) == {"c"}
    assert shard.blobs.keys() <= {"c"} and shard.stale.keys() <= {"c"}
    # The bytes are the snapshot's encoding; reviving gives the same states back.
    assert shard.missing([Arrival(ev(3, s, 3), 1.0, "o") for s in "abcab"]) == ["a", "b"]
    assert shard.revive([c.state for c in cooled], now=70.0) == 2
    assert shard.states["a"] == kept["a"] and shard.states["b"] == kept["b"]
    assert list(shard.touched) == ["c", "a", "b"] and shard.touched["a"] == 70.0
    # A session held already keeps its live state; its old bytes are ignored.
    shard.fold_batch([Arrival(ev(4, "a", 4), 1.0, "o")], now=71.0)
    assert shard.revive([cooled[0].state], now=72.0) == 0
    assert shard.states["a"].n_events == 2
    # Revived bytes count as encoded: the next snapshot reuses them for b.
    assert "b" in shard.blobs and "b" not in shard.stale


def test_snapshots_carry_the_key_and_their_number_and_format_2_still_reads() -> None:
    shard = SessionShard(POLICY, 600.0)
    shard.key = "7"
    shard.fold_batch([Arrival(ev(0, "a", 0), 1.0, "o")], now=10.0)
    first, second = shard.to_bytes(), shard.to_bytes()
    assert shard.snapshots == 2
    resumed = SessionShard.from_bytes(second, POLICY, 600.0)
    assert (resumed.key, resumed.snapshots) == ("7", 2)  # resumed from snapshot number 1
    assert SessionShard.from_bytes(first, POLICY, 600.0).snapshots == 1
    # A format-2 blob (no key, no count), as the previous version wrote it.
    raw = [msgspec.Raw(msgspec.msgpack.encode(_state_list(shard.states["a"])))]
    old = msgspec.msgpack.encode([2, raw, [10.0], [["a", 1.0]]])
    back = SessionShard.from_bytes(old, POLICY, 600.0)
    assert (back.key, back.snapshots) == (None, 0)
    assert back.states == shard.states and back.dirty == {"a": 1.0}
    with pytest.raises(ValueError, match="format 1"):
        SessionShard.from_bytes(msgspec.msgpack.encode([1, [], [], []]), POLICY, 600.0)


@settings(max_examples=examples(150), deadline=None)
@given(
    spec=events_strategy,
    cut=st.integers(1, 12),
    steps=st.lists(st.sampled_from(["fold", "cool", "snapshot", "forget", "rows"]), max_size=40),
    idle=st.floats(0, 2),
    limit=st.integers(1, 4),
)
def test_cooling_and_reviving_never_changes_a_row(
    spec: list[tuple[str, float, str | None, str]],
    cut: int,
    steps: list[str],
    idle: float,
    limit: int,
) -> None:
    """A shard that cools sessions to a store and revives them on their next event (at any
    moment, any idle wait, any limit, through snapshots and forgets) writes the same rows as
    its twin that holds everything, and refuses the same late events."""
    events = [ev(i, s, t, u, k) for i, (s, t, u, k) in enumerate(spec)]
    cooling, plain = SessionShard(POLICY, 1e9), SessionShard(POLICY, 1e9)
    store: dict[str, bytes] = {}
    now, pos = 0.0, 0

    def fold(chunk: list[Arrival]) -> None:
        revived = [store.pop(sid) for sid in cooling.missing(chunk) if sid in store]
        cooling.revive(revived, now)
        assert cooling.fold_batch(chunk, now) == plain.fold_batch(chunk, now)

    for step in [*steps, "fold", "rows"]:
        now += 0.7
        if step == "fold" and pos < len(events):
            fold([Arrival(e, now, "o") for e in events[pos : pos + cut]])
            pos += cut
        elif step == "cool":
            store.update((c.session_id, c.state) for c in cooling.cool(now, idle, limit))
        elif step == "snapshot":
            cooling = SessionShard.from_bytes(cooling.to_bytes(), POLICY, 1e9)
        elif step == "forget" and plain.states:
            sid = sorted(plain.states)[0]
            plain.forget(sid)
            cooling.forget(sid)
            store.pop(sid, None)
        elif step == "rows":
            got = {r.key: (r.values, r.version) for r in cooling.take_rows()}
            assert got == {r.key: (r.values, r.version) for r in plain.take_rows()}
    while pos < len(events):
        now += 0.7
        fold([Arrival(e, now, "o") for e in events[pos : pos + cut]])
        pos += cut
    assert cooling.states.keys() | store.keys() == plain.states.keys()
    assert not cooling.states.keys() & store.keys()
    for sid, state in plain.states.items():
        if sid in store:
            probe = SessionShard(POLICY, 1e9)
            probe.revive([store[sid]], 0.0)
            assert probe.states[sid] == state
        else:
            assert cooling.states[sid] == state
