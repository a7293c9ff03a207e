"""Crash recovery, end to end: the sessions dataflow killed with SIGKILL 20 times mid-stream.

A producer publishes generated events to a Redis stream at a steady pace while
``python -m bytewax.run "dataflows.sessions:flow()"`` (recovery store, 1 s snapshots, sessions
idle for 0.5 s moved to the store of idle sessions and back) is started
and SIGKILLed at random moments (seeded: the seed is printed; set ``FEATREC_KILL_SEED`` to
replay one). After the last kill a final run catches up. Its online rows (every session, read
from Feast's Redis layout) and its event log must equal those of an uninterrupted run of the
same events: 0 lost, 0 duplicated in what readers see. Raw duplicate rows on disk (the log is
at-least-once, deduplicated on read) are counted and printed, not hidden.

The larger version with timings is ``benchmarks/kill_recovery.py``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from featrec.adapters.files.event_files import write_events
from featrec.adapters.sqlite.cold_sessions import ColdSessions
from featrec.jobs.launch import cold_sessions_path
from featrec.settings import Settings
from featrec.testing.crash import (
    REPO_ROOT,
    Producer,
    compare,
    event_log_count,
    executions,
    flow_env,
    init_recovery,
    kill9,
    kill_loop,
    make_events,
    metrics_env,
    scrape,
    session_rows,
    start_flow,
)
from featrec.testing.redis_server import free_port
from featrec.testing.wait import wait_until

KILLS = 20
EVENTS = 4_000
#: The producer spreads the events over about as long as the kills take.
PUBLISH_S = 40.0
#: Each run is killed this long after it is up (start-up, 0.5-1.5 s here, comes before).
#: An epoch commits every second: short lives die before their first commit (the next run
#: resumes from the previous one's), long ones after one or two.
LIFETIME_S = (0.0, 2.5)
#: Sessions idle this long (system time) leave memory for the store of idle sessions.
COOL_S = 0.5


def db_url(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


@pytest.mark.e2e
@pytest.mark.redis
def test_twenty_kill_9s_mid_stream_lose_and_duplicate_nothing(
    feast_repo: Settings, redis_url: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("FEATREC_KILL_SEED") or random.randrange(2**32))
    print(f"\nkill seed {seed} (FEATREC_KILL_SEED={seed} replays these kill times)")
    rng = random.Random(seed)
    events = make_events(EVENTS, seed=seed % 1000)
    event_ids = [e.event_id for e in events]
    keys = sorted({e.session_id for e in events})
    log_file = tmp_path / "flow.log"

    # The reference: one uninterrupted run over the same events, from a file, into db 1.
    clean = feast_repo.with_(
        online_store="redis", redis_url=db_url(redis_url, 1), home=tmp_path / "clean"
    )
    source = tmp_path / "events.jsonl"
    write_events(source, events)
    reference_run = start_flow(flow_env(clean, str(source)), None, log_file)
    assert reference_run.wait(timeout=120) == 0, log_file.read_text()[-3000:]
    reference = session_rows(clean.redis_url, keys)
    assert all(row is not None for row in reference.values())
    assert sorted(event_log_count(clean.event_log_dir).seen) == sorted(event_ids)

    # The crash run: the stream and the store in db 2, events arriving while it crashes.
    killed = feast_repo.with_(
        online_store="redis", redis_url=db_url(redis_url, 2), home=tmp_path / "killed"
    )
    init_recovery(killed.recovery_dir)
    # Sessions idle for half a second move to the store of idle sessions (inside the recovery
    # store) and come back on their next event (every ~2 s here): kills land among coolings
    # and revivals, which a resumed run must roll back to its snapshot.
    env = flow_env(killed, "redis", FEATREC_SESSION_COOL_S=str(COOL_S))
    producer = Producer(killed.redis_url, killed.stream, events, PUBLISH_S)
    producer.start()

    def progress() -> tuple[int, int]:
        return producer.sent, len(event_log_count(killed.event_log_dir).seen)

    kills = kill_loop(env, killed.recovery_dir, log_file, KILLS, rng, LIFETIME_S, progress)
    producer.join(timeout=60)
    assert producer.error is None and producer.sent == EVENTS

    port = free_port()
    final = start_flow({**env, **metrics_env(port)}, killed.recovery_dir, log_file)
    try:

        def caught_up() -> bool:
            return len(event_log_count(killed.event_log_dir).seen) == EVENTS and (
                session_rows(killed.redis_url, keys) == reference
            )

        t = time.monotonic()
        wait_until(caught_up, timeout_s=60, proc=final)
        catch_up_s = time.monotonic() - t
        assert final.poll() is None, f"the final run died: {log_file.read_text()[-3000:]}"
        metrics = scrape(port)
        final_events_in = metrics["featrec_sessions_events_in_total"]
        final_revived = metrics.get('featrec_cold_sessions_total{way="revived"}', 0.0)
    finally:
        kill9(final)

    log = event_log_count(killed.event_log_dir)
    result = compare(session_rows(killed.redis_url, keys), reference, log, event_ids)
    during = [k for k in kills if 0 < k.published < EVENTS]
    print(
        f"kills survived {len(kills)} ({len(during)} while events were still arriving); "
        f"events {EVENTS}, sessions {len(keys)}; lost {result.events_lost}, "
        f"duplicated as read {result.events_duplicated_seen}, raw duplicate rows on disk "
        f"{result.events_duplicated_raw} (deduplicated by read_event_log); "
        f"rows missing {len(result.rows_missing)}, different {len(result.rows_different)}; "
        f"final catch-up {catch_up_s:.1f} s"
    )
    print("kill at s / up s / published / logged: " + ", ".join(
        f"{k.at_s:.1f}/{k.lived_s:.1f}/{k.published}/{k.logged}" for k in kills
    ))  # fmt: skip
    resumes = executions(killed.recovery_dir)
    print(
        f"resume epochs of the {len(resumes)} executions: {resumes}; the final run read "
        f"{final_events_in:.0f} of {EVENTS} events (the rest came from the recovery store)"
    )
    cold = ColdSessions(cold_sessions_path(killed.recovery_dir))
    print(f"the final run revived {final_revived:.0f} cold sessions; {cold.count()} cold now")
    assert cold.count() > 0  # the runs did cool sessions
    assert len(kills) >= 20
    # Runs resumed from the store (a run killed during start-up may not have registered),
    # and the resumes moved forward...
    assert len(resumes) > KILLS // 2 and resumes == sorted(resumes) and resumes[-1] > 1
    assert len(set(resumes)) >= 4, "runs must commit progress between kills"
    # ...so the final run read only the tail of the stream, not all of it again.
    assert final_events_in < EVENTS
    assert len(during) >= KILLS // 2, "most kills must land while the stream is still growing"
    assert result.rows_missing == [] and result.rows_different == []
    assert result.events_lost == 0 and result.events_extra == 0
    assert result.events_duplicated_seen == 0
    assert result.equal
    # The crash run refused nothing: no dead letters on its stream.
    assert redis.Redis.from_url(killed.redis_url).xlen(killed.dead_letter_stream) == 0


@pytest.mark.e2e
@pytest.mark.redis
def test_featrec_run_with_a_recovery_dir_records_its_execution(
    feast_repo: Settings, redis_url: str, tmp_path: Path
) -> None:
    """``featrec run sessions --recovery-dir`` (the CLI path to the same recovery store)."""
    settings = feast_repo.with_(online_store="redis", redis_url=redis_url)
    source = tmp_path / "events.jsonl"
    events = make_events(200, seed=2)
    write_events(source, events)
    recovery = tmp_path / "recovery"
    featrec = str(Path(sys.executable).parent / "featrec")
    command = [featrec, "run", "sessions", "--source", str(source)]
    for _ in range(2):  # the second run resumes at the end of the file: nothing to read
        done = subprocess.run(
            [*command, "--recovery-dir", str(recovery), "--snapshot-interval", "2.5"],
            env=flow_env(settings, str(source)), capture_output=True, text=True, timeout=120,
            check=False, cwd=REPO_ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    first, second = executions(recovery)
    assert first == 1 and second > 1, "the second run resumed from the first one's snapshot"
    rows = session_rows(redis_url, sorted({e.session_id for e in events}))
    assert all(row is not None for row in rows.values())
