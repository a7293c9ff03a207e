"""The Feast repo adapter: connection strings, config loading, apply, error translation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from feast.infra.online_stores.redis import RedisOnlineStore

from featrec.adapters.feast.layout.values import encode_entity_key
from featrec.adapters.feast.reader import FeastOnlineReader
from featrec.adapters.feast.repo import (
    REDIS_ENV,
    apply_repo,
    feast_redis_connection,
    load_repo_config,
    open_store,
    redis_layout_options,
)
from featrec.adapters.feast.types import arrow_schema
from featrec.adapters.feast.writers import (
    FeastApiWriter,
    FeastBatchWriter,
    RedisLayoutWriter,
    open_writer,
)
from featrec.adapters.files.snapshots import EMPTY_SNAPSHOT
from featrec.core.features import catalog
from featrec.core.features.catalog import Dtype, Entity, Feature, View
from featrec.core.features.rows import FeatureRow
from featrec.errors import ConfigError, StoreError, StoreUnavailable
from featrec.settings import Settings
from featrec.testing.redis_server import RedisServer, free_port

T0 = 1_700_000_000_000_000


def session_row(key: str = "s", version: int = 1, **overrides: object) -> FeatureRow:
    values: dict[str, object] = {
        f.name: {
            Dtype.INT64: 1,
            Dtype.FLOAT64: 1.5,
            Dtype.STRING: "x",
            Dtype.STRING_LIST: ["a"],
            Dtype.FLOAT64_LIST: [1.0],
        }[f.dtype]
        for f in catalog.SESSION_FEATURES.features
    }
    values.update(overrides)
    return FeatureRow(catalog.SESSION_FEATURES.name, key, values, T0 + version)


# -- connection strings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "127.0.0.1:6379,db=0"),
        ("redis://cache", "cache:6379,db=0"),
        ("redis://cache:7000/3", "cache:7000,db=3"),
        ("redis://cache:7000?db=4", "cache:7000,db=4"),
        ("rediss://:s3cret@cache:6380/1", 'cache:6380,db=1,password="s3cret",ssl=true'),
        ("redis://me:p%40ss@cache/2", 'cache:6379,db=2,username="me",password="p@ss"'),
        (
            "redis://cache/0?socket_timeout=5",
            "cache:6379,db=0,socket_timeout=5",
        ),
        ("unix:///run/redis.sock?db=5", "localhost:6379,unix_socket_path=/run/redis.sock,db=5"),
    ],
)
def test_redis_urls_become_feast_connection_strings(url: str, expected: str) -> None:
    assert feast_redis_connection(url) == expected


@pytest.mark.parametrize("password", ["true", "null", "12345", 'p@ss=w"rd', "ü x"])
def test_feast_parses_the_password_back_as_the_same_string(password: str) -> None:
    connection = feast_redis_connection(f"redis://:{quote(password)}@h:1/0")
    nodes, params = RedisOnlineStore._parse_connection_string(connection)
    assert nodes == [{"host": "h", "port": "1"}]
    assert params == {"db": 0, "password": password}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cache", "must start with redis://"),
        ("redis://:a,b@cache/0", "cannot carry a comma"),
        ("redis://[::1]:6379/0", "IPv6"),
        ("redis://cache/zero", "database must be a number"),
        ("redis://cache:port/0", "invalid port"),
    ],
)
def test_unusable_redis_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        feast_redis_connection(url)


# -- config ----------------------------------------------------------------------------------


def test_sqlite_config_resolves_paths_against_the_repo(
    sqlite_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_repo_config(sqlite_settings)
    assert config.project == "featrec"
    assert config.repo_path == sqlite_settings.repo.resolve()
    assert config.online_store.type == "sqlite"
    assert config.offline_store.type == "duckdb"
    assert config.entity_key_serialization_version == 3
    apply_repo(sqlite_settings)
    assert (sqlite_settings.repo / "data" / "online.db").exists()
    assert (sqlite_settings.repo / "data" / "registry.db").exists()
    assert list(elsewhere.iterdir()) == []


def test_redis_config_takes_the_connection_from_settings(
    redis_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REDIS_ENV, "elsewhere:1,db=9")
    config = load_repo_config(redis_settings)
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string == feast_redis_connection(redis_settings.redis_url)


def test_an_unset_variable_in_the_yaml_is_named(sqlite_settings: Settings) -> None:
    yaml = sqlite_settings.repo / "feature_store.yaml"
    yaml.write_text(yaml.read_text().replace("data/online.db", "${FEATREC_TEST_UNSET}/o.db"))
    with pytest.raises(ConfigError, match=r"uses \$\{FEATREC_TEST_UNSET\}, which is not set"):
        load_repo_config(sqlite_settings)


def test_an_invalid_yaml_is_a_config_error(sqlite_settings: Settings) -> None:
    yaml = sqlite_settings.repo / "feature_store.yaml"
    yaml.write_text(yaml.read_text().replace("type: sqlite", "type: nosuchstore"))
    with pytest.raises(ConfigError, match=r"feature_store\.yaml is invalid"):
        load_repo_config(sqlite_settings)


def test_a_missing_repo_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FEATREC_REPO"):
        load_repo_config(Settings(repo=tmp_path / "nowhere"))


# -- apply -----------------------------------------------------------------------------------


def test_apply_creates_empty_batch_sources_and_is_repeatable(sqlite_settings: Settings) -> None:
    cwd, path = Path.cwd(), list(sys.path)
    first = apply_repo(sqlite_settings)
    assert f"applied feature view {catalog.SESSION_FEATURES.name}" in first
    assert f"applied feature service {catalog.SESSION_SERVICE}" in first
    assert "applied entity session" in first
    assert not any(line.startswith("deleted") for line in first)
    assert (Path.cwd(), sys.path) == (cwd, path)
    assert not any(name.startswith("featrec_") for name in sys.modules)
    for view in catalog.VIEWS.values():
        parquet = sqlite_settings.repo / "data" / f"{view.name}.parquet"
        if view.name in catalog.BATCH_VIEWS:  # a directory of daily snapshots
            parquet = sqlite_settings.repo / "data" / view.name / EMPTY_SNAPSHOT
        assert pq.read_schema(parquet).equals(arrow_schema(view))
    # A batch source with data is left alone; applying again changes nothing.
    parquet = sqlite_settings.repo / "data" / f"{catalog.SESSION_FEATURES.name}.parquet"
    table = pa.Table.from_pylist(
        [{"session_id": "s", "n_events": 1, "event_timestamp": session_row().event_time}],
        schema=arrow_schema(catalog.SESSION_FEATURES),
    )
    pq.write_table(table, parquet)
    assert apply_repo(sqlite_settings) == first
    assert pq.read_table(parquet).num_rows == 1


def test_a_view_added_to_the_catalog_is_applied_and_written(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = Entity("shop", "shop_id", "A seller.")
    stats = View(
        name="shop_stats",
        entity=shop,
        description="test view",
        features=(Feature("n_orders", Dtype.INT64, "orders"),),
    )
    monkeypatch.setitem(catalog.VIEWS, stats.name, stats)
    applied = apply_repo(sqlite_settings)
    assert "applied feature view shop_stats" in applied
    assert "applied entity shop" in applied
    assert "applied push source shop_stats_push" in applied
    store = open_store(sqlite_settings)
    row = FeatureRow("shop_stats", "shop-1", {"n_orders": 4}, T0)
    assert FeastBatchWriter(store).write([row]) == 1
    assert FeastOnlineReader(store).read("shop_stats", ["shop-1", "shop-2"]) == [
        {"n_orders": 4},
        None,
    ]


def test_a_broken_repo_file_is_a_config_error(sqlite_settings: Settings) -> None:
    (sqlite_settings.repo / "broken.py").write_text("x = 1\ny = undefined_name\n")
    with pytest.raises(ConfigError, match=r"broken.py:2 failed to load: NameError"):
        apply_repo(sqlite_settings)
    (sqlite_settings.repo / "broken.py").write_text("def f(:\n")
    with pytest.raises(ConfigError, match=r"broken.py:1 failed to load: SyntaxError"):
        apply_repo(sqlite_settings)
    assert not any(name.startswith("featrec_") for name in sys.modules)


def test_writing_to_an_unapplied_repo_says_apply_first(sqlite_settings: Settings) -> None:
    writer = FeastBatchWriter(open_store(sqlite_settings))
    with pytest.raises(StoreError, match="apply the feature repo first"):
        writer.write([session_row()])


# -- Redis: the fast writer's options, secrets, failures ---------------------------------------


def test_the_fast_writer_takes_key_ttl_from_the_yaml(
    redis_settings: Settings, redis_store: Any
) -> None:
    yaml = redis_settings.repo / "feature_store.redis.yaml"
    yaml.write_text(
        yaml.read_text().replace("  type: redis\n", "  type: redis\n  key_ttl_seconds: 60\n")
    )
    assert redis_layout_options(redis_settings) == ("featrec", 60)
    writer = open_writer(redis_settings)
    assert isinstance(writer, RedisLayoutWriter)
    assert writer.write([session_row()]) == 1
    writer.close()
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_settings.redis_url)
    [key] = client.keys()
    assert 0 < client.ttl(key) <= 60


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ("${FEATREC_FEAST_REDIS}", "the fast writer and Feast must use the same server"),
        ("type: redis\n", "set FEATREC_REDIS_CLUSTER_NODES"),
        ("entity_key_serialization_version: 3", "entity_key_serialization_version: 3"),
    ],
)
def test_the_fast_writer_refuses_layouts_it_cannot_serve(
    redis_settings: Settings, replace: str, message: str
) -> None:
    yaml = redis_settings.repo / "feature_store.redis.yaml"
    replacement = {
        "${FEATREC_FEAST_REDIS}": "otherhost:6379,db=0",
        "type: redis\n": "type: redis\n  redis_type: redis_cluster\n",
        "entity_key_serialization_version: 3": "entity_key_serialization_version: 2",
    }[replace]
    yaml.write_text(yaml.read_text().replace(replace, replacement))
    with pytest.raises(ConfigError, match=message):
        open_writer(redis_settings)


def test_a_password_protected_redis_works_and_the_secret_stays_off_disk(
    feast_repo: Settings, tmp_path: Path
) -> None:
    password = 'S3cr3t@p=w"d'  # URL and connection-string specials
    (tmp_path / "secured").mkdir()
    server = RedisServer(tmp_path / "secured", password=password)
    server.start()
    try:
        url = f"redis://:{quote(password)}@127.0.0.1:{server.port}/0"
        settings = feast_repo.with_(online_store="redis", redis_url=url)
        apply_repo(settings)
        store = open_store(settings)
        for writer_setting, version in (("feast", 1), ("fast", 2)):
            writer = open_writer(settings.with_(writer=writer_setting), store)
            assert writer.write([session_row(version=version, n_events=version)]) == 1
            writer.close()
        [got] = FeastOnlineReader(store).read(catalog.SESSION_FEATURES.name, ["s"])
        assert got is not None
        assert got["n_events"] == 2
        wrong = feast_repo.with_(
            online_store="redis", redis_url=f"redis://:nope@127.0.0.1:{server.port}/0"
        )
        with pytest.raises(ConfigError, match="check the password"):
            open_writer(wrong.with_(writer="fast")).write([session_row(version=3)])
    finally:
        server.stop()
    for path in tmp_path.rglob("*"):
        if path.is_file() and "secured" not in path.parts:
            assert password.encode() not in path.read_bytes(), path


def test_an_unreachable_redis_is_store_unavailable(feast_repo: Settings) -> None:
    settings = feast_repo.with_(
        online_store="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    client: redis.Redis[bytes] = redis.Redis.from_url(settings.redis_url)
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        RedisLayoutWriter(client, "featrec").write([session_row()])
    with pytest.raises(StoreUnavailable):
        RedisLayoutWriter(client, "featrec", guard="lua").write([session_row()])
    # Feast's own Redis client (redis-py's default Retry: 3 retries, jittered exponential
    # backoff) takes seconds to give up, so the Feast paths are checked with a store error.


def test_redis_errors_on_the_feast_paths_are_store_errors(
    redis_settings: Settings, redis_store: Any
) -> None:
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_settings.redis_url)
    key = encode_entity_key("session_id", "s") + b"featrec"
    client.set(key, b"not a hash")
    for writer in (FeastApiWriter(redis_store), FeastBatchWriter(redis_store)):
        with pytest.raises(StoreError, match="WRONGTYPE"):
            writer.write([session_row()])
    with pytest.raises(StoreError, match="WRONGTYPE"):
        FeastOnlineReader(redis_store).read(catalog.SESSION_FEATURES.name, ["s"])
    assert client.get(key) == b"not a hash"


def test_feast_imported_unchecked_and_typeguard_as_it_was(tmp_path: Path) -> None:
    """In a fresh interpreter (this one imported Feast already): after
    ``import_feast_unchecked`` Feast's classes are not instrumented, and typeguard still checks
    what is decorated afterwards. (The replay, which imports Feast this way, writes and reads
    its online store through it: ``tests/e2e/test_e2e_evaluate.py``.)"""
    import subprocess

    # Instrumented code calls typeguard's argument checks; unchecked code does not.
    probe = (
        "import feast\n"
        "from typeguard import TypeCheckError, typechecked\n"
        "print('check_argument_types_internal' in feast.Entity.__init__.__code__.co_names)\n"
        "@typechecked\n"
        "def f(x: int) -> int:\n"
        "    return x\n"
        "try:\n"
        "    f('no')\n"
        "    print('unchecked')\n"
        "except TypeCheckError:\n"
        "    print('checked')\n"
    )
    first = (
        "from featrec.adapters.feast.repo import import_feast_unchecked\nimport_feast_unchecked()\n"
    )
    outputs = []
    for name, code in (("normal.py", probe), ("unchecked.py", first + probe)):
        script = tmp_path / name
        script.write_text(code)
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout.split())
    assert outputs[0] == ["True", "checked"]
    assert outputs[1] == ["False", "checked"]
