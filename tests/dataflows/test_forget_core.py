"""Forgetting, part by part: the deny-list and tombstones (pure), their stores, the sessions
dataflow's ingest rule and tombstone handling (bytewax run_main), and the batch-side guards
(log import, the batch job's loader). The whole path is in tests/test_forget.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY

from dataflows.sessions import build_flow
from featrec.adapters.duckdb.features import EventLogDB
from featrec.adapters.files.deny_list import (
    DenyWatcher,
    FileDenyStore,
    deny_file,
    load_deny_set,
)
from featrec.adapters.files.event_log import EventLogWriter, read_event_log
from featrec.adapters.redis.deny_list import RedisDenyStore
from featrec.adapters.redis.streams import connect
from featrec.core.events.formats import DeadLetter, RawRecord
from featrec.core.events.model import Event
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.privacy import (
    TOMBSTONE_FORMAT,
    TOMBSTONE_MAX_SESSIONS,
    DenyList,
    DenySet,
    is_denied,
    keep_allowed,
    new_salt,
    parse_tombstone,
    tombstones,
)
from featrec.errors import ConfigError, InvalidEvent
from featrec.jobs.log_import import import_events
from featrec.settings import Settings

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)


def event(i: int, session: str, user: str | None = None, item: str = "x") -> Event:
    return Event(f"e{i}-{session}", session, item, "view", T0 + timedelta(seconds=i), user)


def raw(e: Event) -> RawRecord:
    return RawRecord("featrec", f"t:{e.event_id}", json.dumps(e.to_dict()), 1.0)


def tombstone(*sessions: str) -> RawRecord:
    return RawRecord(TOMBSTONE_FORMAT, "t:forget", json.dumps({"sessions": list(sessions)}), 1.0)


def deny_set(user: str, sessions: list[str]) -> DenySet:
    return DenySet((DenyList(new_salt()).add(user, sessions),))


# -- core --------------------------------------------------------------------------------------


def test_deny_list_holds_salted_hashes_not_ids() -> None:
    a = DenyList(new_salt()).add("u1", ["s1"])
    b = DenyList(new_salt()).add("u1", ["s1"])
    assert a.contains("user", "u1") and a.contains("session", "s1")
    assert not a.contains("user", "s1") and not a.contains("session", "u1")  # kinds differ
    assert not a.contains("user", "u2") and not a.contains("user", None)
    assert a.digests.isdisjoint(b.digests)  # another salt, other digests
    assert not any("u1" in d or "s1" in d for d in a.digests)
    with pytest.raises(ConfigError):
        DenyList("not hex")


def test_ingest_rule_drops_events_of_the_user_and_of_their_anonymous_sessions() -> None:
    deny = deny_set("u1", ["s1"])
    events = [event(0, "s1"), event(1, "s1", "u1"), event(2, "s2", "u1"), event(3, "s3", "u2")]
    assert [is_denied(e, deny) for e in events] == [True, True, True, False]
    kept, dropped = keep_allowed(events, deny)
    assert (kept, dropped) == ([events[3]], 3)
    assert keep_allowed(events, DenySet()) == (events, 0)


def test_tombstones_carry_sessions_only_and_split_when_long() -> None:
    ids = [f"s{i}" for i in range(TOMBSTONE_MAX_SESSIONS + 5)]
    payloads = tombstones(ids)
    assert len(payloads) == 2
    assert sorted(s for p in payloads for s in parse_tombstone(p)) == sorted(ids)
    for bad in ("{", "[]", '{"sessions": [1]}', '{"sessions": [""]}'):
        with pytest.raises(InvalidEvent):
            parse_tombstone(bad)


# -- stores ------------------------------------------------------------------------------------


def test_file_and_redis_stores_and_the_watcher(tmp_path: Path, redis_url: str) -> None:
    file_store = FileDenyStore(deny_file(tmp_path / "events"))
    redis_store = RedisDenyStore(connect(redis_url))
    assert file_store.load() is None and redis_store.load() is None
    ticks = [0.0]
    watcher = DenyWatcher([file_store, redis_store], interval_s=1.0, clock=lambda: ticks[0])
    assert not watcher.current()

    file_store.add("u1", ["s1"])
    redis_store.add("u2", [])
    assert not watcher.current()  # not re-read before the interval
    ticks[0] = 1.0
    both = watcher.current()
    assert both.contains("user", "u1") and both.contains("user", "u2")
    assert both.contains("session", "s1") and not both.contains("user", "u3")

    file_store.add("u3", [])
    assert watcher.refresh().contains("user", "u3")  # a tombstone re-reads at once
    again = file_store.add("u1", ["s1"])  # idempotent, salt kept
    assert len(again) == 3 and load_deny_set([file_store]).contains("user", "u1")
    assert "u1" not in file_store.path.read_text() and "s1" not in file_store.path.read_text()


# -- the sessions dataflow ---------------------------------------------------------------------


class StaticDeny:
    def __init__(self, deny: DenySet) -> None:
        self.deny = deny
        self.refreshed = 0

    def current(self) -> DenySet:
        return self.deny

    def refresh(self) -> DenySet:
        self.refreshed += 1
        return self.deny


def run_flow(
    items: list[object], deny: StaticDeny, tmp_path: Path, **kwargs: object
) -> tuple[InMemoryFeatureStore, list[DeadLetter], list[list[Event]]]:
    store = InMemoryFeatureStore()
    letters: list[DeadLetter] = []
    logged: list[list[Event]] = []
    flow = build_flow(
        TestingSource(items, batch_size=kwargs.pop("batch_size", 1)),  # type: ignore[arg-type]
        Settings(home=tmp_path, batch_deadline_ms=5),
        writer_factory=lambda: store,
        dead_letter_sink=TestingSink(letters),
        event_log_sink=TestingSink(logged),
        deny=deny,
    )
    run_main(flow, **kwargs)  # type: ignore[arg-type]
    return store, letters, logged


def forgotten(what: str) -> float:
    return REGISTRY.get_sample_value("featrec_forgotten_events_total", {"what": what}) or 0.0


def test_denied_events_are_dropped_and_counted_not_dead_lettered(tmp_path: Path) -> None:
    events = [event(0, "s1"), event(1, "s1", "u1"), event(2, "s2", "u2"), event(3, "s3", "u1")]
    before = forgotten("event")
    store, letters, logged = run_flow(
        [raw(e) for e in events], StaticDeny(deny_set("u1", ["s1"])), tmp_path
    )
    assert store.keys("session_features") == ["s2"]
    assert letters == []
    assert [e.event_id for batch in logged for e in batch] == [events[2].event_id]
    assert forgotten("event") - before == 3


def test_a_tombstone_discards_the_live_state_of_its_sessions(tmp_path: Path) -> None:
    # Nothing is denied here, so the events after the tombstone get through: session s1
    # must start again from scratch (its state was discarded), s2 must be untouched.
    first = [event(0, "s1", "u1"), event(1, "s1", "u1"), event(2, "s2", "u2")]
    later = [event(3, "s1", "u1"), event(4, "s2", "u2")]
    deny = StaticDeny(DenySet())
    before = forgotten("session state")
    store, letters, logged = run_flow(
        [*map(raw, first), tombstone("s1", "never-seen"), *map(raw, later)], deny, tmp_path
    )
    s1, s2 = store.row("session_features", "s1"), store.row("session_features", "s2")
    assert s1 is not None and s2 is not None
    assert s1.values["n_events"] == 1 and s2.values["n_events"] == 2
    assert deny.refreshed == 1  # the tombstone re-read the deny-list
    assert forgotten("session state") - before == 2  # s1 and the unknown session
    assert letters == [] and sum(len(b) for b in logged) == 5  # tombstones are not events


def test_a_malformed_tombstone_is_a_dead_letter(tmp_path: Path) -> None:
    bad = RawRecord(TOMBSTONE_FORMAT, "t:bad", '{"sessions": 3}', 1.0)
    _, letters, _ = run_flow([bad], StaticDeny(DenySet()), tmp_path)
    assert [d.reason.split(":")[0] for d in letters] == ["tombstone"]


def test_state_resumed_for_a_denied_session_is_discarded(tmp_path: Path) -> None:
    """A crash can lose the tombstone (the stream entry is deleted once read): the state
    resumed from the recovery store is then dropped because the deny-list names it."""
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    config = RecoveryConfig(str(recovery))
    first = [raw(event(0, "s1", "u1")), raw(event(1, "s2", "u2"))]
    store, _, _ = run_flow(
        list(first),
        StaticDeny(DenySet()),
        tmp_path,
        epoch_interval=timedelta(0),
        recovery_config=config,
    )
    assert store.keys("session_features") == ["s1", "s2"]
    before = forgotten("session state")
    # Resume with u1 denied and one new event for each session: s1's event is dropped at
    # ingest, and its resumed state is discarded at its first timer; s2 continues.
    # (The testing source resumes at its recorded position: after ``first``.)
    items: list[object] = [
        *first,
        raw(event(2, "s1", "u1")),
        raw(event(3, "s2", "u2")),
        TestingSource.PAUSE(timedelta(milliseconds=300)),
    ]
    store, _, _ = run_flow(
        items,
        StaticDeny(deny_set("u1", [])),
        tmp_path,
        epoch_interval=timedelta(0),
        recovery_config=config,
    )
    assert store.keys("session_features") == ["s2"]
    row = store.row("session_features", "s2")
    assert row is not None and row.values["n_events"] == 2  # resumed, not restarted
    assert forgotten("session state") - before == 1


# -- batch side --------------------------------------------------------------------------------


def test_log_import_and_the_batch_loader_skip_forgotten_users(tmp_path: Path) -> None:
    log = tmp_path / "events"
    events = [event(0, "s1"), event(1, "s1", "u1"), event(2, "s2", "u2"), event(3, "s3", "u1")]
    EventLogWriter(log).write(events)  # an old copy already in the log
    FileDenyStore(deny_file(log)).add("u1", ["s1"])
    with EventLogDB(log) as db:
        assert db.count() == 1 and db.forgotten == 3
    with EventLogDB(log, deny=DenySet()) as db:
        assert db.count() == 4  # the guard, and nothing else, removed them

    fresh = tmp_path / "fresh"
    FileDenyStore(deny_file(fresh)).add("u1", ["s1"])
    result = import_events(fresh, events)
    assert (result.read, result.imported, result.forgotten) == (1, 1, 3)
    assert read_event_log(fresh)["session_id"].to_pylist() == ["s2"]
