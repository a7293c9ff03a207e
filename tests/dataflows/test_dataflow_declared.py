"""The declared-features dataflow, run for real (``run_main``): what it leaves in the store
equals the batch engine's recomputation from the same events, as of each key's newest event."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import timedelta

import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.declared import build_flow
from dataflows.metrics import FlowStats
from featrec.adapters.duckdb.declared import DeclaredBatch
from featrec.adapters.files.event_log import events_to_table
from featrec.core.events.formats import DeadLetter, RawRecord
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import MIN_TS, Event
from featrec.core.features.declared.model import (
    AS_OF,
    DAY_US,
    HOUR_US,
    Aggregation,
    Declaration,
    Function,
    validate,
)
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.privacy import (
    EMPTY,
    TOMBSTONE_FORMAT,
    DenyList,
    DenySet,
    new_salt,
    tombstone_payload,
)
from featrec.errors import ConfigError
from featrec.testing.declared import covering_declarations, same_value

# One declaration per entity and filter kind keeps the batch side quick.
DECLARATIONS = [
    d
    for d in covering_declarations()
    if d.name in ("session_all", "user_carts", "item_shoes", "user_mid")
]


def records(events: Sequence[Event]) -> list[RawRecord]:
    return [
        RawRecord("featrec", f"test:{i}", json.dumps(e.to_dict()), 1.0)
        for i, e in enumerate(events)
    ]


def disordered(n: int, seed: int = 4) -> list[Event]:
    """Generated traffic over several days, with neighbours swapped and some moved far back."""
    events = list(
        generate(GeneratorConfig(n_events=n, seed=seed, concurrent_sessions=20, n_users=40))
    )
    rng = random.Random(seed)
    for i in range(1, len(events) - 1, 5):
        events[i], events[i + 1] = events[i + 1], events[i]
    for _ in range(20):
        events.append(events.pop(rng.randrange(len(events) // 2)))
    return events


def assert_store_equals_batch(store: InMemoryFeatureStore, events: Sequence[Event]) -> int:
    compared = 0
    with DeclaredBatch(events_to_table(list(events)), threads=1) as batch:
        for decl in DECLARATIONS:
            expected = batch.compute(decl, batch.latest_points(decl)).to_pylist()
            assert store.keys(decl.name) == sorted(r[decl.join_key] for r in expected)
            for want in expected:
                got = store.row(decl.name, want[decl.join_key])
                assert got is not None
                assert got.values[AS_OF] == want[AS_OF]
                for agg in decl.aggregations:
                    assert same_value(got.values[agg.name], want[agg.name]), (
                        decl.name,
                        agg.name,
                        want[decl.join_key],
                    )
                    compared += 1
    return compared


def test_flow_rows_equal_the_batch_engine() -> None:
    events = disordered(1500)
    store = InMemoryFeatureStore()
    letters: list[DeadLetter] = []
    bad = RawRecord("featrec", "test:bad", '{"event_id": "x"}', 1.0)
    source = TestingSource([*records(events[:700]), bad, *records(events[700:])], batch_size=64)
    run_main(
        build_flow(
            source,
            DECLARATIONS,
            writer_factory=lambda: store,
            dead_letter_sink=TestingSink(letters),
            shards=4,
        )
    )
    assert [letter.origin for letter in letters] == ["test:bad"]
    assert assert_store_equals_batch(store, events) > 1000


def test_flow_resumes_from_its_snapshot(tmp_path: pytest.TempPathFactory) -> None:
    """Stop after half the events, resume from the recovery store: same rows as one run."""
    events = disordered(600, seed=9)
    db = tmp_path / "recovery"  # type: ignore[operator]
    db.mkdir()
    init_db_dir(db, 1)
    recovery = RecoveryConfig(str(db))
    store = InMemoryFeatureStore()

    def run(part: Sequence[Event], offset: int) -> int:
        raws = [
            RawRecord("featrec", f"test:{offset + i}", json.dumps(e.to_dict()), 1.0)
            for i, e in enumerate(part)
        ]
        stats = FlowStats()
        flow = build_flow(
            TestingSource(raws, batch_size=50),
            DECLARATIONS,
            writer_factory=lambda: store,
            dead_letter_sink=TestingSink([]),
            shards=3,
            stats=stats,
        )
        run_main(flow, epoch_interval=timedelta(seconds=0), recovery_config=recovery)
        return stats.events_in

    assert run(events[:300], 0) == 300
    # A fresh source for the second half: the flow's input position is the TestingSource's,
    # whose snapshot says "300 read"; give it all events so it resumes at 300.
    assert run(events, 0) == 300  # resumed at event 300, with the state of the first 300
    assert assert_store_equals_batch(store, events) > 0


def test_a_flow_without_declarations_is_refused() -> None:
    with pytest.raises(ConfigError, match="no declared features"):
        build_flow(
            TestingSource([]),
            [],
            writer_factory=InMemoryFeatureStore,
            dead_letter_sink=TestingSink([]),
        )


class _DenyAfterTombstone:
    """A deny-list source that learns the forgotten user when the tombstone makes the flow
    refresh it (as ``featrec forget`` writes the list before it sends the tombstone)."""

    def __init__(self, user: str, sessions: Sequence[str]) -> None:
        self.denied = DenySet((DenyList(new_salt()).add(user, sessions),))
        self.now = EMPTY

    def current(self) -> DenySet:
        return self.now

    def refresh(self) -> DenySet:
        self.now = self.denied
        return self.now


def test_a_tombstone_drops_the_forgotten_users_state_and_their_ids_kept_as_values() -> None:
    hour = timedelta(hours=1)
    decls = [
        validate(
            Declaration(
                "user_n",
                "user",
                (Aggregation("n_24h", "item_id", Function.COUNT, 0, DAY_US, HOUR_US),),
            )
        ),
        validate(
            Declaration(
                "item_buyers",
                "item",
                (
                    Aggregation("buyers", "user_id", Function.LAST_N, 3, DAY_US, HOUR_US),
                    Aggregation("n_sessions", "session_id", Function.COUNT_DISTINCT, 0, DAY_US),
                ),
            )
        ),
    ]
    t0 = MIN_TS + timedelta(days=400)

    def ev(i: int, user: str, session: str, at: timedelta) -> Event:
        return Event(f"e{i}", session, "A", "view", t0 + at, user, 10.0, "c", 1)

    before = [ev(1, "other", "s-o", hour), ev(2, "gone", "s-g", 2 * hour)]
    after = [ev(3, "gone", "s-g", 3 * hour), ev(4, "third", "s-t", 4 * hour)]
    tomb = RawRecord(TOMBSTONE_FORMAT, "test:tomb", tombstone_payload(["s-g"]), 1.0)
    store = InMemoryFeatureStore()
    run_main(
        build_flow(
            TestingSource([*records(before), tomb, *records(after)], batch_size=10),
            decls,
            writer_factory=lambda: store,
            dead_letter_sink=TestingSink([]),
            shards=2,
            deny=_DenyAfterTombstone("gone", ["s-g"]),
        )
    )
    item = store.row("item_buyers", "A")
    assert item is not None
    # Without the forget the row would be [third, gone, other] over 3 sessions: the item's
    # state that held "gone" was dropped, and the user's later event never reached it.
    assert item.values["buyers"] == ["third"]
    assert item.values["n_sessions"] == 1
    # The user's own state went too (their later event was dropped at decode).
    gone = store.row("user_n", "gone")
    assert gone is not None and gone.values["n_24h"] == 1  # the row written before the forget
