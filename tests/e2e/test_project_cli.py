"""`featrec init DIR` and project discovery through the CLI: commands run from any directory
of a project, say how to create one where there is none, and init never overwrites."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from featrec.cli import main


@pytest.fixture
def outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory with no FEATREC_* in the environment."""
    for name in list(os.environ):
        if name.startswith("FEATREC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "args", [["status"], ["features", "s1"], ["apply"], ["log", "import", "x.jsonl"], ["demo"]]
)
def test_no_project_says_how_to_create_one(outside: Path, args: list[str]) -> None:
    (outside / "x.jsonl").write_text("")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "featrec init DIR" in errors[0], result.output
    assert "Traceback" not in result.output


def test_help_needs_no_project(outside: Path) -> None:
    for args in (["status", "--help"], ["init", "--help"], ["map", "check", "--help"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.output)


def test_init_then_every_directory_finds_it(outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["init", "shop"])
    assert result.exit_code == 0, result.output
    shop = (outside / "shop").resolve()
    assert (shop / "feature_repo" / "data" / "registry.db").is_file()
    assert (shop / ".featrec" / "events").is_dir()

    deep = shop / "notebooks" / "q4"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    status = runner.invoke(main, ["status"])
    assert status.exit_code == 0, status.output
    assert f"repo {shop / 'feature_repo'}" in status.output

    monkeypatch.chdir(outside)
    by_flag = runner.invoke(main, ["--project", str(shop), "status"])
    assert by_flag.exit_code == 0 and str(shop) in by_flag.output
    monkeypatch.setenv("FEATREC_PROJECT", str(shop))
    by_env = runner.invoke(main, ["status"])
    assert by_env.exit_code == 0 and str(shop) in by_env.output


def test_init_refuses_an_existing_project(outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["init", "shop"]).exit_code == 0
    config = outside / "shop" / "featrec.toml"
    config.write_text(config.read_text() + "# mine\n")
    again = runner.invoke(main, ["init", "shop"])
    assert again.exit_code == 1 and "never overwrites" in again.output
    assert config.read_text().endswith("# mine\n")
    monkeypatch.chdir(outside / "shop")
    here = runner.invoke(main, ["init"])
    assert here.exit_code == 1 and "featrec apply" in here.output
    assert runner.invoke(main, ["apply"]).exit_code == 0


def test_bad_project_flag_is_one_line(outside: Path) -> None:
    result = CliRunner().invoke(main, ["--project", str(outside), "status"])
    assert result.exit_code == 1
    assert "is not a featrec project" in result.output


CLICKSTREAM = """
[mappings.clickstream]
delimiter = ";"
[mappings.clickstream.fields]
session_id = "sid"
user_id = "uid"
item_id = "product"
type = { const = "view" }
[mappings.clickstream.ts]
column = "ts_ms"
date = "date"
unit = "ms"
"""


def test_map_check_and_log_import_with_a_project_mapping(
    outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["init", "shop"]).exit_code == 0
    shop = outside / "shop"
    with (shop / "featrec.toml").open("a") as f:
        f.write(CLICKSTREAM)
    clicks = shop / "clicks.csv"
    clicks.write_text(
        "sid;uid;product;ts_ms;date\n"
        "s1;u1;p1;3600000;2026-11-02\n"
        "s1;u1;p2;3660000;2026-11-02\n"
        "s2;u2;p3;later;2026-11-02\n"
    )
    monkeypatch.chdir(shop)
    check = runner.invoke(main, ["map", "check", "clicks.csv", "--mapping", "clickstream"])
    assert check.exit_code == 1
    assert "ts=2026-11-02T01:01:00+00:00" in check.output
    assert "refused  ts: column 'ts_ms': 'later' is not a number of ms into the day" in (
        check.output
    )
    assert "2 of 3 rows map" in check.output
    good = runner.invoke(
        main, ["map", "check", "clicks.csv", "--mapping", "clickstream", "--rows", "2"]
    )
    assert good.exit_code == 0, good.output

    imported = runner.invoke(main, ["log", "import", "clicks.csv", "--mapping", "clickstream"])
    assert imported.exit_code == 0, imported.output
    assert "imported 2 of 2 valid events" in imported.output
    dead = (shop / ".featrec" / "deadletters.jsonl").read_text()
    assert "clicks.csv:4" in dead and "'later'" in dead
    again = runner.invoke(main, ["log", "import", "clicks.csv", "--mapping", "clickstream"])
    assert "imported 0 of 2 valid events" in again.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mapping", "nope"], "has no mapping 'nope' (mappings: clickstream)"),
        (["--mapping", "clickstream", "--map", "fields.item_id=sku"], "column 'sku'"),
        (["--mapping", "clickstream", "--map", "ts.unit=hours"], "ts.unit must be one of"),
        (["--map", "fields.session_id"], "write KEY=VALUE"),
        (["--mapping", "missing.toml"], "mapping file not found"),
    ],
)
def test_bad_mappings_on_the_command_line(
    outside: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], needle: str
) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["init", "shop"]).exit_code == 0
    shop = outside / "shop"
    with (shop / "featrec.toml").open("a") as f:
        f.write(CLICKSTREAM)
    (shop / "clicks.csv").write_text("sid;uid;product;ts_ms;date\n")
    monkeypatch.chdir(shop)
    result = runner.invoke(main, ["map", "check", "clicks.csv", *args])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and needle in errors[0], result.output


@pytest.mark.redis
def test_publish_through_a_mapping_puts_featrec_events_on_the_stream(
    outside: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    import json

    from featrec.adapters.redis.streams import EVENT_FIELD, connect
    from featrec.core.events.model import event_from_mapping

    mapping = outside / "tracker.toml"
    mapping.write_text(
        '[fields]\nsession_id = "ctx.sid"\nitem_id = "sku"\ntype = "name"\n'
        '[ts]\ncolumn = "at"\nunit = "us"\n[types]\naddToCart = "cart"\n'
    )
    (outside / "tracker.jsonl").write_text(
        '{"ctx": {"sid": "s1"}, "sku": "p1", "name": "addToCart", "at": 1793627130123456}\n'
        '{"ctx": {}, "sku": "p2", "name": "addToCart", "at": 1793627130123457}\n'
    )
    monkeypatch.setenv("FEATREC_REPO", str(outside))  # no project: settings from the env
    monkeypatch.setenv("FEATREC_REDIS_URL", redis_url)
    result = CliRunner().invoke(
        main, ["publish", "tracker.jsonl", "--mapping", str(mapping), "--stream", "shop"]
    )
    assert result.exit_code == 0, result.output
    assert "published 1 events to shop" in result.output
    assert "session_id: path 'ctx.sid' not found" in result.output
    [(_, fields)] = connect(redis_url).xrange("shop")
    event = event_from_mapping(json.loads(fields[EVENT_FIELD.encode()]))
    assert (event.session_id, event.item_id, event.type) == ("s1", "p1", "cart")
    assert event.ts.isoformat() == "2026-11-02T13:45:30.123456+00:00"


def test_init_uses_its_own_stores_whatever_the_environment_points_at(
    outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATREC_HOME", str(outside / "elsewhere-home"))
    monkeypatch.setenv("FEATREC_REPO", str(outside / "elsewhere-repo"))
    result = CliRunner().invoke(main, ["init", "shop"])
    assert result.exit_code == 0, result.output
    assert (outside / "shop" / ".featrec" / "events").is_dir()
    assert (outside / "shop" / "feature_repo" / "data" / "registry.db").is_file()
    assert not (outside / "elsewhere-home").exists()


def test_init_creates_the_project_the_environment_names(
    outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATREC_PROJECT", str(outside / "shop"))
    runner = CliRunner()
    before = runner.invoke(main, ["status"])
    assert before.exit_code == 1 and "is not a featrec project" in before.output
    assert runner.invoke(main, ["init", "shop"]).exit_code == 0
    after = runner.invoke(main, ["status"])
    assert after.exit_code == 0, after.output


def test_serve_refuses_a_bad_collector_mapping_before_it_starts(
    outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["init", "shop"]).exit_code == 0
    monkeypatch.chdir(outside / "shop")
    result = runner.invoke(main, ["serve", "--mapping", "nope", "--port", "1"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "has no mapping 'nope'" in errors[0], result.output
