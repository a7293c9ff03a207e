"""The item signals dataflow, run in-process with bytewax's run_main, against oracles.

The oracle is the batch bootstrap (:func:`featrec.app.item_signals.bootstrap`) over the same
events in the same order: with one input partition and one worker the flow's final rows must
equal it exactly, whatever the batching, the rate limit or a recovery did.
"""

from __future__ import annotations

import json
import pickle  # nosec B403 - reads back a snapshot this test pickled
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _lanes import examples
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from dataflows.item_logic import (
    EventClock,
    NeighbourLogic,
    PairChunk,
    Sequenced,
    Throttled,
    TrendLogic,
)
from dataflows.item_shards import NeighbourShardLogic, PairShardLogic, TrendShardLogic
from dataflows.items import FLOW_ID, build_flow, dead_letter_sink, flow
from dataflows.metrics import FlowStats
from dataflows.sessions import FORGOTTEN
from dataflows.sinks import DeadLetterSink
from dataflows.sources import FileReplaySource, RedisStreamSource
from featrec.app.item_signals import (
    TRENDING_KEY,
    ItemSignals,
    ItemSignalsConfig,
    bootstrap,
    trending_key,
)
from featrec.core.events.formats import DeadLetter, RawRecord
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event
from featrec.core.features.catalog import ITEM_NEIGHBOURS, ITEM_TRENDING
from featrec.core.features.rows import FeatureRow
from featrec.core.items.covisit import CovisitConfig, PairUpdate
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.privacy import (
    TOMBSTONE_FORMAT,
    DenyList,
    DenySet,
    new_salt,
    tombstone_payload,
)
from featrec.settings import FlowShape, Settings

T0 = 1_700_000_000.0
YEAR = 365 * 86_400.0


def records(events: Sequence[Event], at: float = 1.0) -> list[RawRecord]:
    return [
        RawRecord("featrec", f"test:{i}", json.dumps(e.to_dict()), at) for i, e in enumerate(events)
    ]


def generated(n: int, seed: int = 3) -> list[Event]:
    return list(generate(GeneratorConfig(n_events=n, seed=seed, concurrent_sessions=50)))


def with_disorder(events: list[Event]) -> list[Event]:
    """Swap some neighbours: arrival order differs from event time order."""
    out = list(events)
    for i in range(1, len(out) - 1, 7):
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def ev(
    n: int, session: str, item: str, t: float, type_: str = "view", category: str | None = None
) -> Event:
    return Event(
        event_id=f"e{n}",
        session_id=session,
        item_id=item,
        type=type_,
        ts=datetime.fromtimestamp(T0 + t, tz=UTC),
        category=category,
    )


class RecordingStore(InMemoryFeatureStore):
    """The in-memory store, keeping every row a writer call handed it (in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[FeatureRow] = []

    def write(self, rows: Sequence[FeatureRow]) -> int:
        self.calls.extend(rows)
        return super().write(rows)

    def writes_per_key(self) -> Counter[tuple[str, str]]:
        return Counter((r.view, r.key) for r in self.calls)


def run_flow(
    source: Any,
    settings: Settings,
    store: InMemoryFeatureStore,
    *,
    workers: int = 1,
    **kwargs: Any,
) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    kwargs.setdefault("dead_letter_sink", TestingSink(letters))
    built = build_flow(source, settings, writer_factory=lambda: store, **kwargs)
    if workers == 1:
        run_main(built)
    else:
        cli_main(built, workers_per_process=workers)
    return letters


def all_keys(store: InMemoryFeatureStore) -> set[tuple[str, str]]:
    return {
        (view, key)
        for view in (ITEM_NEIGHBOURS.name, ITEM_TRENDING.name)
        for key in store.keys(view)
    }


def assert_store_equals(store: InMemoryFeatureStore, signals: ItemSignals) -> None:
    """Exactly the oracle's rows: same keys, values and versions."""
    expected = signals.rows()
    assert all_keys(store) == {(r.view, r.key) for r in expected}
    for row in expected:
        got = store.row(row.view, row.key)
        assert got is not None
        assert (got.values, got.version) == (row.values, row.version), (row.view, row.key)


# -- the oracle ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval_s", "batch_size", "max_rows", "shape"),
    [
        (0.0, 100, 1000, "batch"),
        (3600.0, 7, 64, "batch"),
        (0.0, 1000, 1, "batch"),
        (3600.0, 7, 64, "per-event"),
    ],
)
def test_final_rows_equal_the_batch_bootstrap(
    tmp_path: Path, interval_s: float, batch_size: int, max_rows: int, shape: FlowShape
) -> None:
    """Both shapes (the batch shape by default, the per-event one kept as the baseline)."""
    events = with_disorder(generated(3000))
    settings = Settings(
        home=tmp_path,
        item_write_interval_s=interval_s,
        batch_max_rows=max_rows,
        flow_shape=shape,
    )
    store = InMemoryFeatureStore()
    letters = run_flow(TestingSource(records(events), batch_size=batch_size), settings, store)
    assert letters == []
    signals = bootstrap(events, ItemSignalsConfig.from_settings(settings))
    assert len(signals.index.sketches) > 500 and len(signals.list_rows()) > 10
    assert_store_equals(store, signals)


def test_two_workers_agree_with_the_bootstrap_up_to_float_rounding(tmp_path: Path) -> None:
    """Anchors and items spread over two workers: updates from the other worker may arrive in
    another order, which changes only the rounding of the sums (no counter is ever evicted
    here, and rows carry every neighbour)."""
    events = generated(2500, seed=8)
    config = ItemSignalsConfig(
        covisit=CovisitConfig(capacity=200), neighbours_k=200, session_idle_s=None
    )
    signals = bootstrap(events, config)
    assert max(len(s.counts) for s in signals.index.sketches.values()) < 200
    store = InMemoryFeatureStore()
    settings = Settings(home=tmp_path, item_write_interval_s=0.0)
    run_flow(
        TestingSource(records(events), batch_size=50), settings, store, config=config, workers=2
    )
    expected = signals.rows()
    assert all_keys(store) == {(r.view, r.key) for r in expected}
    for row in expected:
        got = store.row(row.view, row.key)
        assert got is not None
        assert numbers(got.values) == pytest.approx(numbers(row.values), rel=1e-12), row.key
        assert texts(got.values) == texts(row.values), row.key


def numbers(values: Mapping[str, object]) -> dict[str, float]:
    """A row's numbers by name; list features as ``w:<id>`` (weights by neighbour id)."""
    out = {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
    ids, weights = values.get("neighbour_ids"), values.get("neighbour_weights")
    if isinstance(ids, list) and isinstance(weights, list):
        out.update({f"w:{i}": w for i, w in zip(ids, weights, strict=True)})
    return out


def texts(values: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in values.items() if isinstance(v, str) or v is None}


# -- known answers ---------------------------------------------------------------------------


def tiny_catalogue() -> list[Event]:
    """Shoppers who look at A then B, at C then D; a few buy P; one looks at A then E."""
    out: list[Event] = []
    t = 0.0
    for s in range(6):
        out.append(ev(len(out), f"ab{s}", "A", t, category="x"))
        out.append(ev(len(out), f"ab{s}", "B", t + 10, category="x"))
        out.append(ev(len(out), f"cd{s}", "C", t + 1, category="y"))
        out.append(ev(len(out), f"cd{s}", "D", t + 11, "cart", category="y"))
        t += 60
    out.append(ev(len(out), "ae", "A", t, category="x"))
    out.append(ev(len(out), "ae", "E", t + 5, category="x"))
    for s in range(3):
        out.append(ev(len(out), f"p{s}", "P", t + 10 + s, "purchase", category="y"))
    return out


def test_tiny_catalogue_has_the_obvious_neighbours_and_trending(tmp_path: Path) -> None:
    store = InMemoryFeatureStore()
    run_flow(TestingSource(records(tiny_catalogue()), batch_size=5), Settings(home=tmp_path), store)

    def neighbours(item: str) -> list[str]:
        [values] = store.read(ITEM_NEIGHBOURS.name, [item])
        assert values is not None
        return list(values["neighbour_ids"])  # type: ignore[call-overload]

    assert neighbours("A") == ["B", "E"]  # six sessions went on to B, one to E
    assert neighbours("B") == ["A"]  # backward pairs: B was preceded by A
    assert neighbours("C") == ["D"]
    assert neighbours("E") == ["A"]
    [p] = store.read(ITEM_NEIGHBOURS.name, ["P"])
    assert p is None  # bought alone in every session: no pairs
    # Trending: 3 purchases x 6 beat 6 carts x 3 beat 7 views; categories keep their own.
    assert neighbours(TRENDING_KEY)[:3] == ["P", "D", "A"]
    assert neighbours(trending_key("y")) == ["P", "D", "C"]
    assert neighbours(trending_key("x")) == ["A", "B", "E"]
    [d] = store.read(ITEM_TRENDING.name, ["D"])
    assert d is not None
    assert (d["trend_cart"], d["trend_view"], d["category"]) == (
        pytest.approx(6 * 2 ** -(300 / (12 * 3600)), rel=0.01),
        0.0,
        "y",
    )


# -- rate limit ------------------------------------------------------------------------------


def hot_item_events(n: int) -> list[Event]:
    """One hot item H viewed in every session, with a few other items."""
    out = []
    for i in range(n):
        out.append(ev(2 * i, f"s{i % 40}", "H", i))
        out.append(ev(2 * i + 1, f"s{i % 40}", f"i{i % 13}", i + 0.5))
    return out


def test_rate_limit_writes_each_item_at_most_twice_and_the_newest_last(tmp_path: Path) -> None:
    events = hot_item_events(300)
    oracle = bootstrap(events, ItemSignalsConfig.from_settings(Settings()))
    deferred = (
        REGISTRY.get_sample_value("featrec_items_rows_deferred_total", {"kind": "neighbours"})
        or 0.0
    )

    def run(interval_s: float) -> RecordingStore:
        store = RecordingStore()
        # One row per batch and one event per activation: without the rate limit, every
        # activation that touches an item writes its row.
        settings = Settings(home=tmp_path, item_write_interval_s=interval_s, batch_max_rows=1)
        run_flow(TestingSource(records(events), batch_size=1), settings, store)
        return store

    unlimited = run(0.0)
    assert unlimited.writes_per_key()[(ITEM_NEIGHBOURS.name, "H")] > 50
    limited = run(3600.0)
    # The first update is written at once, the newest at end of input: two rows per key.
    assert max(limited.writes_per_key().values()) == 2
    assert len(limited.calls) < len(unlimited.calls) / 10
    assert_store_equals(limited, oracle)
    assert_store_equals(unlimited, oracle)
    after = (
        REGISTRY.get_sample_value("featrec_items_rows_deferred_total", {"kind": "neighbours"})
        or 0.0
    )
    assert after > deferred


def test_a_timer_writes_the_newest_state_of_a_burst_before_the_next_one(tmp_path: Path) -> None:
    """A deferred row is not held until the next event: the timer writes it once the interval
    has passed (here during the pause between two bursts)."""
    first, second = hot_item_events(100), hot_item_events(160)[100:]
    items: list[object] = [*records(first), TestingSource.PAUSE(timedelta(seconds=2))]
    items += records(second)
    store = RecordingStore()
    settings = Settings(home=tmp_path, item_write_interval_s=0.1, batch_deadline_ms=5)
    run_flow(TestingSource(items, batch_size=10), settings, store)
    config = ItemSignalsConfig.from_settings(settings)
    after_first = {(r.view, r.key): r for r in bootstrap(first, config).rows()}
    hot = after_first[(ITEM_NEIGHBOURS.name, "H")]
    written = [r for r in store.calls if (r.view, r.key) == (ITEM_NEIGHBOURS.name, "H")]
    assert any((r.values, r.version) == (hot.values, hot.version) for r in written)
    assert_store_equals(store, bootstrap(first + second, config))


# -- bounded memory --------------------------------------------------------------------------


def live_states(kind: str) -> float:
    return REGISTRY.get_sample_value("featrec_items_live_states", {"kind": kind}) or 0.0


def test_negligible_items_are_discarded_and_memory_stays_bounded(tmp_path: Path) -> None:
    """Four phases a year apart, each with its own 20 items, paused so idle timers fire. An
    item's state is dropped once its weight has decayed away at the flow's event time, so
    live states never exceed two phases' worth; a dropped item starts afresh."""
    base = {k: live_states(k) for k in ("neighbours", "trending")}
    seen: list[dict[str, float]] = []

    class GaugeProbe(InMemoryFeatureStore):
        def write(self, rows: Sequence[FeatureRow]) -> int:
            seen.append({k: live_states(k) - base[k] for k in base})
            return super().write(rows)

    dropped = (
        REGISTRY.get_sample_value("featrec_items_states_dropped_total", {"kind": "neighbours"})
        or 0.0
    )
    items: list[object] = []
    n = 0
    for phase in range(4):
        phase_events = []
        for s in range(20):  # 20 sessions, each pairs item s with item s + 1 (mod 20)
            for j in (0, 1):
                item = f"p{phase}-{(s + j) % 20}"
                phase_events.append(ev(n, f"p{phase}s{s}", item, phase * YEAR + s * 10 + j))
                n += 1
        items += records(phase_events)
        items.append(TestingSource.PAUSE(timedelta(milliseconds=600)))
    # Item p0-0 comes back after the others: its old neighbours were forgotten with it.
    items += records(
        [ev(n, "back", "p0-0", 3 * YEAR + 500), ev(n + 1, "back", "new", 3 * YEAR + 501)]
    )
    settings = Settings(
        home=tmp_path, item_write_interval_s=0.0, item_idle_s=0.1, batch_deadline_ms=5
    )
    store = GaugeProbe()
    run_flow(TestingSource(items, batch_size=50), settings, store)

    assert max(s["neighbours"] for s in seen) <= 2 * 20
    assert max(s["trending"] for s in seen) <= 2 * 20 + 2
    after = (
        REGISTRY.get_sample_value("featrec_items_states_dropped_total", {"kind": "neighbours"})
        or 0.0
    )
    assert after - dropped >= 3 * 20  # the first three phases
    [back] = store.read(ITEM_NEIGHBOURS.name, ["p0-0"])
    assert back is not None and back["neighbour_ids"] == ["new"]
    assert live_states("neighbours") == base["neighbours"]  # nothing live after the run


def test_logic_keeps_a_live_item_and_drops_it_once_negligible() -> None:
    """The timer path of one key, with a fake system clock."""
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    clock = EventClock()
    config = ItemSignalsConfig()
    logic = NeighbourLogic(
        config, timedelta(seconds=5), timedelta(seconds=60), clock, now=lambda: now[0]
    )
    t = int(T0 * 1_000_000)
    clock.advance(t)
    chunk = [PairUpdate("A", "B", 1.0, t), PairUpdate("A", "C", 2.0, t)]
    out, discard = logic.on_batch([PairChunk(1.0, chunk)])
    assert [r.values["neighbour_ids"] for r in out] == [["C", "B"]] and not discard
    out, _ = logic.on_batch([PairChunk(1.0, [PairUpdate("A", "B", 5.0, t + 1)])])
    assert list(out) == [] and logic.notify_at() == now[0] + timedelta(seconds=5)
    now[0] += timedelta(seconds=5)
    out, _ = logic.on_notify()
    assert [r.values["neighbour_ids"] for r in out] == [["B", "C"]]
    assert logic.notify_at() == now[0] - timedelta(seconds=5) + timedelta(seconds=60)
    now[0] += timedelta(seconds=60)
    assert logic.on_notify() == ((), False)  # still weighs something at the event clock
    clock.advance(t + int(YEAR * 1_000_000))
    now[0] += timedelta(seconds=60)
    assert logic.on_notify() == ((), True)
    snap = logic.snapshot()
    assert isinstance(snap, Throttled) and snap.key == "A" and not snap.dirty


def test_a_dirty_snapshot_is_written_after_resume() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    clock = EventClock()
    config = ItemSignalsConfig()
    logic = TrendLogic(config, timedelta(hours=1), timedelta(hours=1), clock, now=lambda: now)
    e1, e2 = ev(0, "s", "A", 0), ev(1, "s", "A", 1)
    logic.on_batch([[Sequenced(0, e1, 1.0)]])
    assert logic.on_batch([[Sequenced(1, e2, 1.0)]])[0] == ()
    snap = logic.snapshot()
    assert snap.dirty
    resumed = TrendLogic(config, timedelta(hours=1), timedelta(hours=1), clock, snap, lambda: now)
    assert resumed.notify_at() == now
    out, _ = resumed.on_notify()
    [row, update] = out
    assert (
        isinstance(row, FeatureRow)
        and row.key == "A"
        and row.values["trend_view"] == pytest.approx(2.0, rel=1e-3)
    )
    assert update.trend.version == row.version


def test_shard_logic_rate_limits_each_key_and_drops_it_once_negligible() -> None:
    """The batch shape's timer path, two anchors in one shard, with a fake system clock:
    each key is written at once, then at most once per interval; idle keys are dropped
    only once negligible at the event clock."""
    now = [1_000_000.0]
    clock = EventClock()
    logic = NeighbourShardLogic(ItemSignalsConfig(), 5.0, 60.0, clock, now=lambda: now[0])
    t = int(T0 * 1_000_000)
    clock.advance(t)
    first = [PairUpdate("A", "B", 1.0, t), PairUpdate("A", "C", 2.0, t), PairUpdate("X", "Y", 1, t)]
    [out], discard = logic.on_batch([PairChunk(1.0, first)])
    assert [(r.key, r.values["neighbour_ids"]) for r in out] == [("A", ["C", "B"]), ("X", ["Y"])]
    assert not discard and live_states("neighbours") >= 2
    out, _ = logic.on_batch([PairChunk(1.0, [PairUpdate("A", "B", 5.0, t + 1)])])
    assert list(out) == [] and logic.notify_at() == datetime.fromtimestamp(now[0] + 5, UTC)
    now[0] += 5
    [out], _ = logic.on_notify()
    assert [(r.key, r.values["neighbour_ids"]) for r in out] == [("A", ["B", "C"])]
    now[0] += 60
    out, discard = logic.on_notify()
    assert list(out) == [] and not discard  # both still weigh something at the event clock
    assert set(logic.states) == {"A", "X"}
    clock.advance(t + int(YEAR * 1_000_000))
    now[0] += 60
    out, discard = logic.on_notify()
    assert list(out) == [] and discard and logic.states == {}


def test_a_dirty_shard_snapshot_is_written_after_resume() -> None:
    now = 1_000_000.0
    clock = EventClock()
    config = ItemSignalsConfig()
    logic = TrendShardLogic(config, 3600.0, 3600.0, clock, now=lambda: now)
    e1, e2, e3 = ev(0, "s", "A", 0), ev(1, "s", "A", 1), ev(2, "s", "B", 2)
    logic.on_batch([[Sequenced(0, e1, 1.0)]])
    assert logic.on_batch([[Sequenced(1, e2, 1.0), Sequenced(2, e3, 1.0)]])[0] != ()
    snap = logic.snapshot()
    assert isinstance(snap, bytes)
    resumed = TrendShardLogic(config, 3600.0, 3600.0, clock, snap, lambda: now)
    assert resumed.notify_at() == datetime.fromtimestamp(now, UTC)
    [out], _ = resumed.on_notify()
    [row, update] = out  # A owed a row; B was written at once before the snapshot
    assert isinstance(row, FeatureRow) and row.key == "A"
    assert row.values["trend_view"] == pytest.approx(2.0, rel=1e-3)
    assert update.trend.version == row.version


def test_pair_shard_drops_idle_sessions_and_snapshots_them() -> None:
    now = [1_000_000.0]
    logic = PairShardLogic(ItemSignalsConfig(), 10.0, None, now=lambda: now[0])
    [made], _ = logic.on_batch([[Sequenced(0, ev(0, "s1", "A", 0), 1.0)],
                                [Sequenced(1, ev(1, "s1", "B", 1), 1.0),
                                 Sequenced(2, ev(2, "s2", "C", 2), 1.0)]])  # fmt: skip
    assert [m.seq for m in made] == [1] and {u[0] for u in made[0].updates} == {"A", "B"}
    resumed = PairShardLogic(ItemSignalsConfig(), 10.0, logic.snapshot(), now=lambda: now[0])
    assert set(resumed.states) == {"s1", "s2"}
    now[0] += 5
    resumed.on_batch([[Sequenced(3, ev(3, "s2", "D", 3), 1.0)]])
    now[0] += 6
    assert resumed.on_notify() == ((), False) and set(resumed.states) == {"s2"}
    now[0] += 10
    assert resumed.on_notify() == ((), True) and resumed.states == {}


# -- input, recovery, wiring -----------------------------------------------------------------


def test_bad_records_and_reserved_item_ids_are_dead_lettered(tmp_path: Path) -> None:
    events = generated(300)
    recs = records(events)
    reserved = ev(9999, "s", "__trending__:x", 5)
    recs.insert(10, RawRecord("featrec", "t:bad", "{not json", 1.0))
    recs.insert(20, RawRecord("featrec", "t:reserved", json.dumps(reserved.to_dict()), 1.0))
    stats = FlowStats()
    store = InMemoryFeatureStore()
    letters = run_flow(
        TestingSource(recs, batch_size=32), Settings(home=tmp_path), store, stats=stats
    )
    assert [(d.origin, d.reason.split(":")[0]) for d in letters] == [
        ("t:bad", "json"),
        ("t:reserved", "item_id"),
    ]
    assert "reserved for the trending lists" in letters[1].reason
    assert (stats.events_in, stats.dead_letters) == (300, 2)
    assert_store_equals(store, bootstrap(events, ItemSignalsConfig.from_settings(Settings())))


def test_resume_after_abort_gives_the_same_rows(tmp_path: Path) -> None:
    events = generated(1500, seed=11)
    recs: list[object] = list(records(events))
    recs.insert(700, TestingSource.ABORT())
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    settings = Settings(home=tmp_path, batch_max_rows=50, item_write_interval_s=3600.0)
    store = RecordingStore()
    source = TestingSource(recs, batch_size=50)

    def once() -> None:
        built = build_flow(
            source, settings, writer_factory=lambda: store, dead_letter_sink=TestingSink([])
        )
        run_main(built, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(recovery))

    once()
    first = len(store.calls)
    assert first > 0
    once()
    assert_store_equals(store, bootstrap(events, ItemSignalsConfig.from_settings(settings)))


def test_file_source_flow_and_redis_source(tmp_path: Path, redis_url: str) -> None:
    from featrec.adapters.files.event_files import write_events
    from featrec.adapters.redis.streams import publish, read_dead_letters

    events = generated(400, seed=4)
    config = ItemSignalsConfig.from_settings(Settings())
    path = tmp_path / "events.jsonl"
    write_events(path, events)
    store = InMemoryFeatureStore()
    run_flow(FileReplaySource([path]), Settings(home=tmp_path), store)
    assert_store_equals(store, bootstrap(events, config))

    publish(redis_url, "ev", events)
    publish(redis_url, "ev", ['{"event_id": 1}'])
    settings = Settings(home=tmp_path, redis_url=redis_url, dead_letter_stream="dl")
    source = RedisStreamSource(redis_url, ["ev"], batch_size=64, stop_when_caught_up=True)
    sink = dead_letter_sink(settings, source)
    assert isinstance(sink, DeadLetterSink) and sink.stream == "dl:items"
    store = InMemoryFeatureStore()
    run_flow(source, settings, store, dead_letter_sink=sink)
    assert_store_equals(store, bootstrap(events, config))
    [letter] = read_dead_letters(redis_url, "dl:items", 10)
    assert letter["reason"] == "session_id: missing"


def test_step_ids_are_stable(otto_sample: Path, tmp_path: Path) -> None:
    """Step ids are the recovery schema: this list changes only with a new recovery store."""
    built = flow({"FEATREC_SOURCE": str(otto_sample), "FEATREC_HOME": str(tmp_path)})
    assert built.flow_id == FLOW_ID
    assert [s.step_name for s in built.substeps] == [
        "input", "decode", "split", "shard_sessions", "pair_shards", "shard_pairs",
        "neighbour_shards", "shard_items", "trend_shards", "trend_rows", "key_board", "board",
        "board_rows", "all_rows", "dead_letters", "shard_rows", "batch_rows", "unkey_rows", "write",
    ]  # fmt: skip
    env = {"FEATREC_SOURCE": str(otto_sample), "FEATREC_HOME": str(tmp_path)}
    per_event = flow({**env, "FEATREC_FLOW_SHAPE": "per-event"})
    assert [s.step_name for s in per_event.substeps] == [
        "input", "decode", "split", "events_only", "key_sessions", "pairs", "shard_pairs",
        "neighbours",
        "key_items", "trending", "split_trends", "key_board", "board", "all_rows", "row_lists",
        "dead_letters", "shard_rows", "batch_rows", "unkey_rows", "write",
    ]  # fmt: skip


# -- forgotten users -------------------------------------------------------------------------


class StaticDeny:
    """A deny source that never changes (the flow's is a :class:`DenyWatcher` on the stores)."""

    def __init__(self, denied: DenySet) -> None:
        self.denied = denied

    def current(self) -> DenySet:
        return self.denied

    def refresh(self) -> DenySet:
        return self.denied


def test_events_of_a_forgotten_user_add_no_pairs_and_no_trend(tmp_path: Path) -> None:
    # u1 alone ever went from X to Y; everybody else goes from A to B.
    events = [
        ev(0, "s-u1", "X", 0),
        ev(1, "s-u1", "Y", 10),
        *(ev(2 + i, f"s{i}", "A" if i % 2 == 0 else "B", 20 + i) for i in range(20)),
    ]
    events = [replace(e, user_id="u1") if e.session_id == "s-u1" else e for e in events]
    denied = DenySet((DenyList(new_salt()).add("u1"),))
    store = InMemoryFeatureStore()
    before = FORGOTTEN.labels(what="item event")._value.get()
    run_flow(
        TestingSource(records(events)),
        Settings(home=tmp_path),
        store,
        deny=StaticDeny(denied),
    )
    assert FORGOTTEN.labels(what="item event")._value.get() - before == 2
    assert store.read(ITEM_NEIGHBOURS.name, ["X", "Y"]) == [None, None]
    assert store.read(ITEM_TRENDING.name, ["X", "Y"]) == [None, None]
    assert store.read(ITEM_TRENDING.name, ["A"])[0] is not None  # everybody else counts


@pytest.mark.parametrize("shape", ["batch", "per-event"])
def test_a_tombstone_discards_its_sessions_items_and_is_no_dead_letter(
    tmp_path: Path, shape: FlowShape
) -> None:
    """A tombstone on the stream (``featrec forget``) is not an event: it is no dead letter
    (it names the forgotten sessions). In the batch shape the pair step discards the
    sessions' recent items at its place, so a later event of the session pairs with nothing
    before it; the per-event baseline keeps them until the TTL. A malformed tombstone is a
    dead letter."""
    tomb = RawRecord(TOMBSTONE_FORMAT, "t:tomb", tombstone_payload(["s-u1", "s-none"]), 1.0)
    bad = RawRecord(TOMBSTONE_FORMAT, "t:bad", '{"sessions": 3}', 1.0)
    recs = [*records([ev(0, "s-u1", "X", 0)]), tomb, bad, *records([ev(1, "s-u1", "Y", 10)])]
    store = InMemoryFeatureStore()
    before = FORGOTTEN.labels(what="item session state")._value.get()
    letters = run_flow(TestingSource(recs), Settings(home=tmp_path, flow_shape=shape), store)
    assert [(d.origin, d.reason.split(":")[0]) for d in letters] == [("t:bad", "tombstone")]
    forgotten = FORGOTTEN.labels(what="item session state")._value.get() - before
    neighbours = store.read(ITEM_NEIGHBOURS.name, ["X"])[0]
    if shape == "batch":
        assert forgotten == 2 and neighbours is None
    else:
        assert forgotten == 0 and neighbours is not None
    assert store.read(ITEM_TRENDING.name, ["Y"])[0] is not None  # the event still counts


def three_shard_steps(
    config: ItemSignalsConfig, clock: EventClock, now: list[float]
) -> tuple[PairShardLogic, NeighbourShardLogic, TrendShardLogic]:
    """The batch shape's pair, neighbour and trend steps, new, on the clock ``now[0]``."""
    return (
        PairShardLogic(config, 30.0, None, now=lambda: now[0]),
        NeighbourShardLogic(config, 1.0, 20.0, clock, now=lambda: now[0]),
        TrendShardLogic(config, 1.0, 20.0, clock, now=lambda: now[0]),
    )


@settings(max_examples=examples(60), deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.lists(st.tuples(st.sampled_from("stuvw"), st.sampled_from("ABCDEFG")), max_size=8),
            st.just("snapshot"),
            st.just("idle"),
        ),
        max_size=25,
    )
)
def test_incremental_shard_snapshots_resume_to_the_live_states(
    steps: list[list[tuple[str, str]] | str],
) -> None:
    """The item shards pickle only the states changed since their last snapshot; at any
    point, a shard resumed from its snapshot holds exactly its live states (a state changed
    but not re-pickled would differ), and so does one resumed from the previous layout."""
    now = [1_000_000.0]
    clock = EventClock()
    config = ItemSignalsConfig()
    pairs, anchors, items = three_shard_steps(config, clock, now)
    t = int(T0 * 1_000_000)
    n = 0
    for step in [*steps, "snapshot"]:
        now[0] += 7.0
        if step == "idle":
            clock.advance(t + n * 10**6 + int(YEAR * 1_000_000))  # old keys become negligible
            for logic in (pairs, anchors, items):
                logic.on_notify()
        elif step == "snapshot":
            resumed = (
                PairShardLogic(config, 30.0, pairs.snapshot(), now=lambda: now[0]),
                NeighbourShardLogic(config, 1.0, 20.0, clock, anchors.snapshot(), lambda: now[0]),
                TrendShardLogic(config, 1.0, 20.0, clock, items.snapshot(), lambda: now[0]),
            )
            for live, back in zip((pairs, anchors, items), resumed, strict=True):
                assert back.states == live.states
        else:
            chunk = []
            for sid, item in step:
                n += 1
                clock.advance(t + n * 10**6)
                chunk.append(Sequenced(n, ev(n, sid, item, n), 1.0))
            made, _ = pairs.on_batch([chunk])
            updates = [u for batch in made for e in batch for u in e.updates]
            if updates:
                anchors.on_batch([PairChunk(1.0, updates)])
            items.on_batch([chunk])
    # The previous layout (each step's states pickled whole) is still read.
    old = PairShardLogic(config, 30.0, pickle.dumps(pairs.states), now=lambda: now[0])
    assert old.states == pairs.states
    whole = pickle.dumps((anchors.states, anchors.ingested, sorted(anchors.dirty)))
    back = NeighbourShardLogic(config, 1.0, 20.0, clock, whole, lambda: now[0])
    assert back.states == anchors.states
    # ...and snapshots again in the new one, every state pickled.
    assert PairShardLogic(config, 30.0, old.snapshot(), now=lambda: now[0]).states == old.states


def test_snapshots_whose_states_were_pickled_whole_still_resume() -> None:
    """The shards now pack each state's fields as plain tuples; a snapshot of the layout
    before (one pickle per key, of the state object itself) still resumes to the same
    states, and so does the next snapshot (those bytes kept, changed keys packed)."""
    now = [1_000_000.0]
    clock = EventClock()
    config = ItemSignalsConfig()
    pairs, anchors, items = three_shard_steps(config, clock, now)
    chunk = [Sequenced(n, ev(n, f"s{n % 3}", f"i{n % 5}", n, category="c"), 1.0) for n in range(40)]
    clock.advance(int((T0 + 40) * 1_000_000))
    [made], _ = pairs.on_batch([chunk])
    anchors.on_batch([PairChunk(1.0, [u for e in made for u in e.updates])])
    items.on_batch([chunk])

    def whole(states: Mapping[str, object], *rest: object) -> bytes:
        keys = list(states)
        blobs = [pickle.dumps(states[k]) for k in keys]
        return pickle.dumps(("featrec.item_shards/2", keys, blobs, *rest))

    back = (
        PairShardLogic(config, 30.0, whole(pairs.states), now=lambda: now[0]),
        NeighbourShardLogic(
            config, 1.0, 20.0, clock, whole(anchors.states, {}, []), lambda: now[0]
        ),
        TrendShardLogic(config, 1.0, 20.0, clock, whole(items.states, {}, []), lambda: now[0]),
    )
    assert len(anchors.states) > 3 and all(s.counts for s in anchors.states.values())
    for live, resumed in zip((pairs, anchors, items), back, strict=True):
        assert resumed.states == live.states
    more = [Sequenced(n, ev(n, "s1", f"i{n % 7}", n, category="c"), 1.0) for n in range(40, 50)]
    clock.advance(int((T0 + 50) * 1_000_000))
    for logic in (pairs, back[0]):
        [made], _ = logic.on_batch([more])
    for logic in (items, back[2]):
        logic.on_batch([more])
    again = (
        PairShardLogic(config, 30.0, back[0].snapshot(), now=lambda: now[0]),
        TrendShardLogic(config, 1.0, 20.0, clock, back[2].snapshot(), lambda: now[0]),
    )
    assert again[0].states == pairs.states and again[1].states == items.states
