"""Item signals through the store and the CLI: the flow's rows read back with stock Feast
(SQLite and a real Redis), ``featrec items similar|trending|bootstrap`` and ``run items``.

The CLI objects are invoked directly (``items``, ``run_items``), as the lead registers them
under ``featrec``; settings come from ``FEATREC_*`` variables, as in production.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from click.testing import CliRunner, Result

from dataflows.items import build_flow
from dataflows.sessions import open_online_writer
from featrec.adapters.files.event_files import write_events
from featrec.adapters.files.event_history import events_from_log
from featrec.adapters.files.event_log import EventLogWriter
from featrec.app.item_signals import (
    TRENDING_KEY,
    ItemSignals,
    ItemSignalsConfig,
    bootstrap,
    trending_key,
)
from featrec.cli.items import items, run_items
from featrec.core.events.formats import RawRecord
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event
from featrec.core.features.catalog import ITEM_NEIGHBOURS, ITEM_TRENDING
from featrec.core.features.rows import FeatureRow
from featrec.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
JANUARY = datetime(2024, 1, 1, tzinfo=UTC)


def generated(n: int, seed: int = 5, start: datetime = JANUARY) -> list[Event]:
    config = GeneratorConfig(
        n_events=n, seed=seed, concurrent_sessions=30, n_items=400, start=start
    )
    return list(generate(config))


def records(events: Sequence[Event]) -> list[RawRecord]:
    return [
        RawRecord("featrec", f"t:{i}", json.dumps(e.to_dict()), 1.0) for i, e in enumerate(events)
    ]


def cli_env(settings: Settings) -> dict[str, str]:
    """The variables that rebuild ``settings``; other FEATREC_* of the caller are cleared."""
    env: dict[str, Any] = {k: None for k in os.environ if k.startswith("FEATREC_")}
    env.update(settings.to_env())
    return env


def invoke(command: Any, args: Sequence[str], settings: Settings) -> Result:
    return CliRunner().invoke(command, list(args), env=cli_env(settings))


def stored(settings: Settings, rows: Sequence[FeatureRow]) -> list[Any]:
    """The rows' values read back through stock Feast (``get_online_features``)."""
    from featrec.adapters.feast.reader import FeastOnlineReader
    from featrec.adapters.feast.repo import open_store

    reader = FeastOnlineReader(open_store(settings))
    out: list[Any] = []
    for view in (ITEM_NEIGHBOURS.name, ITEM_TRENDING.name):
        keys = [r.key for r in rows if r.view == view]
        out += [dict(v) if v is not None else None for v in reader.read(view, keys)]
    return out


def ordered(rows: Sequence[FeatureRow]) -> list[Any]:
    return [
        dict(r.values)
        for view in (ITEM_NEIGHBOURS.name, ITEM_TRENDING.name)
        for r in rows
        if r.view == view
    ]


def one_line_error(result: Result, code: int, needle: str) -> None:
    assert result.exit_code == code, result.output
    assert needle in result.output, result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1


@pytest.fixture(params=["sqlite", "redis"])
def applied(request: pytest.FixtureRequest) -> Settings:
    """An applied Feast repo on SQLite, or on the private redis-server."""
    from featrec.adapters.feast.repo import apply_repo

    settings: Settings = request.getfixturevalue(f"{request.param}_settings")
    apply_repo(settings)
    return settings


def expected_json(signals: ItemSignals, key: str, k: int) -> list[dict[str, Any]]:
    [row] = [r for r in signals.rows() if (r.view, r.key) == (ITEM_NEIGHBOURS.name, key)]
    ids: list[str] = row.values["neighbour_ids"]  # type: ignore[assignment]
    weights: list[float] = row.values["neighbour_weights"]  # type: ignore[assignment]
    return [{"item_id": i, "weight": w} for i, w in zip(ids[:k], weights[:k], strict=True)]


def test_flow_rows_round_trip_through_feast_and_the_cli(applied: Settings) -> None:
    settings = applied.with_(item_write_interval_s=0.0)
    events = generated(800)
    built = build_flow(
        TestingSource(records(events), batch_size=64),
        settings,
        writer_factory=partial(open_online_writer, settings),
        dead_letter_sink=TestingSink([]),
    )
    run_main(built)
    signals = bootstrap(events, ItemSignalsConfig.from_settings(settings))
    rows = signals.rows()
    # Stock Feast reads back exactly the values the oracle computes (lists of floats included).
    assert stored(settings, rows) == ordered(rows)

    anchor = max(signals.index.sketches, key=lambda a: len(signals.index.sketches[a].counts))
    result = invoke(items, ["similar", anchor, "--k", "5", "--json"], settings)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["item_id"] == anchor
    assert shown["items"] == expected_json(signals, anchor, 5)

    result = invoke(items, ["trending", "--json"], settings)
    assert json.loads(result.output)["items"] == expected_json(signals, TRENDING_KEY, 20)
    category = next(t.category for t in signals.board.items.values() if t.category)
    result = invoke(items, ["trending", "--category", category, "--k", "3", "--json"], settings)
    assert json.loads(result.output)["items"] == expected_json(signals, trending_key(category), 3)
    text = invoke(items, ["similar", anchor, "--k", "2"], settings).output.splitlines()
    assert text[0].startswith(f"neighbours of {anchor} (weights as of 20")
    assert [line.split()[:2] for line in text[1:]] == [
        ["1", expected_json(signals, anchor, 2)[0]["item_id"]],
        ["2", expected_json(signals, anchor, 2)[1]["item_id"]],
    ]


def test_bootstrap_writes_the_flow_rows_and_never_replaces_newer_ones(
    sqlite_settings: Settings,
) -> None:
    from featrec.adapters.feast.repo import apply_repo

    settings = sqlite_settings
    apply_repo(settings)
    events = generated(700)
    path = settings.home / "events.jsonl"
    write_events(path, events)
    with path.open("a") as f:
        f.write("{not json\n")
    config = ItemSignalsConfig.from_settings(settings)
    signals = bootstrap(events, config)
    rows = signals.rows()

    result = CliRunner().invoke(items, ["bootstrap", "--source", str(path)], env=cli_env(settings))
    assert result.exit_code == 0, result.output
    assert f"bootstrapped from {len(events):,} events" in result.stdout
    assert f"wrote {len(rows):,} of {len(rows):,} rows" in result.stdout
    assert "1 records skipped, first: " in result.stderr and "json" in result.stderr
    assert stored(settings, rows) == ordered(rows)
    again = invoke(items, ["bootstrap", "--source", str(path)], settings)
    assert f"wrote 0 of {len(rows):,} rows" in again.output

    # The event log: a later month, written in shuffled batches; read back oldest first.
    later = generated(500, seed=6, start=datetime(2024, 3, 1, tzinfo=UTC))
    writer = EventLogWriter(settings.event_log_dir)
    writer.write(later[250:])
    writer.write(later[:250])
    from_log = [e for e in events_from_log(settings.event_log_dir) if isinstance(e, Event)]
    assert from_log == sorted(later, key=lambda e: (e.ts, e.event_id))
    result = invoke(items, ["bootstrap", "--from-log"], settings)
    assert result.exit_code == 0, result.output
    assert "bootstrapped from 500 events in the event log" in result.output
    log_rows = bootstrap(from_log, config).rows()
    assert stored(settings, log_rows) == ordered(log_rows)


@pytest.mark.parametrize(
    ("args", "env", "code", "needle"),
    [
        (["bootstrap"], {}, 2, "exactly one of --source FILE or --from-log"),
        (["bootstrap", "--source", "x.jsonl", "--from-log"], {}, 2, "exactly one of"),
        (["bootstrap", "--from-log", "--format", "otto"], {}, 2, "--format applies"),
        (["bootstrap", "--source", "/no/such.jsonl"], {}, 1, "is not an existing file"),
        (["bootstrap", "--from-log"], {}, 1, "no valid events in the event log"),
        (["similar", "__trending__"], {}, 1, "use `featrec items trending`"),
        (["similar", "x", "--k", "0"], {}, 2, "--k"),
        (
            ["similar", "x"],
            {"FEATREC_ITEM_IDLE_S": "0"},
            1,
            "FEATREC_ITEM_IDLE_S='0' is not a finite number > 0",
        ),
        (
            ["similar", "x"],
            {"FEATREC_ITEM_WRITE_INTERVAL_S": "soon"},
            1,
            "FEATREC_ITEM_WRITE_INTERVAL_S='soon' is not a finite number >= 0",
        ),
        (["similar", "x"], {}, 1, "apply the feature repo first"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(
    feast_repo: Settings, args: list[str], env: dict[str, str], code: int, needle: str
) -> None:
    result = CliRunner().invoke(items, args, env={**cli_env(feast_repo), **env})
    one_line_error(result, code, needle)


def test_missing_rows_are_reported_not_printed_empty(sqlite_settings: Settings) -> None:
    from featrec.adapters.feast.repo import apply_repo

    apply_repo(sqlite_settings)
    result = invoke(items, ["similar", "nope"], sqlite_settings)
    one_line_error(result, 1, "no neighbours for item 'nope' in the sqlite store")
    result = invoke(items, ["trending", "--category", "shoes"], sqlite_settings)
    one_line_error(result, 1, "no trending list for category 'shoes'")
    result = invoke(run_items, ["--source", "/no/such/file.jsonl"], sqlite_settings)
    one_line_error(result, 1, "neither 'redis', 'kafka', 'collector' nor an existing file")


def test_help() -> None:
    runner = CliRunner()
    for command, args in [
        (items, []),
        (items, ["similar"]),
        (items, ["trending"]),
        (items, ["bootstrap"]),
        (run_items, []),
    ]:
        result = runner.invoke(command, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage:" in result.output


@pytest.mark.e2e
def test_run_items_launches_the_flow_and_similar_reads_its_rows(
    sqlite_settings: Settings,
) -> None:
    """``run items`` starts ``python -m bytewax.run "dataflows.items:flow()"`` in a child
    process; its rows are the bootstrap's (same file, same order)."""
    from featrec.adapters.feast.repo import apply_repo

    settings = sqlite_settings.with_(home=sqlite_settings.home.resolve())
    apply_repo(settings)
    events = generated(400, seed=9)
    path = settings.home / "events.jsonl"
    write_events(path, events)
    result = CliRunner().invoke(
        run_items, ["--source", str(path)], env={**cli_env(settings), "PYTHONPATH": str(REPO_ROOT)}
    )
    assert result.exit_code == 0, result.output
    signals = bootstrap(events, ItemSignalsConfig.from_settings(settings))
    rows = signals.rows()
    assert stored(settings, rows) == ordered(rows)
    status = json.loads((settings.home / "status" / "items-w0.json").read_text())
    assert status["events_in"] == len(events)


def test_run_items_with_a_recovery_dir_cools_idle_sessions_into_it(
    sqlite_settings: Settings,
) -> None:
    """``run items --recovery-dir`` gives the pair step its store of idle sessions inside the
    recovery store (``featrec/cold-sessions/items``): replayed at 100x, sessions idle for
    0.2 s cool and come back, and the rows are still the bootstrap's."""
    from featrec.adapters.feast.repo import apply_repo
    from featrec.adapters.sqlite.cold_sessions import ColdSessions

    settings = sqlite_settings.with_(home=sqlite_settings.home.resolve())
    apply_repo(settings)
    events = generated(400, seed=9)  # ~5 minutes of event time: ~3 s at 100x
    path = settings.home / "events.jsonl"
    write_events(path, events)
    recovery = settings.home / "recovery"
    env = {**cli_env(settings), "PYTHONPATH": str(REPO_ROOT), "FEATREC_SESSION_COOL_S": "0.2"}
    result = CliRunner().invoke(
        run_items,
        ["--source", str(path), "--speed", "100", "--recovery-dir", str(recovery)],
        env=env,
    )
    assert result.exit_code == 0, result.output
    rows = bootstrap(events, ItemSignalsConfig.from_settings(settings)).rows()
    assert stored(settings, rows) == ordered(rows)
    store = ColdSessions(recovery / "featrec" / "cold-sessions" / "items")
    assert len(store.session_ids()) > 10
    # The sessions flow's own store (the directory above) holds none of them.
    assert ColdSessions(recovery / "featrec" / "cold-sessions").session_ids() == []
