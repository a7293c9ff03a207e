"""The batch path through real Feast repos (SQLite and a private redis-server).

One generated log, daily snapshots written by `featrec batch run`, then: materialization by
Feast's engine and by the fast path (read back with stock ``get_online_features``, registry
bookkeeping shared), point-in-time joins (known answers), and `featrec dataset build`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from click.testing import CliRunner

from featrec.adapters.feast.layout.values import encode_entity_key
from featrec.adapters.feast.reader import FeastOnlineReader
from featrec.adapters.feast.repo import apply_repo, open_store
from featrec.adapters.feast.types import arrow_schema
from featrec.adapters.files.event_log import EventLogWriter
from featrec.adapters.files.snapshots import list_snapshots, snapshot_dir, write_snapshot
from featrec.adapters.redis.bulk_writer import RedisBulkWriter
from featrec.adapters.sqlite.bulk_writer import SqliteBulkWriter
from featrec.cli.batch import batch_group, dataset_group, materialize_command
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import MIN_TS, Event
from featrec.core.features import catalog
from featrec.core.features.freshness import BATCH_MAX_AGE, freshness
from featrec.core.features.snapshot_days import midnight
from featrec.core.ranking.examples import next_item_targets
from featrec.errors import StoreError
from featrec.jobs.materialize import materialize
from featrec.jobs.training_sets import join_features, log_events
from featrec.settings import Settings
from featrec.testing.feast_repo import copy_feature_repo
from featrec.testing.redis_server import RedisServer

USERS, ITEMS = catalog.USER_FEATURES, catalog.ITEM_FEATURES
Snapshot = dict[str, dict[str, Any]]


@dataclass
class World:
    events: list[Event]
    days: list[date]
    stores: dict[str, Settings]

    def snapshot(self, settings: Settings, view: catalog.View, day: date) -> Snapshot:
        """The batch job's rows as of ``day``, by key (the known answers for Feast reads)."""
        files = dict(list_snapshots(snapshot_dir(settings.repo / "data", view.name)))
        rows = pq.read_table(files[midnight(day)]).to_pylist()
        return {r.pop(view.entity.join_key): _without_ts(r) for r in rows}


def _without_ts(row: dict[str, Any]) -> dict[str, Any]:
    row.pop("event_timestamp")
    return row


def invoke(command: Any, args: list[str], settings: Settings) -> str:
    result = CliRunner().invoke(command, args, obj=settings)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[World]:
    root = tmp_path_factory.mktemp("batch_feast")
    home = root / "home"
    config = GeneratorConfig(n_events=12_000, n_users=120, n_items=150, concurrent_sessions=2)
    events = list(generate(config))
    EventLogWriter(home / "events").write(events)
    stores = {
        "sqlite": Settings(home=home, repo=copy_feature_repo(root / "sqlite_repo")),
        "redis": Settings(
            home=home,
            repo=copy_feature_repo(root / "redis_repo"),
            online_store="redis",
            redis_url=redis_server.url,
        ),
    }
    for settings in stores.values():
        apply_repo(settings)
        out = invoke(batch_group, ["run", "--since", "2024-01-01"], settings)
        assert "wrote" in out
    days = [
        a.date()
        for a, _ in list_snapshots(snapshot_dir(stores["sqlite"].repo / "data", "user_features"))
    ]
    assert days[0] == date(2024, 1, 1) and len(days) >= 4
    assert days[-1] == events[-1].ts.date() + timedelta(days=1)
    yield World(events, days, stores)
    redis_server.client().flushall()


def assert_online_equals(
    settings: Settings, view: catalog.View, expected: Snapshot, day: date
) -> None:
    reader = FeastOnlineReader(open_store(settings))
    keys = sorted(expected)
    got = reader.read_with_timestamps(view.name, keys)
    for key, timed in zip(keys, got, strict=True):
        assert timed is not None, f"{view.name} {key} missing online"
        assert dict(timed.values) == expected[key], f"{view.name} {key}"
        assert timed.event_time == midnight(day)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_stock_and_fast_materialization_share_format_and_bookkeeping(
    world: World, kind: str
) -> None:
    settings = world.stores[kind]
    d2, d3, d4 = world.days[1], world.days[2], world.days[3]
    noon = {d: midnight(d) + timedelta(hours=12) for d in (d2, d3, d4)}
    store = open_store(settings)

    # 1. Feast's own engine, [2000-01-01, d2 12:00]: the d2 snapshot.
    stock = materialize(store, list(catalog.BATCH_VIEWS), start=MIN_TS, end=noon[d2])
    assert [r.view for r in stock] == list(catalog.BATCH_VIEWS)
    for view in (USERS, ITEMS):
        assert_online_equals(settings, view, world.snapshot(settings, view, d2), d2)

    # 2. The fast path, incremental, through the CLI: starts where Feast's run ended.
    out = invoke(
        materialize_command, ["--incremental", "--fast", "--end", noon[d3].isoformat()], settings
    )
    n_users = len(world.snapshot(settings, USERS, d3))
    assert f"user_features {noon[d2].isoformat()} .. {noon[d3].isoformat()} (fast): " in out
    assert f"{n_users:,} rows, {n_users:,} written" in out
    for view in (USERS, ITEMS):
        assert_online_equals(settings, view, world.snapshot(settings, view, d3), d3)

    # 3. Feast's incremental run continues from the fast path's end (its registry entry).
    materialize(open_store(settings), list(catalog.BATCH_VIEWS), end=noon[d4], incremental=True)
    for view in (USERS, ITEMS):
        assert_online_equals(settings, view, world.snapshot(settings, view, d4), d4)
        intervals = open_store(settings).get_feature_view(view.name).materialization_intervals
        assert intervals == [(MIN_TS, noon[d2]), (noon[d2], noon[d3]), (noon[d3], noon[d4])]

    # Nothing left to do up to the same end: nothing is written or recorded.
    [idle] = materialize(open_store(settings), [USERS.name], end=noon[d4], incremental=True)
    assert (idle.start, idle.rows) == (noon[d4], 0)
    assert len(open_store(settings).get_feature_view(USERS.name).materialization_intervals) == 3

    # 4. Re-running an interval writes nothing: no row is newer than the stored one.
    again = materialize(open_store(settings), [USERS.name], start=MIN_TS, end=noon[d4], fast=True)
    assert again[0].rows == len(world.snapshot(settings, USERS, d4))
    assert again[0].written == 0
    assert_online_equals(settings, USERS, world.snapshot(settings, USERS, d4), d4)

    # The stale-feature guard on what stock Feast returns.
    user = sorted(world.snapshot(settings, USERS, d4))[0]
    timed = FeastOnlineReader(open_store(settings)).read_with_timestamps(
        USERS.name, [user, "nobody"]
    )
    fresh, missing = freshness(timed, BATCH_MAX_AGE, midnight(d4) + timedelta(days=1))
    assert (fresh.stale, fresh.age, missing.missing) == (False, timedelta(days=1), True)
    [old] = freshness(timed[:1], BATCH_MAX_AGE, midnight(d4) + timedelta(days=3))
    assert old.stale


T1, T2 = datetime(2031, 1, 1, tzinfo=UTC), datetime(2031, 1, 2, tzinfo=UTC)


def user_row(key: str, views: int, at: datetime, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = dict.fromkeys(USERS.feature_names)
    values.update({"user_id": key, "n_view_1d": views, "event_timestamp": at, **extra})
    return values


BULK_ROWS = pa.Table.from_pylist(
    [
        user_row("bulk-a", 1, T2, top_categories=["c1", "c2"], top_category_shares=[0.75, 0.25]),
        user_row("bulk-a", 2, T1),  # older: loses even though it comes later
        user_row("bulk-b", 3, T1, days_since_last_event=float("nan"), recent_purchases=[]),
        user_row("bulk-b", 4, T1),  # same time: the first one stays, as in Feast
    ],
    schema=arrow_schema(USERS),
)


def bulk_writer(store: Any) -> Any:
    online = store._get_provider().online_store
    config = store.config
    if config.online_store.type == "redis":
        return RedisBulkWriter(online._get_client(config.online_store), config.project)
    return SqliteBulkWriter(online._get_conn(config), f"{config.project}_{USERS.name}")


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_bulk_writers_keep_the_newest_row_and_skip_older_ones(world: World, kind: str) -> None:
    store = open_store(world.stores[kind])
    writer = bulk_writer(store)
    assert writer.write_table(USERS, BULK_ROWS) == 2
    a, b = FeastOnlineReader(store).read_with_timestamps(USERS.name, ["bulk-a", "bulk-b"])
    assert a is not None and b is not None
    assert (a.values["n_view_1d"], a.values["top_categories"], a.event_time) == (
        1,
        ["c1", "c2"],
        T2,
    )
    assert a.values["top_category_shares"] == [0.75, 0.25]
    assert (b.values["n_view_1d"], b.values["days_since_last_event"]) == (3, None)
    assert b.values["recent_purchases"] == [] and b.values["avg_price_bought_90d"] is None
    assert writer.write_table(USERS, BULK_ROWS.slice(1, 1)) == 0  # older than what is stored
    assert FeastOnlineReader(store).read(USERS.name, ["bulk-a"])[0] == a.values


def test_sqlite_bulk_rows_are_the_rows_feast_writes(world: World) -> None:
    store = open_store(world.stores["sqlite"])
    row = user_row("by-bulk", 7, T1, avg_price_viewed_90d=12.5, top_categories=["x"])
    row |= {"days_since_last_event": float("nan"), "purchase_rate_90d": -0.0}
    bulk_writer(store).write_table(USERS, pa.Table.from_pylist([row], schema=arrow_schema(USERS)))
    frame = pa.Table.from_pylist([row | {"user_id": "by-feast"}]).to_pandas()
    store.write_to_online_store(USERS.name, frame)
    conn = store._get_provider().online_store._get_conn(store.config)

    def stored(key: str) -> list[tuple[Any, ...]]:
        return conn.execute(
            "SELECT feature_name, value, value_text, event_ts, created_ts FROM "
            f"featrec_{USERS.name} WHERE entity_key = ? ORDER BY feature_name",
            [encode_entity_key("user_id", key)],
        ).fetchall()

    assert len(stored("by-bulk")) == len(USERS.features)
    assert stored("by-bulk") == stored("by-feast")


def test_redis_bulk_writer_never_loses_a_row_silently(world: World) -> None:
    settings = world.stores["redis"]
    writer = bulk_writer(open_store(settings))
    table = BULK_ROWS
    # A key Redis cannot write (not a hash) is an error, never a silent loss.
    client = redis.Redis.from_url(settings.redis_url)
    client.set(encode_entity_key("user_id", "bulk-c") + b"featrec", b"not a hash")
    clash = table.slice(0, 1).set_column(0, "user_id", pa.array(["bulk-c"]))
    with pytest.raises(StoreError, match="WRONGTYPE"):
        writer.write_table(USERS, clash)

    # Writes run without replies; a write Redis refuses is caught by the read-back.
    client.acl_setuser(
        "no-hset", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-hset"]
    )
    try:
        limited = redis.Redis.from_url(settings.redis_url.replace("//", "//no-hset:pw@"))
        refused = table.slice(0, 1).set_column(0, "user_id", pa.array(["bulk-d"]))
        with pytest.raises(StoreError, match="1 of 1 user_features rows were not written"):
            RedisBulkWriter(limited, "featrec").write_table(USERS, refused)
        limited.close()
    finally:
        client.acl_deluser("no-hset")


def test_point_in_time_join_known_answers(world: World) -> None:
    settings = world.stores["sqlite"]
    t1, t2, t3 = (datetime(2030, 1, d, tzinfo=UTC) for d in (1, 2, 3))
    for i, at in enumerate((t1, t2, t3), start=1):
        values: dict[str, Any] = dict.fromkeys(USERS.feature_names)
        values.update({"user_id": "pit-user", "n_view_1d": i, "event_timestamp": at})
        table = pa.Table.from_pylist([values], schema=arrow_schema(USERS))
        write_snapshot(snapshot_dir(settings.repo / "data", USERS.name), at, table)
    us = timedelta(microseconds=1)
    rows = [
        ("pit-user", t1 - us, None),  # before any snapshot: null, not dropped
        ("pit-user", t1, 1),  # a snapshot as of T holds events before T: visible at T
        ("pit-user", t1 + timedelta(hours=12), 1),
        ("pit-user", t2 - us, 1),  # the T2 value, written after this time, never shows
        ("pit-user", t2 + us, 2),
        ("pit-user", t3 + timedelta(days=1, seconds=1), None),  # older than the 1-day ttl
        ("someone-else", t2, None),
        (None, t2, None),  # anonymous
    ]
    examples = pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.string()),
            "item_id": pa.array(["pit-item"] * len(rows), pa.string()),
            "event_timestamp": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
        }
    )
    joined = join_features(open_store(settings), examples)
    assert joined.column("user_features__n_view_1d").to_pylist() == [r[2] for r in rows]
    assert joined.column("event_timestamp").to_pylist() == [r[1] for r in rows]
    assert joined.column("item_features__price").null_count == len(rows)


def test_dataset_build_is_point_in_time_correct(world: World, tmp_path: Path) -> None:
    settings = world.stores["sqlite"]
    out = tmp_path / "train.parquet"
    printed = invoke(
        dataset_group,
        ["build", "--out", str(out), "--max-points", "300", "--popular", "8"],
        settings,
    )
    assert "examples for 300 prediction points" in printed
    rows = pq.read_table(out).to_pylist()

    # Every point keeps all its candidates (ranks 0..n-1), labelled against the real next item.
    events = log_events(settings.event_log_dir)
    targets = next_item_targets(events)
    target_at: dict[tuple[str, int], tuple[str | None, datetime]] = {}
    seen: dict[str, int] = {}
    for event, target in zip(events, targets, strict=True):
        seen[event.session_id] = seen.get(event.session_id, 0) + 1
        target_at[(event.session_id, seen[event.session_id])] = (target, event.ts)
    by_point: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_point.setdefault(row["point_id"], []).append(row)
    assert len(by_point) == 300
    for point_rows in by_point.values():
        assert [r["candidate_rank"] for r in point_rows] == list(range(len(point_rows)))
        target, at = target_at[(point_rows[0]["session_id"], point_rows[0]["position"])]
        assert target is not None
        assert {r["event_timestamp"] for r in point_rows} == {at}  # the point's own time
        assert [r["label"] for r in point_rows] == [int(r["item_id"] == target) for r in point_rows]

    # Features are those of the snapshot as of the point's own day (events before its
    # midnight), or nulls when the entity had no history then.
    snapshots: dict[tuple[str, date], Snapshot] = {}
    counts = {"user": [0, 0], "item": [0, 0]}
    for row in rows:
        day = target_at[(row["session_id"], row["position"])][1].date()
        for view, key, kind in ((USERS, row["user_id"], "user"), (ITEMS, row["item_id"], "item")):
            snap = snapshots.get((view.name, day))
            if snap is None:
                snap = snapshots[(view.name, day)] = world.snapshot(settings, view, day)
            got = {f: row[f"{view.name}__{f}"] for f in view.feature_names}
            expected = snap.get(key) if key is not None else None
            assert got == (expected or dict.fromkeys(view.feature_names)), (view.name, key, day)
            counts[kind][expected is None] += 1
    assert min(min(c) for c in counts.values()) > 0  # both cases occur for users and items


def test_cli_errors_are_one_line_with_a_non_zero_exit(world: World, tmp_path: Path) -> None:
    settings = world.stores["sqlite"]
    runner = CliRunner()
    both = runner.invoke(
        materialize_command, ["--start", "2024-01-01", "--incremental"], obj=settings
    )
    assert both.exit_code == 2 and "exclude each other" in both.output
    bad_day = runner.invoke(batch_group, ["run", "--as-of", "Monday"], obj=settings)
    assert bad_day.exit_code == 2 and "YYYY-MM-DD" in bad_day.output
    empty = runner.invoke(
        dataset_group, ["build"], obj=settings.with_(home=tmp_path / "empty-home")
    )
    assert empty.exit_code == 1 and "is empty" in empty.output
    unapplied = runner.invoke(
        materialize_command, ["--fast"], obj=settings.with_(repo=copy_feature_repo(tmp_path / "r"))
    )
    assert unapplied.exit_code == 1 and "apply" in unapplied.output
