"""What the deny-list costs at ingest: the sessions flow's decode step, with and without one.

Decodes the same generated records with nothing denied (the baseline), then with a deny-list
of ``--denied`` users (none of whom is in the traffic, the common case: every event is
checked and kept), and prints events/s and the ratio to the baseline, best of ``--repeat``.

    .venv/bin/python benchmarks/forget.py --events 200000 --denied 1000
"""

from __future__ import annotations

import argparse
import json
import time

from dataflows.metrics import FlowStats
from dataflows.sessions import NothingDenied, decode_batch
from featrec.core.events.formats import RawRecord
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.privacy import DenyList, DenySet, new_salt


class Fixed:
    def __init__(self, deny: DenySet) -> None:
        self.deny = deny

    def current(self) -> DenySet:
        return self.deny

    def refresh(self) -> DenySet:
        return self.deny


def best_rate(records: list[RawRecord], deny: object, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        stats = FlowStats()
        t0 = time.perf_counter()
        for start in range(0, len(records), 1000):
            decode_batch(records[start : start + 1000], stats, deny)  # type: ignore[arg-type]
        best = min(best, time.perf_counter() - t0)
    return len(records) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--denied", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    config = GeneratorConfig(n_events=args.events, seed=1)
    records = [
        RawRecord("featrec", f"b:{i}", json.dumps(e.to_dict()), 1.0)
        for i, e in enumerate(generate(config))
    ]
    deny = DenyList(new_salt())
    for i in range(args.denied):
        deny = deny.add(f"forgotten-{i}", [f"forgotten-session-{i}-{j}" for j in range(5)])
    baseline = best_rate(records, NothingDenied(), args.repeat)
    denied = best_rate(records, Fixed(DenySet((deny,))), args.repeat)
    print(f"events: {len(records):,}; deny-list: {len(deny):,} digests")
    print(f"decode, nothing denied     {baseline:12,.0f} events/s  (baseline)")
    print(f"decode, deny-list checked  {denied:12,.0f} events/s  ({denied / baseline:.2f}x)")


if __name__ == "__main__":
    main()
