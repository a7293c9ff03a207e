"""One contract suite for the request log: in-memory reference, SQLite, and a real Redis.

Records must read back equal (floats bit for bit), rows shared between records are stored
once, and store failures surface as featrec errors.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from featrec.adapters.background_log import BackgroundRequestLog
from featrec.adapters.redis.request_log import RedisRequestLog
from featrec.adapters.request_entries import RowDigests, entry_json
from featrec.adapters.sqlite.partitioned_log import PartitionedRequestLog
from featrec.adapters.sqlite.request_log import SqliteRequestLog
from featrec.app.serving.recommender import Recommender
from featrec.app.serving.record import ServedRequest
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import (
    InMemoryRequestLog,
    InMemoryRows,
    LoggedRow,
    RequestLog,
    RequestRecord,
    StampedRow,
)
from featrec.errors import StoreError, StoreUnavailable
from featrec.testing.redis_server import RedisServer
from featrec.testing.request_logs import earlier_log_file
from featrec.testing.shop import NOW_S, toy_model, world_rows

# Floats whose shortest decimal form is long or unusual: a lossy encoding would change them.
AWKWARD = [0.1 + 0.2, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0, 2.0**-1074 * 3, 123456789.1]


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def make_record(request_id: str, shared: StampedRow, *, created: float = 1000.0) -> RequestRecord:
    own = StampedRow(
        {"price": AWKWARD[0], "category": "A", "ids": ["x", "y"]}, 1_700_000_000_000_001
    )
    return RequestRecord(
        request_id=request_id,
        created_at_s=created,
        body={
            "raw_scores": AWKWARD,
            "candidates": [{"item_id": "a", "sources": ["covisit"], "scores": {"covisit": 1 / 7}}],
            "k": 20,
            "user_id": None,
            "nested": {"flag": True, "empty": []},
        },
        rows=[
            LoggedRow("session_features", "s1", own),
            LoggedRow("user_features", "u1", None),
            LoggedRow("item_features", "a", shared),
        ],
    )


SHARED = StampedRow(
    {"price": 9.99, "n_view_7d": 3, "category": None, "weights": [0.5, 1 / 3]},
    1_699_999_999_000_000,
)


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        "hourly-sqlite",
        "redis",
        "redis-cluster",
        "background-sqlite",
        "background-hourly-sqlite",
        "background-redis",
    ]
)
def request_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RequestLog]:
    log: RequestLog
    if request.param == "memory":
        log = InMemoryRequestLog()
    elif request.param.endswith("hourly-sqlite"):
        log = PartitionedRequestLog(tmp_path / "requests", keep_s=86_400)
    elif request.param.endswith("sqlite"):
        log = SqliteRequestLog(tmp_path / "requests.db")
    elif request.param == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        log = RedisRequestLog(cluster.client(), owns_client=True)
    else:
        url = request.getfixturevalue("redis_url")
        log = RedisRequestLog(redis.Redis.from_url(url), owns_client=True)
    if request.param.startswith("background"):
        assert isinstance(log, SqliteRequestLog | PartitionedRequestLog | RedisRequestLog)
        log = BackgroundRequestLog(log)
    yield log
    log.close()


def test_a_record_reads_back_equal_with_floats_bit_for_bit(request_log: RequestLog) -> None:
    record = make_record("r1", SHARED)
    request_log.append(record)
    back = request_log.get("r1")
    assert back == record
    assert back is not None
    assert [_bits(x) for x in back.body["raw_scores"]] == [_bits(x) for x in AWKWARD]
    assert math.copysign(1.0, back.body["raw_scores"][4]) == -1.0  # -0.0 kept its sign
    assert back.rows[2].row == SHARED


def test_unknown_request_is_none(request_log: RequestLog) -> None:
    request_log.append(make_record("r1", SHARED))
    assert request_log.get("nope") is None


def test_records_sharing_a_row_each_read_it_back(request_log: RequestLog) -> None:
    request_log.append(make_record("r1", SHARED))
    request_log.append(make_record("r2", SHARED, created=2000.0))
    for rid in ("r1", "r2"):
        back = request_log.get(rid)
        assert back is not None and back.rows[2].row == SHARED


def test_sqlite_stores_a_shared_row_once(tmp_path: Path) -> None:
    log = SqliteRequestLog(tmp_path / "requests.db")
    for i in range(5):
        log.append(make_record(f"r{i}", SHARED, created=float(i)))
    log.close()
    import sqlite3

    db = sqlite3.connect(tmp_path / "requests.db")
    # one session row per record is identical too: 1 shared item row + 1 session row
    assert db.execute("SELECT COUNT(*) FROM feature_rows").fetchone()[0] == 2
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 5


def test_sqlite_survives_reopening_and_prunes_old_entries(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    log = SqliteRequestLog(path)
    other = StampedRow({"price": 1.0}, 5)
    log.append(make_record("old", other, created=10.0))
    log.append(make_record("new", SHARED, created=20.0))
    log.close()
    log = SqliteRequestLog(path)
    assert log.get("old") is not None
    assert log.prune(older_than_s=15.0) == 1
    assert log.get("old") is None
    back = log.get("new")
    assert back is not None and back.rows[2].row == SHARED
    import sqlite3

    db = sqlite3.connect(path)
    # the row only "old" used is gone, the shared session row and "new"'s item row remain
    assert db.execute("SELECT COUNT(*) FROM feature_rows").fetchone()[0] == 2
    log.close()


def _sharing(request_id: str, rows: list[LoggedRow], created: float) -> RequestRecord:
    """A record with ``rows`` themselves (the same objects, as the recommender shares an
    item's logged rows between requests while the row cache keeps them)."""
    return RequestRecord(request_id, created, {"user_id": None, "session_id": "s1"}, rows)


def test_a_logged_row_met_again_after_prune_deleted_its_row_is_stored_again(
    tmp_path: Path,
) -> None:
    log = SqliteRequestLog(tmp_path / "requests.db")
    rows = [LoggedRow("item_features", "a", SHARED), LoggedRow("item_trending", "a", None)]
    log.append(_sharing("old", rows, 10.0))
    assert log.prune(older_than_s=15.0) == 1  # deletes the only entry, and its rows
    log.append(_sharing("new", rows, 20.0))  # the same LoggedRow objects
    back = log.get("new")
    assert back is not None and back.rows == rows
    log.close()


def test_a_deletion_by_another_process_makes_a_running_writer_store_its_rows_again(
    tmp_path: Path,
) -> None:
    """`featrec forget` runs in its own process beside a server: what it deletes must not stay
    remembered as stored by the server's log, or the server's next entries would refer to
    rows that are gone (and could not be explained)."""
    path = tmp_path / "requests.db"
    server = SqliteRequestLog(path)
    rows = [LoggedRow("item_features", "a", SHARED), LoggedRow("item_trending", "a", None)]
    old = RequestRecord("old", 10.0, {"user_id": "u1", "session_id": "s1"}, rows)
    server.append(old)
    cli = SqliteRequestLog(path)  # another connection: the CLI's process
    assert cli.forget("u1", ["s1"]) == 1  # the only entry using those rows: they go too
    cli.close()
    # The server meets the same LoggedRow objects again, for another user.
    server.append(RequestRecord("new", 20.0, {"user_id": "u2", "session_id": "s2"}, rows))
    back = server.get("new")
    assert back is not None and back.rows == rows
    assert server.get("old") is None
    server.close()


def test_sqlite_entries_refer_to_rows_by_short_ids_stored_once(tmp_path: Path) -> None:
    import json
    import sqlite3

    log = SqliteRequestLog(tmp_path / "requests.db")
    rows = [
        LoggedRow("session_features", "s1", StampedRow({"n": 1}, 1)),
        LoggedRow("item_features", "a", SHARED),
        LoggedRow("item_trending", "a", None),
    ]
    log.append(_sharing("r1", rows, 1.0))
    log.append_many([_sharing("r2", rows, 2.0), _sharing("r3", [*rows[1:], rows[0]], 3.0)])
    # equal rows in other LoggedRow objects (the cache read them again) have the same ids
    copies = [LoggedRow(r.view, r.key, r.row) for r in rows]
    log.append(_sharing("r4", copies, 4.0))
    for request_id, expected in (("r1", rows), ("r3", [*rows[1:], rows[0]]), ("r4", rows)):
        back = log.get(request_id)
        assert back is not None and back.rows == expected
    log.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "requests.db")) as db:
        refs = db.execute("SELECT id, view, key, digest FROM row_refs ORDER BY id").fetchall()
        assert [(view, key, digest == "") for _, view, key, digest in refs] == [
            ("session_features", "s1", False),
            ("item_features", "a", False),
            ("item_trending", "a", True),
        ]
        ids = [row_id for row_id, *_ in refs]
        entries = {
            rid: json.loads(entry)
            for rid, entry in db.execute("SELECT request_id, entry FROM requests")
        }
    assert "rows" not in entries["r1"] and entries["r1"]["row_ids"] == ids
    assert entries["r3"]["row_ids"] == [*ids[1:], ids[0]]
    assert entries["r4"]["row_ids"] == ids


def test_sqlite_resolves_many_references_stored_by_another_writer_or_not(tmp_path: Path) -> None:
    """Hundreds of references in one entry, some stored by another writer (whose ids this
    writer has never seen) and some new: each gets its own id back, none is stored twice."""
    path = tmp_path / "requests.db"
    n = 607
    rows = [
        LoggedRow("item_features", f"i{i}", StampedRow({"n": i}, i) if i % 3 else None)
        for i in range(n)
    ]
    other = SqliteRequestLog(path)
    other.append(_sharing("first", rows[::2], 1.0))  # every other reference stored
    other.close()
    log = SqliteRequestLog(path)
    log.append(_sharing("all", rows, 2.0))
    back = log.get("all")
    assert back is not None and back.rows == rows
    first = log.get("first")
    assert first is not None and first.rows == rows[::2]
    log.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        (count,) = db.execute("SELECT count(*) FROM row_refs").fetchone()
    assert count == n  # the stored half was found, not stored again


def _old_entry(log: SqliteRequestLog, record: RequestRecord) -> None:
    """Store ``record`` as a featrec before row ids did: ``[view, key, digest]`` lists."""
    new_rows: dict[str, bytes] = {}
    digests = RowDigests()
    refs = digests.refs(record.rows, new_rows)
    db = log._db
    db.executemany(
        "INSERT OR IGNORE INTO feature_rows (digest, row) VALUES (?, ?)", new_rows.items()
    )
    db.execute(
        "INSERT INTO requests (request_id, created_at_s, entry) VALUES (?, ?, ?)",
        (record.request_id, record.created_at_s, entry_json(record, refs)),
    )


def test_sqlite_reads_prunes_and_forgets_entries_of_both_forms(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "requests.db"
    log = SqliteRequestLog(path)
    item = LoggedRow("item_features", "a", SHARED)
    theirs = [LoggedRow("user_features", "u1", StampedRow({"k": 1}, 2)), item]
    others = [LoggedRow("user_features", "u2", StampedRow({"k": 2}, 3)), item]
    # a row only an old entry refers to
    others_old = [*others, LoggedRow("item_trending", "b", StampedRow({"t": 5}, 4))]

    def body(user: str, session: str) -> dict[str, object]:
        return {"user_id": user, "session_id": session}

    _old_entry(log, RequestRecord("old-u1", 1.0, body("u1", "s1"), theirs))
    _old_entry(log, RequestRecord("old-u2", 2.0, body("u2", "s2"), others_old))
    log.append(RequestRecord("new-u1", 3.0, body("u1", "s3"), theirs))
    log.append(RequestRecord("new-u2", 4.0, body("u2", "s4"), others))
    for request_id, rows in (("old-u1", theirs), ("new-u1", theirs), ("old-u2", others_old)):
        back = log.get(request_id)
        assert back is not None and list(back.rows) == rows
    assert log.sessions_of("u1") == {"s1", "s3"}
    assert log.forget("u1", {"s1", "s3"}) == 2
    for request_id, rows in (("old-u2", others_old), ("new-u2", others)):
        back = log.get(request_id)
        assert back is not None and list(back.rows) == rows
    with contextlib.closing(sqlite3.connect(path)) as db:
        keys = {key for (key,) in db.execute("SELECT key FROM row_refs")}
        stored = [row for (row,) in db.execute("SELECT row FROM feature_rows")]
    assert "u1" not in keys and keys == {"u2", "a"}
    assert len(stored) == 3 and not any(b'"k":1' in bytes(row) for row in stored)
    # pruning the old entry keeps what the new one refers to, then drops the rest
    assert log.prune(older_than_s=3.0) == 1
    back = log.get("new-u2")
    assert back is not None and list(back.rows) == others
    assert log.prune(older_than_s=5.0) == 1
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM row_refs").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM feature_rows").fetchone()[0] == 0
    log.close()


def test_sqlite_a_lost_row_reference_is_a_clear_error(tmp_path: Path) -> None:
    log = SqliteRequestLog(tmp_path / "requests.db")
    log.append(_sharing("r1", [LoggedRow("item_features", "a", SHARED)], 1.0))
    log._db.execute("DELETE FROM row_refs")
    with pytest.raises(StoreError, match=r"request r1: 1 logged row reference\(s\)"):
        log.get("r1")
    log.close()


def test_row_references_are_memoised_only_once_their_row_is_stored() -> None:
    digests = RowDigests()
    rows = [LoggedRow("item_features", "a", SHARED), LoggedRow("user_features", "u", None)]
    first: dict[str, bytes] = {}
    digests.start_batch()
    refs = digests.refs(rows, first)
    assert [r[:2] for r in refs] == [["item_features", "a"], ["user_features", "u"]]
    assert refs[1][2] is None and list(first) == [refs[0][2]]
    # the batch was not written (no remember): the next one sends the row again
    digests.start_batch()
    again: dict[str, bytes] = {}
    assert digests.refs(rows, again) == refs and again == first
    digests.remember(again, now=1.0)
    # stored: found by identity, nothing to send, the same reference lists
    later: dict[str, bytes] = {}
    found = digests.refs(rows, later)
    assert later == {} and found == refs and found[0] is digests.refs(rows, {})[0]
    # an equal row in another LoggedRow object has the same reference and is not sent
    other: dict[str, bytes] = {}
    copy = [LoggedRow("item_features", "a", StampedRow(dict(SHARED.values), SHARED.ts_us))]
    assert digests.refs(copy, other) == refs[:1] and other == {}


def test_redis_sends_rows_again_once_the_memo_is_half_an_entry_ttl_old(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    log = RedisRequestLog(client, prefix="t:", ttl_s=2)
    rows = [LoggedRow("item_features", "a", SHARED)]
    log.append(_sharing("r1", rows, 1.0))
    for key in client.scan_iter(b"t:row:*"):
        client.delete(key)  # as if the row had expired
    time.sleep(1.1)  # past half the entry ttl: rows referred to are sent again
    log.append(_sharing("r2", rows, 2.0))
    back = log.get("r2")
    assert back is not None and back.rows == rows
    log.close()


def test_redis_entries_and_rows_expire_rows_last(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    log = RedisRequestLog(client, prefix="t:", ttl_s=100)
    log.append(make_record("r1", SHARED))
    req_ttl = client.ttl(b"t:req:r1")
    row_ttls = [client.ttl(key) for key in client.scan_iter(b"t:row:*")]
    assert 0 < req_ttl <= 100
    assert len(row_ttls) == 2 and all(ttl > 100 for ttl in row_ttls)


def test_a_missing_row_is_a_clear_error(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    log = RedisRequestLog(client, prefix="t:")
    log.append(make_record("r1", SHARED))
    for key in client.scan_iter(b"t:row:*"):
        client.delete(key)
    with pytest.raises(StoreError, match=r"request r1: the logged session_features row of 's1'"):
        log.get("r1")


def test_redis_down_is_store_unavailable(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        log = RedisRequestLog(redis.Redis.from_url(server.url, retry=None), owns_client=True)
        log.append(make_record("r1", SHARED))
        server.stop()
        with pytest.raises(StoreUnavailable):
            log.append(make_record("r2", SHARED))
        with pytest.raises(StoreUnavailable):
            log.get("r1")
        log.close()
    finally:
        server.stop()


def _counting_log(tmp_path: Path) -> tuple[SqliteRequestLog, list[int]]:
    """A SQLite request log that also records the size of every batch written to it."""
    inner = SqliteRequestLog(tmp_path / "requests.db")
    batches: list[int] = []
    append_many = inner.append_many

    def counting(records: list[RequestRecord]) -> None:
        batches.append(len(records))
        append_many(records)

    inner.append_many = counting  # type: ignore[method-assign]
    return inner, batches


def test_background_log_writes_in_order_in_batches_and_get_waits(tmp_path: Path) -> None:
    inner, batches = _counting_log(tmp_path)
    log = BackgroundRequestLog(inner, max_batch=50)
    for i in range(300):
        log.append(make_record(f"r{i}", SHARED, created=float(i)))
    assert log.get("r299") is not None  # waits for everything queued before it
    assert sum(batches) == 300 and max(batches) <= 50
    log.close()
    reopened = SqliteRequestLog(tmp_path / "requests.db")
    assert all(reopened.get(f"r{i}") is not None for i in range(300))
    reopened.close()


def test_background_log_lingers_for_a_batch_but_never_delays_a_reader(tmp_path: Path) -> None:
    """Having taken a record, the writer waits ``linger_s`` for more and writes them in one
    batch; a full batch ends the wait, and ``get``/``flush`` do not wait for it."""
    inner, batches = _counting_log(tmp_path)
    log = BackgroundRequestLog(inner, max_batch=4, linger_s=0.5)
    try:
        for i in range(3):
            log.append(make_record(f"a{i}", SHARED))
        time.sleep(0.2)
        assert batches == []  # still lingering: 3 of at most 4
        deadline = time.monotonic() + 5
        while not batches and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batches == [3]  # one batch, once the linger ran out

        started = time.monotonic()
        for i in range(4):  # a full batch: written without waiting out the linger
            log.append(make_record(f"b{i}", SHARED))
        while len(batches) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert batches[1:] == [4] and time.monotonic() - started < 0.4

        started = time.monotonic()
        log.append(make_record("c", SHARED))
        time.sleep(0.05)  # the writer has taken it and lingers
        assert log.get("c") == make_record("c", SHARED)  # the reader ends the linger
        assert time.monotonic() - started < 0.4 and batches[2:] == [1]
    finally:
        log.close()


def test_background_log_builds_deferred_records_off_the_request_path(tmp_path: Path) -> None:
    """A deferred record is built by the writer thread, reads back like an appended one, and a
    build that raises is counted as a failed record while the others are written."""
    errors: list[tuple[int, str]] = []
    log = BackgroundRequestLog(
        SqliteRequestLog(tmp_path / "requests.db"), on_error=lambda n, m: errors.append((n, m))
    )
    builders: list[str] = []

    def build(rid: str) -> RequestRecord:
        builders.append(threading.current_thread().name)
        return make_record(rid, SHARED)

    def broken() -> RequestRecord:
        raise ValueError("boom")

    log.append_deferred(lambda: build("d1"))
    log.append_deferred(broken)
    log.append_deferred(lambda: build("d2"))
    assert log.get("d1") == make_record("d1", SHARED)
    assert log.get("d2") == make_record("d2", SHARED)
    assert builders == ["featrec-request-log"] * 2
    assert log.failed == 1 and errors == [
        (1, "building a request-log record failed: ValueError('boom')")
    ]
    log.close()


def test_background_log_refuses_when_full_and_reports_failures(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    errors: list[tuple[int, str]] = []
    admin = redis.Redis.from_url(server.url)
    inner = RedisRequestLog(redis.Redis.from_url(server.url, retry=None), owns_client=True)
    log = BackgroundRequestLog(inner, max_pending=3, on_error=lambda n, m: errors.append((n, m)))
    try:
        log.append(make_record("r1", SHARED))
        log.flush()
        # a store that stops taking writes: the queue fills and refuses instead of blocking
        admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
        refused = None
        for i in range(20):
            try:
                log.append(make_record(f"x{i}", SHARED))
            except StoreError as e:
                refused = str(e)
                break
        admin.execute_command("CLIENT", "UNPAUSE")
        assert refused is not None and "request log queue full (3 records pending)" in refused
        log.flush()
        assert errors == [] and log.get("x0") is not None
        # a store that is gone: accepted records are reported as failed
        server.stop()
        log.append(make_record("r2", SHARED))
        log.flush()
        assert [n for n, _ in errors] == [1] and "writing the request log to Redis" in errors[0][1]
        assert log.failed == 1
    finally:
        log.close()
        server.stop()


def test_a_log_file_written_before_the_typed_record_still_explains(tmp_path: Path) -> None:
    """tests/data/request_log_6fb2625.json: SQLite entries and rows as featrec wrote them at
    commit 6fb2625 (see tests/unit/test_request_record.py), put back byte for byte."""
    import json
    import sqlite3

    data = json.loads((Path(__file__).parents[1] / "data" / "request_log_6fb2625.json").read_text())
    path = tmp_path / "requests.db"
    SqliteRequestLog(path).close()  # the tables
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT INTO requests (request_id, created_at_s, entry) VALUES (?, ?, ?)",
            [(e["request_id"], e["created_at_s"], json.dumps(e).encode()) for e in data["entries"]],
        )
        db.executemany(
            "INSERT INTO feature_rows (digest, row) VALUES (?, ?)",
            [(d, json.dumps(row).encode()) for d, row in data["feature_rows"].items()],
        )
    log = SqliteRequestLog(path)
    store = InMemoryFeatureStore()
    store.write(world_rows())
    recommender = Recommender(InMemoryRows(store), log, model=toy_model(), clock=lambda: NOW_S)
    for request_id in data["requests"].values():
        explanation = recommender.explain(request_id)
        assert explanation.reproduced, (request_id, explanation.mismatches)
    listed = {r.request_id: ServedRequest.from_record(r) for r in log.iter_records()}
    assert sorted(listed) == sorted(data["requests"].values())
    log.close()


# -- forgetting by index --------------------------------------------------------------------------


def _about(request_id: str, user: str | None, session: str, rows: list[LoggedRow]) -> RequestRecord:
    return RequestRecord(request_id, 1.0, {"user_id": user, "session_id": session}, rows)


def test_sqlite_forget_finds_entries_and_rows_by_index_without_reading_entries(
    tmp_path: Path,
) -> None:
    path = tmp_path / "requests.db"
    log = SqliteRequestLog(path)
    item = LoggedRow("item_features", "a", SHARED, "item")
    # an item whose id is the forgotten session's id: not the session's row, kept
    twin = LoggedRow("item_features", "s1", StampedRow({"price": 2.0}, 7), "item")
    # one row object logged under two keys is stored once (digests are memoised by identity)
    same = StampedRow({"n": 1}, 2)
    mine = [
        LoggedRow("session_features", "s1", same, "session"),
        LoggedRow("user_features", "u1", StampedRow({"k": 1}, 3), "user"),
        LoggedRow("user_spend", "u1", StampedRow({"spend": 9.5}, 4)),  # entity unknown: goes
        item,
    ]
    theirs = [LoggedRow("session_features", "s2", same, "session"), item, twin]
    log.append(_about("mine", "u1", "s1", mine))
    log.append(_about("anon", None, "s1", [mine[0], item]))  # the session before login
    log.append(_about("theirs", "u2", "s2", theirs))
    # an entry the forget must not read: unparseable (the old path would fail on it)
    with contextlib.closing(sqlite3.connect(path)) as db:
        query = "SELECT entry FROM requests WHERE request_id = 'theirs'"
        (original,) = db.execute(query).fetchone()
        db.execute("UPDATE requests SET entry = x'00ff' WHERE request_id = 'theirs'")
        db.commit()
    assert log.sessions_of("u1") == {"s1"}
    assert log.forget("u1", {"s1"}) == 2
    with contextlib.closing(sqlite3.connect(path)) as db:
        refs = sorted(db.execute("SELECT view, key, entity FROM row_refs"))
        rows = [bytes(r) for (r,) in db.execute("SELECT row FROM feature_rows")]
        left = [r for (r,) in db.execute("SELECT request_id FROM requests")]
        db.execute("UPDATE requests SET entry = ? WHERE request_id = 'theirs'", (original,))
        db.commit()
    assert left == ["theirs"]
    assert refs == [
        ("item_features", "a", "item"),
        ("item_features", "s1", "item"),
        ("session_features", "s2", "session"),
    ]
    assert len(rows) == 3 and not any(b'"spend"' in r or b'"k":1' in r for r in rows)
    back = log.get("theirs")
    assert back is not None and back.rows == theirs
    log.close()


def test_sqlite_a_file_of_an_earlier_version_is_upgraded_and_forgets_as_before(
    tmp_path: Path,
) -> None:
    """A file written before the subject columns: its entries are read to find whom they are
    about, and the rows no remaining entry uses are dropped by reading every entry."""
    path = earlier_log_file(tmp_path / "requests.db")
    log = SqliteRequestLog(path)
    twin = LoggedRow("item_features", "s1", StampedRow({"price": 2.0}, 7))  # no entity
    _old_entry(log, _about("old-mine", "u1", "s1", [LoggedRow("user_features", "u1", SHARED)]))
    _old_entry(log, _about("old-theirs", "u2", "s2", [twin]))
    log.append(_about("new-mine", "u1", "s3", [LoggedRow("session_features", "s3", SHARED)]))
    log.append(_about("new-theirs", "u2", "s2", [twin]))
    assert log.sessions_of("u1") == {"s1", "s3"}
    assert log.forget("u1", {"s1", "s3"}) == 2
    # exact, as before: the item keyed like a forgotten session is still used, so kept
    for request_id in ("old-theirs", "new-theirs"):
        back = log.get(request_id)
        assert back is not None and back.rows == [twin]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert sorted(k for (k,) in db.execute("SELECT key FROM row_refs")) == ["s1"]
        assert db.execute("SELECT COUNT(*) FROM feature_rows").fetchone()[0] == 1
    log.close()


def test_redis_forget_deletes_the_rows_each_reference_says_are_the_users(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    log = RedisRequestLog(client, prefix="featrec:forget-test:")
    spend = LoggedRow("user_spend", "u1", StampedRow({"spend": 9.5}, 4), "user")  # declared
    browsing = LoggedRow("session_browsing", "s1", StampedRow({"n": 3}, 5), "session")
    twin = LoggedRow("item_features", "s1", StampedRow({"price": 2.0}, 7), "item")
    log.append(_about("mine", "u1", "s1", [spend, browsing, twin]))
    log.append(_about("theirs", "u2", "s2", [twin]))
    # an entry written before references held their entity: its rows go by their view
    legacy = LoggedRow("user_features", "u1", StampedRow({"k": 1}, 3))
    old_ref = [legacy.view, legacy.key, RowDigests().encode(legacy)[0]]
    client.set(b"featrec:forget-test:row:" + old_ref[2].encode(), b'{"ts_us":3,"values":{"k":1}}')
    client.set(b"featrec:forget-test:req:old", entry_json(_about("old", "u1", "s0", []), [old_ref]))
    assert log.forget("u1", {"s0", "s1"}) == 2
    gone = [RowDigests().encode(row)[0] for row in (spend, browsing, legacy)]
    assert not any(client.exists(b"featrec:forget-test:row:" + d.encode()) for d in gone)
    back = log.get("theirs")  # the item keyed like the forgotten session is kept
    assert back is not None and back.rows == [twin]
    log.close()
    client.close()
