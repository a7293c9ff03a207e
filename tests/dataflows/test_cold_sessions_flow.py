"""The sessions flow with a store of idle sessions, run for real (run_main, a real SQLite
store, bytewax's recovery store): sessions cool and revive, with the same rows as the fold
applied directly, through an abort and resume; forgetting reaches the store."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY
from test_dataflow_sessions import assert_store_matches, generated, oracle, records

from dataflows import session_shards
from dataflows.metrics import FlowStats
from dataflows.session_shards import Cooling, ShardLogic
from dataflows.sessions import NothingDenied, build_flow
from featrec.adapters.sqlite.cold_sessions import ColdSessions
from featrec.core.events.batch_decode import Arrival
from featrec.core.events.formats import DeadLetter
from featrec.core.events.model import Event
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.privacy import DenyList, DenySet
from featrec.core.sessions.fold import SessionPolicy
from featrec.core.sessions.shard import Forget, SessionShard
from featrec.settings import Settings


def cold_count(way: str) -> float:
    return REGISTRY.get_sample_value("featrec_cold_sessions_total", {"way": way}) or 0.0


def with_pauses(events: list[Event], every: int, pause_ms: int) -> list[object]:
    """The events' records with a pause of the source every ``every`` records."""
    out: list[object] = []
    for i, rec in enumerate(records(events)):
        if i and i % every == 0:
            out.append(TestingSource.PAUSE(timedelta(milliseconds=pause_ms)))
        out.append(rec)
    return out


def test_idle_sessions_cool_and_revive_with_the_same_rows(tmp_path: Path) -> None:
    events = generated(1500, seed=21)
    settings = Settings(home=tmp_path, batch_max_rows=64)
    store = ColdSessions(tmp_path / "cold")
    cooled, revived = cold_count("cooled"), cold_count("revived")
    rows = InMemoryFeatureStore()
    letters: list[DeadLetter] = []
    flow = build_flow(
        TestingSource(with_pauses(events, 250, 150), batch_size=50),
        settings,
        writer_factory=lambda: rows,
        dead_letter_sink=TestingSink(letters),
        event_log_sink=TestingSink([]),
        cooling=Cooling(store, idle_s=0.05),
    )
    run_main(flow)
    expected, late = oracle(events, settings.session_policy)
    assert_store_matches(rows, expected)
    assert len(letters) == late
    # Sessions did go cold during the pauses, and came back on their next event.
    assert cold_count("cooled") - cooled > 20
    assert cold_count("revived") - revived > 10
    assert store.count() > 0  # those idle at the end are still cold


def test_a_resumed_run_with_cold_sessions_gives_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions cool as soon as their row is written (``idle_s=0``, and no pause between two
    coolings of a shard: the most churn), so the
    abort lands among revivals and coolings the resumed run must roll back. (No source
    pauses before the abort: bytewax 0.21's TestingSource does not count a PAUSE in its
    resume offset, so it would replay events the snapshot already holds.)"""
    monkeypatch.setattr(session_shards, "COOL_EVERY_S", 0.0)
    events = generated(1500, seed=23)
    half = len(events) // 2
    recs: list[object] = [*records(events[:half]), TestingSource.ABORT()]
    recs += with_pauses(events[half:], 200, 60)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    settings = Settings(home=tmp_path, batch_max_rows=50)
    store = ColdSessions(recovery / "featrec" / "cold-sessions")
    rows = InMemoryFeatureStore()
    source = TestingSource(recs, batch_size=50)
    revived = cold_count("revived")

    def once() -> None:
        flow = build_flow(
            source,
            settings,
            writer_factory=lambda: rows,
            dead_letter_sink=TestingSink([]),
            event_log_sink=TestingSink([]),
            cooling=Cooling(store, idle_s=0.0),
        )
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(recovery))

    once()
    first = cold_count("revived") - revived
    once()
    assert_store_matches(rows, oracle(events, settings.session_policy)[0])
    assert first > 0 and cold_count("revived") - revived > first


def logic(store: ColdSessions, deny: object = None) -> ShardLogic:
    class Deny(NothingDenied):
        def current(self) -> DenySet:
            return deny if isinstance(deny, DenySet) else DenySet()

    return ShardLogic(
        SessionShard(SessionPolicy(), 600.0),
        deadline_s=0.001,
        max_rows=1000,
        stats=FlowStats(),
        deny=Deny(),
        cooling=Cooling(store, idle_s=0.01),
        key_of=lambda sid: "k",
    )


def arrivals(*sessions: str, user: str | None = None) -> list[Arrival]:
    t = datetime(2024, 3, 1, tzinfo=UTC)
    return [
        Arrival(Event(f"e{sid}{i}", sid, "x", "view", t + timedelta(seconds=i), user), 1.0, "o")
        for i, sid in enumerate(sessions)
    ]


def test_forget_reaches_a_cold_session_and_a_new_shard_starts_clean(tmp_path: Path) -> None:
    store = ColdSessions(tmp_path / "cold")
    shard = logic(store)
    shard.on_batch([arrivals("a", "b")])
    time.sleep(0.03)
    shard.on_notify()  # flushes, then cools both
    assert len(shard.shard) == 0 and store.count() == 2
    shard.on_batch([Forget("a")])
    assert store.session_ids() == ["b"]
    shard.on_batch([arrivals("b")])  # b revives and continues
    shard.on_notify()
    assert len(shard.shard) == 1 and shard.shard.states["b"].n_events == 2
    # A shard built without a snapshot owns nothing in the store: what is there for its key
    # was written after its last committed snapshot (or never committed) and is undone.
    fresh = logic(store)
    fresh.on_batch([arrivals("c")])
    assert store.count() == 0 and "b" not in fresh.shard.states


def test_a_resumed_shard_drops_the_deny_lists_sessions_from_the_store(tmp_path: Path) -> None:
    store = ColdSessions(tmp_path / "cold")
    shard = logic(store)
    shard.on_batch([arrivals("a", user="u1"), arrivals("b", user="u2")])
    time.sleep(0.03)
    shard.on_notify()
    blob = shard.snapshot()
    assert store.count() == 2
    deny = DenySet((DenyList("00" * 16).add("u1"),))
    resumed = ShardLogic(
        SessionShard.from_bytes(blob, SessionPolicy(), 600.0),
        deadline_s=0.001,
        max_rows=1000,
        stats=FlowStats(),
        deny=logic(store, deny).deny,
        cooling=Cooling(store, idle_s=0.01),
        key_of=lambda sid: "k",
    )
    assert resumed.cold is not None and store.session_ids() == ["b"]
