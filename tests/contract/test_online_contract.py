"""One contract suite for every online feature writer, on real stores.

Implementations: the in-memory reference, FeastApiWriter and FeastBatchWriter on SQLite and on
a private redis-server, RedisLayoutWriter (both guards) on Redis. Values written by any writer
are read back with stock ``FeatureStore.get_online_features`` and with FeastOnlineReader, and
must equal the values written (known answers).
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from featrec.adapters.feast.flush_writer import (
    FlushWriter,
)
from featrec.adapters.feast.layout.values import InvalidFeatureRow
from featrec.adapters.feast.reader import FeastOnlineReader
from featrec.adapters.feast.repo import open_store
from featrec.adapters.feast.writers import (
    FeastApiWriter,
    FeastBatchWriter,
    RedisLayoutWriter,
    open_writer,
)
from featrec.core.features import catalog
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import FeatureReader, FeatureWriter, InMemoryFeatureStore
from featrec.settings import Settings
from featrec.testing.feast_repo import copy_feature_repo

T0 = 1_700_000_000_000_000  # µs: 2023-11-14T22:13:20Z
SESSION = catalog.SESSION_FEATURES.name
NEIGHBOURS = catalog.ITEM_NEIGHBOURS.name
TRENDING = catalog.ITEM_TRENDING.name


def session_values(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "user_id": "u1",
        "n_events": 3,
        "n_views": 2,
        "n_clicks": 1,
        "n_carts": 0,
        "n_purchases": 0,
        "n_distinct_items": 2,
        "duration_s": 12.5,
        "mean_dwell_s": 6.25,
        "last_items": ["i2", "i1"],
        "last_category": "shoes",
        "last_price": 19.99,
        "cart_value": 0.0,
        "started_at_s": 1_700_000_000.0,
        "last_event_at_s": 1_700_000_012.5,
        "version": 3,
    }
    assert set(values) == set(catalog.SESSION_FEATURES.feature_names)
    values.update(overrides)
    return values


def neighbour_values(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "neighbour_ids": ["b", "c"],
        "neighbour_weights": [2.5, 0.125],
        "as_of_s": 1_700_000_000.0,
    }
    values.update(overrides)
    return values


def trending_values(score: float = 1.0, **overrides: object) -> dict[str, object]:
    values: dict[str, object] = {f.name: score for f in catalog.ITEM_TRENDING.features}
    values["category"] = "books"
    values.update(overrides)
    return values


def row(view: str, key: str, version: int, values: Mapping[str, object]) -> FeatureRow:
    return FeatureRow(view=view, key=key, values=dict(values), version=T0 + version)


# -- the implementations ---------------------------------------------------------------------


@dataclass
class Case:
    name: str
    writer: FeatureWriter
    reader: FeatureReader
    store: Any | None  # the Feast store behind the writer, for stock reads

    def read(self, view: str, keys: Sequence[str]) -> list[Mapping[str, object] | None]:
        """Values through the reader; on Feast, checked against a stock read too."""
        values = self.reader.read(view, keys)
        if self.store is not None:
            stock = stock_read(self.store, view, keys)
            for got, expected in zip(values, stock, strict=True):
                assert (got or dict.fromkeys(catalog.VIEWS[view].feature_names)) == expected
        return values


def stock_read(store: Any, view: str, keys: Sequence[str]) -> list[dict[str, object]]:
    """Stock ``get_online_features(...).to_dict()``, one dict per key (all None if absent)."""
    names = catalog.VIEWS[view].feature_names
    join_key = catalog.VIEWS[view].entity.join_key
    columns = store.get_online_features(
        features=[f"{view}:{name}" for name in names],
        entity_rows=[{join_key: key} for key in keys],
    ).to_dict()
    return [{name: columns[name][i] for name in names} for i in range(len(keys))]


FEAST_CASES = [
    "feast_api-sqlite",
    "feast_batch-sqlite",
    "feast_api-redis",
    "feast_batch-redis",
    "redis_layout-redis",
    "redis_layout_lua-redis",
    "redis_flush-redis",
    "redis_flush_remember-redis",
]


def make_case(name: str, request: pytest.FixtureRequest) -> Case:
    if name == "memory":
        memory = InMemoryFeatureStore()
        return Case(name, memory, memory, None)
    kind, backend = name.split("-")
    store = request.getfixturevalue(f"{backend}_store")
    writer: FeatureWriter
    settings: Settings
    client: redis.Redis[bytes]
    if kind == "feast_api":
        writer = FeastApiWriter(store)
    elif kind == "feast_batch":
        writer = FeastBatchWriter(store)
    elif kind.startswith("redis_flush"):
        settings = request.getfixturevalue("redis_settings")
        client = redis.Redis.from_url(settings.redis_url)
        remember = kind == "redis_flush_remember"
        writer = FlushWriter(client, "featrec", remember=remember, owns_client=True)
    else:
        settings = request.getfixturevalue("redis_settings")
        client = redis.Redis.from_url(settings.redis_url)
        guard = "lua" if kind == "redis_layout_lua" else "read"
        writer = RedisLayoutWriter(client, "featrec", guard=guard, owns_client=True)
    request.addfinalizer(writer.close)
    return Case(name, writer, FeastOnlineReader(store), store)


@pytest.fixture(params=["memory", *FEAST_CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return make_case(request.param, request)


@pytest.fixture(params=FEAST_CASES)
def feast_case(request: pytest.FixtureRequest) -> Case:
    return make_case(request.param, request)


# -- the contract ----------------------------------------------------------------------------


def test_round_trip_of_every_value_kind(case: Case) -> None:
    rows = [
        row(SESSION, "plain", 1, session_values()),
        row(
            SESSION,
            "edges",
            1,
            session_values(
                user_id=None,
                n_events=2**62,
                n_carts=-5,
                n_purchases=None,
                duration_s=1e300,
                mean_dwell_s=-0.0,
                last_price=None,
                last_items=[],
                last_category="",
            ),
        ),
        row(
            SESSION,
            "unicode-ü",
            1,
            session_values(user_id="Jürgen 日本 🎉", last_items=["ä", "", "🎉" * 50]),
        ),
    ]
    assert case.writer.write(rows) == 3
    got = case.read(SESSION, ["plain", "edges", "unicode-ü", "absent"])
    assert got == [dict(r.values) for r in rows] + [None]


def test_round_trip_of_list_views(case: Case) -> None:
    rows = [
        row(NEIGHBOURS, "i1", 1, neighbour_values()),
        row(NEIGHBOURS, "i2", 1, neighbour_values(neighbour_ids=[], neighbour_weights=[])),
        row(NEIGHBOURS, "i3", 1, neighbour_values(neighbour_weights=None, as_of_s=None)),
        row(TRENDING, "i1", 1, trending_values(0.5)),
    ]
    assert case.writer.write(rows) == 4
    assert case.read(NEIGHBOURS, ["i1", "i2", "i3", "i4"]) == [dict(r.values) for r in rows[:3]] + [
        None
    ]
    assert case.read(TRENDING, ["i1", "i2"]) == [dict(rows[3].values), None]


def test_an_older_row_after_a_newer_one_is_skipped(case: Case) -> None:
    newer = row(SESSION, "s", 2, session_values(n_events=2))
    older = row(SESSION, "s", 1, session_values(n_events=1))
    assert case.writer.write([newer]) == 1
    assert case.writer.write([older]) == 0
    assert case.read(SESSION, ["s"]) == [newer.values]


def test_the_same_row_twice_changes_nothing(case: Case) -> None:
    first = row(SESSION, "s", 5, session_values(n_events=5))
    same_version = row(SESSION, "s", 5, session_values(n_events=99, user_id="other"))
    assert case.writer.write([first]) == 1
    assert case.writer.write([first]) == 0
    assert case.writer.write([same_version]) == 0
    assert case.read(SESSION, ["s"]) == [first.values]


def test_a_newer_row_overwrites_every_feature_including_with_null(case: Case) -> None:
    assert case.writer.write([row(SESSION, "s", 1, session_values())]) == 1
    newer = row(SESSION, "s", 2, session_values(user_id=None, last_items=[], last_price=None))
    assert case.writer.write([newer]) == 1
    assert case.read(SESSION, ["s"]) == [newer.values]


def test_many_rows_in_one_batch(case: Case) -> None:
    rows = [
        row(SESSION, f"s{i}", i + 1, session_values(n_events=i, last_items=[f"i{i}"]))
        for i in range(500)
    ]
    assert case.writer.write(rows) == 500
    keys = [r.key for r in rows]
    assert case.read(SESSION, keys) == [r.values for r in rows]


def test_duplicates_in_one_batch_apply_in_order(case: Case) -> None:
    v1, v3, v2 = (row(SESSION, "s", v, session_values(n_events=v)) for v in (1, 3, 2))
    other = row(SESSION, "t", 1, session_values(n_events=7))
    # v1 and v3 are each newer than what came before; v2 is not.
    assert case.writer.write([v1, v3, v2, other]) == 3
    assert case.read(SESSION, ["s", "t"]) == [v3.values, other.values]


def test_views_on_the_same_entity_are_independent(case: Case) -> None:
    neighbours = row(NEIGHBOURS, "i1", 5, neighbour_values())
    trending = row(TRENDING, "i1", 3, trending_values(1.0))
    assert case.writer.write([neighbours, trending]) == 2
    # The guard is per view: version 4 is older than the neighbours row but newer for trending.
    newer_trending = row(TRENDING, "i1", 4, trending_values(2.0))
    assert case.writer.write([newer_trending]) == 1
    assert case.writer.write([row(NEIGHBOURS, "i1", 4, neighbour_values(as_of_s=0.0))]) == 0
    assert case.read(NEIGHBOURS, ["i1"]) == [neighbours.values]
    assert case.read(TRENDING, ["i1"]) == [newer_trending.values]


def test_an_empty_batch_writes_nothing(case: Case) -> None:
    assert case.writer.write([]) == 0
    assert case.read(SESSION, ["s"]) == [None]


# -- Feast-backed writers only ---------------------------------------------------------------


def test_event_timestamps_are_the_row_versions(feast_case: Case) -> None:
    r = row(SESSION, "s", 123_456, session_values())
    assert feast_case.writer.write([r]) == 1
    reader = FeastOnlineReader(feast_case.store)
    [timed, absent] = reader.read_with_timestamps(SESSION, ["s", "absent"])
    assert absent is None
    assert timed is not None
    assert timed.values == r.values
    if feast_case.store.config.online_store.type == "sqlite":
        # Feast's SQLite store keeps whole seconds.
        assert timed.event_time == r.event_time.replace(microsecond=0)
    else:
        assert timed.event_time == r.event_time
    assert timed.event_time.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (row("no_such_view", "k", 1, {}), "unknown view 'no_such_view'"),
        (row(SESSION, "k", 1, {**session_values(), "extra": 1}), "unknown features ['extra']"),
        (
            row(SESSION, "k", 1, {k: v for k, v in session_values().items() if k != "n_views"}),
            "missing features ['n_views']",
        ),
        (row(SESSION, "k", 1, session_values(n_events="3")), "'n_events': expected an int"),
        (row(SESSION, "k", 1, session_values(n_events=True)), "'n_events': expected an int"),
        (row(SESSION, "k", 1, session_values(duration_s="1.5")), "'duration_s': expected a float"),
        (row(SESSION, "k", 1, session_values(user_id=7)), "'user_id': expected a str"),
        (row(SESSION, "k", 1, session_values(last_items=["a", 1])), "item 1 is int"),
        (row(SESSION, "k", 1, session_values(last_items="ab")), "expected a list of str"),
        (row(SESSION, "k", 1, session_values(n_events=2**63)), "outside the int64 range"),
        (row(SESSION, "k", 1, session_values(user_id="\ud800")), "not valid UTF-8"),
        (
            FeatureRow(SESSION, "k", session_values(), version=0),
            "version must be a positive int",
        ),
    ],
)
def test_a_bad_row_fails_the_call_and_nothing_is_written(
    feast_case: Case, bad: FeatureRow, message: str
) -> None:
    good = row(SESSION, "good", 1, session_values())
    with pytest.raises(InvalidFeatureRow) as info:
        feast_case.writer.write([good, bad])
    assert message in str(info.value)
    assert feast_case.read(SESSION, ["good"]) == [None]


def test_nan_is_stored_as_null_and_kept_inside_lists(feast_case: Case) -> None:
    r = row(NEIGHBOURS, "i", 1, neighbour_values(as_of_s=math.nan, neighbour_weights=[math.nan]))
    assert feast_case.writer.write([r]) == 1
    [got] = feast_case.reader.read(NEIGHBOURS, ["i"])  # NaN != NaN: no cross-check here
    assert got is not None
    assert got["as_of_s"] is None
    weights = got["neighbour_weights"]
    assert isinstance(weights, list)
    assert len(weights) == 1
    assert math.isnan(weights[0])


def writer_of(kind: str, store: Any, settings: Settings) -> FeatureWriter:
    if kind == "api":
        return FeastApiWriter(store)
    if kind == "batch":
        return FeastBatchWriter(store)
    client: redis.Redis[bytes] = redis.Redis.from_url(settings.redis_url)
    if kind in ("flush", "remember"):
        return FlushWriter(client, "featrec", remember=kind == "remember")
    return RedisLayoutWriter(client, "featrec", guard="lua" if kind == "lua" else "read")


@pytest.mark.parametrize(
    ("backend", "first", "second"),
    [
        ("sqlite", "api", "batch"),
        ("sqlite", "batch", "api"),
        ("redis", "layout", "api"),
        ("redis", "api", "lua"),
        ("redis", "batch", "layout"),
        ("redis", "lua", "batch"),
        ("redis", "api", "flush"),
        ("redis", "layout", "remember"),
        ("redis", "remember", "api"),
    ],
)
def test_writers_guard_against_each_others_rows(
    backend: str, first: str, second: str, request: pytest.FixtureRequest
) -> None:
    store = request.getfixturevalue(f"{backend}_store")
    settings = request.getfixturevalue(f"{backend}_settings")
    newer = row(SESSION, "s", 10, session_values(n_events=10))
    assert writer_of(first, store, settings).write([newer]) == 1
    later = writer_of(second, store, settings)
    assert later.write([row(SESSION, "s", 9, session_values(n_events=9))]) == 0
    assert FeastOnlineReader(store).read(SESSION, ["s"]) == [newer.values]
    newest = row(SESSION, "s", 11, session_values(n_events=11))
    assert later.write([newest]) == 1
    assert FeastOnlineReader(store).read(SESSION, ["s"]) == [newest.values]


def test_every_redis_writer_stores_the_same_bytes(
    redis_store: Any, redis_settings: Settings
) -> None:
    """Feast's Redis format is the contract: the fast paths write exactly what Feast writes."""
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_settings.redis_url)
    rows = [
        row(SESSION, "s1", 1, session_values()),
        row(SESSION, "s2", 2, session_values(user_id=None, last_items=[], n_events=300)),
        row(NEIGHBOURS, "i1", 3, neighbour_values()),
        row(NEIGHBOURS, "i2", 4, neighbour_values(neighbour_weights=[], as_of_s=None)),
        row(TRENDING, "i1", 999_999, trending_values(1.5, category="é")),
    ]
    snapshots = {}
    for kind in ("api", "batch", "layout", "lua", "flush", "remember"):
        client.flushdb()
        assert writer_of(kind, redis_store, redis_settings).write(rows) == len(rows)
        snapshots[kind] = {key: client.hgetall(key) for key in client.scan_iter()}
    assert len(snapshots["api"]) == 4  # two sessions, two items (shared by both item views)
    assert snapshots["batch"] == snapshots["api"]
    assert snapshots["layout"] == snapshots["api"]
    assert snapshots["lua"] == snapshots["api"]
    assert snapshots["flush"] == snapshots["api"]
    assert snapshots["remember"] == snapshots["api"]


@pytest.mark.parametrize("guard", ["read", "lua"])
def test_redis_layout_writer_sets_the_key_ttl(redis_settings: Settings, guard: str) -> None:
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_settings.redis_url)
    writer = RedisLayoutWriter(client, "featrec", key_ttl_seconds=100, guard=guard)  # type: ignore[arg-type]
    assert writer.write([row(SESSION, "s", 1, session_values())]) == 1
    [key] = client.keys()
    assert 0 < client.ttl(key) <= 100


def test_redis_layout_writer_reloads_a_flushed_script(
    redis_store: Any, redis_settings: Settings
) -> None:
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_settings.redis_url)
    writer = RedisLayoutWriter(client, "featrec", guard="lua")
    assert writer.write([row(SESSION, "s", 1, session_values())]) == 1
    client.script_flush()
    newer = row(SESSION, "s", 2, session_values(n_events=2))
    assert writer.write([newer]) == 1
    assert FeastOnlineReader(redis_store).read(SESSION, ["s"]) == [newer.values]


def test_open_writer_picks_the_writer_from_settings(
    sqlite_settings: Settings, redis_settings: Settings, sqlite_store: Any, redis_store: Any
) -> None:
    assert isinstance(open_writer(sqlite_settings, sqlite_store), FeastBatchWriter)
    assert isinstance(
        open_writer(sqlite_settings.with_(writer="feast"), sqlite_store), FeastApiWriter
    )
    assert isinstance(
        open_writer(redis_settings.with_(writer="feast"), redis_store), FeastApiWriter
    )
    fast = open_writer(redis_settings)
    assert isinstance(fast, RedisLayoutWriter)
    assert fast.write([row(SESSION, "s", 1, session_values())]) == 1
    fast.close()
    assert FeastOnlineReader(redis_store).read(SESSION, ["s"]) == [session_values()]


# -- the stock Feast CLI on the repo ---------------------------------------------------------


def feast_cli(
    repo: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start the venv's stock ``feast`` console script on ``repo`` (``import feast`` is slow:
    callers run several at once)."""
    feast = Path(sys.executable).parent / "feast"
    return subprocess.Popen(
        [str(feast), "-c", str(repo), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finished(proc: subprocess.Popen[str]) -> str:
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    return stdout


def test_stock_feast_cli_applies_and_plans_the_repo(
    sqlite_settings: Settings, redis_settings: Settings, tmp_path: Path
) -> None:
    import os

    from featrec.adapters.feast.repo import REDIS_ENV, feast_redis_connection

    sqlite_repo = sqlite_settings.repo
    redis_repo = copy_feature_repo(tmp_path / "redis_repo")
    redis_settings = redis_settings.with_(repo=redis_repo)
    env = {**os.environ, REDIS_ENV: feast_redis_connection(redis_settings.redis_url)}
    sqlite_apply = feast_cli(sqlite_repo, "apply")
    redis_apply = feast_cli(
        redis_repo, "-f", str(redis_repo / "feature_store.redis.yaml"), "apply", env=env
    )

    applied = finished(sqlite_apply)
    for view in catalog.VIEWS:
        assert f"Created feature view {view}" in applied
    assert f"Created feature service {catalog.SESSION_SERVICE}" in applied
    sqlite_plan = feast_cli(sqlite_repo, "plan")
    redis_applied = finished(redis_apply)
    for view in catalog.VIEWS:
        assert f"Deploying infrastructure for {view}" in redis_applied
    planned = finished(sqlite_plan)
    assert "Created" not in planned  # nothing left to do
    assert "Deleted" not in planned

    # What stock apply registered is what featrec's writers and readers use.
    for settings in (sqlite_settings, redis_settings):
        store = open_store(settings)
        r = row(SESSION, "s", 1, session_values())
        assert open_writer(settings, store).write([r]) == 1
        assert stock_read(store, SESSION, ["s"]) == [r.values]


def test_apply_repo_then_historical_retrieval_works_on_a_fresh_repo(sqlite_store: Any) -> None:
    import pandas as pd

    entity_df = pd.DataFrame(
        {"session_id": ["s"], "event_timestamp": [pd.Timestamp("2024-01-01", tz="UTC")]}
    )
    frame = sqlite_store.get_historical_features(
        entity_df=entity_df, features=[f"{SESSION}:n_events"]
    ).to_df()
    assert list(frame["session_id"]) == ["s"]
    assert frame["n_events"].isna().all()
