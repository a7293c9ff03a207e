"""End to end: ``python -m bytewax.run "dataflows.sessions:flow()"`` on the OTTO sample into a
real Feast repo on the private redis-server, killed with SIGKILL mid-file and resumed from its
recovery store. The online rows, read with stock ``FeatureStore.get_online_features``, must
equal those of a clean run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from featrec.core.features.catalog import SESSION_FEATURES
from featrec.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
FEATURES = [f"{SESSION_FEATURES.name}:{name}" for name in SESSION_FEATURES.feature_names]
#: OTTO lines 1-10 start on 2022-07-31, lines 11-20 about 28 days later: at this speed the
#: paced replay writes the first half, then waits ~24 s for the second (our window to kill).
SPEED = 100_000
#: Events on OTTO lines 11-20: all a resumed run may read if the first half was snapshotted.
SECOND_HALF_EVENTS = 23


def session_ids(path: Path) -> list[str]:
    return [str(json.loads(line)["session"]) for line in path.read_text().splitlines()]


def flow_env(settings: Settings, source: Path, speed: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATREC_")}
    env.update(
        FEATREC_HOME=str(settings.home),
        FEATREC_REPO=str(settings.repo),
        FEATREC_ONLINE_STORE="redis",
        FEATREC_REDIS_URL=settings.redis_url,
        FEATREC_SOURCE=str(source),
        FEATREC_REPLAY_SPEED=str(speed),
    )
    return env


def start_flow(env: dict[str, str], recovery: Path | None) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "bytewax.run", "dataflows.sessions:flow()"]
    if recovery is not None:
        args += ["-r", str(recovery), "-s", "1", "-b", "0"]
    return subprocess.Popen(args, cwd=REPO_ROOT, env=env, start_new_session=True)


def wait(proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    assert proc.wait(timeout=timeout) == 0, f"flow exited with {proc.returncode}"


def online_rows(settings: Settings, keys: list[str]) -> dict[str, list[Any]]:
    from featrec.adapters.feast.repo import open_store

    store = open_store(settings)
    result: dict[str, list[Any]] = store.get_online_features(
        features=FEATURES, entity_rows=[{"session_id": k} for k in keys]
    ).to_dict()
    return result


def status(home: Path, field: str) -> int:
    path = home / "status" / "sessions-w0.json"
    try:
        return int(json.loads(path.read_text())[field])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.e2e
def test_kill_9_and_resume_gives_the_rows_of_a_clean_run(
    redis_settings: Settings, otto_sample: Path, tmp_path: Path
) -> None:
    from featrec.adapters.feast.repo import apply_repo

    apply_repo(redis_settings)
    keys = session_ids(otto_sample)
    client = redis.Redis.from_url(redis_settings.redis_url)

    clean_settings = redis_settings.with_(home=tmp_path / "clean")
    wait(start_flow(flow_env(clean_settings, otto_sample, 0), None))
    clean = online_rows(redis_settings, keys)
    assert all(n is not None for n in clean["n_events"])
    assert sum(clean["n_events"]) > 0

    # Remove the online rows only (the registry is a file in the repo).
    client.flushdb()
    assert all(n is None for n in online_rows(redis_settings, keys)["n_events"])

    home = tmp_path / "killed"
    recovery = home / "recovery"
    recovery.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True, cwd=REPO_ROOT
    )
    env = flow_env(redis_settings.with_(home=home), otto_sample, SPEED)
    proc = start_flow(env, recovery)
    try:
        deadline = time.monotonic() + 120
        while status(home, "rows_written") == 0:
            assert proc.poll() is None, "the flow ended before writing anything"
            assert time.monotonic() < deadline, "no rows written within 120 s"
            time.sleep(0.1)
        time.sleep(3)  # let snapshots (-s 1) cover the first half
        assert proc.poll() is None, "the flow finished before it could be killed mid-file"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    partial = online_rows(redis_settings, keys)
    written = [k for k, n in zip(keys, partial["n_events"], strict=True) if n is not None]
    assert 0 < len(written) < len(keys), f"not killed mid-file: {len(written)} rows"

    wait(start_flow(env, recovery))
    assert online_rows(redis_settings, keys) == clean
    # The resumed run started from the snapshot, not from the top of the file.
    assert status(home, "events_in") == SECOND_HALF_EVENTS
