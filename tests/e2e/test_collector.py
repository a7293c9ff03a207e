"""``POST /events`` against a real HTTP server (uvicorn on a free port, in a thread): valid
events and batches land on the bus with the server's receive time, bad records are refused
with their index and field and nothing of their request is stored, forgotten users are
refused, the ingest token, CORS and the per-client event rate are enforced; the Redis bus
(a real redis-server) carries the receive time to the stream source; hostile payloads fuzzed
beside valid ones."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featrec.adapters.files.collector_log import CollectorLog, read_lines
from featrec.adapters.redis.collector_bus import RedisBus
from featrec.app.collector import Collector, EventBus
from featrec.app.serving.recommender import Recommender
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import InMemoryRequestLog, InMemoryRows
from featrec.core.privacy import DenyList, DenySet, new_salt
from featrec.server.collector import Storefront
from featrec.server.http_api import create_app
from featrec.server.main import storefront_from_settings
from featrec.settings import ServeSettings, Settings
from featrec.testing.hostile import hostile_featrec
from featrec.testing.redis_server import RedisServer, free_port
from featrec.testing.shop import world_rows

FORGOTTEN = DenySet((DenyList(new_salt()).add("gone-user", ["gone-session"]),))
TOKEN = "a-secret-ingest-token-0123"
#: The fuzz's clock, fixed so hypothesis can replay a draw (hostile "ahead" timestamps are
#: drawn from it, so it runs a little ahead of the server's receive time).
FUZZ_NOW = time.time() + 120


def event(n: int = 0, **over: Any) -> dict[str, Any]:
    base = {
        "event_id": f"e{n}",
        "session_id": "s1",
        "item_id": f"i{n % 7}",
        "type": "click",
        "ts": time.time() - 1.0,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@dataclass
class Server:
    url: str
    bus: EventBus
    log: Path | None

    def post(self, body: object, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + "/events", json=body, timeout=10, **kw)

    def stored(self) -> list[tuple[float, dict[str, Any]]]:
        assert self.log is not None
        lines, _ = read_lines(self.log, 0, 1_000_000)
        return [(line.received_at, json.loads(line.text)) for line in lines]


def _serve(bus: EventBus, log: Path | None, **storefront: Any) -> Iterator[Server]:
    front = Storefront(collector=Collector(bus, lambda: FORGOTTEN), **storefront)
    yield from _serve_storefront(front, log)


def _serve_storefront(storefront: Storefront, log: Path | None) -> Iterator[Server]:
    store = InMemoryFeatureStore()
    store.write(world_rows())
    recommender = Recommender(InMemoryRows(store), InMemoryRequestLog())
    app = create_app(recommender, storefront=storefront)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", storefront.collector.bus, log)
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    log = tmp_path / "collector" / "events.jsonl"
    yield from _serve(CollectorLog(log), log, cors_origins=("https://shop.example",))


def test_one_event_is_accepted_with_the_server_receive_time(server: Server) -> None:
    sent = event(1, ts=time.time() - 30)
    before = time.time()
    response = server.post(sent)
    after = time.time()
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1 and response.json()["bus"] == "file"
    [(received_at, stored)] = server.stored()
    assert before <= received_at <= after
    assert stored == sent  # the client's own ts is kept beside the receive time


def test_a_batch_is_accepted_in_order(server: Server) -> None:
    batch = [event(n) for n in range(5)]
    response = server.post(batch)
    assert response.status_code == 202 and response.json()["accepted"] == 5
    stored = server.stored()
    assert [e for _, e in stored] == batch
    assert len({t for t, _ in stored}) == 1  # one receive time per request


def test_a_pretty_printed_event_is_stored_on_one_line(server: Server) -> None:
    body = json.dumps(event(1), indent=2)
    response = httpx.post(
        server.url + "/events", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 202
    assert [e for _, e in server.stored()] == [event(1) | {"ts": json.loads(body)["ts"]}]


def test_bad_records_are_named_by_index_and_field_and_nothing_is_stored(
    server: Server,
) -> None:
    batch = [
        event(0),
        event(1, price=-3.0),
        event(2, item_id=None),
        event(3, ts=time.time() + 3600),  # ahead of the server's clock: the far-future rule
        event(4, type="teleport!"),
    ]
    response = server.post(batch)
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == "4 of 5 events refused; nothing stored"
    fields = [(r["index"], r["field"]) for r in body["refused"]]
    assert fields == [(1, "price"), (2, "item_id"), (3, "ts"), (4, "type")]
    assert all(r["reason"].startswith(r["field"] + ": ") for r in body["refused"])
    assert server.stored() == []


@pytest.mark.parametrize(
    ("content", "ctype", "status", "detail"),
    [
        (b"{not json", "application/json", 400, "body: invalid JSON"),
        (b"42", "application/json", 400, "body: the body must be a JSON object"),
        (b"[]", "application/json", 422, "an empty batch"),
        (b'{"a": 1}', "text/plain", 415, "Content-Type: application/json"),
        (b"[" + b",".join([b"{}"] * 201) + b"]", "application/json", 413, "at most 200"),
    ],
)
def test_bodies_that_are_no_events_get_a_4xx_with_the_reason(
    server: Server, content: bytes, ctype: str, status: int, detail: str
) -> None:
    response = httpx.post(server.url + "/events", content=content, headers={"content-type": ctype})
    assert response.status_code == status
    assert detail in response.json()["detail"]
    assert server.stored() == []


def _counts(server: Server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics").text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("featrec_collector_")
    }


def test_forgotten_users_and_sessions_are_refused_and_never_stored(server: Server) -> None:
    # Counted as differences: importing Feast (feast.metrics) switches prometheus_client to
    # multiprocess mode, where the counters of every app in one process share their values.
    before = _counts(server)
    response = server.post([event(1, user_id="gone-user"), event(2, session_id="gone-session")])
    assert response.status_code == 403
    assert [(r["index"], r["field"]) for r in response.json()["refused"]] == [
        (0, "user_id"),
        (1, "session_id"),
    ]
    mixed = server.post([event(3), event(4, user_id="gone-user")])
    assert mixed.status_code == 403
    assert server.stored() == []
    assert server.post(event(5, user_id="still-here")).status_code == 202
    assert [e["event_id"] for _, e in server.stored()] == ["e5"]
    after = _counts(server)
    forgotten = 'featrec_collector_refused_total{reason="forgotten"}'
    assert after[forgotten] - before[forgotten] == 3
    assert (
        after["featrec_collector_accepted_total"] - before["featrec_collector_accepted_total"] == 1
    )


def test_a_configured_mapping_takes_the_shops_own_schema(tmp_path: Path) -> None:
    """``featrec serve --mapping`` hands its workers FEATREC_SERVE_COLLECT_MAPPING: posted
    objects in the shop's schema are stored as featrec events; one that does not map is
    refused with its field, and nothing of its request is stored."""
    table = {
        "fields": {"session_id": "visit.id", "item_id": "sku", "type": "action"},
        "ts": {"column": "when", "unit": "ms"},
        "types": {"addToCart": "cart"},
    }
    settings = Settings.from_env({"FEATREC_HOME": str(tmp_path / "home")})
    serve = ServeSettings.from_env({"FEATREC_SERVE_COLLECT_MAPPING": json.dumps(table)})
    front = storefront_from_settings(settings, serve)
    now_ms = int(time.time() * 1000)
    shop_event = {"visit": {"id": "v1"}, "sku": "p9", "action": "addToCart", "when": now_ms}
    with contextlib.closing(_serve_storefront(front, settings.collector_log)) as served:
        server = next(served)
        ok = server.post([shop_event, shop_event | {"sku": "p10", "action": "view"}])
        assert ok.status_code == 202, ok.text
        stored = [e for _, e in server.stored()]
        assert [(e["session_id"], e["item_id"], e["type"]) for e in stored] == [
            ("v1", "p9", "cart"),
            ("v1", "p10", "view"),
        ]
        bad = server.post([shop_event, {"sku": "p1", "action": "view", "when": now_ms}])
        assert bad.status_code == 422
        [refusal] = bad.json()["refused"]
        assert refusal["index"] == 1 and refusal["field"] == "session_id"
        assert "visit.id" in refusal["reason"]
        assert len(server.stored()) == 2


def test_cors_allows_the_configured_origin_only(server: Server) -> None:
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    ok = httpx.options(
        server.url + "/events", headers={"origin": "https://shop.example", **preflight}
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://shop.example"
    other = httpx.options(
        server.url + "/events", headers={"origin": "https://evil.example", **preflight}
    )
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    posted = server.post(event(1), headers={"origin": "https://shop.example"})
    assert posted.status_code == 202
    assert posted.headers["access-control-allow-origin"] == "https://shop.example"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Server]:
    log = tmp_path / "events.jsonl"
    yield from _serve(CollectorLog(log), log, token=TOKEN, rate_per_s=1.0, burst=6)


def test_the_ingest_token_is_required_when_set(guarded: Server) -> None:
    assert guarded.post(event(1)).status_code == 401
    wrong = guarded.post(event(1), headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    right = guarded.post(event(1), headers={"authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 202
    assert len(guarded.stored()) == 1


def test_the_event_rate_per_client_counts_events_not_requests(guarded: Server) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert guarded.post([event(n) for n in range(5)], headers=auth).status_code == 202
    limited = guarded.post([event(n) for n in range(5, 8)], headers=auth)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert "events/s" in limited.json()["detail"]
    assert len(guarded.stored()) == 5


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_payloads_get_a_4xx_and_valid_ones_beside_them_are_unaffected(
    server: Server, data: st.DataObject
) -> None:
    hostile = data.draw(hostile_featrec(["s1", "s2"], FUZZ_NOW))
    payload = hostile.record.payload
    text = payload if isinstance(payload, str) else json.dumps(payload)
    before = len(server.stored())
    valid = event(before, event_id=f"valid-{before}")
    bad = httpx.post(
        server.url + "/events",
        content=text.encode("utf-8", "surrogatepass"),
        headers={"content-type": "application/json"},
    )
    assert 400 <= bad.status_code < 500, (bad.status_code, text[:200])
    good = server.post(valid)
    assert good.status_code == 202
    stored = server.stored()
    assert len(stored) == before + 1 and stored[-1][1] == valid


@pytest.mark.redis
def test_the_redis_bus_keeps_the_receive_time_and_refuses_when_down(tmp_path: Path) -> None:
    from dataflows.sources import RedisStreamSource

    redis_server = RedisServer(tmp_path)
    redis_server.start()
    try:
        bus = RedisBus(redis_server.url, "shop:events")
        for server in _serve(bus, None):
            before = time.time()
            batch = [event(1), event(2)]
            assert server.post(batch).status_code == 202
            source = RedisStreamSource(redis_server.url, ["shop:events"], stop_when_caught_up=True)
            part = source.build_part("input", "shop:events", None)
            records = part.next_batch()
            part.close()
            assert [json.loads(str(r.payload)) for r in records] == batch
            assert all(before <= r.ingested_at <= time.time() for r in records)
            redis_server.stop()
            down = server.post(event(3))
            assert down.status_code == 503 and down.headers["retry-after"] == "1"
            assert "nothing stored" in down.json()["detail"]
    finally:
        redis_server.stop()


def test_the_kafka_bus_keys_by_session_keeps_the_receive_time_and_refuses_when_down(
    tmp_path: Path,
) -> None:
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, run_main

    from dataflows.kafka import KafkaEventSource
    from featrec.adapters.kafka.collector_bus import KafkaBus
    from featrec.testing.kafka_broker import PARTITIONER, running_kafka

    with running_kafka(tmp_path, {"shop": 4}) as broker:
        # log_level 0: once the broker is stopped, librdkafka would log every reconnect attempt
        config = {"bootstrap.servers": broker.bootstrap, "partitioner": PARTITIONER}
        bus = KafkaBus({**config, "log_level": "0"}, "shop")
        for server in _serve(bus, None):
            batch = [event(n, session_id=f"s{n % 3}") for n in range(9)]
            before = time.time()
            answer = server.post(batch)
            after = time.time()
            assert answer.status_code == 202 and answer.json()["bus"] == "kafka"
            records: list[Any] = []
            flow = Dataflow("read")
            source = KafkaEventSource({"bootstrap.servers": broker.bootstrap}, "shop", tail=False)
            op.output("out", op.input("in", flow, source), TestingSink(records))
            run_main(flow)
            got = sorted((json.loads(r.payload) for r in records), key=lambda e: e["event_id"])
            assert got == sorted(batch, key=lambda e: e["event_id"])
            # the message timestamp is the server's receive time (ms): the flows' ingested_at
            assert all(before - 0.001 <= r.ingested_at <= after + 0.001 for r in records)
            partitions: dict[str, set[str]] = {}
            for r in records:
                partitions.setdefault(json.loads(r.payload)["session_id"], set()).add(
                    r.origin.split(":")[1]
                )
            assert all(len(p) == 1 for p in partitions.values()), partitions
            broker.stop()
            down = server.post(event(20))
            assert down.status_code == 503 and "not every event stored" in down.json()["detail"]
            bus.producer.producer.purge()  # drop the undeliverable event: no retries left
