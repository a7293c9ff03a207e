"""The item signals flow's pair step with a store of idle sessions, run for real (run_main, a
real SQLite store, bytewax's recovery store): sessions cool and revive with the same rows as
the batch bootstrap, through an abort and resume; the store rolls back to the snapshot a
shard resumes from; the deny-list reaches the store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
from bytewax.operators import StatefulBatchLogic
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY
from test_dataflow_items import T0, RecordingStore, assert_store_equals, ev, generated, records

from dataflows import item_shards
from dataflows.item_logic import Sequenced
from dataflows.item_shards import PairShardLogic
from dataflows.items import build_flow, cooling_from_env
from dataflows.session_shards import Cooling
from featrec.adapters.sqlite.cold_sessions import ColdSessions
from featrec.app.item_signals import ItemSignalsConfig, bootstrap
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.privacy import DenyList, DenySet
from featrec.core.sessions.shard import Forget
from featrec.settings import Settings


def cold_count(way: str) -> float:
    sample = REGISTRY.get_sample_value("featrec_items_cold_sessions_total", {"way": way})
    return sample or 0.0


def with_pauses(recs: list[object], every: int, pause_ms: int) -> list[object]:
    out: list[object] = []
    for i, rec in enumerate(recs):
        if i and i % every == 0:
            out.append(TestingSource.PAUSE(timedelta(milliseconds=pause_ms)))
        out.append(rec)
    return out


def test_idle_sessions_cool_and_revive_with_the_bootstraps_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(item_shards, "COOL_EVERY_S", 0.0)
    events = generated(2000, seed=31)
    settings = Settings(home=tmp_path, batch_max_rows=64)
    store = ColdSessions(tmp_path / "cold")
    cooled, revived = cold_count("cooled"), cold_count("revived")
    rows = InMemoryFeatureStore()
    flow = build_flow(
        TestingSource(with_pauses(list(records(events)), 250, 150), batch_size=50),
        settings,
        writer_factory=lambda: rows,
        dead_letter_sink=TestingSink([]),
        cooling=Cooling(store, idle_s=0.05),
    )
    run_main(flow)
    assert_store_equals(rows, bootstrap(events, ItemSignalsConfig.from_settings(settings)))
    # Sessions did go cold during the pauses, and came back on their next event.
    assert cold_count("cooled") - cooled > 20
    assert cold_count("revived") - revived > 10
    assert store.count() > 0  # those idle at the end are still cold


def test_a_resumed_run_with_cold_sessions_gives_the_bootstraps_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions cool as soon as they are idle at all (``idle_s=0``, no pause between two
    coolings: the most churn), so the abort lands among revivals and coolings the resumed run
    must roll back."""
    monkeypatch.setattr(item_shards, "COOL_EVERY_S", 0.0)
    events = generated(1500, seed=33)
    half = len(events) // 2
    recs: list[object] = [*records(events[:half]), TestingSource.ABORT(), *records(events[half:])]
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    settings = Settings(home=tmp_path, batch_max_rows=50, item_write_interval_s=3600.0)
    store = ColdSessions(recovery / "featrec" / "cold-sessions" / "items")
    rows = RecordingStore()
    source = TestingSource(recs, batch_size=50)
    revived = cold_count("revived")

    def once() -> None:
        flow = build_flow(
            source,
            settings,
            writer_factory=lambda: rows,
            dead_letter_sink=TestingSink([]),
            cooling=Cooling(store, idle_s=0.0),
        )
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(recovery))

    once()
    first = cold_count("revived") - revived
    once()
    assert_store_equals(rows, bootstrap(events, ItemSignalsConfig.from_settings(settings)))
    assert first > 0 and cold_count("revived") - revived > first


def pair_logic(
    store: ColdSessions, now: list[float], resume: bytes | None = None, deny: DenySet | None = None
) -> PairShardLogic:
    class Deny:
        def current(self) -> DenySet:
            return deny if deny is not None else DenySet()

        def refresh(self) -> DenySet:
            return self.current()

    return PairShardLogic(
        ItemSignalsConfig(),
        600.0,
        resume,
        now=lambda: now[0],
        cooling=Cooling(store, idle_s=10.0),
        key_of=lambda sid: "k",
        deny=Deny(),
    )


def arrival(n: int, session: str, item: str) -> list[Sequenced]:
    return [Sequenced(n, ev(n, session, item, n), 1.0)]


class Cold(NamedTuple):
    store: ColdSessions
    now: list[float]
    live: PairShardLogic


@pytest.fixture
def a_and_b_cold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cold:
    """A cooling pair step (coolings not spaced out) whose sessions a (item A) and b (item B)
    went cold."""
    monkeypatch.setattr(item_shards, "COOL_EVERY_S", 0.0)
    store = ColdSessions(tmp_path / "cold")
    now = [T0]
    live = pair_logic(store, now)
    live.on_batch([arrival(1, "a", "A"), arrival(2, "b", "B")])
    now[0] += 11
    live.on_notify()
    assert live.states == {}
    return Cold(store, now, live)


def test_a_shard_resumed_from_a_snapshot_gets_the_store_as_it_was_then(
    a_and_b_cold: Cold,
) -> None:
    store, now, live = a_and_b_cold
    assert store.count() == 2
    snap = live.snapshot()  # snapshot 0: a and b cold
    [made], _ = live.on_batch([arrival(3, "a", "C")])  # a revives: its A pairs with C
    assert {(u[0], u[1]) for u in made[0].updates} == {("A", "C"), ("C", "A")}
    assert store.count() == 1 and list(live.states) == ["a"]
    live.on_batch([arrival(4, "c", "D")])
    now[0] += 11
    live.on_notify()  # a and c cool after snapshot 0
    assert store.count() == 3
    # Resumed from snapshot 0: a is cold again with only A, c was never there.
    back = pair_logic(store, now, snap)
    assert back.states == {} and store.count() == 2
    [made], _ = back.on_batch([arrival(3, "a", "C")])
    assert {(u[0], u[1]) for u in made[0].updates} == {("A", "C"), ("C", "A")}
    assert [e for e, _, _ in back.states["a"].entries] == [
        int((T0 + 1) * 1_000_000),
        int((T0 + 3) * 1_000_000),
    ]
    # A new shard (no snapshot) owns nothing in the store.
    fresh = pair_logic(store, now)
    fresh.on_batch([arrival(5, "d", "E")])
    assert store.count() == 0


def test_cold_sessions_expire_with_the_ttl_and_the_deny_list_reaches_them(
    a_and_b_cold: Cold,
) -> None:
    store, now, live = a_and_b_cold
    snap = live.snapshot()
    assert store.session_ids() == ["a", "b"]
    deny = DenySet((DenyList("00" * 16).add("u", ["a"]),))
    pair_logic(store, now, snap, deny).on_batch([arrival(3, "c", "C")])
    assert store.session_ids() == ["b"]
    # Past the TTL (600 s), a cold session is gone at the next snapshot and does not revive.
    back = pair_logic(store, now, snap)
    now[0] += 601
    back.snapshot()
    assert store.session_ids() == []
    made, _ = back.on_batch([arrival(4, "b", "D")])
    assert list(made) == []  # nothing to pair with: b starts afresh


def test_the_pair_step_cools_only_when_its_ttl_is_longer(tmp_path: Path) -> None:
    store = ColdSessions(tmp_path / "cold")
    logic = PairShardLogic(ItemSignalsConfig(), 5.0, None, cooling=Cooling(store, idle_s=5.0))
    assert logic.cooling is None


def test_cooling_from_env_puts_the_store_beside_the_sessions_flows(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    env = {"FEATREC_COLD_SESSIONS": str(tmp_path / "cold"), "FEATREC_SESSION_COOL_S": "30"}
    cooling = cooling_from_env(env, settings)
    assert cooling is not None
    assert (cooling.store.directory, cooling.idle_s) == (tmp_path / "cold" / "items", 30.0)
    assert cooling_from_env({}, settings) is None
    per_event = Settings(home=tmp_path, flow_shape="per-event")
    assert cooling_from_env(env, per_event) is None


def test_a_cooling_pair_step_keeps_its_timer_for_the_next_cooling(tmp_path: Path) -> None:
    store = ColdSessions(tmp_path / "cold")
    now = [T0]
    live = pair_logic(store, now)
    live.on_batch([arrival(1, "a", "A")])
    due = live.notify_at()
    assert due is not None and due.timestamp() == pytest.approx(T0 + 10.0)
    now[0] += 11
    # Every session cooled, yet the shard is retained: its snapshot count tags the store.
    assert live.on_notify() == ((), StatefulBatchLogic.RETAIN) and live.states == {}
    assert live.notify_at() is None


def test_a_tombstones_session_leaves_memory_and_the_store(
    a_and_b_cold: Cold,
) -> None:
    store, _, live = a_and_b_cold
    live.on_batch([arrival(3, "c", "C")])
    live.on_batch([[Forget("a"), Forget("c")]])
    assert store.session_ids() == ["b"] and live.states == {}
    # The next event of a forgotten session pairs with nothing before it.
    made, _ = live.on_batch([arrival(4, "a", "D")])
    assert list(made) == []
