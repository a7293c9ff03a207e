"""Stream equals batch: the bucketed fold and the DuckDB SQL of every declared function x window
x filter agree at many cut points of generated traffic, arriving out of order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featrec.adapters.duckdb.declared import POINTS_SCHEMA, DeclaredBatch
from featrec.adapters.files.event_log import events_to_table
from featrec.core.events.model import Event
from featrec.core.features.declared.model import AS_OF, Declaration
from featrec.testing.declared import covering_declarations, fold_stream, same_value

DECLARATIONS = covering_declarations()
BASE = datetime(2026, 3, 1, tzinfo=UTC)


@st.composite
def traffic(draw: st.DrawFn) -> list[Event]:
    """Events in arrival order: times spread over ~40 days (every window is crossed), then
    displaced so that some arrive late, a few by days."""
    n = draw(st.integers(1, 60))
    events = []
    t = 0
    for i in range(n):
        # Mostly seconds to minutes apart, sometimes hours or days: every window boundary.
        t += draw(st.sampled_from([0, 1, 7, 61, 299, 300, 3599, 3600, 7200, 86_400, 6 * 86_400]))
        events.append(
            Event(
                event_id=f"e{i:03d}",
                session_id=draw(st.sampled_from(["s1", "s2", "s3"])),
                user_id=draw(st.sampled_from([None, "u1", "u2"])),
                item_id=draw(st.sampled_from(["i1", "i2", "i3", "i4"])),
                type=draw(st.sampled_from(["view", "click", "cart", "purchase"])),
                ts=BASE + timedelta(seconds=t, microseconds=draw(st.integers(0, 999_999))),
                price=draw(st.sampled_from([None, 5.0, 10.0, 19.99, 49.99, 50.0, 120.5])),
                category=draw(st.sampled_from([None, "shoes", "hats"])),
                quantity=draw(st.sampled_from([None, 1, 2, 7])),
            )
        )
    # Out of order: each event may arrive up to `shift` places later than its time says.
    shifts = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
    order = sorted(range(n), key=lambda i: i + shifts[i])
    return [events[i] for i in order]


def check_prefix(arrivals: list[Event], declarations: list[Declaration] = DECLARATIONS) -> int:
    """Stream state after ``arrivals`` equals the batch recomputation from the same log, as of
    each key's newest event. Returns how many values were compared."""
    compared = 0
    with DeclaredBatch(events_to_table(arrivals), threads=1) as batch:
        for decl in declarations:
            states = fold_stream(decl, arrivals)
            if not states:
                continue
            points = pa.table(
                {
                    "key": list(states),
                    AS_OF: [s.as_of_us for s in states.values()],
                },
                schema=POINTS_SCHEMA,
            )
            rows = batch.compute(decl, points).to_pylist()
            assert len(rows) == len(states)
            for row in rows:
                stream = states[row[decl.join_key]].values()
                for agg in decl.aggregations:
                    assert same_value(stream[agg.name], row[agg.name]), (
                        decl.name,
                        agg.name,
                        row[decl.join_key],
                        stream[agg.name],
                        row[agg.name],
                    )
                    compared += 1
    return compared


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    traffic(),
    st.lists(st.floats(0, 1), min_size=1, max_size=4),
    # A query per declaration costs ~0.1 s (some 50 aggregates to plan): a few per example.
    st.lists(st.sampled_from(DECLARATIONS), min_size=1, max_size=2, unique_by=lambda d: d.name),
)
def test_stream_equals_batch_at_cut_points(
    arrivals: list[Event], cuts: list[float], declarations: list[Declaration]
) -> None:
    for cut in sorted({max(1, round(c * len(arrivals))) for c in cuts}):
        check_prefix(arrivals[:cut], declarations)


def test_the_covering_set_is_what_the_issue_asks() -> None:
    """Every function, every window (session, 1 h, 24 h, 7 d, 30 d) and every filter kind."""
    labels = {a.window_label for d in DECLARATIONS for a in d.aggregations}
    assert labels == {"session", "1h", "1d", "7d", "30d"}
    functions = {a.function.value for d in DECLARATIONS for a in d.aggregations}
    assert functions == {
        "count", "sum", "mean", "min", "max", "last", "count_distinct", "last_n",
    }  # fmt: skip
    assert {d.entity for d in DECLARATIONS} == {"session", "user", "item"}


def test_a_late_event_inside_the_window_counts_and_one_outside_does_not() -> None:
    """Known answers: a 1 h count sliding by 5 min, as of the newest event."""
    decl = next(d for d in DECLARATIONS if d.name == "user_all")
    name = "count_item_id_1h"

    def event(i: int, minutes: float) -> Event:
        return Event(f"e{i}", "s1", "i1", "view", BASE + timedelta(minutes=minutes), user_id="u1")

    # Newest at 12:00 → the window starts at (12:00 // 5 min + 1) * 5 min - 1 h = 11:05.
    arrivals = [event(0, 720), event(1, 666), event(2, 664)]  # 11:06 in, 11:04 out (late)
    state = fold_stream(decl, arrivals)["u1"]
    assert state.values()[name] == 2
    assert check_prefix(arrivals, [decl]) > 0
