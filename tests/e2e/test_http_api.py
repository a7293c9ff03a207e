"""HTTP contract: POST /recommend, GET /health, GET /metrics, OpenAPI; validation with reasons;
store trouble (a real redis-server stopped by the test) is a degraded 200, never a 5xx; and
``featrec serve`` for real, in a subprocess on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from featrec.adapters.feast.writers import RedisLayoutWriter
from featrec.adapters.redis.rows import RedisRowReader, serving_client
from featrec.adapters.sqlite.request_log import SqliteRequestLog
from featrec.app.serving.recommender import Recommender
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import InMemoryRequestLog, InMemoryRows
from featrec.server.http_api import create_app
from featrec.testing.feast_repo import copy_feature_repo
from featrec.testing.redis_server import RedisServer, free_port
from featrec.testing.shop import NOW_S, T0, world_rows

# Starlette 1.x prefers httpx2 for its TestClient and warns about httpx (which still works).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


@pytest.fixture
def client() -> Iterator[TestClient]:
    store = InMemoryFeatureStore()
    store.write(world_rows())
    recommender = Recommender(InMemoryRows(store), InMemoryRequestLog(), clock=lambda: NOW_S)
    with TestClient(create_app(recommender)) as c:
        yield c


def metrics(
    client: TestClient | httpx.Client,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_recommend_answers_the_known_list(client: TestClient) -> None:
    response = client.post("/recommend", json={"session_id": "s1", "user_id": "u1", "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert [i["item_id"] for i in body["items"]] == ["a1", "a2", "b1", "b2", "b3"]
    assert [i["rank"] for i in body["items"]] == [1, 2, 3, 4, 5]
    assert body["items"][0]["reasons"] == ["already in this session"]
    assert body["degraded"] is False and body["degraded_reason"] is None
    assert body["session_version"] == T0 and body["scorer"] == "candidate-order"
    assert len(body["request_id"]) == 32 and body["logged"] is True and body["cached"] is False
    again = client.post("/recommend", json={"session_id": "s1", "user_id": "u1", "k": 5}).json()
    assert again["cached"] is True and again["request_id"] == body["request_id"]


def test_the_ab_arm_comes_back_and_is_the_bucketing_of_the_user() -> None:
    from featrec.app.serving.config import ServingConfig
    from featrec.core.evaluation.experiments import Experiment, assign

    store = InMemoryFeatureStore()
    store.write(world_rows())
    experiment = Experiment("rank-v2", "salt-1", {"control": 1.0, "treatment": 1.0})
    recommender = Recommender(
        InMemoryRows(store),
        InMemoryRequestLog(),
        config=ServingConfig(experiment=experiment),
        clock=lambda: NOW_S,
    )
    with TestClient(create_app(recommender)) as c:
        body = c.post("/recommend", json={"session_id": "s1", "user_id": "u1", "k": 5}).json()
        plain = c.post("/recommend", json={"session_id": "nobody", "k": 3}).json()
    assert body["experiment"] == "rank-v2"
    assert body["arm"] == assign(experiment, "u1")
    assert plain["experiment"] == "rank-v2" and plain["arm"] == assign(experiment, "nobody")


def test_degraded_answers_are_200_with_the_reason(client: TestClient) -> None:
    response = client.post("/recommend", json={"session_id": "nobody", "k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["degraded"] is True and body["degraded_code"] == "no_session"
    assert body["degraded_reason"] == "no session features for session 'nobody'"
    assert [i["item_id"] for i in body["items"]] == ["b2", "b3", "a5"]


@pytest.mark.parametrize(
    "payload, field, message",
    [
        ({}, "session_id", "Field required"),
        ({"session_id": ""}, "session_id", "at least 1 character"),
        ({"session_id": "x" * 257}, "session_id", "at most 256 characters"),
        ({"session_id": "s1", "k": 0}, "k", "greater than or equal to 1"),
        ({"session_id": "s1", "k": 101}, "k", "less than or equal to 100"),
        ({"session_id": "s1", "k": "5"}, "k", "valid integer"),
        ({"session_id": "s1", "k": 2.5}, "k", "valid integer"),
        ({"session_id": "s1", "user_id": ""}, "user_id", "at least 1 character"),
        ({"session_id": "s1", "shown": ["a"] * 201}, "shown", "at most 200 items"),
        ({"session_id": "s1", "shown": "a1"}, "shown", "valid list"),
        ({"session_id": "s1", "colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"session_id": 12}, "session_id", "valid string"),
    ],
)
def test_bad_input_is_422_naming_the_field(
    client: TestClient, payload: dict[str, Any], field: str, message: str
) -> None:
    response = client.post("/recommend", json=payload)
    assert response.status_code == 422
    details = response.json()["detail"]
    assert any(d["loc"][-1] == field or d["loc"][1] == field for d in details), details
    assert any(message in d["msg"] for d in details), details


def test_a_body_that_is_not_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/recommend", content=b"session_id=s1", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


def test_health_metrics_and_openapi(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "store": "reachable",
        "model_version": None,
        "request_log_failures": 0,
        "last_request_log_error": None,
    }
    before = metrics(client)
    client.post("/recommend", json={"session_id": "s1", "k": 5})
    client.post("/recommend", json={"session_id": "s1", "k": 5})
    client.post("/recommend", json={"session_id": "nobody", "k": 5})
    after = metrics(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert delta("featrec_recommend_requests_total", outcome="computed") == 1
    assert delta("featrec_recommend_requests_total", outcome="cached") == 1
    assert delta("featrec_recommend_requests_total", outcome="degraded") == 1
    assert delta("featrec_recommend_degraded_total", reason="no_session") == 1
    assert delta("featrec_recommend_seconds_count") == 3
    assert after[("featrec_response_cache_sessions", ())] == 1
    assert after[("featrec_row_cache_lookups_total", (("result", "miss"),))] > 0

    spec = client.get("/openapi.json").json()
    request_schema = spec["components"]["schemas"]["RecommendRequest"]
    assert request_schema["properties"]["k"]["maximum"] == 100
    assert request_schema["required"] == ["session_id"]
    assert set(spec["paths"]) == {"/recommend", "/health", "/metrics", "/admin/forget/{user_id}"}
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


def test_a_stopped_redis_is_a_degraded_200_never_a_5xx(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        RedisLayoutWriter(redis.Redis.from_url(server.url), "featrec").write(world_rows())
        reader = RedisRowReader(serving_client(server.url), "featrec", owns_client=True)
        recommender = Recommender(
            reader, SqliteRequestLog(tmp_path / "requests.db"), clock=lambda: NOW_S
        )
        with TestClient(create_app(recommender), raise_server_exceptions=False) as client:
            ok = client.post("/recommend", json={"session_id": "s1", "k": 5}).json()
            assert ok["degraded"] is False
            server.stop()
            down = client.post("/recommend", json={"session_id": "s1", "k": 5})
            assert down.status_code == 200
            body = down.json()
            assert body["degraded"] is True and body["degraded_code"] == "store_unreachable"
            assert [i["item_id"] for i in body["items"]] == ["b2", "b3", "a5", "b4", "a6"]
            health = client.get("/health")
            assert health.status_code == 200
            assert health.json()["status"] == "degraded"
            assert health.json()["store"].startswith("unreachable: reading Feast's Redis")
            assert (
                metrics(client)[
                    ("featrec_recommend_degraded_total", (("reason", "store_unreachable"),))
                ]
                == 1
            )
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_featrec_serve_for_real(tmp_path: Path, redis_url: str, server: str) -> None:
    """The serve command in a subprocess (each server, a free port), the world in Redis."""
    RedisLayoutWriter(redis.Redis.from_url(redis_url), "featrec").write(world_rows())
    repo = copy_feature_repo(tmp_path / "feature_repo")
    port = free_port()
    env = {
        **os.environ,
        "FEATREC_HOME": str(tmp_path / "home"),
        "FEATREC_REPO": str(repo),
        "FEATREC_ONLINE_STORE": "redis",
        "FEATREC_REDIS_URL": redis_url,
        "FEATREC_ADMIN_TOKEN": "an-admin-token-for-the-test",
    }
    code = "from featrec.cli.serve import serve; serve()"
    args = [sys.executable, "-c", code, "--port", str(port), "--max-session-age", "1e12"]
    args += ["--server", server, "--workers", "1"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "featrec serve did not start"
                time.sleep(0.2)
        assert health.json()["status"] == "ok"
        with httpx.Client(base_url=base, timeout=10) as http:
            body = http.post("/recommend", json={"session_id": "s1", "k": 5}).json()
            # the wall clock is years past the world's user row: it is ignored as stale, so
            # the user's purchase a3 is not dropped (in-process tests run at the world's time)
            assert [i["item_id"] for i in body["items"]] == ["a1", "a2", "a3", "b1", "b2"]
            assert body["user_id"] == "u1" and body["logged"] is True
            assert http.post("/recommend", json={"k": 5}).status_code == 422
            assert (
                metrics(http)[("featrec_recommend_requests_total", (("outcome", "computed"),))] == 1
            )
            # the admin endpoint, wired to the real forget_user by the app factory
            assert http.post("/admin/forget/u1").status_code == 401
            token = {"authorization": "Bearer an-admin-token-for-the-test"}
            forgot = http.post("/admin/forget/u1", headers=token, timeout=60)
            assert forgot.status_code == 200, forgot.text
            assert forgot.json()["user_id"] == "u1" and forgot.json()["forgotten"]["sessions"] >= 1
            # privacy at the door: the forgotten session is answered anonymously, not logged
            after = http.post("/recommend", json={"session_id": "s1", "k": 5}).json()
            assert after["degraded"] is True and after["degraded_code"] == "forgotten"
            assert after["logged"] is False and after["user_id"] is None
        assert list((tmp_path / "home" / "requests").glob("*Z.db"))  # the hour's log file
    finally:
        proc.terminate()
        proc.wait(timeout=20)
