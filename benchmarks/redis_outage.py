"""A Redis outage mid-stream: what the sessions dataflow and the recommender do while the
online store is down, and how fast they recover.

The larger version of ``tests/test_outage.py``: two private redis-servers (bus and store);
a producer publishes generated events to the bus at a steady pace while
``python -m bytewax.run "dataflows.sessions:flow()"`` writes to the store; the store goes down
(``SHUTDOWN SAVE``, restarted from its RDB) for ``--outage`` seconds, and a recommender answers
requests all along. Then the flow's rows and event log are compared with an uninterrupted
run of the same events (the baseline, from a file, timed in the same run).

Prints outage seconds ridden out, the flow's retries and down seconds (from its Prometheus
metrics), events lost / duplicated, catch-up time, and the recommender's answers by phase
(degraded answers and their codes; calls that raised).

    .venv/bin/python benchmarks/redis_outage.py                        # 10k events, 10 s down
    .venv/bin/python benchmarks/redis_outage.py --events 30000 --outage 30 --publish 60
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from featrec.settings import Settings
from featrec.testing.crash import make_events, outage_run
from featrec.testing.feast_repo import copy_feature_repo
from featrec.testing.redis_server import RedisServer

RETRIES = "featrec_store_retries_total"
DOWN_S = 'featrec_store_down_seconds_total{store="online"}'
OUTAGES = 'featrec_store_outages_total{store="online"}'
UP = 'featrec_store_up{store="online"}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--publish", type=float, default=30.0, help="seconds to publish over")
    parser.add_argument("--outage-at", type=float, default=8.0, help="seconds into the stream")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds the store is down")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="featrec-outage-") as tmp:
        work = Path(tmp)
        servers = []
        for name in ("bus", "store"):
            (work / name).mkdir()
            servers.append(RedisServer(work / name))
            servers[-1].start()
        bus, store = servers
        try:
            base = Settings(repo=copy_feature_repo(work / "feature_repo"))
            run = outage_run(
                base,
                bus,
                store,
                work,
                make_events(args.events, seed=3),
                publish_s=args.publish,
                outage_at_s=args.outage_at,
                outage_s=args.outage,
            )
        finally:
            for server in servers:
                server.stop()
    result, answers = run.comparison, run.answers
    print(f"events                {args.events} over {args.publish:.0f} s")
    print(
        f"outage ridden out     {run.outage_s:.1f} s (store down), flow caught up: {run.caught_up}"
    )
    print(
        f"flow metrics          up before/during/after {run.before.get(UP)}/"
        f"{run.during.get(UP)}/{run.after.get(UP)}; outages {run.after.get(OUTAGES, 0):.0f}; "
        f"retries {run.after.get(RETRIES, 0):.0f}; down seconds {run.after.get(DOWN_S, 0):.1f}"
    )
    print(f"catch-up              {run.catch_up_s:.1f} s after the last event was published")
    print(f"events lost           {result.events_lost}")
    print(f"events duplicated     {result.events_duplicated_seen} as read (raw rows on disk: "
          f"{result.events_duplicated_raw})")  # fmt: skip
    print(f"rows missing/differ   {len(result.rows_missing)}/{len(result.rows_different)}")
    for phase in ("before", "outage", "after"):
        codes = answers.by_phase.get(phase, {})
        degraded = sum(n for code, n in codes.items() if code != "ok")
        total = sum(codes.values())
        print(f"recommend {phase:<11} {total} answers, {degraded} degraded {dict(codes)}")
    print(f"recommend raised      {len(answers.raised)}")
    if not (run.caught_up and result.equal and not answers.raised):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
