"""Privacy at the door: a request naming a forgotten user or session (the real file deny-list
``featrec forget`` writes) gets the anonymous, non-personalised answer and leaves nothing in the
request log, even when the version cache still holds the user's answer from before."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from featrec.adapters.files.deny_list import DenyWatcher, FileDenyStore, deny_file
from featrec.app.serving.recommender import Recommender
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import InMemoryRequestLog, InMemoryRows
from featrec.server.http_api import create_app
from featrec.testing.shop import NOW_S, world_rows

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


class CountingLog(InMemoryRequestLog):
    def __init__(self) -> None:
        super().__init__()
        self.appended: list[str] = []

    def append(self, record) -> None:  # type: ignore[no-untyped-def]
        self.appended.append(record.request_id)
        super().append(record)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TestClient, CountingLog, FileDenyStore, DenyWatcher]]:
    store = InMemoryFeatureStore()
    store.write(world_rows())
    log = CountingLog()
    recommender = Recommender(InMemoryRows(store), log, clock=lambda: NOW_S)
    deny_store = FileDenyStore(deny_file(tmp_path / "events"))
    watcher = DenyWatcher([deny_store], interval_s=0.0)
    with TestClient(create_app(recommender, deny=watcher.current)) as client:
        yield client, log, deny_store, watcher


def anonymous(client: TestClient, k: int) -> list[str]:
    body = client.post("/recommend", json={"session_id": "nobody-at-all", "k": k}).json()
    assert body["degraded_code"] == "no_session" and body["user_id"] is None
    return [i["item_id"] for i in body["items"]]


def test_a_forgotten_user_gets_the_anonymous_answer_and_nothing_is_logged(
    setup: tuple[TestClient, CountingLog, FileDenyStore, DenyWatcher],
) -> None:
    client, log, deny_store, _ = setup
    before = client.post("/recommend", json={"session_id": "s1", "user_id": "u1", "k": 5}).json()
    assert before["degraded"] is False and before["user_id"] == "u1"  # personalised, cached
    expected = anonymous(client, 5)
    deny_store.add("u1", ["s1"])
    logged = list(log.appended)

    for payload in (
        {"session_id": "s1", "user_id": "u1", "k": 5},  # the user and their session
        {"session_id": "another-session", "user_id": "u1", "k": 5},  # the user, named
        {"session_id": "s1", "k": 5},  # the session alone (its row names u1)
    ):
        response = client.post("/recommend", json=payload)
        assert response.status_code == 200
        body = response.json()
        assert body["degraded"] is True and body["degraded_code"] == "forgotten"
        assert body["logged"] is False and body["cached"] is False
        assert body["user_id"] is None and body["scorer"] == "fallback"
        assert [i["item_id"] for i in body["items"]] == expected
        assert body["request_id"] != before["request_id"]
        assert log.get(body["request_id"]) is None
    assert log.appended == logged  # nothing at all was written for them

    metrics = client.get("/metrics").text
    assert 'featrec_recommend_degraded_total{reason="forgotten"} 3.0' in metrics


def test_other_users_are_served_as_before(
    setup: tuple[TestClient, CountingLog, FileDenyStore, DenyWatcher],
) -> None:
    client, log, deny_store, _ = setup
    deny_store.add("someone-else", ["their-session"])
    body = client.post("/recommend", json={"session_id": "s1", "user_id": "u1", "k": 5}).json()
    assert body["degraded"] is False and body["logged"] is True
    assert log.get(body["request_id"]) is not None
