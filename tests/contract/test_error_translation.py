"""The error-translation table (:mod:`featrec.adapters.errors`) against the libraries it maps.

Two halves. The table is complete: every exception class of ``redis.exceptions``, ``sqlite3``
and ``feast.errors`` (walked with :mod:`inspect`, so a class added by an upgrade fails here
until it is listed) has an entry or a reason for having none, and translates to the featrec
class its entry names. And real parts give the mapped errors through real featrec adapters: a
stopped redis-server, a wrong password, an ACL, a key of the wrong type, a locked, read-only
or unopenable SQLite file.
"""

from __future__ import annotations

import importlib
import inspect
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import pytest
import redis
import redis.exceptions

from featrec.adapters.errors import (
    NOT_LISTED,
    SQLITE_CODES,
    TABLE,
    class_name,
    redact,
    rule_for,
    translate,
    translated,
)
from featrec.adapters.feast.types import arrow_schema
from featrec.adapters.redis import streams
from featrec.adapters.redis.deny_list import RedisDenyStore
from featrec.adapters.redis.rows import RedisRowReader, serving_client
from featrec.adapters.sqlite.bulk_writer import SqliteBulkWriter
from featrec.adapters.sqlite.request_log import SqliteRequestLog
from featrec.core.features import catalog
from featrec.errors import (
    ConfigError,
    FeatrecError,
    InvalidEvent,
    StoreError,
    StoreUnavailable,
)
from featrec.testing.redis_server import RedisServer

LIBRARY_MODULES = ("redis.exceptions", "sqlite3", "feast.errors")


def exception_classes(module: ModuleType) -> list[type[BaseException]]:
    """The exception classes ``module`` offers that belong to its library (not builtins)."""
    package = module.__name__.split(".")[0]
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__.split(".")[0] == package
    ]


def library_classes() -> Iterator[type[BaseException]]:
    for name in LIBRARY_MODULES:
        yield from exception_classes(importlib.import_module(name))


def resolve(dotted: str) -> type[BaseException]:
    module, _, name = dotted.rpartition(".")
    found = getattr(importlib.import_module(module), name)
    assert inspect.isclass(found) and issubclass(found, BaseException), dotted
    return found  # type: ignore[no-any-return]


def instance(cls: type[BaseException]) -> BaseException:
    """An instance of ``cls`` with "boom" in its message, whatever its constructor wants."""
    for n_args in (1, 2, 3):
        try:
            return cls(*["boom"] * n_args)
        except Exception:  # a constructor of another arity: try the next
            continue
    error = cls.__new__(cls)
    BaseException.__init__(error, "boom")
    return error


# -- the table is complete and current --------------------------------------------------------


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_every_library_exception_class_has_an_entry_or_a_reason(module: str) -> None:
    classes = exception_classes(importlib.import_module(module))
    assert classes, f"no exception classes found in {module}"
    unlisted = [class_name(c) for c in classes if class_name(c) not in {**TABLE, **NOT_LISTED}]
    assert not unlisted, (
        f"map these in featrec.adapters.errors.TABLE, or add them to NOT_LISTED with the "
        f"reason: {unlisted}"
    )


def test_no_class_is_both_listed_and_unlisted_and_none_is_stale() -> None:
    assert not set(TABLE) & set(NOT_LISTED)
    for dotted in [*TABLE, *NOT_LISTED]:
        assert class_name(resolve(dotted)) == dotted  # still there, under that name


def test_every_entry_translates_to_its_featrec_class() -> None:
    for dotted, rule in TABLE.items():
        error = instance(resolve(dotted))
        if isinstance(error, sqlite3.Error):
            error.sqlite_errorcode = sqlite3.SQLITE_ERROR  # type: ignore[attr-defined]
        got = translate(error, "doing it")
        assert type(got) is rule.becomes, dotted
        assert str(got).startswith("doing it: ") and f"{type(error).__name__}: " in str(got)
        if rule.hint:
            assert str(got).endswith(f"({rule.hint})"), dotted


def test_unlisted_classes_map_as_their_reason_says() -> None:
    """A class without an entry maps like its nearest listed base, or passes through when
    none is listed; its reason says which."""
    for dotted, reason in NOT_LISTED.items():
        rule = rule_for(instance(resolve(dotted)))
        if "passes through" in reason:
            assert rule is None, dotted
        else:
            assert rule is not None, dotted
            assert "maps as" in reason, dotted


def test_every_redis_sqlite_and_feast_error_becomes_a_featrec_error() -> None:
    for cls in library_classes():
        if issubclass(cls, redis.exceptions.RedisError | sqlite3.Error):
            assert isinstance(translate(instance(cls), "x"), FeatrecError), cls
    feast_errors = importlib.import_module("feast.errors")
    for cls in exception_classes(feast_errors):
        assert isinstance(translate(instance(cls), "x"), FeatrecError), cls


@pytest.mark.parametrize(
    ("error", "becomes"),
    [
        (redis.exceptions.ConnectionError("refused"), StoreUnavailable),
        (redis.exceptions.TimeoutError("slow"), StoreUnavailable),
        (redis.exceptions.BusyLoadingError("LOADING"), StoreUnavailable),
        (redis.exceptions.AuthenticationError("WRONGPASS"), ConfigError),
        (redis.exceptions.NoPermissionError("NOPERM"), ConfigError),
        (redis.exceptions.ResponseError("WRONGTYPE"), StoreError),
        (redis.exceptions.AskError("1 h:1"), StoreError),  # unlisted: as ResponseError
        (ConnectionRefusedError(111, "refused"), StoreUnavailable),
        (TimeoutError("timed out"), StoreUnavailable),
    ],
)
def test_nearest_entry_along_the_mro_decides(error: Exception, becomes: type) -> None:
    assert type(translate(error, "x")) is becomes


def test_sqlite_errors_are_refined_by_result_code() -> None:
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    assert type(translate(locked, "x")) is StoreUnavailable
    other = sqlite3.OperationalError("no such table: t")
    other.sqlite_errorcode = sqlite3.SQLITE_ERROR  # type: ignore[attr-defined]
    assert type(translate(other, "x")) is StoreError
    assert SQLITE_CODES[sqlite3.SQLITE_READONLY].becomes is StoreError


def test_featrec_errors_and_unlisted_exceptions_pass_through() -> None:
    for error in (InvalidEvent("ts", "missing"), KeyError("k"), FileNotFoundError("f")):
        with pytest.raises(type(error)) as caught, translated("x"):
            raise error
        assert caught.value is error


def test_the_cause_is_chained_and_a_decorator_works_too() -> None:
    @translated("publishing")
    def publish() -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to h:1.")

    with pytest.raises(StoreUnavailable) as caught:
        publish()
    assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
    assert str(caught.value) == (
        "publishing: Redis unreachable: ConnectionError: Error 111 connecting to h:1."
    )


def test_messages_hide_passwords() -> None:
    error = redis.exceptions.ResponseError(
        'bad node redis://user:hunter2@h:6379/0, conn h:1,db=0,password="hunter2,x" '
        "and rediss://:hunter2@h/1?password=hunter2"
    )
    message = str(translate(error, "x"))
    assert "hunter2" not in message
    assert "redis://user:***@h:6379/0" in message and "password=***" in message
    assert redact("no secret here") == "no secret here"


# -- real parts -------------------------------------------------------------------------------


def test_a_stopped_redis_server_is_store_unavailable_through_the_adapters(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    url = server.url
    client = redis.Redis.from_url(url, retry=None)
    deny = RedisDenyStore(client)
    reader = RedisRowReader(serving_client(url), "featrec")
    try:
        assert streams.publish(url, "events", ["{}"]) == 1
        deny.add("u1", ["s1"])
        assert reader.read_rows({catalog.SESSION_FEATURES.name: ["s1"]}) is not None
    finally:
        server.stop()
    calls = {
        "publishing to 'events'": lambda: streams.publish(url, "events", ["{}"]),
        "reading the length of 'events'": lambda: streams.stream_length(url, "events"),
        "reading the deny-list": deny.load,
        "reading Feast's Redis layout": lambda: reader.read_rows(
            {catalog.SESSION_FEATURES.name: ["s1"]}
        ),
    }
    for action, call in calls.items():
        with pytest.raises(StoreUnavailable, match="Redis unreachable: ConnectionError") as err:
            call()
        assert str(err.value).startswith(action)
        assert isinstance(err.value.__cause__, redis.exceptions.ConnectionError)
    client.close()
    reader.close()


def test_a_wrong_password_is_a_config_error_that_hides_it(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="right-pw")
    server.start()
    try:
        wrong = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        with pytest.raises(ConfigError, match="check the password in FEATREC_REDIS_URL") as err:
            streams.stream_length(wrong, "events")
        assert "wrong-pw" not in str(err.value)
        assert isinstance(err.value.__cause__, redis.exceptions.AuthenticationError)
    finally:
        server.stop()


def test_acl_and_wrong_type_replies(redis_url: str) -> None:
    admin: Any = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        "no-xadd", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-xadd"]
    )
    limited = redis_url.replace("//", "//no-xadd:pw@")
    with pytest.raises(ConfigError, match=r"NoPermissionError: .*\(the Redis user"):
        streams.publish(limited, "events", ["{}"])
    admin.set("not-a-stream", "x")
    with pytest.raises(StoreError, match="ResponseError: WRONGTYPE") as err:
        streams.stream_length(redis_url, "not-a-stream")
    assert type(err.value) is StoreError
    admin.acl_deluser("no-xadd")
    admin.close()


USERS = catalog.USER_FEATURES
_FEAST_COLUMNS = (
    "entity_key BLOB, feature_name TEXT, value BLOB, value_text TEXT, event_ts timestamp, "
    "created_ts timestamp, PRIMARY KEY (entity_key, feature_name)"
)


def users_table() -> pa.Table:
    row: dict[str, Any] = dict.fromkeys(USERS.feature_names)
    row |= {"user_id": "u1", "event_timestamp": datetime(2031, 1, 1, tzinfo=UTC)}
    return pa.Table.from_pylist([row], schema=arrow_schema(USERS))


def sqlite_online_file(tmp_path: Path) -> Path:
    """A SQLite file with a table of Feast's online layout for USERS."""
    path = tmp_path / "online.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f'CREATE TABLE "p_{USERS.name}" ({_FEAST_COLUMNS})')
    return path


def test_a_locked_sqlite_file_is_store_unavailable(tmp_path: Path) -> None:
    path = sqlite_online_file(tmp_path)
    writer = SqliteBulkWriter(sqlite3.connect(path, timeout=0.05), f"p_{USERS.name}")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="locked by another writer") as err:
            writer.write_table(USERS, users_table())
        assert str(err.value).startswith(f"writing {USERS.name} to SQLite: ")
        assert isinstance(err.value.__cause__, sqlite3.OperationalError)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert writer.write_table(USERS, users_table()) == 1  # unlocked: written


def test_a_read_only_sqlite_file_is_a_store_error_that_says_so(tmp_path: Path) -> None:
    path = sqlite_online_file(tmp_path)
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    writer = SqliteBulkWriter(read_only, f"p_{USERS.name}")
    with pytest.raises(StoreError, match=r"readonly database .*not writable") as err:
        writer.write_table(USERS, users_table())
    assert type(err.value) is StoreError


def test_an_unopenable_sqlite_path_is_a_store_error_that_says_so(tmp_path: Path) -> None:
    (tmp_path / "requests.db").mkdir()  # a directory where the file should be
    with pytest.raises(StoreError, match=r"opening the request log .*existing, writable") as err:
        SqliteRequestLog(tmp_path / "requests.db")
    assert type(err.value) is StoreError
