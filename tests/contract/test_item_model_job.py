"""The item model job on real parts: the event log read by DuckDB, a version in the item model
store, its lists written into an applied Feast repo (SQLite) and read back with stock Feast."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from featrec.adapters.duckdb.clicks import click_arrays
from featrec.adapters.duckdb.features import EventLogDB
from featrec.adapters.feast.repo import apply_repo, open_store
from featrec.adapters.files.event_log import EventLogWriter
from featrec.adapters.files.item_model_store import (
    LISTS_FILE,
    item_models_dir,
    list_item_model_versions,
    load_item_model,
)
from featrec.core.events.model import CLICK, Event
from featrec.core.items import slist
from featrec.errors import ConfigError
from featrec.jobs.item_model import read_clicks, train_item_model
from featrec.settings import Settings

pytestmark = pytest.mark.contract

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


def _events() -> list[Event]:
    """Sessions that run A -> B -> C (and D -> E), spread over two days, given out of order."""
    out = []
    n = 0
    for k in range(40):
        chain = ["A", "B", "C"] if k % 4 else ["D", "E"]
        for p, item in enumerate(chain):
            ts = T0 + timedelta(hours=k, seconds=10 * p)
            out.append(Event(f"e{n}", f"s{k:02d}", item, CLICK, ts))
            n += 1
    return out[::-1]


def test_duckdb_clicks_equal_the_plain_coding(tmp_path: Path) -> None:
    events = _events()
    EventLogWriter(tmp_path / "log").write(events[:50])
    EventLogWriter(tmp_path / "log").write(events[50:] + events[:5])  # a replayed copy
    with EventLogDB(tmp_path / "log") as db:
        arrays = click_arrays(db)
    plain = slist.Clicks.from_rows(
        [e.session_id for e in events],
        [e.item_id for e in events],
        [e.ts.timestamp() for e in events],
    )
    assert arrays.item_ids == list(plain.items)
    assert arrays.session_ids == list(plain.session_ids)
    np.testing.assert_array_equal(arrays.sessions, plain.sessions)
    np.testing.assert_array_equal(arrays.items, plain.item_codes)
    np.testing.assert_allclose(arrays.times, plain.times)


def test_train_version_write_and_read_back(sqlite_settings: Settings) -> None:
    settings = sqlite_settings
    apply_repo(settings)
    EventLogWriter(settings.event_log_dir).write(_events())
    # Half transitions (SLIT): what follows A is B. (With the tuned alpha 0.9, mostly session
    # co-occurrence, A's nearest is C, which shares its sessions just as much.)
    config = slist.SlistConfig(reg=1.0, top_k=3, alpha=0.5)
    model, report = train_item_model(settings, config)
    assert report.events == len(_events()) and report.items == 5
    assert report.rows_written == 5
    assert slist.recommend(["A"], model.lookup, config, 1) == ["B"]

    loaded, manifest = load_item_model(item_models_dir(settings.home))
    assert manifest.version == report.version
    assert loaded.neighbours == model.neighbours
    assert loaded.config == config

    store = open_store(settings)
    got = store.get_online_features(
        features=["item_model:model_ids", "item_model:model_weights", "item_model:model_version"],
        entity_rows=[{"item_id": "A"}, {"item_id": "unknown"}],
    ).to_dict()
    assert got["model_ids"][0] == [i for i, _ in model.neighbours["A"]]
    assert got["model_weights"][0] == pytest.approx([w for _, w in model.neighbours["A"]])
    assert got["model_version"] == [report.version, None]

    # retraining on part of the log makes a newer version whose rows replace the old ones
    _, again = train_item_model(settings, config, until=T0 + timedelta(hours=20))
    assert again.events < report.events
    assert list_item_model_versions(item_models_dir(settings.home)) == sorted(
        [report.version, again.version]
    )
    got = store.get_online_features(
        features=["item_model:model_version"], entity_rows=[{"item_id": "A"}]
    ).to_dict()
    assert got["model_version"] == [again.version]
    assert len(read_clicks(settings, T0 + timedelta(hours=20))) == again.events


def test_a_tampered_version_is_refused(sqlite_settings: Settings) -> None:
    settings = sqlite_settings
    EventLogWriter(settings.event_log_dir).write(_events())
    _, report = train_item_model(settings, slist.SlistConfig(top_k=2), write=False)
    path = item_models_dir(settings.home) / report.version / LISTS_FILE
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="sha256"):
        load_item_model(item_models_dir(settings.home))


def test_the_cli_trains_and_refuses_bad_arguments(sqlite_settings: Settings) -> None:
    from click.testing import CliRunner

    from featrec.cli.items import items

    settings = sqlite_settings
    apply_repo(settings)
    EventLogWriter(settings.event_log_dir).write(_events())
    done = CliRunner().invoke(items, ["train-model", "--top-k", "2"], obj=settings)
    assert done.exit_code == 0, done.output + repr(done.exception)
    assert "5 items (5 modelled)" in done.output and "5 rows written" in done.output
    model, _ = load_item_model(item_models_dir(settings.home))
    assert max(len(row) for row in model.neighbours.values()) <= 2
    bad = CliRunner().invoke(items, ["train-model", "--alpha", "2"], obj=settings)
    assert bad.exit_code != 0 and "--alpha" in bad.output
    empty = CliRunner().invoke(items, ["train-model", "--until", "2000-01-01"], obj=settings)
    assert empty.exit_code == 1 and "no events" in empty.output
