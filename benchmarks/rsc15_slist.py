"""Next-item quality of the SLIST item model on RSC15-100k (train_tr -> train_valid), and a
random search over its knobs.

Same protocol as ``benchmarks/rsc15_covisit.py`` (../shared/data/README.md): fit on the
training split only; for every event of a validation session except the last, recommend 20
items from the session's events so far (scored through the materialized top-K lists, exactly
what serving reads), check the next item. Prints HR@20, MRR@20, points and fit time.

    .venv/bin/python benchmarks/rsc15_slist.py                       # the defaults
    .venv/bin/python benchmarks/rsc15_slist.py --search 40 --seed 1  # random search, JSON lines
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rsc15_covisit import TRAIN, VALID, read_clicks, sessions_of

from featrec.core.evaluation.metrics import hit_rate_at_k, mrr_at_k
from featrec.core.items import slist

K = 20

#: The random search's space (session-rec's SLIST grid, widened).
SPACE: dict[str, list[float]] = {
    "alpha": [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9],
    "reg": [1, 3, 10, 30, 100, 300],
    "session_weight_days": [0, 0.5, 1, 2, 4, 8],
    "train_weight": [0, 0.5, 1, 2, 4, 8],
    "predict_weight": [0, 0.5, 1, 2, 4, 8],
}


def evaluate(
    train: slist.Clicks, valid: dict[str, list[str]], config: slist.SlistConfig
) -> dict[str, float]:
    t0 = time.perf_counter()
    model = slist.fit(train, config)
    fit_s = time.perf_counter() - t0
    lists: list[list[str]] = []
    targets: list[str] = []
    for items in valid.values():
        for t in range(len(items) - 1):
            so_far = items[t::-1]
            lists.append(slist.recommend(so_far, model.lookup, config, K))
            targets.append(items[t + 1])
    return {
        "hr": hit_rate_at_k(lists, targets, K),
        "mrr": mrr_at_k(lists, targets, K),
        "points": float(len(targets)),
        "fit_s": fit_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--search", type=int, default=0, help="random configurations to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=slist.SlistConfig().top_k)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE over the defaults")
    args = parser.parse_args()
    clicks = read_clicks(TRAIN)
    train = slist.Clicks.from_rows(
        [c.session for c in clicks], [c.item for c in clicks], [c.ts for c in clicks]
    )
    valid = sessions_of(read_clicks(VALID))
    base = slist.SlistConfig(top_k=args.top_k)
    for kv in args.set:
        key, value = kv.split("=", 1)
        base = replace(base, **{key: type(getattr(base, key))(float(value))})
    configs = [base]
    rng = random.Random(args.seed)
    for _ in range(args.search):
        configs.append(replace(base, **{k: rng.choice(v) for k, v in SPACE.items()}))
    best: tuple[float, dict[str, object]] | None = None
    for config in configs:
        result = evaluate(train, valid, config)
        line = {**asdict(config), **result}
        print(json.dumps(line), flush=True)
        if best is None or result["mrr"] + result["hr"] > best[0]:
            best = (result["mrr"] + result["hr"], line)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"best: {json.dumps(best[1] if best else None)}", flush=True)
    print(f"peak RSS {rss:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
