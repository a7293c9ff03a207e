"""Before/after check of the serving path on generated traffic: the same requests, the same
answers and request-log entries, byte for byte.

The world of ``benchmarks/recommend.py`` at a fixed clock (private redis-server, Feast repo
applied, 5,000 items, 3,000 sessions, a 200-tree ranker through the model store), then requests
at 50, 200 and 500 candidates under several post-processing settings (the defaults, a diversity
cap, popularity damping, stability with a ``shown`` list), with and without the user named, and
for unknown sessions (degraded, fallback scorer). Every answer (items, scores, reasons) and every
request-log record as read back (candidates, raw scores, decisions, rows: the typed
:class:`ServedRequest`, so a new log schema that reads back the same record compares equal), less
the request id and the wall-clock stamp (and the model version, which names the time the model
was saved), is written as one JSON line. Run it on the old tree and on the new one and compare:

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/serving_equivalence.py \
        --out before.jsonl
    # ... change the code (or point PYTHONPATH at the old tree's src/ for the first run) ...
    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/serving_equivalence.py \
        --out after.jsonl --compare before.jsonl

``--item-cache-s 0`` reads every row again at every use (the row cache's re-read path).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
import recommend as bench
from measure import prepare_world

from featrec.app.serving.recommender import ServingConfig
from featrec.app.serving.record import ServedRequest
from featrec.core.ranking.rerank import RerankConfig
from featrec.jobs.serving import ServingOptions, open_recommender, pool_config
from featrec.testing.redis_server import RedisServer

#: A fixed clock: the world's timestamps and every request's ``now`` (outputs then repeat).
NOW_S = 1_780_000_000.0

RERANKS = {
    "default": RerankConfig(),
    "cap": RerankConfig(max_per_category=2),
    "damping": RerankConfig(popularity_damping=0.3),
    "stability": RerankConfig(stability_window=2, stability_margin=0.01, max_per_category=3),
}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--compare", type=Path, default=None, help="an earlier --out to compare with")
    ap.add_argument("--requests", type=int, default=60, help="requests per size and setting")
    ap.add_argument(
        "--item-cache-s",
        type=float,
        default=None,
        help="the row cache's max age (0: every row is read again at every use)",
    )
    args = ap.parse_args(argv)
    bench.NOW_S = NOW_S
    bench.T0 = int(NOW_S * 1_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="featrec-bench-equivalence-"))
    server = RedisServer(tmp)
    server.start()
    try:
        lines = run(args, tmp, server)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.write_bytes(b"".join(line + b"\n" for line in lines))
    print(f"{len(lines)} answers and log entries written to {args.out}")
    if args.compare is not None:
        before = args.compare.read_bytes().splitlines()
        differ = [i for i, (a, b) in enumerate(zip(before, lines, strict=False)) if a != b]
        if len(before) != len(lines) or differ:
            print(f"DIFFERENT: {len(before)} vs {len(lines)} lines, first differing: {differ[:5]}")
            sys.exit(1)
        print(f"identical to {args.compare}: {len(lines)} lines")


def run(args: argparse.Namespace, tmp: Path, server: RedisServer) -> list[bytes]:
    settings = prepare_world(tmp, server.url, bench)
    out: list[bytes] = []
    for n in (50, 200, 500):
        for name, rerank in RERANKS.items():
            config = replace(
                ServingConfig(max_session_age_s=1e9), candidates=pool_config(n), rerank=rerank
            )
            if args.item_cache_s is not None:
                config = replace(config, item_cache_s=args.item_cache_s)
            recommender = open_recommender(
                settings,
                ServingOptions(request_log="sqlite", model="latest", config=config),
                clock=lambda: NOW_S + 1.0,
            )
            picks = random.Random(n)
            for i in range(args.requests):
                s = picks.randrange(bench.N_SESSIONS)
                session = f"s{s}" if i % 10 else f"unknown{i}"
                user = f"u{s % bench.N_USERS}" if i % 3 == 0 else None
                shown = None
                if name == "stability":
                    shown = [bench.item_id(picks.randrange(bench.N_ITEMS)) for _ in range(10)]
                answer = recommender.recommend(session, user, k=20, shown=shown)
                logged = recommender.log.get(answer.request_id)
                assert logged is not None
                # The record as read back (any log schema), not its stored shape.
                body = asdict(ServedRequest.from_record(logged))
                for key in ("request_id", "created_at_s", "rows"):
                    body.pop(key)
                body.pop("model_version")  # names the time the model was saved
                items = [(it.item_id, it.score, it.rank, list(it.reasons)) for it in answer.items]
                entry = {
                    "n": n,
                    "rerank": name,
                    "session": session,
                    "degraded": answer.degraded_code,
                    "items": items,
                    "body": body,
                    # a row's value: its time and values (a reader's fingerprint is not part of it)
                    "rows": [
                        (r.view, r.key, None if r.row is None else (r.row.ts_us, r.row.values))
                        for r in logged.rows
                    ],
                }
                out.append(orjson.dumps(entry, option=orjson.OPT_SORT_KEYS))
                explained = recommender.explain(answer.request_id)
                assert explained.reproduced, explained.mismatches
            recommender.log.close()
    return out


if __name__ == "__main__":
    main()
