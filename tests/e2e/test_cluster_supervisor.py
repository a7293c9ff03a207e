"""The launcher's supervision of a process set, on real (tiny) child processes: a clean end
ends it, a failure restarts the whole set with doubling back-off and says so, a run of
failures gives up with the failing status, and a recovery store too small for the processes
is refused with the sizing rule."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from featrec.errors import ConfigError
from featrec.jobs.cluster import RESTARTS, ClusterSupervisor, RestartPolicy
from featrec.jobs.launch import ensure_recovery_store


def children(*scripts: str) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", script]) for script in scripts]


def test_a_clean_end_of_every_process_ends_the_run(tmp_path: Path) -> None:
    supervisor = ClusterSupervisor(
        lambda: children("pass", "import time; time.sleep(0.3)"),
        RestartPolicy(),
        flow="t-clean",
        home=tmp_path,
    )
    outcome = supervisor.run()
    assert (outcome.status, outcome.restarts) == (0, [])
    status = json.loads((tmp_path / "status" / "cluster-t-clean.json").read_text())
    assert status["state"] == "finished" and status["restarts"] == 0


def test_a_dead_process_restarts_the_whole_set_with_back_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "runs"
    starts: list[list[subprocess.Popen[bytes]]] = []
    # Every start appends a line; in the first two, process 1 fails while process 0 would run
    # on; in the third both end cleanly.
    runs_before = (
        f"import pathlib, sys, time; p = pathlib.Path({str(marker)!r}); "
        "n = len(p.read_text().splitlines()) if p.exists() else 0; "
    )

    def start() -> list[subprocess.Popen[bytes]]:
        survivor, failing = children(
            runs_before + "time.sleep(30 if n < 2 else 0)",
            runs_before + "sys.exit(3 if n < 2 else 0)",
        )
        failing.wait()
        with marker.open("a") as f:
            f.write("run\n")
        starts.append([survivor, failing])
        return [survivor, failing]

    delays: list[float] = []
    before = RESTARTS.labels(flow="t-restart")._value.get()
    supervisor = ClusterSupervisor(
        start,
        RestartPolicy(max_restarts=5, backoff_s=0.5),
        flow="t-restart",
        home=tmp_path,
        sleep=delays.append,
    )
    with caplog.at_level(logging.WARNING, logger="featrec.cluster"):
        outcome = supervisor.run()
    assert len(starts) == 3
    # the first two runs: the survivor was stopped (SIGTERM) when its peer failed
    assert all(run[0].returncode not in (None, 0) for run in starts[:2])
    assert (
        outcome.status != 0
        or outcome.restarts == ["bytewax process 1 of 2 exited with status 3"] * 2
    )
    assert delays == [0.5, 1.0]
    assert RESTARTS.labels(flow="t-restart")._value.get() - before == 2
    assert "restarting all 2 processes from the recovery store in 0.5 s" in caplog.text
    status = json.loads((tmp_path / "status" / "cluster-t-restart.json").read_text())
    assert status["restarts"] == 2


def test_a_run_of_failures_gives_up_with_the_failing_status(tmp_path: Path) -> None:
    delays: list[float] = []
    supervisor = ClusterSupervisor(
        lambda: children("import sys; sys.exit(7)"),
        RestartPolicy(max_restarts=2, backoff_s=1.0, max_backoff_s=1.5),
        flow="t-give-up",
        home=tmp_path,
        sleep=delays.append,
    )
    outcome = supervisor.run()
    assert outcome.status == 7 and len(outcome.restarts) == 2
    assert delays == [1.0, 1.5]
    status = json.loads((tmp_path / "status" / "cluster-t-give-up.json").read_text())
    assert status["state"].startswith("failed: bytewax process 0 of 1 exited with status 7")


def test_a_recovery_store_smaller_than_the_cluster_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "recovery"
    ensure_recovery_store(store, partitions=2, processes=2)
    assert len(list(store.glob("part-*.sqlite3"))) == 2
    ensure_recovery_store(store, partitions=8, processes=2)  # kept as it is
    assert len(list(store.glob("part-*.sqlite3"))) == 2
    with pytest.raises(ConfigError, match="2 partitions, fewer than 3 processes"):
        ensure_recovery_store(store, partitions=8, processes=3)
