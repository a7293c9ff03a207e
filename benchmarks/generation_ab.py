"""Candidate generation alone, A/B: two versions of ``generation.py`` on the same captured calls.

The world of ``benchmarks/recommend.py`` (private redis-server, 5,000 items, 3,000 sessions),
``--requests`` requests at ``--candidates`` candidates after ``--warmup``; every ``generate`` call
is captured with what it read (neighbour, trending, history and item-model lists, frozen as the
tuples the serving path handed it) and the candidates it returned. Each file given is then loaded
as a module of its own, checked to return the very candidates captured (ids, sources, scores,
details, key order), and timed on the frozen calls with the collector off, the versions
interleaved pass by pass (thread CPU; the min is the figure to quote on a shared machine).

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/generation_ab.py \\
        OLD/src/featrec/core/candidates/generation.py src/featrec/core/candidates/generation.py
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recommend as bench
from measure import load_average, with_private_redis

from featrec.app.serving import recommender as rec_module
from featrec.jobs.serving import settle_heap
from featrec.testing.redis_server import RedisServer

Lists = Mapping[str, Sequence[tuple[str, float]]]


class Frozen:
    """A signal lookup answering from what one call read."""

    def __init__(
        self,
        neighbours: Lists,
        trending: Mapping[str | None, Sequence[tuple[str, float]]],
        history: Mapping[str, Sequence[str]],
        model: Lists,
    ) -> None:
        self.n, self.t, self.h, self.m = neighbours, trending, history, model

    def neighbours(self, items: Sequence[str]) -> dict[str, Sequence[tuple[str, float]]]:
        return {i: self.n[i] for i in items if i in self.n}

    def trending(self, category: str | None = None) -> Sequence[tuple[str, float]]:
        return self.t.get(category, ())

    def user_history(self, user_id: str) -> Sequence[str]:
        return self.h.get(user_id, ())

    def model_neighbours(
        self, items: Sequence[str], session_id: str | None = None
    ) -> dict[str, Sequence[tuple[str, float]]]:
        return {i: self.m[i] for i in items if i in self.m}


class Recording(Frozen):
    """Reads through the serving path's lookup and keeps what it read (as tuples)."""

    def __init__(self, inner: Any) -> None:
        super().__init__({}, {}, {}, {})
        self.inner = inner

    def neighbours(self, items: Sequence[str]) -> dict[str, Sequence[tuple[str, float]]]:
        out = {k: tuple(v) for k, v in self.inner.neighbours(items).items()}
        self.n = {**self.n, **out}
        return out

    def trending(self, category: str | None = None) -> Sequence[tuple[str, float]]:
        out = tuple(self.inner.trending(category))
        self.t = {**self.t, category: out}
        return out

    def user_history(self, user_id: str) -> Sequence[str]:
        out = tuple(self.inner.user_history(user_id))
        self.h = {**self.h, user_id: out}
        return out

    def model_neighbours(
        self, items: Sequence[str], session_id: str | None = None
    ) -> dict[str, Sequence[tuple[str, float]]]:
        out = {k: tuple(v) for k, v in self.inner.model_neighbours(items, session_id).items()}
        self.m = {**self.m, **out}
        return out


def capture(args: argparse.Namespace) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    original = rec_module.generate

    def recorded(items: Any, types: Any, user: Any, signals: Any, config: Any, **kw: Any) -> Any:
        lookup = Recording(signals)
        out = original(items, types, user, lookup, config, **kw)
        frozen = Frozen(lookup.n, lookup.t, lookup.h, lookup.m)
        calls.append((list(items), types, user, frozen, config, kw, out))
        return out

    def run(tmp: Path, server: RedisServer) -> None:
        recommender, order = bench.logged_world(tmp, server.url, args.candidates)
        settle_heap()
        for session in order[: args.warmup + args.requests]:
            recommender.recommend(session, k=20)
        recommender.log.close()

    rec_module.generate = recorded  # type: ignore[assignment]
    try:
        with_private_redis("featrec-bench-generation-", run)
    finally:
        rec_module.generate = original
    return calls[args.warmup :]


def load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("files", nargs="+", help="generation.py files to compare")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--passes", type=int, default=15)
    args = ap.parse_args(argv)
    calls = capture(args)
    versions = [(path, load(path, f"generation_{i}").generate) for i, path in enumerate(args.files)]
    for path, generate in versions:
        for items, types, user, signals, config, kw, out in calls:
            got = generate(items, types, user, signals, config, **kw)
            same = got == out and [(list(c.scores), list(c.details)) for c in got] == [
                (list(c.scores), list(c.details)) for c in out
            ]
            if not same:
                raise SystemExit(f"{path}: not the candidates captured")
    print(f"{len(calls)} generate calls, each version returns the candidates captured")
    times: dict[str, list[float]] = {path: [] for path, _ in versions}
    gc.disable()
    for _ in range(args.passes):
        for path, generate in versions:
            start = time.thread_time()
            for items, types, user, signals, config, kw, _out in calls:
                generate(items, types, user, signals, config, **kw)
            times[path].append((time.thread_time() - start) / len(calls) * 1e6)
    gc.enable()
    print(f"load average (1, 5, 15 min): {load_average()}")
    print(f"CPU-us per generate call, {args.passes} interleaved passes: min / median")
    for path, values in times.items():
        print(f"  {min(values):6.0f} / {statistics.median(values):6.0f}  {path}")


if __name__ == "__main__":
    main()
