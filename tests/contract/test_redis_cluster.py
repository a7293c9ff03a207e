"""featrec's Redis paths on a real Redis Cluster (3 private masters): the writers, the fast
row reader, redirections, forget and online delete, the deny-list. Stock Feast
(``redis_type: redis_cluster``) reads back every value a featrec writer wrote.

The request log also runs its contract suite on the cluster (tests/contract/test_request_log.py);
the failover test is in test_redis_cluster_failover.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from dataflows.sinks import retry_unavailable
from featrec.adapters.feast.cluster_writer import ClusterFlushWriter
from featrec.adapters.feast.reader import FeastOnlineReader
from featrec.adapters.feast.repo import apply_repo, load_repo_config, open_store
from featrec.adapters.feast.types import arrow_schema
from featrec.adapters.feast.writers import FeastApiWriter, RedisLayoutWriter, open_writer
from featrec.adapters.redis.bulk_writer import ClusterBulkWriter, bulk_writer_for
from featrec.adapters.redis.cluster import online_client
from featrec.adapters.redis.deny_list import CLUSTER_KEY, stores_for
from featrec.adapters.redis.request_log import RedisRequestLog
from featrec.adapters.redis.rows import ClusterRowReader, open_redis_row_reader
from featrec.core.features import catalog
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import FeatureWriter
from featrec.core.ports.serving import LoggedRow, RequestRecord, StampedRow
from featrec.errors import ConfigError
from featrec.jobs.forget import forget_user
from featrec.settings import Settings
from featrec.testing.feast_repo import copy_feature_repo
from featrec.testing.redis_cluster import RedisClusterServers

SESSION = catalog.SESSION_FEATURES.name
USER = catalog.USER_FEATURES.name
NEIGHBOURS = catalog.ITEM_NEIGHBOURS.name
T0 = 1_700_000_000_000_000


def session_values(n: int, user: str | None = "u1") -> dict[str, object]:
    return {
        "user_id": user, "n_events": n, "n_views": n, "n_clicks": 0, "n_carts": 1,
        "n_purchases": 0, "n_distinct_items": 2, "duration_s": 1.5 * n, "mean_dwell_s": 0.5,
        "last_items": ["i1", f"i{n}"], "last_category": "shoes", "last_price": 9.5,
        "cart_value": 0.0, "started_at_s": 1.0, "last_event_at_s": 2.5, "version": n,
    }  # fmt: skip


def user_values(n: int) -> dict[str, object]:
    values: dict[str, object] = {f.name: None for f in catalog.USER_FEATURES.features}
    for f in catalog.USER_FEATURES.features:
        if f.dtype.value in ("int64", "float64"):
            values[f.name] = n
    return values


def session_row(key: str, n: int, user: str | None = "u1") -> FeatureRow:
    return FeatureRow(SESSION, key, session_values(n, user), T0 + n)


@pytest.fixture(scope="module")
def cluster_settings(
    redis_cluster_servers: RedisClusterServers, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    tmp = tmp_path_factory.mktemp("cluster-repo")
    return Settings(
        home=tmp / "home",
        repo=copy_feature_repo(tmp / "feature_repo"),
        online_store="redis",
        redis_url=redis_cluster_servers.url,
        redis_cluster_nodes=redis_cluster_servers.connection_string,
    )


@pytest.fixture(scope="module")
def applied(cluster_settings: Settings) -> Settings:
    apply_repo(cluster_settings)
    return cluster_settings


@pytest.fixture
def store(applied: Settings, redis_cluster: RedisClusterServers) -> Iterator[Any]:
    """Stock Feast on the cluster (the cluster is emptied after each test)."""
    yield open_store(applied)


def writers(settings: Settings, store: Any) -> dict[str, FeatureWriter]:
    remember = open_writer(settings, flow=True, exclusive=True)
    assert isinstance(remember, ClusterFlushWriter)
    return {
        "feast_api": FeastApiWriter(store),
        "layout": open_writer(settings),
        "flush": open_writer(settings, flow=True),
        "flush_remember": remember,
    }


def test_every_writer_writes_what_stock_feast_and_the_fast_reader_read(
    store: Any, applied: Settings, redis_cluster: RedisClusterServers
) -> None:
    stock = FeastOnlineReader(store)
    fast = open_redis_row_reader(applied)
    assert isinstance(fast, ClusterRowReader)
    for name, writer in writers(applied, store).items():
        keys = [f"{name}-{i}" for i in range(60)]
        assert writer.write([session_row(k, i + 1) for i, k in enumerate(keys)]) == 60
        # newer rows replace, an older one is skipped (the version guard holds on the cluster)
        assert writer.write([session_row(keys[0], 100), session_row(keys[1], 0)]) == 1
        expected = [session_values(100)] + [session_values(i + 1) for i in range(1, 60)]
        assert stock.read(SESSION, [*keys, f"{name}-absent"]) == [*expected, None], name
        found = fast.read_rows({SESSION: [*keys, f"{name}-absent"]})[SESSION]
        assert [r.values if r else None for r in found] == [*expected, None], name
        assert found[0] is not None and found[0].ts_us == T0 + 100
        # read again across the nodes, unchanged: the very rows known, not decoded again
        again = fast.reread_rows({SESSION: [*keys, f"{name}-absent"]}, {SESSION: found})
        assert all(a is b for a, b in zip(again[SESSION][:-1], found[:-1], strict=True)), name
        assert again[SESSION][-1] is None
        writer.close()
    # the rows are spread over every master, so every path above crossed nodes
    assert all(n.client().dbsize() > 20 for n in redis_cluster.nodes)
    fast.close()


def test_a_moved_slot_is_followed_by_the_writer_and_the_reader(
    store: Any, applied: Settings, redis_cluster: RedisClusterServers
) -> None:
    writer = open_writer(applied, flow=True, exclusive=True)
    reader = open_redis_row_reader(applied)
    assert isinstance(writer, ClusterFlushWriter) and isinstance(reader, ClusterRowReader)
    keys = [f"m{i}" for i in range(30)]
    assert writer.write([session_row(k, 1) for k in keys]) == 30
    assert reader.read_rows({SESSION: keys})[SESSION][0] is not None  # both know the slot map
    moved_key = writer._plans[SESSION].redis_key("m0")
    owner = redis_cluster.owner_of(moved_key)
    target = next(n for n in redis_cluster.masters_now() if n.port != owner.port)
    redis_cluster.move_slot_of(moved_key, target)
    assert redis_cluster.owner_of(moved_key).port == target.port
    # the writer's next flush meets MOVED for m0 (a remembered key: a plain HSET) and m1..
    assert writer.write([session_row(k, 2) for k in keys]) == 30
    assert writer._channels.stale  # it met MOVED and sent those commands through redis-py
    assert writer.write([session_row(k, 3) for k in keys]) == 30  # on the new slot map
    assert not writer._channels.stale
    found = reader.read_rows({SESSION: keys})[SESSION]
    assert reader._channels.stale  # so did the reader
    assert [r.values if r else None for r in found] == [session_values(3)] * 30
    assert FeastOnlineReader(store).read(SESSION, keys) == [session_values(3)] * 30
    writer.close()
    reader.close()


def test_forget_leaves_none_of_the_users_keys_on_the_cluster(
    store: Any, applied: Settings, redis_cluster: RedisClusterServers
) -> None:
    writer = open_writer(applied, flow=True)
    mine = [f"s-u7-{i}" for i in range(40)]
    others = [f"s-u8-{i}" for i in range(40)]
    rows = [session_row(k, 1, "u7") for k in mine] + [session_row(k, 1, "u8") for k in others]
    rows.append(FeatureRow(USER, "u7", user_values(3), T0 + 1))
    rows.append(FeatureRow(USER, "u8", user_values(4), T0 + 1))
    assert writer.write(rows) == 82
    writer.close()
    client = online_client(applied)
    plans = RedisLayoutWriter(client, "featrec")._plans
    mine_keys = [plans[SESSION].redis_key(k) for k in mine] + [plans[USER].redis_key("u7")]
    assert sum(client.exists(k) for k in mine_keys) == 41

    report = forget_user(applied, "u7", store=store)

    assert report.sessions == 40
    assert {v: report.online_rows.pop(v) for v in (SESSION, USER)} == {SESSION: 40, USER: 1}
    # The repo's declared views had no rows of u7 (their field deletes ran on the cluster).
    assert set(report.online_rows.values()) == {0}
    assert sum(client.exists(k) for k in mine_keys) == 0
    # nothing of u7 anywhere: no key holds their id, every remaining session row is u8's
    every_key = [k for n in redis_cluster.masters_now() for k in n.client().keys("*")]
    assert not [k for k in every_key if b"u7" in k and not k.startswith(b"{featrec:forgotten}")]
    stock = FeastOnlineReader(store)
    assert stock.read(SESSION, mine) == [None] * 40
    assert stock.read(USER, ["u7"]) == [None]
    assert stock.read(SESSION, others) == [session_values(1, "u8")] * 40
    # the deny-list is on the cluster, its three keys in one slot (one transaction)
    [_, redis_store] = stores_for(applied)
    deny = redis_store.load()
    assert deny is not None and deny.contains("user", "u7") and not deny.contains("user", "u8")
    assert client.exists(CLUSTER_KEY, f"{CLUSTER_KEY}:salt", f"{CLUSTER_KEY}:version") == 3
    client.close()


def test_cluster_settings_reach_stock_feast_without_a_yaml_change(applied: Settings) -> None:
    """The shipped yaml leaves redis_type out: featrec derives it and the node list."""
    config = load_repo_config(applied)
    nodes = applied.redis_cluster_nodes
    assert nodes is not None
    assert config.online_store.redis_type.value == "redis_cluster"
    assert config.online_store.connection_string.split(",")[:3] == nodes.split(",")


def test_a_bad_node_list_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match=r"FEATREC_REDIS_CLUSTER_NODES=.*host:port"):
        Settings(redis_cluster_nodes="127.0.0.1:1,nonsense")


def test_the_request_log_lists_and_forgets_across_every_node(
    redis_cluster: RedisClusterServers,
) -> None:
    log = RedisRequestLog(redis_cluster.client(), owns_client=True)
    item = StampedRow({"price": 1.5}, T0)
    records = [
        RequestRecord(
            request_id=f"r{i}",
            created_at_s=1000.0 + i,
            body={"user_id": "u7" if i % 3 == 0 else "u8", "session_id": f"s{i}"},
            rows=[
                LoggedRow(SESSION, f"s{i}", StampedRow({"n_events": i}, T0)),
                LoggedRow("item_features", "a", item),  # one row, stored once, shared
            ],
        )
        for i in range(300)
    ]
    log.append_many(records)
    assert all(n.client().dbsize() > 50 for n in redis_cluster.nodes)  # spread over the nodes
    assert sorted(r.request_id for r in log.iter_records()) == sorted(f"r{i}" for i in range(300))
    assert len(list(log.iter_records(since_s=1200.0))) == 100
    assert log.get("r3") == records[3]
    mine = {f"s{i}" for i in range(0, 300, 3)}
    assert log.sessions_of("u7") == mine
    assert log.forget("u7", mine) == 100
    assert log.get("r3") is None and log.get("r4") == records[4]
    assert sorted(r.request_id for r in log.iter_records()) == sorted(
        f"r{i}" for i in range(300) if i % 3
    )
    log.close()


def test_a_master_killed_mid_stream_fails_over_with_nothing_lost(
    applied: Settings, redis_cluster_with_replicas: RedisClusterServers
) -> None:
    """kill -9 a master (with a replica) while the flow's writer streams; the writer retries
    as the dataflow sink does, the replica takes over, the killed node comes back as a
    replica (as a restarted pod would). Every flush writes 100 new keys (written once: an
    acknowledged row that vanished would stay missing) and updates the previous flush's 100
    (a row that is stale would differ). At the end: 0 lost, 0 differing."""
    six = redis_cluster_with_replicas
    settings = applied.with_(
        redis_url=six.url, redis_cluster_nodes=six.connection_string, redis_cluster_wait_replicas=1
    )
    writer = open_writer(settings, flow=True, exclusive=True)
    assert isinstance(writer, ClusterFlushWriter)
    events: list[str] = []

    streaming = threading.Event()  # set once 5 flushes are acknowledged

    def kill_then_restart() -> None:
        # Mid-stream by construction: a fixed delay lost the race on a busy machine.
        if not streaming.wait(60):
            events.append("the writer never wrote 5 flushes")
            return
        killed = six.kill_master_with_replica()
        events.append(f"killed {killed.port}")
        six.wait_failover(killed)
        events.append("failed over")
        six.restart(killed)
        six.wait_replicas_online()
        events.append("replica back")

    def keys_of(flush: int) -> list[str]:
        return [f"f{flush}-{i}" for i in range(100)]

    chaos = threading.Thread(target=kill_then_restart)
    flushes, done_at, started = 0, 0, time.monotonic()
    chaos.start()
    try:
        while not done_at or flushes < done_at + 5:  # until 5 flushes after the chaos
            flushes += 1
            batch = [session_row(k, 1) for k in keys_of(flushes)]
            batch += [session_row(k, 2) for k in keys_of(flushes - 1)] if flushes > 1 else []
            retry_unavailable(lambda b=batch: writer.write(b), "cluster test", 0.5)
            if flushes == 5:
                streaming.set()
            if not done_at and not chaos.is_alive():
                assert len(events) == 3, f"the chaos thread failed: {events}"
                done_at = flushes
            assert time.monotonic() - started < 90, events
            time.sleep(0.01)
    finally:
        chaos.join()
    writer.close()
    assert done_at > 5  # the kill came mid-stream, after rows were written
    keys = [k for f in range(1, flushes + 1) for k in keys_of(f)]
    expected = [session_values(2)] * (len(keys) - 100) + [session_values(1)] * 100
    fast = open_redis_row_reader(settings)
    found = fast.read_rows({SESSION: keys})[SESSION]
    got = [r.values if r else None for r in found]
    lost = sum(1 for g in got if g is None)
    differing = sum(1 for g, e in zip(got, expected, strict=True) if g is not None and g != e)
    assert (lost, differing) == (0, 0), f"{len(keys)} keys, {events}"
    fast.close()
    # stock Feast reads the same rows
    assert FeastOnlineReader(open_store(settings)).read(SESSION, keys) == expected


def test_the_bulk_materialization_writer_splits_chunks_per_node(
    store: Any, redis_cluster: RedisClusterServers
) -> None:
    """Feast's own cluster client goes to the bulk writer (as ``materialize --fast`` does);
    chunks of rows over every node, a slot moved between two writes, stock Feast reads."""
    t1, t2 = datetime(2031, 1, 1, tzinfo=UTC), datetime(2031, 1, 2, tzinfo=UTC)

    def table(n: int, at: datetime) -> pa.Table:
        rows = []
        for i in range(n):
            values: dict[str, Any] = dict.fromkeys(catalog.USER_FEATURES.feature_names)
            values.update(user_id=f"b{i}", n_view_1d=i, top_categories=["c", str(i)])
            values.update(top_category_shares=[0.5, 0.25], event_timestamp=at)
            rows.append(values)
        return pa.Table.from_pylist(rows, schema=arrow_schema(catalog.USER_FEATURES))

    online = store._get_provider().online_store
    writer = bulk_writer_for(
        online._get_client(store.config.online_store), "featrec", key_ttl_seconds=None
    )
    assert isinstance(writer, ClusterBulkWriter)
    assert writer.write_table(catalog.USER_FEATURES, table(500, t1), chunk_rows=128) == 500
    assert writer.write_table(catalog.USER_FEATURES, table(500, t1), chunk_rows=128) == 0
    key = RedisLayoutWriter(redis_cluster.client(), "featrec")._plans[USER].redis_key("b7")
    owner = redis_cluster.owner_of(key)
    redis_cluster.move_slot_of(key, next(n for n in redis_cluster.masters_now() if n != owner))
    assert writer.write_table(catalog.USER_FEATURES, table(500, t2), chunk_rows=128) == 500
    got = FeastOnlineReader(store).read_with_timestamps(USER, [f"b{i}" for i in range(500)])
    assert all(g is not None and g.event_time == t2 for g in got)
    assert [g.values["n_view_1d"] for g in got if g] == list(range(500))
    assert got[7] is not None and got[7].values["top_categories"] == ["c", "7"]
