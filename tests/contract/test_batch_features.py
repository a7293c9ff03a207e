"""Batch features: DuckDB over the event log equals a plain-Python recomputation (oracle).

Generated traffic is stretched in time so that it spans all windows (1/7/30/90 days), and
hand-written events add what the generator rarely makes: repeat purchases across sessions,
category ties, events without price or category, unknown event types, same-time events, and
duplicate copies in the log (which must count once).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featrec.adapters.duckdb.features import EventLogDB
from featrec.adapters.files.event_log import EventLogWriter
from featrec.adapters.files.snapshots import (
    list_snapshots,
    snapshot_dir,
    snapshot_path,
    write_snapshot,
)
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import KNOWN_TYPES, PURCHASE, VIEW, Event, event_from_mapping
from featrec.core.features import catalog
from featrec.core.features.rows import micros
from featrec.core.features.snapshot_days import (
    DAY_US,
    default_as_of,
    midnight,
    parse_day,
    snapshot_dates,
)
from featrec.errors import ConfigError
from featrec.jobs.batch import plan_batch, run_batch

START = datetime(2024, 1, 1, tzinfo=UTC)
EDGE = datetime(2024, 2, 14, tzinfo=UTC)
STRETCH = 150


def stretched_traffic() -> list[Event]:
    config = GeneratorConfig(n_events=5000, n_users=40, n_items=60, concurrent_sessions=2, seed=5)
    events = []
    for e in generate(config):
        events.append(replace(e, ts=START + (e.ts - START) * STRETCH))
    return events


def handmade() -> list[Event]:
    at = datetime(2024, 2, 10, 12, tzinfo=UTC)

    def ev(i: int, minutes: float, **fields: Any) -> Event:
        raw = {"event_id": f"h{i:03d}", "ts": (at + timedelta(minutes=minutes)).isoformat()}
        raw.update(fields)
        return event_from_mapping(raw)

    rep = {"user_id": "u-rep", "price": 10.0, "category": "zz"}
    return [
        # Repeat purchases: x bought in two sessions, y once -> repeat rate 0.5.
        ev(1, 0, session_id="r1", item_id="x", type="purchase", **rep),
        ev(2, 1, session_id="r1", item_id="y", type="purchase", **rep),
        ev(3, 60 * 24 * 3, session_id="r2", item_id="x", type="purchase", **rep),
        # Category tie (1 event each in "aa" and "zz" for u-tie): names break it.
        ev(4, 5, session_id="t1", user_id="u-tie", item_id="x", type="view", category="zz"),
        ev(5, 6, session_id="t1", user_id="u-tie", item_id="y", type="view", category="aa"),
        ev(6, 7, session_id="t1", user_id="u-tie", item_id="y", type="wishlist"),
        # Same time, different prices on one item: the larger event id wins.
        ev(7, 30, session_id="p1", item_id="tie", type="view", price=1.0),
        ev(8, 30, session_id="p1", item_id="tie", type="view", price=2.0),
        ev(9, 31, session_id="p1", item_id="tie", type="click"),
        # Window edges for the snapshot as of 2024-02-14: exactly 1 day before is inside the
        # 1-day window, a microsecond earlier is not, the as-of instant itself is excluded.
        *(
            event_from_mapping(
                {
                    "event_id": f"edge{i}",
                    "session_id": f"edge{i}",
                    "user_id": "u-edge",
                    "item_id": "edge",
                    "type": "view",
                    "ts": (EDGE - offset).isoformat(),
                }
            )
            for i, offset in enumerate(
                (timedelta(days=1), timedelta(days=1, microseconds=1), timedelta(0))
            )
        ),
    ]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Event]]:
    events = sorted(stretched_traffic() + handmade(), key=lambda e: (e.ts, e.event_id))
    directory = tmp_path_factory.mktemp("log")
    writer = EventLogWriter(directory)
    writer.write(events)
    writer.write(events[::7])  # replayed copies: counted once
    return directory, events


# -- the oracle -------------------------------------------------------------------------------


def _window(evs: list[Event], end: int, days: int) -> list[Event]:
    return [e for e in evs if micros(e.ts) >= end - days * DAY_US]


def _counts(evs: list[Event], end: int) -> dict[str, int]:
    return {
        catalog.count_feature(t, d): sum(e.type == t for e in _window(evs, end, d))
        for t in KNOWN_TYPES
        for d in catalog.BATCH_WINDOWS_DAYS
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def user_oracle(events: list[Event], as_of: datetime) -> dict[str, dict[str, Any]]:
    end = micros(as_of)
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.user_id is not None and micros(e.ts) < end:
            by_user[e.user_id].append(e)
    out = {}
    for user, evs in by_user.items():
        long = _window(evs, end, catalog.LONG_WINDOW_DAYS)
        sessions = {e.session_id for e in long}
        buying = {e.session_id for e in long if e.type == PURCHASE}
        cats: dict[str, int] = defaultdict(int)
        for e in long:
            if e.category is not None:
                cats[e.category] += 1
        top = sorted(cats.items(), key=lambda kv: (-kv[1], kv[0]))[: catalog.TOP_CATEGORIES_N]
        total = sum(cats.values())
        bought: dict[str, tuple[int, set[str]]] = {}
        for e in evs:
            if e.type == PURCHASE:
                last, in_sessions = bought.get(e.item_id, (0, set()))
                bought[e.item_id] = (max(last, micros(e.ts)), in_sessions | {e.session_id})
        purchases = [micros(e.ts) for e in evs if e.type == PURCHASE]
        recent = sorted(bought, key=lambda item: (-bought[item][0], item))
        out[user] = {
            **_counts(evs, end),
            "n_sessions_90d": len(sessions),
            "top_categories": [c for c, _ in top],
            "top_category_shares": [n / total for _, n in top],
            "days_since_last_event": (end - max(micros(e.ts) for e in evs)) / DAY_US,
            "days_since_last_purchase": (end - max(purchases)) / DAY_US if purchases else None,
            "avg_price_viewed_90d": _mean(
                [e.price for e in long if e.type == VIEW and e.price is not None]
            ),
            "avg_price_bought_90d": _mean(
                [e.price for e in long if e.type == PURCHASE and e.price is not None]
            ),
            "purchase_rate_90d": len(buying) / len(sessions) if sessions else None,
            "repeat_purchase_rate": _mean([float(len(s) >= 2) for _, s in bought.values()]),
            "recent_purchases": recent[: catalog.RECENT_PURCHASES_N],
        }
    return out


def _newest(evs: list[Event]) -> Event:
    return max(evs, key=lambda e: (e.ts, e.event_id))


def item_oracle(events: list[Event], as_of: datetime) -> dict[str, dict[str, Any]]:
    end = micros(as_of)
    by_item: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if micros(e.ts) < end:
            by_item[e.item_id].append(e)
    out = {}
    for item, evs in by_item.items():
        recent = _window(evs, end, catalog.CONVERSION_WINDOW_DAYS)
        views = sum(e.type == VIEW for e in recent)
        priced = [e for e in evs if e.price is not None]
        labelled = [e for e in evs if e.category is not None]
        first = min(micros(e.ts) for e in evs)
        out[item] = {
            **_counts(evs, end),
            "conversion_rate_30d": (
                sum(e.type == PURCHASE for e in recent) / views if views else None
            ),
            "price": _newest(priced).price if priced else None,
            "category": _newest(labelled).category if labelled else None,
            "first_seen_s": first / 1e6,
            "days_since_first_seen": (end - first) / DAY_US,
        }
    return out


def assert_rows_equal(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    assert got.keys() == want.keys(), where
    for name, expected in want.items():
        value = got[name]
        if isinstance(expected, float):
            assert value is not None and math.isclose(value, expected, rel_tol=1e-12), (
                f"{where} {name}: {value} != {expected}"
            )
        elif isinstance(expected, list) and expected and isinstance(expected[0], float):
            assert len(value) == len(expected), f"{where} {name}"
            assert all(
                math.isclose(a, b, rel_tol=1e-12) for a, b in zip(value, expected, strict=True)
            ), f"{where} {name}: {value} != {expected}"
        else:
            assert value == expected, f"{where} {name}: {value!r} != {expected!r}"


AS_OF = [
    datetime(2024, 1, 1, tzinfo=UTC),  # before any event: empty snapshots
    datetime(2024, 1, 9, tzinfo=UTC),
    datetime(2024, 2, 11, tzinfo=UTC),  # inside the handmade events
    datetime(2024, 2, 14, tzinfo=UTC),
    datetime(2024, 4, 20, tzinfo=UTC),
    datetime(2024, 9, 1, tzinfo=UTC),  # every window past the newest event
]


@pytest.mark.parametrize("as_of", AS_OF, ids=lambda d: d.date().isoformat())
def test_duckdb_features_equal_the_python_recomputation(
    log: tuple[Path, list[Event]], as_of: datetime
) -> None:
    directory, events = log
    assert events[-1].ts > datetime(2024, 4, 20, tzinfo=UTC)  # the stretch spans the windows
    with EventLogDB(directory) as db:
        assert db.count() == len(events)
        for view, oracle in (
            (catalog.USER_FEATURES, user_oracle),
            (catalog.ITEM_FEATURES, item_oracle),
        ):
            expected = oracle(events, as_of)
            rows = db.snapshot(view.name, as_of).to_pylist()
            got = {r.pop(view.entity.join_key): r for r in rows}
            assert got.keys() == expected.keys()
            for key, want in expected.items():
                assert_rows_equal(got[key], want, f"{view.name} {key} as of {as_of.date()}")


def test_handmade_known_answers(log: tuple[Path, list[Event]]) -> None:
    directory, _ = log
    as_of = EDGE
    with EventLogDB(directory) as db:
        users = {r["user_id"]: r for r in db.snapshot("user_features", as_of).to_pylist()}
        items = {r["item_id"]: r for r in db.snapshot("item_features", as_of).to_pylist()}
    assert users["u-rep"]["repeat_purchase_rate"] == 0.5
    assert users["u-rep"]["recent_purchases"] == ["x", "y"]
    assert users["u-rep"]["purchase_rate_90d"] == 1.0
    assert users["u-tie"]["top_categories"] == ["aa", "zz"]
    assert users["u-tie"]["top_category_shares"] == [0.5, 0.5]
    assert users["u-tie"]["repeat_purchase_rate"] is None
    assert users["u-tie"]["recent_purchases"] == []
    assert users["u-tie"]["n_view_7d"] == 2  # the wishlist event counts in no type column
    assert items["tie"]["price"] == 2.0
    assert items["tie"]["category"] is None
    assert items["tie"]["conversion_rate_30d"] == 0.0
    assert (users["u-edge"]["n_view_1d"], users["u-edge"]["n_view_7d"]) == (1, 2)
    assert (items["edge"]["n_view_1d"], items["edge"]["n_view_90d"]) == (1, 2)
    assert users["u-edge"]["days_since_last_event"] == 1.0


def test_run_batch_writes_daily_snapshots_idempotently(
    log: tuple[Path, list[Event]], tmp_path: Path
) -> None:
    directory, events = log
    with EventLogDB(directory) as db:
        plan = plan_batch(db, date(2024, 2, 14), date(2024, 2, 12), datetime.now(UTC))
        assert plan.days == [date(2024, 2, 12), date(2024, 2, 13), date(2024, 2, 14)]
        first = run_batch(db, tmp_path, plan.days)
        again = run_batch(db, tmp_path, plan.days[-1:], views=["user_features"])
    assert [(w.view, w.as_of.day) for w in first] == [
        (view, day) for day in (12, 13, 14) for view in catalog.BATCH_VIEWS
    ]
    snaps = list_snapshots(snapshot_dir(tmp_path, "user_features"))
    assert [a for a, _ in snaps] == [midnight(d) for d in plan.days]
    table = pq.read_table(again[0].path)
    assert table.num_rows == len(user_oracle(events, midnight(date(2024, 2, 14))))
    assert set(table.column("event_timestamp").to_pylist()) == {midnight(date(2024, 2, 14))}
    with pytest.raises(ConfigError, match="not a batch view"):
        run_batch(EventLogDB(directory), tmp_path, plan.days, views=["session_features"])


def test_the_default_snapshot_date_covers_the_log_but_not_today() -> None:
    now = datetime(2024, 3, 5, 15, tzinfo=UTC)
    assert default_as_of(datetime(2024, 2, 1, 23, tzinfo=UTC), now) == date(2024, 2, 2)
    assert default_as_of(datetime(2024, 3, 5, 9, tzinfo=UTC), now) == date(2024, 3, 5)
    assert default_as_of(None, now) == date(2024, 3, 5)
    assert snapshot_dates(date(2024, 3, 5)) == [date(2024, 3, 5)]
    assert len(snapshot_dates(date(2024, 3, 5), date(2024, 2, 5))) == 30
    with pytest.raises(ConfigError, match="after --as-of"):
        snapshot_dates(date(2024, 3, 5), date(2024, 3, 6))
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        parse_day("5 March")


def test_an_empty_log_gives_empty_snapshots(tmp_path: Path) -> None:
    with EventLogDB(tmp_path / "nothing") as db:
        assert db.count() == 0 and db.time_range() is None
        assert db.snapshot("user_features", START).num_rows == 0
        assert db.snapshot("item_features", START).column_names[0] == "item_id"


def test_snapshot_files_are_named_by_their_instant(tmp_path: Path) -> None:
    at = datetime(2024, 2, 14, tzinfo=UTC)
    assert snapshot_path(tmp_path, at).name == "snapshot-20240214T000000Z.parquet"
    (tmp_path / "empty.parquet").touch()
    (tmp_path / ".snapshot-20240215T000000Z.parquet.tmp").touch()  # in progress: not listed
    write_snapshot(tmp_path, at, pa.table({"a": [1]}))
    assert list_snapshots(tmp_path) == [(at, snapshot_path(tmp_path, at))]
    with pytest.raises(ConfigError, match="tz-aware"):
        snapshot_path(tmp_path, at.replace(tzinfo=None))
    with pytest.raises(ConfigError, match="whole seconds"):
        snapshot_path(tmp_path, at + timedelta(microseconds=5))
