"""Where one in-process ``recommend`` spends its CPU, stage by stage (the profile behind the
README's latency figures).

The same world as ``benchmarks/recommend.py`` (private redis-server, Feast repo applied, 5,000
items, 3,000 sessions, a 200-tree ranker through the model store, request log on SQLite), then
``--requests`` cold-cache requests at ``--candidates`` candidates. Each stage function is wrapped
by a timer that charges its *own* CPU time (``time.thread_time``: CPU of this thread, so the
redis round trip's wait is not counted; nested stages are subtracted from their parent) and
wall time; what is left over is "rest of recommend". ``--cprofile`` also prints cProfile's top
functions (slower, for finding the hot lines inside a stage).

``--item-cache-s S`` sets the row cache's max age (serving's default is 5 s, longer than the
run): with a short one and a long ``--warmup`` the rows the requests use are read again as they
age, as in a server that runs for hours (its steady state).

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/profile_recommend.py \
        [--candidates 200] [--requests 400] [--warmup 100] [--cprofile] \
        [--item-cache-s 0.5 --warmup 1500]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recommend as bench
from measure import Stages, load_average, with_private_redis

from featrec.app.serving import recommender as rec_module
from featrec.app.serving import steps
from featrec.app.serving.cache import ResponseCache
from featrec.app.serving.context import ContextReader
from featrec.app.serving.recommender import Recommender
from featrec.jobs.serving import settle_heap
from featrec.testing.redis_server import RedisServer


def patch(stages: Stages, recommender: Recommender) -> None:
    """Wrap every stage function the request path calls (module attributes and methods)."""

    def module(mod: Any, attr: str, name: str) -> None:
        if hasattr(mod, attr):
            setattr(mod, attr, stages.wrap(name, getattr(mod, attr)))

    module(rec_module, "generate", "candidates (generation)")
    module(rec_module, "score", "scoring (two-stage glue)")
    module(rec_module, "post_process", "rerank (post_process)")
    module(rec_module, "ServedRequest", "request-log record (build)")
    module(rec_module, "Recommendation", "answer object")
    module(steps, "ranking_matrix", "ranking matrix")
    module(steps, "two_stage_scores", "first stage (two_stage_scores)")
    module(steps, "popularity_score", "rerank (popularity)")
    module(steps, "rerank", "rerank (rerank core)")
    for name in ("candidate_features", "build_candidates", "feature_matrix", "rerank_arrays"):
        module(steps, name, f"steps.{name}")
    ContextReader.read = stages.wrap("reads (session + user row)", ContextReader.read)  # type: ignore[method-assign]
    cache = recommender.item_cache
    cache.get = stages.wrap("row cache (neighbour, trending, item rows)", cache.get)  # type: ignore[method-assign]
    reader = cache.reader
    reader.read_rows = stages.wrap("store reads (redis)", reader.read_rows)  # type: ignore[method-assign]
    if hasattr(reader, "reread_rows"):  # the row cache's reads of rows it holds
        reader.reread_rows = stages.wrap("store reads (redis)", reader.reread_rows)
    for attr in ("get", "put", "shown_before"):
        setattr(
            ResponseCache,
            attr,
            stages.wrap("response cache", getattr(ResponseCache, attr)),
        )
    recommender._append = stages.wrap("request-log record (encode + append)", recommender._append)  # type: ignore[method-assign]
    assert recommender.model is not None
    ranker = recommender.model.ranker
    ranker.score_candidates = stages.wrap("predictor", ranker.score_candidates)  # type: ignore[method-assign]
    recommender.recommend = stages.wrap("rest of recommend", recommender.recommend)  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--gc-off", action="store_true", help="no garbage collection (diagnosis)")
    ap.add_argument("--item-cache-s", type=float, default=None, help="the row cache's max age (s)")
    args = ap.parse_args(argv)
    with_private_redis("featrec-bench-profile-", lambda tmp, server: run(args, tmp, server))


def run(args: argparse.Namespace, tmp: Path, server: RedisServer) -> None:
    recommender, order = bench.logged_world(tmp, server.url, args.candidates)
    if args.item_cache_s is not None:
        recommender.item_cache.max_age_s = args.item_cache_s
    settle_heap()
    stages = Stages()
    patch(stages, recommender)
    n = args.warmup + args.requests
    if n > len(order):
        raise SystemExit(f"--warmup + --requests must be <= {len(order)} (one per session)")
    sessions = order[:n]
    for i in range(args.warmup):
        recommender.recommend(sessions[i], k=20)
    recommender.log.flush()  # the warm-up's records are written before the measured part
    stages.reset()
    cache = recommender.item_cache
    misses0, hits0 = cache.misses, cache.hits
    if args.gc_off:
        gc.disable()
    process0 = time.process_time()
    profiler = cProfile.Profile() if args.cprofile else None
    sizes = []
    c0, w0 = time.thread_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    for i in range(args.warmup, n):
        answer = recommender.recommend(sessions[i], k=20)
        assert not answer.degraded and not answer.cached
        sizes.append(len(answer.items))
    if profiler is not None:
        profiler.disable()
    cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
    recommender.log.close()  # waits for the background log thread's writes
    process = time.process_time() - process0

    print(f"load average (1, 5, 15 min): {load_average()}")
    print(
        f"{args.requests} requests at {args.candidates} candidates: "
        f"{cpu / args.requests * 1e6:.0f} CPU-us and {wall / args.requests * 1e6:.0f} wall-us "
        "per request (timers included)"
    )
    print(
        f"process CPU per request, the request log's writer thread included: "
        f"{process / args.requests * 1e6:.0f} us"
    )
    print(
        f"row cache per request: {(cache.misses - misses0) / args.requests:.1f} rows read, "
        f"{(cache.hits - hits0) / args.requests:.1f} cached (max age {cache.max_age_s} s)"
    )
    print(f"{'stage (own time)':<46}{'CPU-us/req':>12}{'wall-us/req':>13}{'share':>8}")
    total = sum(stages.cpu.values())
    for name, value in sorted(stages.cpu.items(), key=lambda e: -e[1]):
        per = value / args.requests * 1e6
        wall_per = stages.wall[name] / args.requests * 1e6
        print(f"{name:<46}{per:>12.0f}{wall_per:>13.0f}{value / total:>8.1%}")
    if profiler is not None:
        print()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
