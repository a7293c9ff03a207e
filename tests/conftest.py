"""Shared fixtures. Real parts only: a private redis-server, a Feast repo applied to tmp.

The directories are the lanes, and each test gets its directory's marker:

- ``unit/``       pure logic, no process or server (``make test-fast``, under a minute);
- ``contract/``   adapters against real stores (SQLite, a private redis-server, Feast applied);
- ``dataflows/``  bytewax flows run in-process (``run_main``);
- ``e2e/``        the CLI, the HTTP server and ``python -m bytewax.run`` in subprocesses.
"""

from __future__ import annotations

import os

# One OpenMP thread per test process: the suite runs two xdist workers on two cores, and
# scikit-learn's default of one thread per core made model fits thrash (minutes, not seconds).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest
from _feast_fixtures import *  # noqa: F403
from _lanes import FAST_EXAMPLES, FAST_PROFILE
from hypothesis import settings

from featrec.testing.redis_cluster import RedisClusterServers
from featrec.testing.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[1]

settings.register_profile(FAST_PROFILE, max_examples=FAST_EXAMPLES)
LANES = ("unit", "contract", "dataflows", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its lane: the directory under ``tests/`` it lives in."""
    tests = Path(__file__).resolve().parent
    for item in items:
        lane = item.path.resolve().relative_to(tests).parts[0]
        if lane not in LANES:
            raise pytest.UsageError(
                f"{item.path}: tests live in one of tests/{{{','.join(LANES)}}}/"
            )
        item.add_marker(getattr(pytest.mark, lane))


# The real event data (../shared/data/README.md) sits beside the clone; a clone elsewhere
# points FEATREC_SHARED_DATA at it. Never copied into the repo (licence).
SHARED_DATA = Path(os.environ.get("FEATREC_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")


def shared_file(*parts: str) -> Path:
    """A file of the shared data (a test reading a missing one fails with its path)."""
    return SHARED_DATA.joinpath(*parts)


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


@pytest.fixture(scope="session")
def redis_cluster_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster this test session started itself (~2 s to form)."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_servers: RedisClusterServers) -> Iterator[RedisClusterServers]:
    """The private 3-master cluster, emptied after each test (it is ours alone)."""
    yield redis_cluster_servers
    redis_cluster_servers.flushall()


@pytest.fixture
def redis_cluster_with_replicas(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisClusterServers]:
    """A fresh 3-master, 3-replica cluster for one test (a failover test kills a master)."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster6"), masters=3, replicas=1)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def otto_sample() -> Path:
    path = shared_file("otto-sample", "train.jsonl")
    assert path.exists(), f"shared data missing: {path} (set FEATREC_SHARED_DATA to its directory)"
    return path
