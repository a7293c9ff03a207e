"""The sessions dataflow, run in-process with bytewax's run_main, against oracles.

The oracle is the core fold applied directly to the events in arrival order: the flow's final
rows in the store must equal it exactly, whatever the batching, sharding or recovery did.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY

from dataflows.metrics import FlowStats
from dataflows.sessions import FLOW_ID, build_flow, flow, source_from_env
from dataflows.sinks import DeadLetterSink, EventLogSink
from dataflows.sources import FileReplaySource, RedisStreamSource
from featrec.adapters.files.event_log import read_event_log
from featrec.adapters.files.flow_status import read_status
from featrec.adapters.redis.streams import publish, read_dead_letters
from featrec.core.events.formats import DeadLetter, RawRecord, decode
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event
from featrec.core.features.catalog import SESSION_FEATURES
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.sessions.fold import (
    Outcome,
    SessionPolicy,
    SessionState,
    fold,
    new_state,
    session_row,
)
from featrec.errors import ConfigError
from featrec.settings import Settings

VIEW = SESSION_FEATURES.name


def oracle(events: Iterable[Event], policy: SessionPolicy) -> tuple[dict[str, FeatureRow], int]:
    """Final row per session and the number of late events, by folding directly."""
    states: dict[str, SessionState] = {}
    late = 0
    for e in events:
        state = states.setdefault(e.session_id, new_state(e.session_id))
        if fold(state, e, policy) is Outcome.LATE:
            late += 1
    return {k: session_row(s) for k, s in states.items()}, late


def assert_store_matches(store: InMemoryFeatureStore, expected: dict[str, FeatureRow]) -> None:
    assert store.keys(VIEW) == sorted(expected)
    for key, row in expected.items():
        got = store.row(VIEW, key)
        assert got is not None
        assert (got.values, got.version) == (row.values, row.version), key


def records(events: Sequence[Event], at: float = 1.0) -> list[RawRecord]:
    return [
        RawRecord("featrec", f"test:{i}", json.dumps(e.to_dict()), at) for i, e in enumerate(events)
    ]


def generated(n: int, seed: int = 3) -> list[Event]:
    return list(generate(GeneratorConfig(n_events=n, seed=seed, concurrent_sessions=50)))


def with_disorder(events: list[Event], seed: int = 5) -> list[Event]:
    """Swap some neighbours (out of order but in time) and move a few far back (late)."""
    rng = random.Random(seed)
    out = list(events)
    for i in range(1, len(out) - 1, 7):
        out[i], out[i + 1] = out[i + 1], out[i]
    for _ in range(10):
        i = rng.randrange(len(out) // 2)
        out.append(out.pop(i))
    return out


def run_flow(
    source: TestingSource[RawRecord] | FileReplaySource | RedisStreamSource,
    settings: Settings,
    store: InMemoryFeatureStore,
    **kwargs: object,
) -> tuple[list[DeadLetter], list[list[Event]]]:
    letters: list[DeadLetter] = []
    logged: list[list[Event]] = []
    kwargs.setdefault("dead_letter_sink", TestingSink(letters))
    kwargs.setdefault("event_log_sink", TestingSink(logged))
    run_main(build_flow(source, settings, writer_factory=lambda: store, **kwargs))  # type: ignore[arg-type]
    return letters, logged


def test_final_rows_equal_the_fold_applied_directly(tmp_path: Path) -> None:
    events = with_disorder(generated(3000))
    settings = Settings(home=tmp_path, batch_max_rows=64)
    expected, late = oracle(events, settings.session_policy)
    assert late > 0  # the disorder produced some late events
    store = InMemoryFeatureStore()
    letters, logged = run_flow(TestingSource(records(events), batch_size=100), settings, store)
    assert_store_matches(store, expected)
    assert len(letters) == late
    assert all(d.reason.startswith("late event: ") for d in letters)
    # Every valid event reaches the event log, late ones included, each once.
    assert sorted(e.event_id for batch in logged for e in batch) == sorted(
        e.event_id for e in events
    )


def test_two_workers_give_the_same_rows(tmp_path: Path) -> None:
    """Sessions and row shards spread over two workers (threads here, the same exchange as
    processes): the rows, dead letters and event log are those of the oracle."""
    events = with_disorder(generated(2000, seed=8))
    settings = Settings(home=tmp_path, batch_max_rows=64)
    expected, late = oracle(events, settings.session_policy)
    store = InMemoryFeatureStore()
    letters: list[DeadLetter] = []
    logged: list[list[Event]] = []
    flow_ = build_flow(
        TestingSource(records(events), batch_size=100),
        settings,
        writer_factory=lambda: store,
        dead_letter_sink=TestingSink(letters),
        event_log_sink=TestingSink(logged),
        status_home=settings.home,
    )
    cli_main(flow_, workers_per_process=2)
    assert_store_matches(store, expected)
    assert len(letters) == late
    assert sorted(e.event_id for b in logged for e in b) == sorted(e.event_id for e in events)
    # One process: one status file (written by its lowest worker), so a cluster's files add up.
    assert [st["file"] for st in read_status(settings.home)] == ["sessions-w0.json"]


def test_malformed_lines_are_dead_lettered_with_reasons_and_counted(tmp_path: Path) -> None:
    events = generated(400)
    lines = [json.dumps(e.to_dict()) for e in events]
    bad = {
        10: ("{not json", "json: invalid JSON"),
        50: (json.dumps({**events[0].to_dict(), "ts": "yesterday"}), "ts: cannot parse"),
        51: (
            json.dumps({k: v for k, v in events[1].to_dict().items() if k != "item_id"}),
            "item_id: missing",
        ),
        200: (json.dumps({**events[2].to_dict(), "sesion_id": "x"}), "sesion_id: unknown field"),
        300: ("[1, 2]", "event: expected a JSON object"),
    }
    for at, (line, _) in sorted(bad.items()):
        lines.insert(at, line)
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    settings = Settings(home=tmp_path / "home")

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    before_in = sample("featrec_sessions_events_in_total")
    before_ts = sample("featrec_dead_letters_total", {"field": "ts"})
    before_other = sample("featrec_dead_letters_total", {"field": "other"})
    store = InMemoryFeatureStore()
    letter_file = tmp_path / "dead.jsonl"
    run_flow(
        FileReplaySource([path]),
        settings,
        store,
        dead_letter_sink=DeadLetterSink(file=letter_file),
        status_home=settings.home,
    )
    assert_store_matches(store, oracle(events, settings.session_policy)[0])

    stored = [json.loads(line) for line in letter_file.read_text().splitlines()]
    assert len(stored) == len(bad)
    by_origin = {d["origin"]: d for d in stored}
    for at, (line, reason) in bad.items():
        letter = by_origin[f"{path}:{at + 1}"]
        assert letter["reason"].startswith(reason), letter
        assert letter["payload"] == line
        assert letter["at"].endswith("+00:00")
    assert sample("featrec_sessions_events_in_total") - before_in == len(events)
    assert sample("featrec_dead_letters_total", {"field": "ts"}) - before_ts == 1
    # An unknown field name is user input: it must not become a label value.
    assert sample("featrec_dead_letters_total", {"field": "sesion_id"}) == 0
    assert sample("featrec_dead_letters_total", {"field": "other"}) - before_other == 1

    [status] = read_status(settings.home)
    assert status["file"] == "sessions-w0.json"
    assert status["events_in"] == len(events)
    assert status["dead_letters"] == len(bad)
    assert status["rows_written"] >= len(store.keys(VIEW))
    assert status["last_write_at"] > 0


def test_late_events_are_dead_lettered_and_not_folded(tmp_path: Path) -> None:
    t0 = 1_700_000_000
    raw = [
        {"event_id": "a", "session_id": "s", "item_id": "i1", "type": "view", "ts": t0},
        {
            "event_id": "b",
            "session_id": "s",
            "item_id": "i2",
            "type": "cart",
            "ts": t0 + 1000,
            "price": 5.0,
        },
        {"event_id": "c", "session_id": "s", "item_id": "i3", "type": "view", "ts": t0 + 100},
        {"event_id": "d", "session_id": "s", "item_id": "i4", "type": "view", "ts": t0 + 900},
    ]
    recs = [RawRecord("featrec", f"t:{i}", json.dumps(r), 1.0) for i, r in enumerate(raw)]
    store = InMemoryFeatureStore()
    letters, _ = run_flow(TestingSource(recs), Settings(home=tmp_path), store)
    [letter] = letters
    assert letter.origin == "t:2"
    assert letter.reason == (
        "late event: ts 2023-11-14T22:15:00+00:00 is more than 300 s before the session's "
        "newest event (2023-11-14T22:30:00+00:00)"
    )
    assert json.loads(letter.payload)["event_id"] == "c"
    values = store.read(VIEW, ["s"])[0]
    assert values is not None
    assert values["n_events"] == 3  # a, b and d (900 s is within 300 s of b at 1000 s)
    assert values["last_items"] == ["i2", "i4", "i1"]


def test_idle_session_state_is_discarded_after_the_ttl(tmp_path: Path) -> None:
    def gauge() -> float:
        return REGISTRY.get_sample_value("featrec_live_sessions") or 0.0

    base = gauge()
    seen: list[tuple[float, list[tuple[str, object]]]] = []

    class GaugeProbe(InMemoryFeatureStore):
        def write(self, rows: Sequence[FeatureRow]) -> int:
            seen.append((gauge() - base, [(r.key, r.values["n_events"]) for r in rows]))
            return super().write(rows)

    t0 = 1_700_000_000
    evs = [("a", t0), ("b", t0 + 1), ("a", t0 + 2), None, ("a", t0 + 3), None]
    items: list[object] = []
    for i, ev in enumerate(evs):
        if ev is None:
            items.append(TestingSource.PAUSE(timedelta(milliseconds=700)))
            continue
        body = {
            "event_id": f"e{i}",
            "session_id": ev[0],
            "item_id": "x",
            "type": "view",
            "ts": ev[1],
        }
        items.append(RawRecord("featrec", f"t:{i}", json.dumps(body), 1.0))
    store = GaugeProbe()
    settings = Settings(home=tmp_path, state_ttl_s=0.2, batch_deadline_ms=10)
    run_flow(TestingSource(items, batch_size=10), settings, store)  # type: ignore[arg-type]
    # Before the pause both sessions are live; after it both were discarded, so the event
    # at t0+3 (well inside the 30 min event-time gap) starts session "a" from scratch.
    *before_pause, after_pause = seen
    assert max(live for live, _ in before_pause) == 2
    newest = dict(row for _, rows in before_pause for row in rows)
    assert newest == {"a": 2, "b": 1}
    assert after_pause == (1, [("a", 1)])
    assert gauge() == base  # and nothing is left live when the run ends


def test_resume_after_abort_gives_the_same_rows(tmp_path: Path) -> None:
    events = generated(1500, seed=11)
    recs: list[object] = list(records(events))
    recs.insert(700, TestingSource.ABORT())
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    settings = Settings(home=tmp_path, batch_max_rows=50)
    store = InMemoryFeatureStore()
    letters: list[DeadLetter] = []
    logged: list[list[Event]] = []
    source = TestingSource(recs, batch_size=50)

    def once() -> None:
        flow_ = build_flow(
            source,
            settings,
            writer_factory=lambda: store,
            dead_letter_sink=TestingSink(letters),
            event_log_sink=TestingSink(logged),
        )
        run_main(flow_, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(recovery))

    once()
    logged_first = sum(len(b) for b in logged)
    assert logged_first < len(events)  # the abort stopped the first run mid-way
    once()
    assert_store_matches(store, oracle(events, settings.session_policy)[0])
    assert letters == []
    # The event log is at-least-once: every event is there, replays possible.
    assert {e.event_id for b in logged for e in b} == {e.event_id for e in events}


def test_otto_sample_file_flow(otto_sample: Path, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = InMemoryFeatureStore()
    letters, _ = run_flow(
        FileReplaySource([otto_sample]),
        settings,
        store,
        event_log_sink=EventLogSink(settings.event_log_dir),
    )
    events = [
        e
        for r in FileReplaySource([otto_sample])
        .build_part("i", str(otto_sample), None)
        .next_batch()
        if isinstance(r, RawRecord)
        for e in decode(r)
        if isinstance(e, Event)
    ]
    assert len(events) == 862
    assert letters == []
    assert_store_matches(store, oracle(events, settings.session_policy)[0])
    log = read_event_log(settings.event_log_dir)
    assert sorted(log.column("event_id").to_pylist()) == sorted(e.event_id for e in events)


def test_redis_source_and_dead_letter_stream(redis_url: str, tmp_path: Path) -> None:
    events = generated(500, seed=2)
    publish(redis_url, "ev", events)
    publish(redis_url, "ev", ['{"event_id": 1}'])
    store = InMemoryFeatureStore()
    run_flow(
        RedisStreamSource(redis_url, ["ev"], batch_size=64, stop_when_caught_up=True),
        Settings(home=tmp_path),
        store,
        dead_letter_sink=DeadLetterSink(redis_url=redis_url, stream="dl"),
    )
    assert_store_matches(store, oracle(events, SessionPolicy())[0])
    [letter] = read_dead_letters(redis_url, "dl", 10)
    assert letter["reason"] == "session_id: missing"
    assert letter["origin"].startswith("ev:")
    assert letter["payload"] == '{"event_id": 1}'


def test_stats_are_shared_by_the_steps_of_one_flow(tmp_path: Path) -> None:
    stats = FlowStats()
    events = generated(200)
    recs = [*records(events), RawRecord("featrec", "t:x", "nope", 1.0)]
    # A deadline longer than the run: every session's row leaves once, at end of input (with
    # the default deadline a slow machine may flush a session twice).
    run_flow(
        TestingSource(recs, batch_size=32),
        Settings(home=tmp_path, batch_deadline_ms=600_000),
        InMemoryFeatureStore(),
        stats=stats,
    )
    assert (stats.events_in, stats.dead_letters) == (200, 1)
    assert stats.rows_written == len({e.session_id for e in events})


def test_step_ids_are_stable(otto_sample: Path) -> None:
    """Step ids are the recovery schema: these lists change only with a new recovery store."""
    otto = otto_sample
    built = flow({"FEATREC_SOURCE": str(otto)})
    assert built.flow_id == FLOW_ID
    assert [s.step_name for s in built.substeps] == [
        "input", "decode", "split", "sessions", "split_late", "unkey_rows", "write",
        "late_letters", "all_dead_letters", "dead_letters", "log_events", "event_log",
    ]  # fmt: skip
    per_event = flow({"FEATREC_SOURCE": str(otto), "FEATREC_FLOW_SHAPE": "per-event"})
    assert [s.step_name for s in per_event.substeps] == [
        "input", "decode", "split", "key_session", "session", "split_late", "shard_rows",
        "batch_rows", "unkey_rows", "write", "late_letters", "all_dead_letters",
        "dead_letters", "shard_events", "batch_events", "event_log",
    ]  # fmt: skip


def test_source_from_env(tmp_path: Path, otto_sample: Path) -> None:
    settings = Settings(home=tmp_path)
    with pytest.raises(ConfigError, match="set FEATREC_SOURCE"):
        source_from_env({}, settings)
    with pytest.raises(ConfigError, match="FEATREC_REPLAY_SPEED"):
        source_from_env({"FEATREC_SOURCE": str(otto_sample), "FEATREC_REPLAY_SPEED": "x"}, settings)
    src = source_from_env(
        {
            "FEATREC_SOURCE": str(otto_sample),
            "FEATREC_SOURCE_FORMAT": "otto",
            "FEATREC_REPLAY_SPEED": "60",
        },
        settings,
    )
    assert isinstance(src, FileReplaySource)
    assert (src.paths, src.fmt, src.speed) == ([str(otto_sample)], "otto", 60.0)
    redis_src = source_from_env({"FEATREC_SOURCE": "redis"}, settings.with_(stream="a,b"))
    assert isinstance(redis_src, RedisStreamSource)
    assert redis_src.list_parts() == ["a", "b"]
