"""Crash recovery at size: the sessions dataflow SIGKILLed many times while events stream in.

The larger version of ``tests/test_e2e_recovery.py``: generated events are published to a
Redis stream at a steady pace; ``python -m bytewax.run "dataflows.sessions:flow()"`` (recovery
store, 1 s snapshots) is started and SIGKILLed at random moments, then a final run catches
up. Its online rows (every session) and event log are compared with an uninterrupted run of
the same events (the baseline, timed in the same run).

Prints kills survived, events lost / duplicated (as a reader of the log sees them, and raw
rows on disk), the wall time of the crash run and of the baseline.

    .venv/bin/python benchmarks/kill_recovery.py                       # 20k events, 50 kills
    .venv/bin/python benchmarks/kill_recovery.py --events 50000 --kills 100 --seed 7
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from featrec.adapters.files.event_files import write_events
from featrec.settings import Settings
from featrec.testing.crash import (
    Producer,
    compare,
    event_log_count,
    executions,
    flow_env,
    init_recovery,
    kill9,
    kill_loop,
    make_events,
    session_rows,
    start_flow,
)
from featrec.testing.feast_repo import copy_feature_repo
from featrec.testing.redis_server import running_redis as redis_server
from featrec.testing.wait import wait_until


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument(
        "--min-life", type=float, default=0.0, help="seconds a run is up before its kill"
    )
    parser.add_argument("--max-life", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"seed {seed}; {args.events} events; {args.kills} kills")
    with tempfile.TemporaryDirectory(prefix="featrec-kill-") as tmp:
        work = Path(tmp)
        (work / "redis").mkdir()
        with redis_server(work / "redis") as url:
            run(work, url, args, seed)


def run(work: Path, url: str, args: argparse.Namespace, seed: int) -> None:
    rng = random.Random(seed)
    events = make_events(args.events, seed=seed % 1000)
    event_ids = [e.event_id for e in events]
    keys = sorted({e.session_id for e in events})
    repo = copy_feature_repo(work / "feature_repo")
    base = url.rsplit("/", 1)[0]
    log_file = work / "flow.log"

    clean = Settings(home=work / "clean", repo=repo, online_store="redis", redis_url=f"{base}/1")
    source = work / "events.jsonl"
    write_events(source, events)
    t = time.perf_counter()
    proc = start_flow(flow_env(clean, str(source)), None, log_file)
    if proc.wait(timeout=600) != 0:
        raise SystemExit(f"the uninterrupted run failed: see {log_file}")
    clean_s = time.perf_counter() - t
    reference = session_rows(clean.redis_url, keys)

    killed = Settings(home=work / "killed", repo=repo, online_store="redis", redis_url=f"{base}/2")
    init_recovery(killed.recovery_dir)
    env = flow_env(killed, "redis")
    # A cycle is start-up (~1 s here) plus the life: publish over about as long as the kills.
    cycle_s = (args.min_life + args.max_life) / 2 + 1.0
    producer = Producer(killed.redis_url, killed.stream, events, args.kills * cycle_s * 0.9)
    t = time.perf_counter()
    producer.start()

    def progress() -> tuple[int, int]:
        return producer.sent, len(event_log_count(killed.event_log_dir).seen)

    life = (args.min_life, args.max_life)
    kills = kill_loop(env, killed.recovery_dir, log_file, args.kills, rng, life, progress)
    producer.join()
    if producer.error is not None:
        raise SystemExit(f"publishing failed: {producer.error}")
    kills_s = time.perf_counter() - t
    final = start_flow(env, killed.recovery_dir, log_file)
    t = time.perf_counter()
    try:
        wait_until(
            lambda: (
                len(event_log_count(killed.event_log_dir).seen) == len(events)
                and session_rows(killed.redis_url, keys) == reference
            ),
            timeout_s=120,
            proc=final,
        )
    finally:
        kill9(final)
    catch_up_s = time.perf_counter() - t

    log = event_log_count(killed.event_log_dir)
    result = compare(session_rows(killed.redis_url, keys), reference, log, event_ids)
    resumes = executions(killed.recovery_dir)
    during = sum(1 for k in kills if k.published < len(events))
    print(f"kills survived        {len(kills)} ({during} while events were still arriving)")
    print(f"executions recorded   {len(resumes)}, distinct resume epochs {len(set(resumes))}")
    print(f"sessions compared     {len(keys)}")
    print(f"rows missing          {len(result.rows_missing)}")
    print(f"rows different        {len(result.rows_different)}")
    print(f"events lost           {result.events_lost}")
    print(f"events duplicated     {result.events_duplicated_seen} (as read_event_log returns them)")
    print(
        f"raw duplicate rows    {result.events_duplicated_raw} on disk "
        f"({result.events_duplicated_raw / len(events):.1%} of events; deduplicated on read)"
    )
    print(f"uninterrupted run     {clean_s:.1f} s (baseline, from a file)")
    print(f"crash run             {kills_s:.1f} s of kills + {catch_up_s:.1f} s final catch-up")
    verdict = "EQUAL to the uninterrupted run" if result.equal else "DIFFERENT"
    print(f"result                {verdict}")
    if not result.equal:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
