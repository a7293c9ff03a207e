"""``featrec evaluate`` end to end: training phase, replay through ``python -m bytewax.run``
into a real Feast (SQLite) store, every policy at every point, results and report.

Checks that do not trust the evaluator: the number of prediction points is recounted from the
test file; lists from another system (here: the training top-20 computed independently, and an
oracle that knows the answer) are scored through ``--external`` on the same points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from featrec.adapters.files.event_files import write_events
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event

ROOT = Path(__file__).resolve().parents[2]


def _featrec(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEATREC_REPO": str(ROOT / "feature_repo"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", "from featrec.cli import main; main()", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Event], list[Event]]:
    """Generated traffic with returning users, split by session start time (80/20)."""
    root = tmp_path_factory.mktemp("evaluate")
    config = replace(
        GeneratorConfig(), n_events=6_000, n_users=150, n_items=300, concurrent_sessions=20, seed=11
    )
    events = sorted(generate(config), key=lambda e: e.ts)
    cut = events[int(len(events) * 0.8)].ts
    first: dict[str, object] = {}
    for e in events:
        first.setdefault(e.session_id, e.ts)
    train = [e for e in events if first[e.session_id] < cut]
    test = [e for e in events if first[e.session_id] >= cut]
    write_events(root / "train.jsonl", train)
    write_events(root / "test.jsonl", test)
    write_events(root / "all.jsonl", events)
    return root / "train.jsonl", root / "test.jsonl", train, test


def test_evaluate_replays_scores_and_reports(
    split: tuple[Path, Path, list[Event], list[Event]], tmp_path: Path
) -> None:
    train_path, test_path, train, test = split
    # Expected prediction points, counted here: every test event but each session's last.
    sizes = Counter(e.session_id for e in test)
    n_points = sum(n - 1 for n in sizes.values())
    # An independent popularity list, and an oracle list file written from the points file.
    top = [
        item
        for item, _ in sorted(
            Counter(e.item_id for e in train).items(), key=lambda kv: (-kv[1], kv[0])
        )[:20]
    ]

    out = tmp_path / "out"
    points_file = tmp_path / "points.jsonl"
    # First pass: write the points so that "other systems" can answer them.
    done = _featrec(
        "evaluate", "--train", str(train_path), "--test", str(test_path),
        "--out", str(out), "--train-points", "800", "--points-out", str(points_file),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for policy in (
        "popularity",
        "batch-only",
        "session-only",
        "item-model",
        "full",
        "stale-1s",
        "stale-1m",
    ):
        assert any(line.split()[:1] == [policy] and "HR@20" in line for line in lines), policy

    results = json.loads((out / "results.json").read_text())
    assert results["points"] == n_points
    assert results["replay"]["events"] == len(test)
    assert results["replay"]["dead_letters"] == 0 and results["replay"]["unreadable"] == 0
    by = {row["policy"]: row for row in results["policies"]}
    # Fresh session signals must beat yesterday's lists on traffic with in-session structure.
    assert by["full"]["hr@20"] > by["batch-only"]["hr@20"]
    assert by["session-only"]["hr@20"] > by["popularity"]["hr@20"]
    assert by["batch-only"]["degraded_share"] == 1.0 and by["full"]["degraded_share"] < 0.05
    # A 1 h delay on sessions this short leaves nothing fresher than the batch view.
    assert by["stale-1h"]["hr@20"] == pytest.approx(by["batch-only"]["hr@20"])
    for name in ("report.md", "report.html", "hr.svg", "lift.svg", "latency.svg", "freshness.svg"):
        assert (out / name).stat().st_size > 200, name
    assert "<svg" in (out / "report.html").read_text()

    points = [json.loads(line) for line in points_file.read_text().splitlines()]
    assert len(points) == n_points
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    targets = {
        (a["point"]["session_id"], a["point"]["position"]): a["point"]["target"] for a in answers
    }
    pop_file, oracle_file = tmp_path / "pop.jsonl", tmp_path / "oracle.jsonl"
    with pop_file.open("w") as f, oracle_file.open("w") as g:
        for p in points:
            key = {"session_id": p["session_id"], "position": p["position"]}
            f.write(json.dumps({**key, "items": top}) + "\n")
            g.write(
                json.dumps({**key, "items": [targets[(p["session_id"], p["position"])]]}) + "\n"
            )

    # The second run splits the one file by time itself: the same split as the fixture's. It
    # replays one session at a time, answered in the replay process (the first run: 64 at
    # once, answered by two worker processes): the figures must not change.
    assert json.loads((out / "spec.json").read_text())["workers"] == 2
    out2 = tmp_path / "out2"
    done = _featrec(
        "evaluate", "--events", str(train_path.parent / "all.jsonl"), "--test-share", "0.2",
        "--out", str(out2), "--concurrency", "1", "--workers", "1",
        "--policies", "popularity,session-only,item-model", "--external", f"pop={pop_file}",
        "--external", f"oracle={oracle_file}",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    second = json.loads((out2 / "results.json").read_text())
    assert second["points"] == n_points and "time split" in second["test"]
    rows = {r["policy"]: r for r in second["policies"]}
    assert rows["external:pop"]["hr@20"] == rows["popularity"]["hr@20"] == by["popularity"]["hr@20"]
    assert rows["external:oracle"]["hr@20"] == 1.0 and rows["external:oracle"]["mrr@20"] == 1.0
    for policy in ("session-only", "item-model"):
        for figure in ("hr@20", "mrr@20", "coverage@20"):
            assert rows[policy][figure] == by[policy][figure], (policy, figure)
    assert by["item-model"]["hr@20"] > by["popularity"]["hr@20"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "full,nonsense"], "unknown policy nonsense"),
        (["--external", "no-equals-sign"], "expected NAME=PATH"),
        (["--k", "0"], "--k"),
        (["--events", "x.jsonl"], "not both"),
    ],
)
def test_bad_arguments_get_one_line_and_nonzero_exit(
    split: tuple[Path, Path, list[Event], list[Event]],
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    train_path, test_path, _, _ = split
    done = _featrec(
        "evaluate", "--train", str(train_path), "--test", str(test_path),
        "--out", str(tmp_path / "o"), *args,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_input_and_used_out_dir_are_refused(
    split: tuple[Path, Path, list[Event], list[Event]], tmp_path: Path
) -> None:
    train_path, test_path, _, _ = split
    done = _featrec(
        "evaluate", "--train", str(tmp_path / "nope.jsonl"), "--test", str(test_path),
        "--out", str(tmp_path / "o"),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1 and "no such event file" in done.stderr
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("keep me")
    done = _featrec(
        "evaluate", "--train", str(train_path), "--test", str(test_path), "--out", str(used),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1 and "not empty" in done.stderr
    assert (used / "x").read_text() == "keep me"
