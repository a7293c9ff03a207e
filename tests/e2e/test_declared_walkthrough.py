"""The README's "adding a feature" walkthrough, run for real on a copy of ``feature_repo/``:
add a declared feature, ``featrec apply``, replay events through the declared flow, backfill,
build a point-in-time training set through stock Feast, train, read the feature online through
stock Feast; then ``featrec skew`` finds 0 mismatches, and reports a planted one."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from sklearn.linear_model import LogisticRegression

from dataflows.declared import build_flow, open_declared, open_declared_writer
from dataflows.sessions import build_flow as build_sessions_flow
from dataflows.sessions import open_online_writer
from featrec.adapters.duckdb.declared import POINTS_SCHEMA, DeclaredBatch
from featrec.adapters.feast.repo import open_store
from featrec.adapters.feast.writers import open_writer
from featrec.adapters.files.event_log import EventLogWriter
from featrec.adapters.files.model_store import list_versions, load_model, models_dir
from featrec.adapters.sqlite.partitioned_log import request_log_dir
from featrec.app.serving.record import ServedRequest
from featrec.cli import main
from featrec.core.events.formats import RawRecord
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event
from featrec.core.features.declared.model import AS_OF
from featrec.core.features.declared.ranking import METADATA_KEY
from featrec.core.features.rows import FeatureRow, micros
from featrec.core.ranking.ranker import RANKING_FEATURES
from featrec.jobs.declared import publish_gauges, read_online, skew
from featrec.jobs.project_init import create_project
from featrec.jobs.serving import (
    ServingOptions,
    open_recommender,
    open_request_log,
)
from featrec.project import load_project
from featrec.settings import Settings
from featrec.testing.declared import same_value
from featrec.testing.redis_server import RedisServer

NEW_FEATURE = """

user_spend = declared_view(
    name="user_spend",
    entity=user,
    data_dir=DATA,
    filters=Filters(event_types=("purchase",)),
    aggregations=[
        Aggregation(
            column="price", function="sum", time_window=7 * DAY, slide_interval=DAY, name="spend_7d"
        ),
        Aggregation(column="item_id", function="last_3", time_window=DAY, name="bought_24h"),
    ],
)

from feast import FeatureService

# The ranker reads these by name.
ranker_declared = FeatureService(
    name="ranker_declared",
    features=[
        user_spend[["spend_7d", "bought_24h"]],
        session_browsing[["mean_price", "n_categories"]],
        item_popularity[["n_events_1h"]],
    ],
)
"""
#: The ranker's declared columns, in the service's order.
RANKER_COLUMNS = (
    "user_spend__spend_7d",
    "user_spend__bought_24h",
    "session_browsing__mean_price",
    "session_browsing__n_categories",
    "item_popularity__n_events_1h",
)

BAD = {
    "unknown column": 'Aggregation(column="colour", function="count", time_window=DAY, name="x")',
    "unsupported function": (
        'Aggregation(column="price", function="median", time_window=DAY, name="x")'
    ),
    "does not fit entity 'user'": 'Aggregation(column="price", function="sum", name="x")',
}


def store_env(settings: Settings) -> dict[str, str]:
    """The environment that points the CLI at the same online store as ``settings``."""
    if settings.online_store != "redis":
        return {}
    return {"FEATREC_ONLINE_STORE": "redis", "FEATREC_REDIS_URL": settings.redis_url}


def invoke(settings: Settings, *args: str) -> Any:
    """``featrec --project ROOT ARGS`` in-process (ROOT: the project ``settings`` are of)."""
    root = settings.repo.parent
    return CliRunner().invoke(
        main, ["--project", str(root), *args], env=store_env(settings), catch_exceptions=False
    )


def new_project(root: Path, environ: dict[str, str] | None = None) -> tuple[Settings, Path]:
    """``featrec init`` without the apply: featrec.toml and a copy of feature_repo/."""
    create_project(root)
    settings = load_project(root.resolve()).settings(environ or {})
    return settings, settings.repo


def events_for_replay() -> list[Event]:
    config = GeneratorConfig(n_events=2500, seed=21, n_users=60, concurrent_sessions=30)
    events = list(generate(config))
    for i in range(1, len(events) - 1, 6):  # out of order
        events[i], events[i + 1] = events[i + 1], events[i]
    return events


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def project(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, list[Event]]]:
    """The walkthrough's project on SQLite, and on a private redis-server of its own."""
    with contextlib.ExitStack() as stack:
        environ = {}
        if request.param == "redis":
            server = RedisServer(tmp_path_factory.mktemp("walkthrough-redis"))
            server.start()
            stack.callback(server.stop)
            environ = {"FEATREC_ONLINE_STORE": "redis", "FEATREC_REDIS_URL": server.url}
        yield from _walkthrough_project(tmp_path_factory, environ)


def _walkthrough_project(
    tmp_path_factory: pytest.TempPathFactory, environ: dict[str, str]
) -> Iterator[tuple[Settings, list[Event]]]:
    settings, repo = new_project(tmp_path_factory.mktemp("walkthrough") / "shop", environ)
    assert settings.online_store == environ.get("FEATREC_ONLINE_STORE", "sqlite")
    # 1. Add a feature to feature_repo/featrec_declared.py.
    with (repo / "featrec_declared.py").open("a", encoding="utf-8") as f:
        f.write(NEW_FEATURE)
    # 2. featrec apply validates and applies it.
    result = invoke(settings, "apply")
    assert result.exit_code == 0, result.output
    assert "applied stream feature view user_spend" in result.output
    # 3. Replay: the events reach the event log and the (restarted) declared flow.
    events = events_for_replay()
    EventLogWriter(settings.event_log_dir).write(events)
    declarations = open_declared(settings)
    assert "user_spend" in {d.name for d in declarations}
    raws = [
        RawRecord("featrec", f"r:{i}", json.dumps(e.to_dict()), 1.0) for i, e in enumerate(events)
    ]
    # The sessions flow too: serving scores a session only with its row.
    run_main(
        build_sessions_flow(
            TestingSource(raws, batch_size=200),
            settings,
            writer_factory=partial(open_online_writer, settings),
            dead_letter_sink=TestingSink([]),
            event_log_sink=TestingSink([]),
        )
    )
    run_main(
        build_flow(
            TestingSource(raws, batch_size=200),
            declarations,
            writer_factory=partial(open_declared_writer, settings, declarations),
            dead_letter_sink=TestingSink([]),
        )
    )
    yield settings, events


def test_backfill_training_set_train_and_read_through_stock_feast(
    project: tuple[Settings, list[Event]],
) -> None:
    settings, events = project
    # 4. Backfill: the offline history Feast's point-in-time joins read.
    result = invoke(settings, "declared", "backfill", "user_spend", "--no-online")
    assert result.exit_code == 0, result.output
    assert "user_spend:" in result.output

    # 5. A point-in-time training set through stock Feast: label = the user buys later.
    users = sorted({e.user_id for e in events if e.user_id})
    stamps = [e.ts + timedelta(seconds=1) for e in events if e.user_id][
        :: max(1, len(events) // 200)
    ]
    owners = [e.user_id for e in events if e.user_id][:: max(1, len(events) // 200)]
    entity_df = pd.DataFrame({"user_id": owners, "event_timestamp": stamps})
    store = open_store(settings)
    training = store.get_historical_features(
        entity_df=entity_df, features=["user_spend:spend_7d", "user_spend:bought_24h"]
    ).to_df()
    assert len(training) == len(entity_df)
    # Each row holds what the stream held at that time: the batch engine as of the user's
    # newest event at or before the row's time.
    with DeclaredBatch(settings.event_log_dir) as batch:
        decl = next(d for d in open_declared(settings) if d.name == "user_spend")
        newest = {}
        for u, t in zip(owners, stamps, strict=True):
            times = [micros(e.ts) for e in events if e.user_id == u and e.ts <= t]
            newest[(u, t)] = max(times)
        points = pa.table(
            {"key": [k[0] for k in newest], AS_OF: list(newest.values())}, schema=POINTS_SCHEMA
        )
        expected = {(r["user_id"], r[AS_OF]): r for r in batch.compute(decl, points).to_pylist()}
    for row in training.itertuples():
        want = expected[(row.user_id, newest[(row.user_id, row.event_timestamp)])]
        assert same_value(float(row.spend_7d), want["spend_7d"]), row
    bought_later = {
        (u, t): any(e.user_id == u and e.type == "purchase" and e.ts > t for e in events)
        for u, t in zip(owners, stamps, strict=True)
    }
    labels = np.array([bought_later[(u, t)] for u, t in zip(owners, stamps, strict=True)])
    x = training[["spend_7d"]].astype(float).fillna(0.0).to_numpy()
    if len(set(labels)) == 2:
        model = LogisticRegression().fit(x, labels)
        assert model.predict_proba(x).shape == (len(x), 2)

    # 6. Read the feature online through stock Feast: the stream's values.
    online = store.get_online_features(
        features=["user_spend:spend_7d", "user_spend:bought_24h", f"user_spend:{AS_OF}"],
        entity_rows=[{"user_id": u} for u in users],
    ).to_dict()
    with DeclaredBatch(settings.event_log_dir) as batch:
        latest = {
            r["user_id"]: r for r in batch.compute(decl, batch.latest_points(decl)).to_pylist()
        }
    for i, u in enumerate(users):
        assert online[AS_OF][i] == latest[u][AS_OF]
        assert same_value(online["spend_7d"][i], latest[u]["spend_7d"])
        assert online["bought_24h"][i] == latest[u]["bought_24h"]


def test_skew_finds_nothing_on_the_replay_then_reports_a_planted_discrepancy(
    project: tuple[Settings, list[Event]],
) -> None:
    settings, _ = project
    result = invoke(settings, "skew", "--sample", "40", "--seed", "3", "--fail-on-mismatch")
    assert result.exit_code == 0, result.output
    assert "0/40 mismatched" in result.output

    # Plant: one user's online spend_7d off by 100, same as-of time (a newer version).
    store = open_store(settings)
    decl = next(d for d in open_declared(settings) if d.name == "user_spend")
    users = sorted(_keys(settings, decl))
    row = read_online(store, decl, [users[0]])[0]
    assert row is not None
    planted = {k: row[k] for k in (*(a.name for a in decl.aggregations), AS_OF)}
    planted["spend_7d"] = (planted["spend_7d"] or 0.0) + 100.0
    writer = open_writer(settings, store, views={decl.name: decl.view()})
    assert writer.write([FeatureRow(decl.name, users[0], planted, row[AS_OF] + 10**9)]) == 1

    report = skew(settings, ["user_spend"], sample=len(users), seed=1)
    spend = report.features[("user_spend", "spend_7d")]
    assert (spend.mismatches, spend.checked) == (1, len(users))
    assert spend.worst[0].key == users[0] and spend.worst[0].distance == pytest.approx(100.0)
    assert report.features[("user_spend", "bought_24h")].mismatches == 0
    registry = CollectorRegistry()
    publish_gauges(report, registry)
    rate = registry.get_sample_value(
        "featrec_skew_mismatch_rate", {"view": "user_spend", "feature": "spend_7d"}
    )
    assert rate == pytest.approx(1 / len(users))
    result = invoke(
        settings, "skew", "user_spend", "--sample", str(len(users)), "--fail-on-mismatch"
    )
    assert result.exit_code == 1
    assert f"key {users[0]!r}" in result.output


def _keys(settings: Settings, decl: Any) -> list[str]:
    with DeclaredBatch(settings.event_log_dir) as batch:
        return [str(k) for k in batch.latest_points(decl).column("key").to_pylist()]


@pytest.mark.parametrize("problem", sorted(BAD))
def test_apply_refuses_a_bad_declaration_naming_it(tmp_path: Path, problem: str) -> None:
    settings, repo = new_project(tmp_path / "shop")
    with (repo / "featrec_declared.py").open("a", encoding="utf-8") as f:
        f.write(
            f"\n\nbad = declared_view(name='bad_view', entity=user, data_dir=DATA, "
            f"aggregations=[{BAD[problem]}])\n"
        )
    result = invoke(settings, "apply")
    assert result.exit_code == 1
    assert "declaration 'bad_view'" in result.output and problem in result.output
    assert len(result.output.strip().splitlines()) <= 2  # "applying ..." and the error


def test_the_ranker_reads_declared_features_by_name_from_the_feature_service(
    project: tuple[Settings, list[Event]],
) -> None:
    """dataset build joins the service point in time, train appends its columns, serving
    reads them online for the request and explain reproduces the scores from the log."""
    settings, events = project
    result = invoke(settings, "declared", "backfill")
    assert result.exit_code == 0, result.output
    result = invoke(settings, "dataset", "build", "--max-points", "400")
    assert result.exit_code == 0, result.output
    table = pq.read_table(settings.home / "datasets" / "training.parquet")
    assert table.schema.metadata[METADATA_KEY].decode().split(",") == list(RANKER_COLUMNS)
    # Point in time: a row's declared value is the batch engine's as of the row's time.
    spend = table.column("user_spend__spend_7d").to_pylist()
    assert sum(v is not None for v in spend) > 0
    with DeclaredBatch(settings.event_log_dir) as batch:
        decl = next(d for d in open_declared(settings) if d.name == "user_spend")
        rows = table.select(["user_id", "event_timestamp"]).to_pylist()
        checked = 0
        for row, value in list(zip(rows, spend, strict=True))[::25]:
            times = [micros(e.ts) for e in events if e.user_id == row["user_id"]]
            times = [t for t in times if t <= micros(row["event_timestamp"])]
            if row["user_id"] is None or not times:
                assert value is None
                continue
            point = pa.table({"key": [row["user_id"]], AS_OF: [max(times)]}, POINTS_SCHEMA)
            assert same_value(value, batch.compute(decl, point).to_pylist()[0]["spend_7d"])
            checked += 1
        assert checked > 0

    result = invoke(settings, "train", "--holdout", "0.2", "--max-iter", "30")
    assert result.exit_code == 0, result.output
    root = models_dir(settings.home)
    loaded = load_model(root / list_versions(root)[-1], trusted_root=root)
    assert loaded.manifest.features == (*RANKING_FEATURES, *RANKER_COLUMNS)
    # The fitted trees split on declared columns: the model uses them.
    split_on = {
        loaded.manifest.features[i]
        for trees in loaded.ranker.model_._predictors
        for tree in trees
        for i in tree.nodes["feature_idx"][tree.nodes["is_leaf"] == 0]
    }
    assert split_on & set(RANKER_COLUMNS), sorted(split_on)

    # Serving: the model's declared columns are read online for the request, logged, and
    # explain re-scores the request from the log alone.
    session = max(
        (e for e in events if e.user_id is not None and e.type == "purchase"), key=lambda e: e.ts
    )
    recommender = open_recommender(
        settings, ServingOptions(model="latest"), clock=lambda: micros(session.ts) / 1e6 + 1
    )
    try:
        assert recommender.model is not None
        assert [c.name for c in recommender.model.declared] == list(RANKER_COLUMNS)
        answer = recommender.recommend(session.session_id, session.user_id, k=10)
        assert answer.scorer == "model" and answer.items, answer
        recommender.log.flush()
        record = recommender.log.get(answer.request_id)
        assert record is not None
        logged = {(r.view, r.key): r.row for r in ServedRequest.from_record(record).rows}
        spend_row = logged[("user_spend", session.user_id)]
        assert spend_row is not None and spend_row.values["spend_7d"] > 0
        assert ("session_browsing", session.session_id) in logged
        assert any(view == "item_popularity" for view, _ in logged)
        explained = recommender.explain(answer.request_id)
        assert explained.reproduced, explained.mismatches
    finally:
        recommender.log.close()
    # Each declared row is logged with its view's entity, so forgetting the user deletes
    # their rows by index and keeps the items' (the log's hour file, read directly).
    (part,) = request_log_dir(settings).glob("*Z.db")
    with contextlib.closing(sqlite3.connect(part)) as db:
        entity = dict(db.execute("SELECT DISTINCT view, entity FROM row_refs"))
    assert entity["user_spend"] == "user" and entity["session_browsing"] == "session"
    assert entity["item_popularity"] == "item"
    log = open_request_log(settings, "sqlite")
    assert log.forget(session.user_id, {session.session_id}) == 1
    log.close()
    with contextlib.closing(sqlite3.connect(part)) as db:
        views = {view for (view,) in db.execute("SELECT view FROM row_refs")}
    assert "item_popularity" in views and not views & {"user_spend", "session_browsing"}
