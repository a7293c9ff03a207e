"""A 10 s Redis outage in the middle of a stream, end to end, with two real redis-servers.

The bus (event stream, dead letters) and the online store are separate servers, as in
production. While a producer publishes events and ``python -m bytewax.run
"dataflows.sessions:flow()"`` consumes them, the store goes down for 10 s (``SHUTDOWN SAVE``,
then a restart from its RDB file, as a Redis with persistence restarts) and a recommender
answers requests all along. Checked:

- the flow blocks and retries with backoff (backpressure), never drops: after the restart
  it catches up and its online rows and event log equal an uninterrupted run's;
- the flow's Prometheus metrics show the outage while it lasts (``featrec_store_up`` 0,
  retries and down seconds growing) and the recovery afterwards;
- every recommend call answers, never raises; during the outage the answers are degraded and
  flagged with a store code.

The benchmark version is ``benchmarks/redis_outage.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflows.sinks import MAX_BACKOFF_S
from featrec.settings import Settings
from featrec.testing.crash import make_events, outage_run
from featrec.testing.redis_server import RedisServer

EVENTS = 3_000
PUBLISH_S = 20.0
OUTAGE_AT_S = 5.0
OUTAGE_S = 10.0
UP = 'featrec_store_up{store="online"}'
RETRIES = "featrec_store_retries_total"
DOWN_S = 'featrec_store_down_seconds_total{store="online"}'
OUTAGES = 'featrec_store_outages_total{store="online"}'
SOURCE_RETRIES = 'featrec_source_retries_total{stream="featrec:events"}'
STORE_CODES = {"store_unreachable", "store_failed"}


def server(path: Path) -> RedisServer:
    path.mkdir(parents=True)
    started = RedisServer(path)
    started.start()
    return started


@pytest.mark.e2e
@pytest.mark.redis
def test_a_10_s_store_outage_loses_nothing_and_serving_degrades(
    feast_repo: Settings, tmp_path: Path
) -> None:
    bus, store = server(tmp_path / "bus"), server(tmp_path / "store")
    try:
        run = outage_run(
            feast_repo,
            bus,
            store,
            tmp_path,
            make_events(EVENTS, seed=3),
            publish_s=PUBLISH_S,
            outage_at_s=OUTAGE_AT_S,
            outage_s=OUTAGE_S,
        )
    finally:
        store.stop()
        bus.stop()
    before, during, after, result = run.before, run.during, run.after, run.comparison
    answers = run.answers
    print(
        f"\noutage {run.outage_s:.1f} s ridden out; store retries {during[RETRIES]:.0f} during, "
        f"{after[RETRIES]:.0f} in all; down seconds {after[DOWN_S]:.1f}; caught up "
        f"{run.catch_up_s:.1f} s after the last event; lost {result.events_lost}, duplicated "
        f"as read {result.events_duplicated_seen}; recommend answers {answers.total} "
        f"({dict(answers.by_phase)}), raised {len(answers.raised)}"
    )
    assert run.caught_up, f"the flow did not catch up: {result}"
    assert result.equal, result
    # Metrics: the outage while it lasted, the recovery afterwards.
    assert before.get(UP) == 1.0, "the flow wrote nothing before the outage"
    assert during[UP] == 0.0 and during[RETRIES] > before.get(RETRIES, 0.0)
    assert during[OUTAGES] == 1.0 and during[DOWN_S] > 0.0
    assert after[UP] == 1.0 and after[RETRIES] > during[RETRIES]
    # The flow sees the store back at its next retry: at most one capped backoff late.
    assert OUTAGE_S / 2 < after[DOWN_S] <= run.outage_s + MAX_BACKOFF_S + 0.5
    assert after.get(SOURCE_RETRIES, 0.0) == 0.0  # the bus stayed up
    # Serving: nothing raised; every answer during the outage was degraded with a store code.
    assert answers.raised == []
    outage = answers.by_phase["outage"]
    assert sum(outage.values()) >= 20 and set(outage) <= STORE_CODES, outage
    assert answers.by_phase["after"]["ok"] > 0, answers.by_phase["after"]
