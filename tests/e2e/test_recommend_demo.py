"""The end of ``featrec demo``: a live session on the embedded SQLite store, fast-forwarded."""

from __future__ import annotations

import re

from featrec.adapters.feast.repo import apply_repo
from featrec.cli.live_session import MAX_SESSION_AGE_S, SESSION_ID, run_live_session
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.jobs.serving import open_request_log
from featrec.settings import Settings


def test_live_session_updates_with_reasons_then_falls_back(sqlite_settings: Settings) -> None:
    apply_repo(sqlite_settings)
    events = list(generate(GeneratorConfig(n_events=2000, seed=42)))
    lines: list[str] = []
    run_live_session(sqlite_settings, events, lines.append, n_events=4, pace=200.0)
    text = "\n".join(lines)
    assert lines[0].startswith(f"6/6 live session {SESSION_ID!r}: item signals bootstrapped")
    versions = [int(v) for v in re.findall(r"session version (\d+)", text)]
    assert len(versions) == 4 and versions == sorted(set(versions))  # one per event, increasing
    assert "scorer candidate-order" in text
    ranked = [line for line in lines if re.match(r"\s+1\. ", line)]
    assert len(ranked) == 5  # after each of the 4 events, and once degraded
    assert "already in this session" in text  # reasons are shown
    degraded = [line for line in lines if "DEGRADED:" in line]
    assert len(degraded) == 1
    assert f"(limit {MAX_SESSION_AGE_S:g} s): the session stream may be down" in degraded[0]
    # every answer is in the request log and explains itself
    request_id = lines[-1].split()[-1]
    log = open_request_log(sqlite_settings, "sqlite")
    record = log.get(request_id)
    assert record is not None and record.body["degraded_code"] == "stale_session"
    log.close()
