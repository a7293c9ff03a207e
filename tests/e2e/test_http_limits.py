"""HTTP limits and hostile requests: every bad request is a 4xx with a JSON reason, never a 5xx
(a table of known cases, then hypothesis over arbitrary bodies); the body size limit (413,
also for a chunked body, answered before the body ends, against a real uvicorn on loopback);
the per-client rate limit (429 with Retry-After); and the admin endpoint's bearer token."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featrec.app.serving.http_limits import HttpLimits
from featrec.app.serving.recommender import Recommender
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import Found, InMemoryRequestLog, InMemoryRows, Wanted
from featrec.errors import ConfigError, StoreUnavailable
from featrec.server.http_api import create_app
from featrec.server.limits import TokenBuckets
from featrec.testing.redis_server import free_port
from featrec.testing.shop import NOW_S, world_rows

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

TOKEN = "t0ken-of-at-least-16-chars"
JSON = {"content-type": "application/json"}


def recommender() -> Recommender:
    store = InMemoryFeatureStore()
    store.write(world_rows())
    return Recommender(InMemoryRows(store), InMemoryRequestLog(), clock=lambda: NOW_S)


def client(app: FastAPI, host: str = "testclient") -> TestClient:
    # raise_server_exceptions=False: a bug shows as the 500 a real client would get
    return TestClient(app, raise_server_exceptions=False, client=(host, 50000))


@pytest.fixture
def http() -> Iterator[TestClient]:
    with client(create_app(recommender())) as c:
        yield c


def refused_count(c: TestClient, reason: str) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f'featrec_http_refused_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no featrec_http_refused_total for {reason}")


# -- bad requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, headers, status, reason",
    [
        (b'{"session_id":"s1"}', {}, 415, "send Content-Type: application/json"),
        (b'{"session_id":"s1"}', {"content-type": "text/plain"}, 415, "must be JSON"),
        (b"", JSON, 422, "Field required"),
        (b"null", JSON, 422, "valid dictionary"),
        (b"[1]", JSON, 422, "valid dictionary"),
        (b'{"session_id": "s1"', JSON, 422, "JSON decode error"),
        (b'{"session_id":"s1","k":NaN}', JSON, 422, "valid integer"),
        (b'{"session_id":"s1","k":Infinity}', JSON, 422, "valid integer"),
        (b'{"session_id":"s1","k":1' + b"0" * 5000 + b"}", JSON, 400, "error parsing the body"),
        (b'{"session_id":"\xff\xfe"}', JSON, 400, "error parsing the body"),
        (b'{"session_id":"\\ud800"}', JSON, 422, "unicode"),
        (b'{"session_id":"s1","user_id":"\\udc80"}', JSON, 422, "unicode"),
        (b'{"session_id":"s1","shown":["a","\\ud83d"]}', JSON, 422, "unicode"),
        (b'{"session_id":"a\\u0000b"}', JSON, 422, "must be printable"),
        (b'{"session_id":"\\u202eabc"}', JSON, 422, "must be printable"),
        (b'{"session_id":" s1"}', JSON, 422, "surrounding spaces"),
        (b'{"session_id":"s1","\\ud800":1}', JSON, 422, "unicode"),
        (b'{"session_id":"' + b"x" * 257 + b'"}', JSON, 422, "at most 256 characters"),
        (b'{"session_id":"s1","k":true}', JSON, 422, "valid integer"),
        (b'{"session_id":' + b"[" * 50_000 + b"}", JSON, 400, "error parsing the body"),
    ],
)
def test_bad_requests_are_4xx_with_a_json_reason(
    http: TestClient, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    response = http.post("/recommend", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert reason in json.dumps(response.json()["detail"]), response.text
    assert len(response.content) < 2000  # the offending input is not echoed back


def test_a_strange_but_printable_session_id_is_served(http: TestClient) -> None:
    for session in ("😀", "مرحبا", "a b", "x" * 256):
        response = http.post("/recommend", json={"session_id": session, "k": 3})
        assert response.status_code == 200 and response.json()["session_id"] == session


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=300),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["session_id", "user_id", "k", "shown"]) | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values, ascii_only=st.booleans())
def test_no_json_body_is_a_5xx(value: Any, ascii_only: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    with client(create_app(recommender())) as c:
        response = c.post("/recommend", content=body, headers=JSON)
    assert response.status_code in (200, 400, 422), response.text
    if response.status_code != 200:
        assert response.json()["detail"]


# -- body size -----------------------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid request of exactly ``size`` bytes (JSON allows trailing whitespace)."""
    body = b'{"session_id": "s1", "k": 3}'
    return body + b" " * (size - len(body))


def test_a_body_up_to_the_limit_passes_one_byte_more_is_413() -> None:
    with client(create_app(recommender(), limits=HttpLimits(max_body_bytes=1000))) as c:
        assert c.post("/recommend", content=padded(1000), headers=JSON).status_code == 200
        response = c.post("/recommend", content=padded(1001), headers=JSON)
        assert response.status_code == 413
        assert response.json() == {
            "detail": "request body of 1001 bytes is over the limit of 1000 bytes"
        }
        # a chunked body (no Content-Length) is counted as it streams
        chunked = c.post("/recommend", content=iter([padded(600), b" " * 600]), headers=JSON)
        assert chunked.status_code == 413
        assert chunked.json() == {"detail": "request body streamed is over the limit of 1000 bytes"}
        bad = c.post("/recommend", content=b"{}", headers={**JSON, "content-length": "x"})
        assert bad.status_code == 400


@pytest.fixture
def live_server() -> Iterator[int]:
    """The app under a real uvicorn in a thread, on a free loopback port."""
    port = free_port()
    app = create_app(recommender(), limits=HttpLimits(max_body_bytes=64 * 1024))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def exchange(port: int, head: bytes, body_chunks: Iterator[bytes]) -> bytes:
    """Send ``head`` and as much of the body as the server takes before answering; return
    the status line. The body is never finished: the answer must not wait for its end."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        for chunk in body_chunks:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(4096)
            if answer:
                break
            try:
                sock.sendall(chunk)
            except (BlockingIOError, ConnectionError):
                break
        sock.settimeout(5)
        while b"\r\n" not in answer:
            answer += sock.recv(4096)
        return answer.split(b"\r\n", 1)[0]


def test_a_huge_declared_body_is_refused_before_it_is_sent(live_server: int) -> None:
    head = (
        b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000000\r\n\r\n"
    )
    assert exchange(live_server, head, iter([])).startswith(b"HTTP/1.1 413 ")


def test_an_endless_chunked_body_is_cut_at_the_limit(live_server: int) -> None:
    head = (
        b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (8192, b" " * 8192)
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        while sent < 100 * 1024 * 1024:  # gives up at 100 MB: the server must answer first
            sent += 8192
            time.sleep(0.001)
            yield chunk

    assert exchange(live_server, head, endless()).startswith(b"HTTP/1.1 413 ")
    assert sent < 1024 * 1024


# -- rate limit ----------------------------------------------------------------------------------


def test_token_buckets_refill_at_the_rate_up_to_the_burst() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate_per_s=2.0, burst=3, max_keys=2, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token comes back in 1/rate s
    now[0] = 0.25
    assert buckets.take("a") == pytest.approx(0.25)  # half a token so far
    now[0] = 0.5
    assert buckets.take("a") == 0.0
    now[0] = 100.0
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond
    assert buckets.take("b") == 0.0 and buckets.take("c") == 0.0
    assert len(buckets) == 2  # the least recently seen client ("a") was dropped
    assert buckets.take("a") == 0.0  # and comes back with a full bucket


def test_a_client_over_its_rate_gets_429_with_retry_after() -> None:
    now = [1000.0]
    limits = HttpLimits(rate_per_s=0.5, burst=2)
    app = create_app(recommender(), limits=limits, clock=lambda: now[0])
    with client(app, "10.0.0.1") as c, client(app, "10.0.0.2") as other:
        body = {"session_id": "s1", "k": 3}
        assert [c.post("/recommend", json=body).status_code for _ in range(2)] == [200, 200]
        limited = c.post("/recommend", json=body)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "2"
        assert limited.json() == {
            "detail": "rate limit: more than 0.5 requests/s (burst 2) from this client; "
            "retry after 2 s"
        }
        assert other.post("/recommend", json=body).status_code == 200  # its own bucket
        assert c.get("/health").status_code == 200  # probes and scrapes are never limited
        assert refused_count(c, "rate_limited") == 1
        now[0] += 2.0
        assert c.post("/recommend", json=body).status_code == 200


def test_a_zero_rate_turns_the_limit_off() -> None:
    with client(create_app(recommender(), limits=HttpLimits(rate_per_s=0, burst=1))) as c:
        codes = {c.post("/recommend", json={"session_id": "s1"}).status_code for _ in range(20)}
        assert codes == {200}


class BlockingRows(InMemoryRows):
    """Reads wait until released: requests stay in progress as long as the test wants."""

    def __init__(self, store: InMemoryFeatureStore) -> None:
        super().__init__(store)
        self.release = threading.Event()
        self.waiting = threading.Semaphore(0)

    def read_rows(self, wanted: Wanted) -> Found:
        self.waiting.release()
        assert self.release.wait(10)
        return super().read_rows(wanted)


def test_overload_is_shed_with_503_when_max_inflight_is_set() -> None:
    store = InMemoryFeatureStore()
    store.write(world_rows())
    rows = BlockingRows(store)
    app = create_app(
        Recommender(rows, InMemoryRequestLog(), clock=lambda: NOW_S),
        limits=HttpLimits(max_inflight=2, max_concurrent=2, deadline_ms=60_000),
    )
    with client(app) as c:
        codes: list[int] = []

        def post(session: str) -> None:
            codes.append(c.post("/recommend", json={"session_id": session}).status_code)

        held = [threading.Thread(target=post, args=(f"s{i}",)) for i in range(2)]
        for thread in held:
            thread.start()
        for _ in held:
            assert rows.waiting.acquire(timeout=10)  # both in progress
        shed = c.post("/recommend", json={"session_id": "s1"})
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
        assert shed.json() == {"detail": "overloaded: 2 requests in progress; retry after 1 s"}
        assert c.get("/metrics").status_code == 200  # scrapes are never shed
        rows.release.set()
        for thread in held:
            thread.join(timeout=10)
        assert codes == [200, 200]
        assert c.post("/recommend", json={"session_id": "s1"}).status_code == 200
        assert refused_count(c, "overloaded") == 1


def test_limits_from_the_environment() -> None:
    limits = HttpLimits(max_body_bytes=2048, rate_per_s=12.5, burst=30, max_inflight=8)
    assert HttpLimits.from_env(limits.to_env()) == limits
    assert HttpLimits.from_env({}) == HttpLimits()
    with pytest.raises(ConfigError, match="FEATREC_SERVE_RATE_LIMIT='fast' is not a finite number"):
        HttpLimits.from_env({"FEATREC_SERVE_RATE_LIMIT": "fast"})
    for bad in (
        {"max_body_bytes": 0},
        {"rate_per_s": -1.0},
        {"rate_per_s": float("nan")},
        {"max_inflight": -1},
    ):
        with pytest.raises(ConfigError):
            HttpLimits(**bad)  # type: ignore[arg-type]


# -- admin ---------------------------------------------------------------------------------------


class FakeForget:
    """Records the users it was asked to forget (authentication is what is under test)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.error = error

    def __call__(self, user_id: str) -> Mapping[str, object]:
        self.calls.append(user_id)
        if self.error is not None:
            raise self.error
        return {"sessions": 2, "online_rows": {"user_features": 1}}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_forget_needs_the_admin_token() -> None:
    forget = FakeForget()
    with client(create_app(recommender(), forget=forget, admin_token=TOKEN)) as c:
        missing = c.post("/admin/forget/u1")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json() == {"detail": "missing 'Authorization: Bearer <token>'"}
        assert c.post("/admin/forget/u1", headers=bearer(TOKEN + "x")).status_code == 401
        assert c.post("/admin/forget/u1", headers=bearer(TOKEN[:-1])).status_code == 401
        basic = {"authorization": f"Basic {TOKEN}"}
        assert c.post("/admin/forget/u1", headers=basic).status_code == 401
        assert c.post("/admin/forget/%00", headers={}).status_code == 401  # auth comes first
        assert forget.calls == []
        assert refused_count(c, "unauthorized") == 5

        ok = c.post("/admin/forget/u1", headers=bearer(TOKEN))
        assert ok.status_code == 200
        assert ok.json() == {
            "user_id": "u1",
            "forgotten": {"sessions": 2, "online_rows": {"user_features": 1}},
        }
        assert c.post("/admin/forget/%00", headers=bearer(TOKEN)).status_code == 422
        assert c.get("/admin/forget/u1", headers=bearer(TOKEN)).status_code == 405
        assert forget.calls == ["u1"]


@pytest.mark.parametrize("forget, token", [(FakeForget(), None), (FakeForget(), ""), (None, TOKEN)])
def test_admin_is_disabled_without_a_token_or_a_forget_function(
    forget: FakeForget | None, token: str | None
) -> None:
    with client(create_app(recommender(), forget=forget, admin_token=token)) as c:
        response = c.post("/admin/forget/u1", headers=bearer(TOKEN))
        assert response.status_code == 503
        assert "admin disabled" in response.json()["detail"]
    assert forget is None or forget.calls == []


def test_a_short_admin_token_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        create_app(recommender(), forget=FakeForget(), admin_token="secret")


def test_a_store_failure_while_forgetting_is_503_with_the_reason() -> None:
    forget = FakeForget(StoreUnavailable("redis at 127.0.0.1:1 refused the connection"))
    with client(create_app(recommender(), forget=forget, admin_token=TOKEN)) as c:
        response = c.post("/admin/forget/u1", headers=bearer(TOKEN))
    assert response.status_code == 503
    assert "refused the connection" in response.json()["detail"]
    assert forget.calls == ["u1"]
