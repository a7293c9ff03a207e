"""`featrec log import`: any supported file into the event log, idempotently (by event_id)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from featrec.adapters.files.event_files import read_events, write_events
from featrec.adapters.files.event_log import event_log_files, read_event_log
from featrec.cli.batch import log_group
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event
from featrec.jobs.log_import import import_events
from featrec.settings import Settings


def traffic(n: int = 3000, seed: int = 1) -> list[Event]:
    config = GeneratorConfig(n_events=n, n_users=50, n_items=80, concurrent_sessions=2, seed=seed)
    return list(generate(config))


def logged(directory: Path) -> list[dict[str, object]]:
    return read_event_log(directory).to_pylist()


def as_rows(events: list[Event]) -> list[dict[str, object]]:
    keys = ("event_id", "session_id", "user_id", "item_id", "type", "ts", "price", "category")
    rows = [{k: getattr(e, k) for k in keys} | {"quantity": e.quantity} for e in events]
    return sorted(rows, key=lambda r: (r["ts"], r["event_id"]))  # type: ignore[return-value]


def test_import_is_idempotent_and_keeps_the_first_copy(tmp_path: Path) -> None:
    events = traffic()
    source = tmp_path / "events.jsonl"
    write_events(source, events)
    # A second copy of an event with different content, later in the file, and a bad line.
    clash = events[10].to_dict() | {"item_id": "not-the-first"}
    with source.open("a") as f:
        f.write(json.dumps(clash) + "\n")
        f.write('{"event_id": "x", "ts": "yesterday"}\n')
    log = tmp_path / "log"
    dead = tmp_path / "dead.jsonl"
    first = import_events(log, read_events(source), dead_letter_file=dead)
    assert (first.read, first.imported, first.duplicates, first.dead_letters) == (
        len(events) + 1,
        len(events),
        1,
        1,
    )
    assert first.first_dead_letter is not None and "session_id" in first.first_dead_letter.reason
    assert [json.loads(line)["origin"] for line in dead.read_text().splitlines()] == [
        f"{source}:{len(events) + 2}"
    ]
    assert logged(log) == as_rows(events)
    assert {f.parent.name for f in first.files} == {
        f"date={d}" for d in {e.ts.date().isoformat() for e in events}
    }

    again = import_events(log, read_events(source))
    assert (again.imported, again.duplicates, again.files) == (0, len(events) + 1, [])
    assert logged(log) == as_rows(events)
    assert not [p for p in log.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_an_overlapping_file_adds_only_the_new_events(tmp_path: Path) -> None:
    events = traffic()
    log = tmp_path / "log"
    write_events(tmp_path / "a.parquet", events[:2000])
    write_events(tmp_path / "b.csv", events[1500:])
    import_events(log, read_events(tmp_path / "a.parquet"))
    second = import_events(log, read_events(tmp_path / "b.csv"))
    assert (second.imported, second.duplicates) == (len(events) - 2000, 500)
    assert logged(log) == as_rows(events)


def test_cli_log_import(tmp_path: Path) -> None:
    events = traffic(800)
    source = tmp_path / "traffic.jsonl"
    write_events(source, events)
    settings = Settings(home=tmp_path / "home")
    runner = CliRunner()
    result = runner.invoke(log_group, ["import", str(source)], obj=settings)
    assert result.exit_code == 0, result.output
    assert f"imported {len(events):,} of {len(events):,} valid events" in result.output
    result = runner.invoke(log_group, ["import", str(source), "--format", "jsonl"], obj=settings)
    assert result.exit_code == 0, result.output
    assert f"imported 0 of {len(events):,}" in result.output
    assert len(read_event_log(settings.event_log_dir)) == len(events)
    assert event_log_files(settings.event_log_dir)

    # A format that contradicts the suffix is a one-line error with a non-zero exit.
    result = runner.invoke(log_group, ["import", str(source), "--format", "csv"], obj=settings)
    assert result.exit_code == 1
    assert "the suffix says jsonl" in result.output
    result = runner.invoke(log_group, ["import", str(tmp_path / "missing.jsonl")], obj=settings)
    assert result.exit_code == 2


def test_otto_sessions_import(tmp_path: Path, otto_sample: Path) -> None:
    result = import_events(tmp_path / "log", read_events(otto_sample, "otto"))
    assert result.imported == result.read == 862
    assert result.dead_letters == 0
