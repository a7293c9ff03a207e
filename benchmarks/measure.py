"""What the serving benchmarks share: timing, percentiles, the load line, CPU per stage, and the
private world they serve from (``benchmarks/recommend.py``'s catalogue in a fresh Redis).

Used by ``recommend.py``, ``profile_recommend.py``, ``serving_equivalence.py`` and
``http_load.py``; import it with the benchmarks directory on ``sys.path`` (the scripts do).
"""

from __future__ import annotations

import functools
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from featrec.adapters.feast.repo import apply_repo
from featrec.adapters.feast.writers import RedisLayoutWriter
from featrec.adapters.files.model_store import models_dir, save_model
from featrec.settings import Settings
from featrec.testing.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parents[1]


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """The ``q`` quantile of already sorted values (nearest rank below; NaN when empty)."""
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q))] if sorted_ms else math.nan


def percentiles(samples_s: Sequence[float]) -> tuple[float, float]:
    """p50 (the median) and p99 of durations in seconds, in milliseconds."""
    ms = sorted(x * 1000 for x in samples_s)
    return statistics.median(ms), percentile(ms, 0.99)


def timed(fn: Callable[[int], Any], n: int, warmup: int) -> list[float]:
    """Wall seconds of ``fn(i)`` for ``i`` in ``warmup .. warmup + n`` (after ``warmup``
    untimed calls)."""
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(warmup, warmup + n):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def load_average() -> str:
    """``"1.2, 1.5, 1.7 on 2 cores"``: the 1, 5 and 15 minute load averages."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{load} on {os.cpu_count()} cores"


class Stages:
    """Exclusive CPU (``time.thread_time``: this thread only, so waits for Redis are not
    counted) and wall time per stage name; a nested stage is subtracted from its parent."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self._stack: list[list[float]] = []  # [child cpu, child wall] per open stage

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([0.0, 0.0])
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
                child_cpu, child_wall = self._stack.pop()
                self.cpu[name] = self.cpu.get(name, 0.0) + cpu - child_cpu
                self.wall[name] = self.wall.get(name, 0.0) + wall - child_wall
                if self._stack:
                    self._stack[-1][0] += cpu
                    self._stack[-1][1] += wall

        return timed

    def reset(self) -> None:
        self.cpu.clear()
        self.wall.clear()


def prepare_world(
    tmp: Path, redis_url: str, world: Any = None, n_sessions: int | None = None
) -> Settings:
    """``recommend.py``'s world (``world``: that module, imported if None) in the Redis at
    ``redis_url`` (with ``n_sessions`` sessions if given), a copy of ``feature_repo/``
    applied under ``tmp``, a fitted ranker saved in the model store; the settings that serve
    it."""
    if world is None:
        import recommend as world  # the catalogue's shape lives there (and its constants)
    repo = tmp / "feature_repo"
    repo.mkdir()
    for pattern in ("*.py", "*.yaml"):
        for path in (REPO_ROOT / "feature_repo").glob(pattern):
            shutil.copy(path, repo / path.name)
    settings = Settings(home=tmp / "home", repo=repo, online_store="redis", redis_url=redis_url)
    apply_repo(settings)
    if n_sessions is not None:
        world.N_SESSIONS = n_sessions  # world() reads it
    rows = world.world(random.Random(7))
    writer = RedisLayoutWriter(redis.Redis.from_url(redis_url), "featrec")
    for start in range(0, len(rows), 2000):
        writer.write(rows[start : start + 2000])
    version = save_model(world.fitted_ranker(), models_dir(settings.home)).version
    sessions = world.N_SESSIONS
    print(f"{len(rows):,} rows written ({sessions:,} sessions); model {version}", flush=True)
    return settings


def with_private_redis(prefix: str, run: Callable[[Path, RedisServer], None]) -> None:
    """``run(tmp, server)`` with a redis-server of its own in a new temp dir; both are gone
    afterwards, whatever ``run`` does."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    server = RedisServer(tmp)
    server.start()
    try:
        run(tmp, server)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
