"""A private redis-server for benchmarks (the tests' own helper: same flags, free port)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from redis_server import RedisServer


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Start a redis-server in ``workdir`` on a free loopback port; yield its URL."""
    server = RedisServer(workdir)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
