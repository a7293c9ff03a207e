"""``featrec recommend`` and ``featrec explain`` (the click commands of featrec.cli.serve) on a
real Redis store, with a real model saved by the model store."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner

from featrec.adapters.feast.writers import RedisLayoutWriter
from featrec.adapters.files.model_store import models_dir, save_model
from featrec.app.serving.config import ServingConfig
from featrec.cli.serve import explain, recommend
from featrec.core.evaluation.experiments import ArmConfig, Experiment, assign
from featrec.core.ranking.ranker import RANKING_FEATURES, Ranker
from featrec.errors import ConfigError
from featrec.jobs.serving import ServingOptions, open_request_log, options_from_env
from featrec.settings import ServeSettings, Settings
from featrec.testing.feast_repo import copy_feature_repo
from featrec.testing.shop import world_rows

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
    (part,) = (Path(env["FEATREC_HOME"]) / "requests").glob("*.db")  # this hour's file
    db = sqlite3.connect(part)
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


def test_recommend_in_an_experiment_and_explain_it(env: dict[str, str]) -> None:
    runner = CliRunner()
    arms = ["--experiment", "e", "--arms", "pop=1:fallback,order=1", "--salt", "x"]
    seen = {}
    for unit in ("u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"):
        result = runner.invoke(
            recommend, ["s1", "--user", unit, "--k", "5", "--json", *arms, *FRESH], env=env
        )
        assert result.exit_code == 0, result.output
        answer = json.loads(result.output)
        assert answer["experiment"] == "e"
        expected = assign(Experiment("e", "x", {"pop": 1, "order": 1}), unit)
        assert answer["arm"] == expected
        assert answer["scorer"] == {"pop": "fallback", "order": "candidate-order"}[expected]
        seen[expected] = answer["request_id"]
        explained = runner.invoke(explain, [answer["request_id"], "--json"], env=env)
        assert explained.exit_code == 0, explained.output
        data = json.loads(explained.output)
        assert data["reproduced"] is True and (data["experiment"], data["arm"]) == ("e", expected)
    assert set(seen) == {"pop", "order"}
    text = runner.invoke(recommend, ["s1", "--user", "u1", *arms, *FRESH], env=env)
    assert "  arm e/" in text.output.splitlines()[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arms", "a=1,b=1"], "--arms and --salt need --experiment NAME"),
        (["--experiment", "e"], "--experiment needs --arms"),
        (["--experiment", "e", "--arms", "a=1"], "at least two arms"),
        (["--experiment", "e", "--arms", "a=1:magic,b=1"], "arm scorer must be one of"),
        (["--experiment", "e", "--arms", "a=1,b=1", "--unit", "device"], "'device' is not one of"),
    ],
)
def test_bad_experiment_options_are_usage_errors(
    env: dict[str, str], args: list[str], message: str
) -> None:
    result = CliRunner().invoke(recommend, ["s1", *args], env=env)
    assert result.exit_code == 2 and message in result.output, result.output


def test_serve_hands_the_experiment_to_its_workers() -> None:
    experiment = Experiment(
        "e", "salt", {"a": 1, "b": 3}, unit="session", configs={"b": ArmConfig(model_version="v2")}
    )
    options = ServingOptions(config=ServingConfig(experiment=experiment))
    again = options_from_env(options.to_env())
    assert again.config.experiment == experiment
    assert options_from_env(ServingOptions().to_env()).config.experiment is None
    kept = ServingOptions(request_log_keep_h=36.0)
    assert options_from_env(kept.to_env()) == kept  # the workers' request log retention
    assert ServeSettings().request_log_keep_h == ServingOptions().request_log_keep_h
    with pytest.raises(ConfigError, match=r"FEATREC_SERVE_EXPERIMENT='\{' is not a JSON object"):
        options_from_env({"FEATREC_SERVE_EXPERIMENT": "{"})
    with pytest.raises(ConfigError, match="EXPERIMENT: unknown experiment keys: colour"):
        options_from_env({"FEATREC_SERVE_EXPERIMENT": '{"colour": 1}'})


def test_a_request_log_kept_under_an_hour_is_a_usage_error(env: dict[str, str]) -> None:
    result = CliRunner().invoke(recommend, ["s1", "--request-log-keep", "0.5"], env=env)
    assert result.exit_code == 2 and "0.5 is not in the range x>=1" in result.output, result.output


def test_requests_status_lists_the_hour_files_and_prune_deletes_old_hours(
    tmp_path: Path,
) -> None:
    from featrec.adapters.sqlite.partitioned_log import PERIOD_S
    from featrec.cli import main
    from featrec.core.ports.serving import RequestRecord

    env = {"FEATREC_HOME": str(tmp_path / "home")}
    now = time.time()
    log = open_request_log(Settings(home=tmp_path / "home"), "sqlite")
    for i, age_h in enumerate([30, 5, 0]):
        created = now - age_h * PERIOD_S
        log.append(RequestRecord(f"r{i}", created, {"session_id": f"s{i}", "user_id": None}, []))
    log.close()
    runner = CliRunner()
    status = runner.invoke(main, ["requests", "status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    files = json.loads(status.output)["files"]
    assert [f["entries"] for f in files] == [1, 1, 1] and all(f["bytes"] > 0 for f in files)
    pruned = runner.invoke(main, ["requests", "prune", "--keep", "24"], env=env)
    assert pruned.exit_code == 0 and "deleted 1 request log entries" in pruned.output
    text = runner.invoke(main, ["requests", "status"], env=env).output
    assert text.splitlines()[-1].startswith("2 file(s), 2 entries")
    overview = runner.invoke(main, ["status"], env=env)
    assert overview.exit_code == 0, overview.output
    assert "request log    2 hour file(s)" in overview.output
    bad = runner.invoke(main, ["requests", "prune", "--keep", "-1"], env=env)
    assert bad.exit_code == 2 and "-1.0 is not in the range x>=0" in bad.output, bad.output


def test_the_servers_request_log_deletes_hours_older_than_it_keeps(tmp_path: Path) -> None:
    from featrec.jobs.serving import open_recommender

    settings = Settings(home=tmp_path / "home")
    recommender = open_recommender(settings, ServingOptions(model="none", request_log_keep_h=2))
    try:
        inner = recommender.log.inner  # type: ignore[attr-defined]
        assert inner.keep_s == 2 * 3600 and inner.directory == tmp_path / "home" / "requests"
    finally:
        recommender.log.close()
