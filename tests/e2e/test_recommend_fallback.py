"""Fallback when the online store goes away: a real redis-server, started and stopped by the test
(its own instance, never the shared fixture). Store trouble never raises to the caller."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from featrec.adapters.feast.writers import RedisLayoutWriter
from featrec.adapters.redis.request_log import RedisRequestLog
from featrec.adapters.redis.rows import RedisRowReader, serving_client
from featrec.adapters.sqlite.request_log import SqliteRequestLog
from featrec.app.serving.recommender import Recommender, ServingConfig
from featrec.testing.redis_server import RedisServer
from featrec.testing.shop import NOW_S, world_rows

PROJECT = "featrec"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    RedisLayoutWriter(redis.Redis.from_url(server.url), PROJECT).write(world_rows())
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(server: RedisServer, tmp_path: Path, mono: Clock) -> Recommender:
    reader = RedisRowReader(serving_client(server.url), PROJECT, owns_client=True)
    return Recommender(
        reader,
        SqliteRequestLog(tmp_path / "requests.db"),
        config=ServingConfig(store_retry_s=1.0),
        clock=lambda: NOW_S,
        monotonic=mono,
    )


def ids(answer: object) -> list[str]:
    return [item.item_id for item in answer.items]  # type: ignore[attr-defined]


def test_stopped_redis_degrades_to_cached_popularity_and_recovers(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    mono = Clock()
    recommender = make(own_redis, tmp_path, mono)
    warm = recommender.recommend("s1", "u1", k=5)
    assert not warm.degraded and ids(warm) == ["a1", "a2", "b1", "b2", "b3"]

    own_redis.stop()
    mono.t = 100.0  # the item cache is long expired: only stale rows are left
    down = recommender.recommend("s1", "u1", k=5)
    assert down.degraded and down.scorer == "fallback"
    assert down.degraded_reason is not None
    assert down.degraded_reason.startswith("online store unreachable: reading Feast's Redis")
    # no session, no user row (unreadable): the cached trending list, by cached popularity
    assert ids(down) == ["b2", "b3", "a5", "b4", "a6"]
    explanation = recommender.explain(down.request_id)
    assert explanation.reproduced and explanation.degraded_reason == down.degraded_reason

    # within store_retry_s the store is not even tried; the answer is the same
    mono.t = 100.5
    assert ids(recommender.recommend("s1", "u1", k=5)) == ids(down)

    own_redis.start()
    RedisLayoutWriter(redis.Redis.from_url(own_redis.url), PROJECT).write(world_rows())
    mono.t = 101.5
    back = recommender.recommend("s1", "u1", k=5)
    assert not back.degraded and ids(back) == ids(warm)


def test_a_cold_recommender_with_redis_down_answers_empty_not_an_error(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    own_redis.stop()
    answer = make(own_redis, tmp_path, Clock()).recommend("s1", "u1", k=5)
    assert answer.degraded and answer.items == ()
    assert answer.logged  # the log is local SQLite


def test_a_request_log_on_a_stopped_redis_only_costs_the_log(
    own_redis: RedisServer, tmp_path: Path, redis_url: str
) -> None:
    """Features on the shared test server, request log on our own server, which we stop."""
    RedisLayoutWriter(redis.Redis.from_url(redis_url), PROJECT).write(world_rows())
    log = RedisRequestLog(serving_client(own_redis.url), owns_client=True)
    recommender = Recommender(
        RedisRowReader(serving_client(redis_url), PROJECT, owns_client=True),
        log,
        clock=lambda: NOW_S,
    )
    assert recommender.recommend("s1", "u1", k=5).logged
    own_redis.stop()
    answer = recommender.recommend("s1", "u1", k=4)
    assert not answer.degraded and not answer.logged
    assert ids(answer) == ["a1", "a2", "b1", "b2"]
    assert recommender.log_failures == 1
    assert recommender.last_log_error is not None
    assert "writing the request log to Redis" in recommender.last_log_error


class StopsAfterFirstRead:
    """The real Redis reader; the real server is stopped right after the request's first read
    (the session and user rows), so the store fails in the middle of the request."""

    def __init__(self, reader: RedisRowReader, server: RedisServer) -> None:
        self.reader = reader
        self.server = server
        self.reads = 0

    def read_rows(self, wanted: dict[str, list[str]]) -> object:
        self.reads += 1
        found = self.reader.read_rows(wanted)
        if self.reads == 1:
            self.server.stop()
        return found


def test_a_store_that_fails_mid_request_gives_a_degraded_answer(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    mono = Clock()
    reader = RedisRowReader(serving_client(own_redis.url), PROJECT, owns_client=True)
    recommender = Recommender(
        StopsAfterFirstRead(reader, own_redis),  # type: ignore[arg-type]
        SqliteRequestLog(tmp_path / "requests.db"),
        clock=lambda: NOW_S,
        monotonic=mono,
    )
    answer = recommender.recommend("s1", "u1", k=5)
    assert answer.degraded and answer.degraded_code == "store_failed"
    assert answer.degraded_reason is not None
    assert answer.degraded_reason.startswith("online store failed: reading Feast's Redis")
    assert answer.items == ()  # nothing cached yet, and nothing raised
    assert recommender.explain(answer.request_id).reproduced
    mono.t = 0.5  # within the back-off the store is not tried, and the reason says so
    skipped = recommender.recommend("s1", "u1", k=5)
    assert skipped.degraded_code == "store_unreachable"
    assert skipped.degraded_reason is not None
    assert "not retried for 1 s after: reading Feast's Redis" in skipped.degraded_reason
