"""Forget a user, then try every way of bringing them back; nothing may come back.

Real parts on both stores: a Feast repo applied to a temp dir (SQLite, and the private
redis-server), the sessions dataflow run with bytewax's run_main (file replay; the Redis
event stream with tombstones), the batch job, fast and stock materialization, the request log.

After ``forget_user`` the old history is replayed through the dataflow, re-imported into the
event log, recomputed by the batch job and materialized again (both engines). Then every place
is scanned for the user's id and their session ids: an exact scan (decoded entity keys and
feature values, parsed JSON), never a substring guess (``u1`` is inside ``u12``).
"""

from __future__ import annotations

import json
import sqlite3
import struct
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from bytewax.testing import run_main

from dataflows.declared import build_flow as build_declared_flow
from dataflows.declared import open_declared, open_declared_writer
from dataflows.sessions import build_flow, open_deny_watcher, open_online_writer
from dataflows.sinks import DeadLetterSink, EventLogSink
from dataflows.sources import FileReplaySource, RedisStreamSource
from featrec.adapters.duckdb.features import EventLogDB
from featrec.adapters.feast.layout.decode import UndecodableValue, decode_value
from featrec.adapters.feast.online_delete import OnlineRows, _entity_value
from featrec.adapters.feast.repo import apply_repo, open_store
from featrec.adapters.files.deny_list import load_deny_set
from featrec.adapters.files.event_files import read_events, write_events
from featrec.adapters.files.event_log import read_event_log
from featrec.adapters.redis.deny_list import stores_for
from featrec.adapters.redis.request_log import RedisRequestLog
from featrec.adapters.redis.streams import connect, publish
from featrec.adapters.sqlite.partitioned_log import (
    PartitionedRequestLog,
    request_log_dir,
    request_log_path,
)
from featrec.adapters.sqlite.request_log import SqliteRequestLog
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import MIN_TS, Event
from featrec.core.features import catalog
from featrec.core.ports.serving import LoggedRow, RequestRecord, StampedRow
from featrec.errors import ConfigError
from featrec.jobs.batch import plan_batch, run_batch
from featrec.jobs.declared import backfill
from featrec.jobs.forget import forget_user
from featrec.jobs.log_import import import_events
from featrec.jobs.materialize import materialize
from featrec.jobs.serving import open_request_log
from featrec.settings import Settings

USER_VIEWS = (catalog.USER_FEATURES.name,)
SESSION_VIEWS = (catalog.SESSION_FEATURES.name,)
#: A declared view that keeps user and session ids as values of another entity's rows.
ITEM_BUYERS = """

item_buyers = declared_view(
    name="item_buyers",
    entity=item,
    data_dir=DATA,
    aggregations=[
        Aggregation(column="user_id", function="last_3", time_window=DAY, name="buyers"),
        Aggregation(column="session_id", function="count_distinct", time_window=DAY, name="n_s"),
    ],
)
"""


# -- the world ---------------------------------------------------------------------------------


def history() -> tuple[list[Event], str]:
    """Traffic with returning users, and the user with the most sessions (plus one anonymous
    event, before login, in one of their sessions: found through the session only)."""
    config = GeneratorConfig(
        n_events=2500, n_users=40, n_items=120, concurrent_sessions=20, seed=21
    )
    events = list(generate(config))
    sessions: dict[str, set[str]] = {}
    for e in events:
        if e.user_id is not None:
            sessions.setdefault(e.user_id, set()).add(e.session_id)
    user = max(sorted(sessions), key=lambda u: len(sessions[u]))
    first = next(e for e in events if e.user_id == user)
    anonymous = replace(
        first, event_id=f"{first.event_id}-pre", user_id=None, ts=first.ts - timedelta(seconds=5)
    )
    return [anonymous, *events], user


def bad_record(user: str, session: str) -> str:
    """An invalid record of the user (unknown type): a dead letter that keeps its payload."""
    return json.dumps(
        {"event_id": "bad-1", "session_id": session, "user_id": user, "item_id": "i1",
         "type": "NOT A TYPE", "ts": "2024-01-01T00:00:00Z"}
    )  # fmt: skip


def run_sessions(settings: Settings, source: Any) -> None:
    if isinstance(source, RedisStreamSource):
        dead = DeadLetterSink(redis_url=settings.redis_url, stream=settings.dead_letter_stream)
    else:
        dead = DeadLetterSink(file=settings.dead_letter_file)
    flow = build_flow(
        source,
        settings,
        writer_factory=partial(open_online_writer, settings),
        dead_letter_sink=dead,
        event_log_sink=EventLogSink(settings.event_log_dir),
        deny=open_deny_watcher(settings),
    )
    run_main(flow)


def run_declared(settings: Settings, source: Any) -> None:
    """The declared-features flow (every declared view of the repo) over ``source``."""
    declarations = open_declared(settings)
    run_main(
        build_declared_flow(
            source,
            declarations,
            writer_factory=partial(open_declared_writer, settings, declarations),
            dead_letter_sink=DeadLetterSink(file=settings.home / "declared-deadletters.jsonl"),
            deny=open_deny_watcher(settings),
        )
    )


def batch_and_materialize(settings: Settings, *, fast: bool) -> None:
    with EventLogDB(settings.event_log_dir) as db:
        plan = plan_batch(db, None, None, datetime.now(UTC))
        run_batch(db, settings.repo.resolve() / "data", plan.days[-2:])
    deny = load_deny_set(stores_for(settings))
    materialize(
        open_store(settings),
        list(catalog.BATCH_VIEWS),
        start=MIN_TS,
        end=datetime.now(UTC),
        fast=fast,
        deny=deny,
    )


def training_set(settings: Settings) -> None:
    """A stand-in training set under <home>/datasets (rows keyed by session and user)."""
    table = read_event_log(settings.event_log_dir).select(["session_id", "user_id", "item_id"])
    path = settings.home / "datasets" / "training.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def log_requests(
    log: SqliteRequestLog | PartitionedRequestLog | RedisRequestLog, user: str, session: str
) -> None:
    row = StampedRow({"user_id": user, "n_events": 3}, 1)
    item = StampedRow({"price": 1.5}, 1)
    log.append_many(
        [
            RequestRecord(
                "r-forgotten",
                1.0,
                {"session_id": session, "user_id": user},
                [
                    LoggedRow(catalog.SESSION_FEATURES.name, session, row),
                    LoggedRow(catalog.USER_FEATURES.name, user, row),
                    LoggedRow(catalog.ITEM_FEATURES.name, "i1", item),
                ],
            ),
            RequestRecord(
                "r-other",
                2.0,
                {"session_id": "s-other", "user_id": "u-other"},
                [LoggedRow(catalog.ITEM_FEATURES.name, "i1", item)],
            ),
        ]
    )


# -- the scan ----------------------------------------------------------------------------------


class Scan:
    """Counts mentions of the user or their sessions, place by place."""

    def __init__(self, user: str, sessions: set[str]) -> None:
        self.user = user
        self.ids = {user, *sessions}
        self.sessions = sessions
        self.found: dict[str, int] = {}

    def add(self, place: str, n: int) -> None:
        if n:
            self.found[place] = self.found.get(place, 0) + n

    def json_mentions(self, value: Any) -> int:
        """Strings anywhere in a parsed JSON value that are the user or a session."""
        if isinstance(value, str):
            return int(value in self.ids)
        if isinstance(value, dict):
            return sum(self.json_mentions(v) for v in (*value.keys(), *value.values()))
        if isinstance(value, list):
            return sum(self.json_mentions(v) for v in value)
        return 0

    def text(self, data: bytes | str) -> int:
        try:
            return self.json_mentions(json.loads(data))
        except ValueError:
            return 0

    def tables(self, place: str, paths: Iterable[Path]) -> None:
        for path in paths:
            table = pq.read_table(path)
            for column in ("user_id", "session_id"):
                if column in table.column_names:
                    values = table[column].to_pylist()
                    self.add(f"{place} {path.name}", sum(v in self.ids for v in values))

    def online(self, settings: Settings) -> None:
        rows = OnlineRows(open_store(settings))
        session_keys = set(rows.keys(catalog.SESSION_FEATURES.name))
        self.add("online session rows", len(session_keys & self.sessions))
        self.add("online session rows naming the user", len(rows.sessions_naming(self.user)))
        self.add("online user rows", int(self.user in rows.keys(catalog.USER_FEATURES.name)))

    def files(self, settings: Settings) -> None:
        log = read_event_log(settings.event_log_dir)
        for column in ("user_id", "session_id"):
            self.add("event log", sum(v in self.ids for v in log[column].to_pylist()))
        data = settings.repo.resolve() / "data"
        self.tables("batch output", data.rglob("*.parquet"))
        self.tables("training set", (settings.home / "datasets").rglob("*.parquet"))
        for path in settings.home.glob("deadletters*.jsonl"):
            for line in path.read_text().splitlines():
                self.add("dead letters", self.text(json.loads(line)["payload"]))
        # the log written before (one file) and the hour files of today's
        for path in [request_log_path(settings), *request_log_dir(settings).glob("*Z.db")]:
            if not path.exists():
                continue
            with sqlite3.connect(path) as db:
                for (entry,) in db.execute("SELECT entry FROM requests"):
                    self.add("request log", self.text(entry))
                for (row,) in db.execute("SELECT row FROM feature_rows"):
                    self.add("request log rows", self.text(row))
                for (key,) in db.execute("SELECT key FROM row_refs"):
                    # a reference names its row's entity: a user's or a session's id
                    self.add("request log row references", int(key in self.ids))

    def sqlite_store(self, settings: Settings) -> None:
        """Every row of every table of Feast's SQLite online store, decoded."""
        path = Path(open_store(settings).config.online_store.path)
        path = path if path.is_absolute() else settings.repo.resolve() / path
        with sqlite3.connect(path) as db:
            tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                columns = [c[1] for c in db.execute(f'PRAGMA table_info("{table}")')]
                if not {"entity_key", "value"} <= set(columns):
                    continue
                for key, value in db.execute(f'SELECT entity_key, value FROM "{table}"'):
                    self.add(f"sqlite {table}", self.entity(bytes(key), b""))
                    self.add(f"sqlite {table}", self.value(value))

    def entity(self, key: bytes, suffix: bytes) -> int:
        for join_key in ("user_id", "session_id"):
            try:
                return int(_entity_value(join_key, key, suffix) in self.ids)
            except (ConfigError, UnicodeDecodeError, struct.error):  # not of that join key
                continue
        return 0

    def value(self, data: bytes | None) -> int:
        try:
            decoded = decode_value(bytes(data or b""))
        except UndecodableValue:  # a timestamp, not a Value
            return 0
        return self.json_mentions(decoded)

    def redis(self, client: Any, project: bytes, until: dict[bytes, bytes]) -> None:
        """Every key of the private redis-server: names and contents, by type. Streams are read
        up to ``until`` (per stream: the last id when the user was forgotten; what the test
        publishes after that is its own replay, dropped at ingest but still on the bus)."""
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            self.add(
                "redis key names",
                self.entity(key, project) + int(key.decode("latin-1") in self.ids),
            )
            if kind == "hash":
                for value in client.hgetall(key).values():
                    self.add("redis feature values", self.value(value))
            elif kind == "string":
                self.add(f"redis strings {key[:20]!r}", self.text(client.get(key)))
            elif kind == "stream":
                for _, fields in client.xrange(key, max=until.get(key, b"+")):
                    for value in fields.values():
                        self.add(f"redis stream {key.decode()}", self.text(value))
            elif kind == "set":
                self.add("redis sets", sum(m.decode() in self.ids for m in client.smembers(key)))


def sessions_in(events: Iterable[Event], user: str) -> set[str]:
    return {e.session_id for e in events if e.user_id == user}


def other_user_rows(settings: Settings, user: str) -> dict[str, Any]:
    """user_features of a few other users, through stock get_online_features."""
    others = [f"u{i}" for i in range(10) if f"u{i}" != user]
    response = open_store(settings).get_online_features(
        features=["user_features:n_view_90d", "user_features:top_categories"],
        entity_rows=[{"user_id": u} for u in others],
    )
    return response.to_dict()


# -- the tests ---------------------------------------------------------------------------------


def forget_and_replay(settings: Settings, tmp_path: Path, *, redis: bool) -> None:
    events, user = history()
    sessions = sessions_in(events, user)
    old_copy = tmp_path / "old-history.jsonl"
    write_events(old_copy, events)
    with (settings.repo / "featrec_declared.py").open("a", encoding="utf-8") as f:
        f.write(ITEM_BUYERS)
    apply_repo(settings)
    client = connect(settings.redis_url) if redis else None

    def feed() -> Any:
        if client is None:
            return FileReplaySource([old_copy])
        return RedisStreamSource(
            settings.redis_url, [settings.stream], stop_when_caught_up=True, tombstones=True
        )

    if client is not None:
        publish(settings.redis_url, settings.stream, [*events, bad_record(user, min(sessions))])
    else:
        with old_copy.open("a") as f:
            f.write(bad_record(user, min(sessions)) + "\n")
    run_sessions(settings, feed())
    run_declared(settings, FileReplaySource([old_copy]))
    backfill(settings)
    batch_and_materialize(settings, fast=True)
    training_set(settings)
    log_requests(SqliteRequestLog(request_log_path(settings)), user, min(sessions))
    hourly = open_request_log(settings, "sqlite")
    log_requests(hourly, user, min(sessions))
    hourly.close()
    if client is not None:
        log_requests(RedisRequestLog(client), user, min(sessions))

    before = Scan(user, sessions)
    before.online(settings)
    before.files(settings)
    # The test can fail: every place holds the user before.
    assert {"online session rows", "online user rows", "event log", "request log"} <= set(
        before.found
    ), before.found
    assert any(p.startswith("batch output") for p in before.found)
    assert "dead letters" in before.found or redis
    if client is not None:
        before.redis(client, b"featrec", {})
        seen = " ".join(before.found)
        for place in ("redis key names", "redis feature values", "redis stream", "redis strings"):
            assert place in seen, before.found
    else:
        before.sqlite_store(settings)
        assert any(p.startswith("sqlite ") for p in before.found), before.found
    others_before = other_user_rows(settings, user)
    n_sessions_before = len(OnlineRows(open_store(settings)).keys("session_features"))

    report = forget_user(settings, user)
    assert report.sessions == len(sessions)
    assert report.events_removed > 0 and report.batch_rows_removed > 0
    # one entry in each log: the one-file SQLite log, the hourly one, and Redis's
    assert report.request_log_entries == (3 if redis else 2)
    declared = {k: v for k, v in report.online_rows.items() if k not in USER_VIEWS + SESSION_VIEWS}
    # item_popularity counts distinct session ids: its state keeps them, so its rows of the
    # user's items go too (recomputed by the next event or the backfill).
    assert set(declared) == {
        "session_browsing", "user_carts", "user_premium", "item_buyers", "item_popularity"
    }  # fmt: skip
    assert declared["item_buyers"] > 0 and declared["item_popularity"] > 0
    assert report.online_rows["session_browsing"] == len(sessions)
    assert report.online_rows["session_features"] == len(sessions)
    assert report.online_rows["user_features"] == 1
    assert report.dead_letters == 1
    assert report.tombstones == (1 if redis else 0)
    assert json.loads(json.dumps(report.to_dict()))["user_id"] == user

    # Replay the old history through the dataflow, re-import the old log copy, recompute the
    # batch views and materialize them again with both engines.
    until: dict[bytes, bytes] = {}
    if client is not None:
        until[settings.stream.encode()] = client.xinfo_stream(settings.stream)["last-generated-id"]
        publish(settings.redis_url, settings.stream, events)
    run_sessions(settings, feed())
    run_declared(settings, FileReplaySource([old_copy]))
    result = import_events(settings.event_log_dir, read_events(old_copy))
    theirs = sum(e.user_id == user or e.session_id in sessions for e in events)
    assert result.forgotten == theirs + (0 if redis else 1)  # + the invalid record
    batch_and_materialize(settings, fast=True)
    batch_and_materialize(settings, fast=False)
    backfill(settings)
    training_set(settings)

    after = Scan(user, sessions)
    after.online(settings)
    after.files(settings)
    if client is not None:
        after.redis(client, b"featrec", until)
        # The replay itself got no further than ingest: the stream now holds just that.
        replayed = client.xrange(settings.stream, min=b"(" + until[settings.stream.encode()])
        assert len(replayed) == len(events)
    else:
        after.sqlite_store(settings)
    assert after.found == {}, after.found  # forgotten-user keys found afterwards: 0

    # Other users are untouched.
    assert other_user_rows(settings, user) == others_before
    n_sessions_after = len(OnlineRows(open_store(settings)).keys("session_features"))
    assert n_sessions_after == n_sessions_before - len(sessions)
    if client is not None:
        assert RedisRequestLog(client).get("r-other") is not None
        client.close()
    assert SqliteRequestLog(request_log_path(settings)).get("r-other") is not None
    hourly = open_request_log(settings, "sqlite")
    assert hourly.get("r-other") is not None
    hourly.close()


def test_forget_on_sqlite_then_replay_brings_nothing_back(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    forget_and_replay(sqlite_settings, tmp_path, redis=False)


def test_forget_on_redis_then_replay_brings_nothing_back(
    redis_settings: Settings, tmp_path: Path
) -> None:
    forget_and_replay(redis_settings, tmp_path, redis=True)


def test_forget_command(sqlite_settings: Settings, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from featrec.cli import main

    apply_repo(sqlite_settings)
    env = {f"FEATREC_{k.upper()}": str(v) for k, v in
           (("home", sqlite_settings.home), ("repo", sqlite_settings.repo))}  # fmt: skip
    runner = CliRunner()
    refused = runner.invoke(main, ["forget", "u1"], env=env, input="n\n")
    assert (
        refused.exit_code == 1 and not (sqlite_settings.event_log_dir / "forgotten.json").exists()
    )
    done = runner.invoke(main, ["forget", "u1", "--yes"], env=env)
    assert done.exit_code == 0, done.output
    assert "event log             0 events" in done.output
    assert (sqlite_settings.event_log_dir / "forgotten.json").exists()
    bad = runner.invoke(main, ["forget", " u1", "--yes"], env=env)
    assert bad.exit_code == 1
    assert bad.output.strip().splitlines()[-1].startswith("Error: user id must be")
