"""Shared fixtures. Real parts only: a private redis-server, a Feast repo applied to tmp."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _feast_fixtures import *  # noqa: F403
from redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server this test session started itself (flushed only by its own tests)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of the private server, emptied after each test (it is ours alone)."""
    yield redis_server.url
    redis_server.client().flushall()


@pytest.fixture
def otto_sample() -> Path:
    path = SHARED_DATA / "otto-sample" / "train.jsonl"
    assert path.exists(), f"shared data missing: {path}"
    return path
