"""Latency of ``recommend`` for 50, 200 and 500 candidates, in-process and over HTTP, against
the same feature reads through stock ``get_online_features``, side by side in one run.

Everything is real: a private redis-server, a copy of ``feature_repo/`` applied to a temp dir,
rows written in Feast's layout (5,000 items with ``item_features``, ``item_trending`` and 50
co-visitation neighbours each, trending lists, 3,000 sessions with 10 recent items, 1,000
users), a fitted ``Ranker`` (HistGradientBoosting, 200 trees of 31 leaves) saved and loaded
through the model store, the request log on SQLite. Every request is for another session, so
the version cache never answers: the whole path runs each time (candidates, item rows through
the bounded-staleness cache, scoring, rerank, request log).

- **in-process**: ``Recommender.recommend`` in this process, pinned to one core;
- **HTTP**: ``featrec serve``'s app (one worker; ``--servers granian,uvicorn`` measures each)
  in a subprocess pinned to another core, one keep-alive client in this process (client
  time included);
- **stock reads**: the reads a request makes (session + user row, neighbour lists of the
  session's items and the trending lists, ``item_features`` + ``item_trending`` of every
  candidate) through ``FeatureStore.get_online_features``, one call per entity kind, and
  the same reads through featrec's direct Redis reader with no cache.

    .venv/bin/python benchmarks/recommend.py [--requests 400] [--warmup 100]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

# One core, one thread: pin before numpy/scikit-learn start their thread pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.sched_setaffinity(0, {0})

import httpx  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import (  # noqa: E402
    load_average,
    percentiles,
    prepare_world,
    timed,
    with_private_redis,
)

from featrec.adapters.feast.repo import open_store  # noqa: E402
from featrec.adapters.redis.rows import open_redis_row_reader  # noqa: E402
from featrec.app.item_signals import trending_key  # noqa: E402
from featrec.app.serving.recommender import Recommendation, Recommender, ServingConfig  # noqa: E402
from featrec.app.serving.record import ServedRequest  # noqa: E402
from featrec.core.features import catalog  # noqa: E402
from featrec.core.features.rows import FeatureRow  # noqa: E402
from featrec.core.ranking.ranker import RANKING_FEATURES, Ranker  # noqa: E402
from featrec.jobs.serving import (  # noqa: E402
    ServingOptions,
    open_recommender,
    pool_config,
    settle_heap,
)
from featrec.settings import Settings  # noqa: E402
from featrec.testing.redis_server import RedisServer, free_port  # noqa: E402

N_ITEMS = 5_000
N_CATEGORIES = 20
N_SESSIONS = 3_000
N_USERS = 1_000
NOW_S = float(int(time.time()))
T0 = int(NOW_S * 1_000_000)
#: The run takes minutes; sessions written at its start must not turn stale meanwhile.
MAX_SESSION_AGE_S = 3600.0


def item_id(i: int) -> str:
    return f"item{i:05d}"


def category(i: int) -> str:
    return f"cat{i % N_CATEGORIES:02d}"


def full(view: catalog.View, **values: object) -> dict[str, object]:
    out: dict[str, object] = dict.fromkeys(view.feature_names)
    out.update(values)
    return out


def logged_world(tmp: Path, url: str, candidates: int) -> tuple[Recommender, list[str]]:
    """The benchmark world (:func:`world`'s seeded draws) in a private store, a recommender
    over it at ``candidates`` candidates with a SQLite request log, and the sessions in the
    seeded order the profiles request them (``profile_recommend.py``,
    ``profile_request_log.py``)."""
    settings = prepare_world(tmp, url, sys.modules[__name__])
    rng = random.Random(7)
    world(rng)  # the same draws as before the session order
    order = [f"s{i}" for i in range(N_SESSIONS)]
    rng.shuffle(order)
    config = replace(
        ServingConfig(max_session_age_s=MAX_SESSION_AGE_S), candidates=pool_config(candidates)
    )
    recommender = open_recommender(
        settings, ServingOptions(request_log="sqlite", model="latest", config=config)
    )
    return recommender, order


def world(rng: random.Random) -> list[FeatureRow]:
    rows: list[FeatureRow] = []
    popularity = [1.0 / (i + 1) ** 0.8 for i in range(N_ITEMS)]
    for i in range(N_ITEMS):
        item = item_id(i)
        counts = {
            catalog.count_feature(t, d): rng.randint(0, 500)
            for t in catalog.TRENDING_TYPES
            for d in catalog.BATCH_WINDOWS_DAYS
        }
        rows.append(
            FeatureRow(
                catalog.ITEM_FEATURES.name,
                item,
                full(
                    catalog.ITEM_FEATURES,
                    **counts,
                    conversion_rate_30d=rng.random() * 0.1,
                    price=round(rng.lognormvariate(3, 0.6), 2),
                    category=category(i),
                    first_seen_s=NOW_S - rng.random() * 3e7,
                    days_since_first_seen=rng.random() * 300,
                ),
                T0 - 86_400_000_000,
            )
        )
        trend = 1000 * popularity[i]
        rows.append(
            FeatureRow(
                catalog.ITEM_TRENDING.name,
                item,
                full(
                    catalog.ITEM_TRENDING,
                    trend_view=trend,
                    trend_click=trend / 3,
                    trend_cart=trend / 10,
                    trend_purchase=trend / 30,
                    trend_score=trend * 1.8,
                    category=category(i),
                    as_of_s=NOW_S - 5,
                ),
                T0 - 5_000_000,
            )
        )
        neighbours = sorted(
            {item_id(rng.randrange(N_ITEMS)): rng.random() * 10 for _ in range(50)}.items(),
            key=lambda e: -e[1],
        )
        rows.append(neighbour_row(item, neighbours))
    ranked = [(item_id(i), 1000 * popularity[i] * 1.8) for i in range(N_ITEMS)]
    rows.append(neighbour_row(trending_key(None), ranked[:50]))
    for c in range(N_CATEGORIES):
        in_category = [e for i, e in enumerate(ranked) if i % N_CATEGORIES == c]
        rows.append(neighbour_row(trending_key(category(c)), in_category[:50]))
    for u in range(N_USERS):
        top = rng.sample(range(N_CATEGORIES), 3)
        rows.append(
            FeatureRow(
                catalog.USER_FEATURES.name,
                f"u{u}",
                full(
                    catalog.USER_FEATURES,
                    n_sessions_90d=rng.randint(1, 30),
                    top_categories=[category(c) for c in top],
                    top_category_shares=[0.5, 0.3, 0.2],
                    recent_purchases=[item_id(rng.randrange(N_ITEMS)) for _ in range(5)],
                    avg_price_viewed_90d=25.0,
                    purchase_rate_90d=0.2,
                    days_since_last_event=1.5,
                ),
                T0 - 3_600_000_000,
            )
        )
    for s in range(N_SESSIONS):
        last = [item_id(rng.randrange(N_ITEMS)) for _ in range(10)]
        version = T0 - rng.randrange(60_000_000)
        rows.append(
            FeatureRow(
                catalog.SESSION_FEATURES.name,
                f"s{s}",
                full(
                    catalog.SESSION_FEATURES,
                    user_id=f"u{s % N_USERS}",
                    n_events=12,
                    n_views=10,
                    n_clicks=2,
                    n_carts=0,
                    n_purchases=0,
                    n_distinct_items=10,
                    duration_s=300.0,
                    mean_dwell_s=25.0,
                    last_items=last,
                    last_category=category(int(last[0][4:])),
                    last_price=20.0,
                    cart_value=0.0,
                    started_at_s=version / 1e6 - 300,
                    last_event_at_s=version / 1e6,
                    version=version,
                ),
                version,
            )
        )
    return rows


def neighbour_row(key: str, pairs: Sequence[tuple[str, float]]) -> FeatureRow:
    return FeatureRow(
        catalog.ITEM_NEIGHBOURS.name,
        key,
        {
            "neighbour_ids": [i for i, _ in pairs],
            "neighbour_weights": [w for _, w in pairs],
            "as_of_s": NOW_S - 5,
        },
        T0 - 5_000_000,
    )


def fitted_ranker() -> Ranker:
    """A default-sized ranker (200 trees) on labels that depend on several columns."""
    rng = np.random.default_rng(0)
    X = rng.random((20_000, len(RANKING_FEATURES)))
    logit = 3 * X[:, 2] + 2 * X[:, 15] - X[:, 20] + rng.normal(0, 0.5, len(X)) - 2.5
    y = (logit > 0).astype(int)
    return Ranker(feature_names=RANKING_FEATURES).fit(X, y)


def stock_reads(store: Any, requests: list[dict[str, Any]]) -> Callable[[int], Any]:
    """One request's reads through get_online_features (features listed once, outside)."""
    context = [
        f"{catalog.SESSION_FEATURES.name}:{f}" for f in catalog.SESSION_FEATURES.feature_names
    ]
    context += [f"{catalog.USER_FEATURES.name}:{f}" for f in catalog.USER_FEATURES.feature_names]
    lists = [f"{catalog.ITEM_NEIGHBOURS.name}:{f}" for f in catalog.ITEM_NEIGHBOURS.feature_names]
    items = [f"{catalog.ITEM_FEATURES.name}:{f}" for f in catalog.ITEM_FEATURES.feature_names]
    items += [f"{catalog.ITEM_TRENDING.name}:{f}" for f in catalog.ITEM_TRENDING.feature_names]

    def run(i: int) -> None:
        s = requests[i % len(requests)]
        store.get_online_features(
            features=context,
            entity_rows=[{"session_id": s["id"], "user_id": s["user"]}],
            full_feature_names=True,
        ).to_dict()
        anchors = [*s["last"], trending_key(None), trending_key(s["category"])]
        store.get_online_features(
            features=lists,
            entity_rows=[{"item_id": a} for a in anchors],
            full_feature_names=True,
        ).to_dict()
        store.get_online_features(
            features=items,
            entity_rows=[{"item_id": c} for c in s["candidates"]],
            full_feature_names=True,
        ).to_dict()

    return run


def direct_reads(reader: Any, requests: list[dict[str, Any]]) -> Callable[[int], Any]:
    """The same reads through featrec's Redis reader, no cache (three round trips)."""

    def run(i: int) -> None:
        s = requests[i % len(requests)]
        reader.read_rows(
            {catalog.SESSION_FEATURES.name: [s["id"]], catalog.USER_FEATURES.name: [s["user"]]}
        )
        anchors = [*s["last"], trending_key(None), trending_key(s["category"])]
        reader.read_rows({catalog.ITEM_NEIGHBOURS.name: anchors})
        candidates = s["candidates"]
        reader.read_rows(
            {catalog.ITEM_FEATURES.name: candidates, catalog.ITEM_TRENDING.name: candidates}
        )

    return run


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--requests", type=int, default=400, help="timed requests per figure")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--sizes", default="50,200,500", help="candidate pool sizes, comma-separated")
    ap.add_argument("--skip", choices=["http", "in-process"], default=None)
    ap.add_argument(
        "--servers",
        default="granian",
        help="HTTP servers to measure side by side (granian,uvicorn)",
    )
    args = ap.parse_args(argv)
    with_private_redis("featrec-bench-recommend-", lambda tmp, server: run(args, tmp, server))


def run(args: argparse.Namespace, tmp: Path, server: RedisServer) -> None:
    print("applying the Feast repo and writing the catalogue ...", flush=True)
    settings = prepare_world(tmp, server.url, sys.modules[__name__])
    rng = random.Random(7)
    world(rng)  # the same draws as before the session order (prepare_world drew its own)

    sizes = [int(n) for n in args.sizes.split(",")]
    order = [f"s{i}" for i in range(N_SESSIONS)]
    rng.shuffle(order)
    n_timed = args.warmup + args.requests
    store = open_store(settings)
    reader = open_redis_row_reader(settings)
    results: dict[str, dict[int, tuple[float, float]]] = {}
    pool_sizes: dict[int, float] = {}
    for n in sizes if args.skip != "in-process" else []:
        config = replace(
            ServingConfig(max_session_age_s=MAX_SESSION_AGE_S), candidates=pool_config(n)
        )
        options = ServingOptions(request_log="sqlite", model="latest", config=config)
        recommender = open_recommender(settings, options)
        settle_heap()  # as the HTTP workers do
        sessions = order[:n_timed]
        answers: list[Recommendation] = []

        def call(
            i: int,
            rec: Recommender = recommender,
            sessions: list[str] = sessions,
            answers: list[Recommendation] = answers,
        ) -> None:
            answers.append(rec.recommend(sessions[i], k=20))

        inproc = timed(call, args.requests, args.warmup)
        assert not any(a.degraded or a.cached for a in answers)
        # the same reads through stock Feast and through featrec's reader, without caches
        requests = [request_reads(recommender, reader, a) for a in answers[args.warmup :]]
        stock = timed(stock_reads(store, requests), min(args.requests, 200), 20)
        direct = timed(direct_reads(reader, requests), args.requests, 20)
        pool_sizes[n] = statistics.mean(len(r["candidates"]) for r in requests)
        results.setdefault("in-process recommend", {})[n] = percentiles(inproc)
        results.setdefault("stock get_online_features reads", {})[n] = percentiles(stock)
        results.setdefault("same reads, featrec reader, no cache", {})[n] = percentiles(direct)
        recommender.log.close()
        print(f"  {n} candidates: in-process done", flush=True)

    for server_name in args.servers.split(",") if args.skip != "http" else []:
        for n in sizes:
            results.setdefault(f"HTTP {server_name} (client included)", {})[n] = percentiles(
                over_http(settings, n, order[-n_timed:], args, server_name)
            )
            print(f"  {n} candidates: HTTP {server_name} done", flush=True)

    print()
    print(f"load average at the end (1, 5, 15 min): {load_average()}")
    print(f"p50 / p99 in ms, {args.requests} requests per cell; server and client on one core each")
    print(f"{'':<40}" + "".join(f"{f'{n} candidates':>20}" for n in sizes))
    for name, by_n in results.items():
        cells = "".join(f"{f'{by_n[n][0]:.2f} / {by_n[n][1]:.2f}':>20}" for n in sizes)
        print(f"{name:<40}{cells}")
    stock = results.get("stock get_online_features reads", {})
    for name in ("in-process recommend", "same reads, featrec reader, no cache"):
        cells = ""
        for n in sizes if stock else []:
            p50, p99 = stock[n][0] / results[name][n][0], stock[n][1] / results[name][n][1]
            cells += f"{f'{p50:.1f}x / {p99:.1f}x':>20}"
        print(f"{'stock reads / ' + name:<40}{cells}")
    scored = ", ".join(f"{pool_sizes[n]:.0f}" for n in sizes if n in pool_sizes)
    print(f"mean candidates scored per request: {scored}")


def request_reads(recommender: Recommender, reader: Any, answer: Recommendation) -> dict[str, Any]:
    """What one answered request read: its session, user, anchors and candidates."""
    record = recommender.log.get(answer.request_id)
    assert record is not None
    found = reader.read_rows({catalog.SESSION_FEATURES.name: [answer.session_id]})
    session = found[catalog.SESSION_FEATURES.name][0]
    assert session is not None
    return {
        "id": answer.session_id,
        "user": session.values["user_id"],
        "last": session.values["last_items"],
        "category": session.values["last_category"],
        "candidates": [c.item_id for c in ServedRequest.from_record(record).candidates],
    }


def over_http(
    settings: Settings, n: int, sessions: list[str], args: argparse.Namespace, server: str
) -> list[float]:
    """``featrec serve --candidates n --server server`` on core 1, one keep-alive client
    here."""
    port = free_port()
    env = {**os.environ, **settings.to_env(), "OMP_NUM_THREADS": "1"}
    code = "from featrec.cli.serve import serve; serve()"
    serve = [sys.executable, "-c", code, "--port", str(port), "--candidates", str(n)]
    serve += ["--model", "latest", "--max-session-age", str(MAX_SESSION_AGE_S)]
    serve += ["--server", server, "--workers", "1"]
    proc = subprocess.Popen(
        ["taskset", "-c", "1", *serve], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(proc, port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

            def post(i: int) -> None:
                r = http.post("/recommend", json={"session_id": sessions[i], "k": 20})
                body = r.json()
                assert r.status_code == 200 and not body["degraded"] and not body["cached"], body

            return timed(post, args.requests, args.warmup)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def wait_for(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()) from None  # type: ignore[union-attr]
            time.sleep(0.2)
    raise RuntimeError("the HTTP app did not start")


if __name__ == "__main__":
    main()
