"""Bad CLI input: a one-line message and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from featrec.cli import main


@pytest.mark.parametrize(
    ("args", "env", "code", "needle"),
    [
        (["run", "sessions", "--source", "/no/such/file.jsonl"], {}, 1, "neither 'redis', 'kafka'"),
        (["run", "sessions", "--source", "x", "--processes", "0"], {}, 2, "--processes"),
        (["run", "sessions", "--source", "x", "--speed", "-1"], {}, 2, "--speed"),
        (["generate"], {}, 2, "--out"),
        (["generate", "--out", "x.jsonl", "--events", "0"], {}, 2, "--events"),
        (["status"], {"FEATREC_ONLINE_STORE": "mongo"}, 1, "'mongo' is not one of: sqlite, redis"),
        (["status"], {"FEATREC_BATCH_MAX_ROWS": "lots"}, 1, "'lots' is not an integer >= 1"),
        (["publish", "/no/such/file"], {}, 2, "does not exist"),
        (["no-such-command"], {}, 2, "No such command"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(
    args: list[str], env: dict[str, str], code: int, needle: str
) -> None:
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == code, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1


def test_help_everywhere() -> None:
    runner = CliRunner()
    for args in (
        [],
        ["init"],
        ["generate"],
        ["run"],
        ["run", "sessions"],
        ["publish"],
        ["features"],
        ["status"],
        ["demo"],
    ):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage:" in result.output


def test_status_skips_unreadable_flow_status_files(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.mkdir()
    (status / "sessions-w0.json").write_text(json.dumps({"events_in": 1234, "rows_written": 5}))
    (status / "items-w0.json").write_text('{"events_in": 1')  # torn
    (status / "other-w0.json").write_text("[1, 2]")  # not an object
    env = {"FEATREC_HOME": str(tmp_path), "FEATREC_ONLINE_STORE": "sqlite", "FEATREC_STREAM": ""}
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 0, result.output
    flows = [line for line in result.output.splitlines() if line.startswith("flow ")]
    assert flows == [
        "flow sessions-w0  events 1,234  dead letters 0  rows written 5  last write never"
    ]
