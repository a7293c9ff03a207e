"""End to end through the installed ``featrec`` command: real subprocesses, real Feast repos,
a real redis-server; values checked with stock Feast (``FeatureStore.get_online_features``)
against a fold computed here from the same file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from featrec.adapters.files.event_files import read_events, write_events
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event
from featrec.core.features.catalog import SESSION_FEATURES
from featrec.core.sessions.fold import SessionState, fold, new_state, session_row
from featrec.settings import Settings

pytestmark = pytest.mark.e2e

FEATREC = str(Path(sys.executable).with_name("featrec"))


def featrec(settings: Settings, *args: str, check: bool = True, **env: str) -> Any:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FEATREC_")}
    full_env.update(settings.to_env(), **env)
    result = subprocess.run(
        [FEATREC, *args], check=False, env=full_env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def expected_rows(events: list[Event], settings: Settings) -> dict[str, dict[str, object]]:
    states: dict[str, SessionState] = {}
    for e in events:
        st = states.setdefault(e.session_id, new_state(e.session_id))
        fold(st, e, settings.session_policy)
    return {sid: dict(session_row(st).values) for sid, st in states.items()}


def stock_read(settings: Settings, sessions: list[str]) -> dict[str, dict[str, object]]:
    from featrec.adapters.feast.repo import open_store

    store = open_store(settings)
    refs = [f"{SESSION_FEATURES.name}:{n}" for n in SESSION_FEATURES.feature_names]
    data = store.get_online_features(
        features=refs, entity_rows=[{"session_id": s} for s in sessions]
    ).to_dict()
    return {
        sid: {n: data[n][i] for n in SESSION_FEATURES.feature_names}
        for i, sid in enumerate(data["session_id"])
    }


def assert_rows_equal(got: dict[str, dict[str, object]], want: dict[str, dict[str, object]]):
    assert set(got) == set(want)
    for sid, row in want.items():
        for name, value in row.items():
            if isinstance(value, float):
                assert got[sid][name] == pytest.approx(value), (sid, name)
            else:
                assert got[sid][name] == value, (sid, name)


def test_replay_otto_sample_then_read_with_stock_feast(
    sqlite_settings: Settings, otto_sample: Path
) -> None:
    settings = sqlite_settings
    featrec(settings, "init")
    featrec(settings, "run", "sessions", "--source", str(otto_sample), "--format", "otto")

    events = [e for e in read_events(otto_sample, "otto") if isinstance(e, Event)]
    assert len(events) == 862
    want = expected_rows(events, settings)
    assert_rows_equal(stock_read(settings, sorted(want)), want)

    sid = sorted(want)[0]
    shown = json.loads(featrec(settings, "features", sid, "--json").stdout)
    assert shown["n_events"] == want[sid]["n_events"]
    assert shown["last_items"] == want[sid]["last_items"]


def test_dead_letters_are_kept_counted_and_reported(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    settings = sqlite_settings
    featrec(settings, "init")
    events = list(generate(GeneratorConfig(n_events=500, seed=3)))
    good = tmp_path / "good.jsonl"
    write_events(good, events)
    lines = good.read_text().splitlines()
    bad = [
        "{not json",
        json.dumps({"event_id": "x1", "session_id": "s", "item_id": "i", "type": "view"}),
        json.dumps({**json.loads(lines[0]), "price": -3}),
        json.dumps({**json.loads(lines[0]), "sesion_id": "typo"}),
    ]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join(lines[:100] + bad[:2] + lines[100:] + bad[2:]) + "\n")

    featrec(settings, "run", "sessions", "--source", str(mixed))

    letters = [json.loads(x) for x in settings.dead_letter_file.read_text().splitlines()]
    assert len(letters) == len(bad)
    reasons = " | ".join(d["reason"] for d in letters)
    for needle in ("invalid JSON", "ts: missing", "price:", "sesion_id: unknown field"):
        assert needle in reasons
    assert all(d["origin"].startswith(str(mixed)) for d in letters)

    want = expected_rows(events, settings)
    assert_rows_equal(stock_read(settings, sorted(want)), want)

    status = featrec(settings, "status").stdout
    assert f"dead letters   {len(bad)} in" in status
    assert f"events {len(events):,}" in status
    assert f"dead letters {len(bad)}" in status


def test_publish_to_redis_stream_and_run_the_stream_flow(redis_settings: Settings) -> None:
    settings = redis_settings
    featrec(settings, "init")
    events = list(generate(GeneratorConfig(n_events=2000, seed=5)))
    path = redis_settings.home / "events.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_events(path, events)
    want = expected_rows(events, settings)
    newest = max(want, key=lambda s: (want[s]["last_event_at_s"], s))

    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATREC_")}
    env.update(settings.to_env())
    # SIGINT back to its default in the child: a test run started in the background by a
    # non-interactive shell inherits it ignored, and the flow would never stop on Ctrl-C.
    flow = subprocess.Popen(
        [FEATREC, "run", "sessions", "--source", "redis"],
        env=env,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    try:
        out = featrec(settings, "publish", str(path)).stdout
        assert f"published {len(events):,} events" in out
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            got = stock_read(settings, [newest])[newest]
            if got["version"] == want[newest]["version"]:
                break
            time.sleep(0.5)
        assert_rows_equal(stock_read(settings, sorted(want)), want)
        status = featrec(settings, "status").stdout
        assert f"{settings.stream}: {len(events):,} entries" in status
    finally:
        os.killpg(flow.pid, signal.SIGINT)
        flow.wait(timeout=60)


def test_two_processes_share_the_work(sqlite_settings: Settings, tmp_path: Path) -> None:
    settings = sqlite_settings
    featrec(settings, "init")
    events = list(generate(GeneratorConfig(n_events=3000, seed=9)))
    files = []
    for part in (0, 1):  # one file partition per process
        path = tmp_path / f"part{part}.jsonl"
        write_events(path, [e for e in events if int(e.session_id[1:]) % 2 == part])
        files.append(str(path))

    featrec(
        settings,
        "run",
        "sessions",
        "--source",
        files[0],
        "--source",
        files[1],
        "--processes",
        "2",
    )
    want = expected_rows(events, settings)
    assert_rows_equal(stock_read(settings, sorted(want)), want)
    written = Counter()
    for status in (settings.home / "status").glob("*.json"):
        written[status.stem] = json.loads(status.read_text())["rows_written"]
    assert len(written) == 2, written
    assert all(n > 0 for n in written.values()), written
