"""The streaming session fold against an independent batch recomputation (the oracle).

The oracle replays the arrival order only to apply the documented policy (which events are
late, where the inactivity gap starts a new session); every feature of the current session is
then recomputed from scratch from its accepted events sorted by (time, arrival), and compared
with ``session_row`` after every single event.
"""

from __future__ import annotations

import itertools
import pickle
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from _lanes import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from featrec.core.events.model import Event
from featrec.core.features.catalog import SESSION_FEATURES
from featrec.core.features.rows import micros
from featrec.core.sessions.fold import (
    Outcome,
    SessionPolicy,
    SessionState,
    fold,
    new_state,
    session_row,
)
from featrec.errors import ConfigError

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
_IDS = itertools.count()


def ev(
    seconds: float,
    item: str = "a",
    type_: str = "view",
    *,
    user: str | None = None,
    price: float | None = None,
    category: str | None = None,
    quantity: int | None = None,
) -> Event:
    return Event(
        event_id=f"e{next(_IDS)}",
        session_id="s1",
        item_id=item,
        type=type_,
        ts=T0 + timedelta(seconds=seconds),
        user_id=user,
        price=price,
        category=category,
        quantity=quantity,
    )


# -- the oracle ---------------------------------------------------------------------------


@dataclass
class Oracle:
    """Batch recomputation: policy by replaying arrivals, features from the accepted events."""

    policy: SessionPolicy
    #: Accepted events of the current session as (time µs, arrival index, event).
    current: list[tuple[int, int, Event]] = field(default_factory=list)
    arrivals: int = 0
    version: int = 0
    carried_user: str | None = None

    def add(self, event: Event) -> Outcome:
        ts = micros(event.ts)
        arrival = self.arrivals
        self.arrivals += 1
        outcome = Outcome.ACCEPTED
        if self.current:
            newest = max(t for t, _, _ in self.current)
            if newest - ts > self.policy.allowed_lateness_s * 1_000_000:
                return Outcome.LATE
            if ts - newest > self.policy.gap_s * 1_000_000:
                self.carried_user = self.user_id()
                self.current = []
                outcome = Outcome.NEW_SESSION
        self.current.append((ts, arrival, event))
        self.version = max(self.version + 1, ts)
        return outcome

    def user_id(self) -> str | None:
        # Newest known user of the current session; a session without one keeps the user the
        # same session id had before the gap (it is the same visitor's key).
        users = [e.user_id for _, _, e in sorted(self.current) if e.user_id is not None]
        return users[-1] if users else self.carried_user

    def expected(self) -> dict[str, object]:
        events = [e for _, _, e in sorted(self.current, key=lambda x: (x[0], x[1]))]
        times = [micros(e.ts) for e in events]
        n = len(events)
        duration = (max(times) - min(times)) / 1_000_000
        newest = events[-1]
        return {
            "user_id": self.user_id(),
            "n_events": n,
            "n_views": sum(e.type == "view" for e in events),
            "n_clicks": sum(e.type == "click" for e in events),
            "n_carts": sum(e.type == "cart" for e in events),
            "n_purchases": sum(e.type == "purchase" for e in events),
            "n_distinct_items": len({e.item_id for e in events}),
            "duration_s": duration,
            "mean_dwell_s": duration / (n - 1) if n > 1 else 0.0,
            "last_items": [e.item_id for e in reversed(events)][: self.policy.last_n],
            "last_category": newest.category,
            "last_price": newest.price,
            "cart_value": sum(
                e.price * (e.quantity or 1)
                for e in events
                if e.type == "cart" and e.price is not None
            ),
            "started_at_s": min(times) / 1_000_000,
            "last_event_at_s": max(times) / 1_000_000,
            "version": self.version,
        }


def check_against_oracle(events: list[Event], policy: SessionPolicy) -> list[Outcome]:
    state = new_state("s1")
    oracle = Oracle(policy)
    previous_version = 0
    previous_values: dict[str, object] | None = None
    outcomes = []
    for step, event in enumerate(events):
        outcome = fold(state, event, policy)
        expected_outcome = oracle.add(event)
        assert outcome == expected_outcome, f"step {step}: {event}"
        outcomes.append(outcome)
        row = session_row(state)
        values = dict(row.values)
        if outcome is Outcome.LATE:
            assert values == previous_values, f"step {step}: a late event changed the state"
            continue
        expected = oracle.expected()
        assert values.pop("cart_value") == pytest.approx(expected.pop("cart_value"), rel=1e-12)
        assert values == expected, f"step {step}"
        assert set(row.values) == set(SESSION_FEATURES.feature_names)
        assert row.version == row.values["version"] > previous_version
        assert row.version >= micros(max(e.ts for _, _, e in oracle.current))
        previous_version = row.version
        previous_values = dict(row.values)
    return outcomes


# -- property: random arrival orders --------------------------------------------------------


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[Event], SessionPolicy]:
    gap = draw(st.sampled_from([5, 20, 60]))
    lateness = draw(st.integers(0, gap))
    policy = SessionPolicy(gap_s=gap, allowed_lateness_s=lateness, last_n=draw(st.integers(1, 4)))
    n = draw(st.integers(1, 40))
    clock = 0.0
    events = []
    for _ in range(n):
        # Mostly small steps forward (ties included), sometimes a jump past the gap, sometimes
        # an arrival from the past (out of order, late or not).
        clock += draw(st.sampled_from([0, 0, 1, 2, 3, gap, gap + 1, 2 * gap]))
        jitter = draw(st.sampled_from([0, 0, 0, -1, -lateness, -lateness - 1, -2 * gap, 0.5]))
        price = draw(st.sampled_from([None, 0.0, 9.99, 0.1, 1e6]))
        events.append(
            ev(
                max(0.0, clock + jitter),
                item=draw(st.sampled_from("abcdef")),
                type_=draw(st.sampled_from(["view", "click", "cart", "purchase", "wishlist"])),
                user=draw(st.sampled_from([None, None, "u1", "u2"])),
                price=price,
                category=draw(st.sampled_from([None, "shoes", "hats"])),
                quantity=draw(st.sampled_from([None, 1, 3])),
            )
        )
    return events, policy


@settings(max_examples=examples(400), deadline=None)
@given(arrivals())
def test_fold_equals_batch_recomputation_at_every_step(
    case: tuple[list[Event], SessionPolicy],
) -> None:
    events, policy = case
    check_against_oracle(events, policy)


# -- explicit cases ---------------------------------------------------------------------------

POLICY = SessionPolicy(gap_s=60, allowed_lateness_s=10, last_n=3)


def test_gap_starts_a_new_session_and_counters_restart() -> None:
    state = new_state("s1")
    assert fold(state, ev(0, "a", "cart", price=2.0, quantity=2), POLICY) is Outcome.ACCEPTED
    assert fold(state, ev(60, "b"), POLICY) is Outcome.ACCEPTED  # exactly the gap: same session
    before = state.version
    assert fold(state, ev(120.000001, "c", user="u9"), POLICY) is Outcome.NEW_SESSION
    row = session_row(state).values
    assert row["n_events"] == 1
    assert row["n_distinct_items"] == 1
    assert row["last_items"] == ["c"]
    assert row["cart_value"] == 0.0
    assert row["duration_s"] == 0.0
    assert row["started_at_s"] == (T0 + timedelta(seconds=120.000001)).timestamp()
    assert row["user_id"] == "u9"
    assert state.version > before


def test_late_events_are_rejected_and_change_nothing() -> None:
    state = new_state("s1")
    fold(state, ev(100, "a"), POLICY)
    assert fold(state, ev(90, "b"), POLICY) is Outcome.ACCEPTED  # exactly the allowed lateness
    snapshot = state.copy()
    assert fold(state, ev(89.999999, "c"), POLICY) is Outcome.LATE
    assert session_row(state) == session_row(snapshot)
    assert session_row(state).values["last_items"] == ["a", "b"]


def test_out_of_order_event_is_placed_in_time_but_newest_fields_stay() -> None:
    state = new_state("s1")
    fold(state, ev(0, "a", category="hats", price=5.0), POLICY)
    fold(state, ev(10, "c", category="shoes", price=7.0), POLICY)
    fold(state, ev(5, "b", category="socks", price=1.0), POLICY)
    row = session_row(state).values
    assert row["last_items"] == ["c", "b", "a"]
    assert row["last_category"] == "shoes"
    assert row["last_price"] == 7.0
    assert row["duration_s"] == 10.0
    assert row["mean_dwell_s"] == 5.0


def test_ties_in_time_are_broken_by_arrival() -> None:
    state = new_state("s1")
    fold(state, ev(3, "a", category="first"), POLICY)
    fold(state, ev(3, "b", category="second"), POLICY)
    row = session_row(state).values
    assert row["last_items"] == ["b", "a"]
    assert row["last_category"] == "second"
    # An older event arriving later sorts before both, whatever its arrival.
    fold(state, ev(2, "z", category="older"), POLICY)
    row = session_row(state).values
    assert row["last_items"] == ["b", "a", "z"]
    assert row["last_category"] == "second"


def test_last_items_are_newest_first_bounded_and_keep_repeats() -> None:
    state = new_state("s1")
    for i, item in enumerate(["a", "b", "a", "c", "a"]):
        fold(state, ev(i, item), POLICY)
    row = session_row(state).values
    assert row["last_items"] == ["a", "c", "a"]
    assert row["n_distinct_items"] == 3
    # Too old to enter the bounded list, but still counted.
    fold(state, ev(0.5, "d"), POLICY)
    row = session_row(state).values
    assert row["last_items"] == ["a", "c", "a"]
    assert row["n_distinct_items"] == 4
    assert row["n_events"] == 6


def test_version_strictly_increases_also_across_a_reset() -> None:
    state = new_state("s1")
    versions = []
    for seconds in [0, 0, 1, 0.5, 500, 500, 499]:
        outcome = fold(state, ev(seconds), POLICY)
        assert outcome is not Outcome.LATE
        versions.append(session_row(state).version)
    assert all(b > a for a, b in itertools.pairwise(versions))
    assert versions[4] >= micros(T0 + timedelta(seconds=500))


def test_version_keeps_increasing_when_state_restarts_from_a_newer_event() -> None:
    # A restart (state discarded by the GC timer) begins again from the event-time clock,
    # which is past every version the old state wrote for earlier events.
    old = new_state("s1")
    for seconds in range(5):
        fold(old, ev(seconds), POLICY)
    fresh = new_state("s1")
    fold(fresh, ev(4 + 2 * POLICY.gap_s), POLICY)
    assert session_row(fresh).version > session_row(old).version


def test_cart_value_counts_quantity_and_skips_missing_prices() -> None:
    state = new_state("s1")
    fold(state, ev(0, "a", "cart", price=2.5, quantity=4), POLICY)
    fold(state, ev(1, "b", "cart", price=1.0), POLICY)
    fold(state, ev(2, "c", "cart"), POLICY)
    fold(state, ev(3, "d", "purchase", price=100.0, quantity=1), POLICY)
    row = session_row(state).values
    assert row["cart_value"] == 11.0
    assert (row["n_carts"], row["n_purchases"], row["n_views"], row["n_clicks"]) == (3, 1, 0, 0)


def test_unknown_types_count_only_in_totals() -> None:
    state = new_state("s1")
    fold(state, ev(0, "a", "wishlist"), POLICY)
    fold(state, ev(1, "b", "search"), POLICY)
    row = session_row(state).values
    assert row["n_events"] == 2
    assert row["n_views"] + row["n_clicks"] + row["n_carts"] + row["n_purchases"] == 0
    assert row["last_items"] == ["b", "a"]


def test_user_id_survives_anonymous_events_and_a_reset() -> None:
    state = new_state("s1")
    fold(state, ev(0, user="u1"), POLICY)
    fold(state, ev(1), POLICY)
    assert session_row(state).values["user_id"] == "u1"
    assert fold(state, ev(1000), POLICY) is Outcome.NEW_SESSION
    assert session_row(state).values["user_id"] == "u1"


def test_user_id_is_that_of_the_newest_event_in_time() -> None:
    state = new_state("s1")
    fold(state, ev(10, user="u2"), POLICY)
    fold(state, ev(5, user="u1"), POLICY)  # older in time, arrives later
    assert session_row(state).values["user_id"] == "u2"


def test_copy_is_independent() -> None:
    state = new_state("s1")
    fold(state, ev(0, "a"), POLICY)
    snapshot = state.copy()
    row_before = session_row(snapshot)
    fold(state, ev(1, "b"), POLICY)
    fold(state, ev(2, "c", "cart", price=3.0), POLICY)
    assert session_row(snapshot) == row_before
    assert snapshot.items == {"a"}
    assert [item for _, _, item in snapshot.recent] == ["a"]
    fold(snapshot, ev(1, "z"), POLICY)
    assert "z" not in state.items


def test_state_pickles_and_resumes_identically() -> None:
    events = [ev(s, item) for s, item in [(0, "a"), (2, "b"), (1, "c"), (400, "d"), (401, "a")]]
    straight = new_state("s1")
    for e in events:
        fold(straight, e, POLICY)
    resumed = new_state("s1")
    for e in events[:3]:
        fold(resumed, e, POLICY)
    resumed = pickle.loads(pickle.dumps(resumed))
    assert isinstance(resumed, SessionState)
    for e in events[3:]:
        fold(resumed, e, POLICY)
    assert session_row(resumed) == session_row(straight)


def test_row_is_keyed_by_session_and_carries_ingestion_time() -> None:
    state = new_state("sess-42")
    fold(state, ev(0), POLICY)
    row = session_row(state, ingested_at=123.5)
    assert (row.view, row.key, row.ingested_at) == (SESSION_FEATURES.name, "sess-42", 123.5)
    assert row.event_time == T0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gap_s": 0}, "gap must be positive"),
        ({"gap_s": float("nan")}, "gap must be positive"),
        ({"gap_s": 60, "allowed_lateness_s": 61}, "allowed lateness"),
        ({"allowed_lateness_s": -1}, "allowed lateness"),
        ({"last_n": 0}, "last_n"),
        ({"last_n": 101}, "last_n"),
    ],
)
def test_policy_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SessionPolicy(**kwargs)  # type: ignore[arg-type]
