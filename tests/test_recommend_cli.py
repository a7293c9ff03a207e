"""``featrec recommend`` and ``featrec explain`` (the click commands of featrec.cli.serve) on a
real Redis store, with a real model saved by the model store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import redis
from _feast_fixtures import copy_feature_repo
from _recommend_world import world_rows
from click.testing import CliRunner

from featrec.adapters.model_store import models_dir, save_model
from featrec.adapters.online_writers import RedisLayoutWriter
from featrec.cli.serve import explain, recommend
from featrec.core.ranking import RANKING_FEATURES, Ranker

# The world's rows are from 2023: serve them as fresh.
FRESH = ["--max-session-age", "1e12"]


@pytest.fixture
def env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    RedisLayoutWriter(redis.Redis.from_url(redis_url), "featrec").write(world_rows())
    return {
        "FEATREC_HOME": str(tmp_path / "home"),
        "FEATREC_REPO": str(copy_feature_repo(tmp_path / "feature_repo")),
        "FEATREC_ONLINE_STORE": "redis",
        "FEATREC_REDIS_URL": redis_url,
    }


def save_toy_model(home: Path) -> str:
    rng = np.random.default_rng(1)
    X = rng.random((400, len(RANKING_FEATURES)))
    share = RANKING_FEATURES.index("base_share")
    y = (X[:, share] > 0.5).astype(int)
    ranker = Ranker(feature_names=RANKING_FEATURES, max_iter=10, min_samples_leaf=5).fit(X, y)
    return save_model(ranker, models_dir(home), version="v-test").version


def test_recommend_prints_the_list_and_explain_reproduces_it(env: dict[str, str]) -> None:
    runner = CliRunner()
    version = save_toy_model(Path(env["FEATREC_HOME"]))
    result = runner.invoke(recommend, ["s1", "--k", "5", "--json", *FRESH], env=env)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["scorer"] == "model" and answer["model_version"] == version
    assert answer["degraded"] is False and len(answer["items"]) == 5

    result = runner.invoke(explain, [answer["request_id"], "--all"], env=env)
    assert result.exit_code == 0, result.output
    assert "reproduced from the log:" in result.output
    assert "session_features  s1                   2023-11-14T22:13:20" in result.output
    for item in answer["items"]:
        assert item["item_id"] in result.output

    result = runner.invoke(explain, [answer["request_id"], "--json"], env=env)
    explained = json.loads(result.output)
    kept = [i["item_id"] for i in explained["items"] if i["kept"]]
    assert kept == [i["item_id"] for i in answer["items"]]
    assert explained["reproduced"] is True and explained["model_version"] == version


def test_explain_exits_1_when_the_log_does_not_reproduce(env: dict[str, str]) -> None:
    runner = CliRunner()
    result = runner.invoke(
        recommend, ["s1", "--k", "5", "--json", "--model", "none", *FRESH], env=env
    )
    answer = json.loads(result.output)
    db = sqlite3.connect(Path(env["FEATREC_HOME"]) / "requests.db")
    (entry,) = db.execute(
        "SELECT entry FROM requests WHERE request_id = ?", (answer["request_id"],)
    ).fetchone()
    record = json.loads(entry)
    record["body"]["raw_scores"][0] += 1e-9
    db.execute(
        "UPDATE requests SET entry = ? WHERE request_id = ?",
        (json.dumps(record), answer["request_id"]),
    )
    db.commit()
    result = runner.invoke(explain, [answer["request_id"]], env=env)
    assert result.exit_code == 1
    assert "Error: the log does not reproduce: 1 raw score(s) differ" in result.output


def test_recommend_text_output_and_errors(env: dict[str, str]) -> None:
    runner = CliRunner()
    result = runner.invoke(recommend, ["s1", "--k", "3", *FRESH], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("request ") and "scorer candidate-order" in lines[0]
    assert lines[1].split()[:2] == ["1", "a1"] and "already in this session" in lines[1]
    stale = runner.invoke(recommend, ["s1", "--k", "3"], env=env)
    assert "DEGRADED: session features are" in stale.output
    missing = runner.invoke(recommend, ["s1", "--model", "v-missing"], env=env)
    assert missing.exit_code == 1 and "model 'v-missing' is not in" in missing.output
    unknown = runner.invoke(explain, ["nope"], env=env)
    assert unknown.exit_code == 1 and "'nope' is not in the request log" in unknown.output
    bad_k = runner.invoke(recommend, ["s1", "--k", "0"], env=env)
    assert bad_k.exit_code == 2
