"""Overload, for real: ``featrec serve`` (one worker) driven past its capacity from loopback by
bounded loops of concurrent clients. Every request is answered at once with a recommendation,
the session's cached answer flagged ``overload``, or a 503 with ``Retry-After``: nothing else,
nothing waits out a client's timeout (no queue of minutes), and the shed requests are counted
in the metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from featrec.adapters.feast.writers import RedisLayoutWriter
from featrec.testing.feast_repo import copy_feature_repo
from featrec.testing.redis_server import free_port
from featrec.testing.shop import session_row, world_rows

N_SESSIONS = 60


def start_serve(tmp_path: Path, redis_url: str, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    repo = copy_feature_repo(tmp_path / "feature_repo")
    port = free_port()
    env = {
        **os.environ,
        "FEATREC_HOME": str(tmp_path / "home"),
        "FEATREC_REPO": str(repo),
        "FEATREC_ONLINE_STORE": "redis",
        "FEATREC_REDIS_URL": redis_url,
    }
    code = "from featrec.cli.serve import serve; serve()"
    argv = [sys.executable, "-c", code, "--port", str(port), "--max-session-age", "1e12"]
    argv += ["--workers", "1", "--rate-limit", "0", *args]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{base}/health", timeout=2)
            return proc, base
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"featrec serve did not start:\n{out}") from None
            time.sleep(0.2)


@pytest.fixture
def server(tmp_path: Path, redis_url: str) -> Iterator[str]:
    rows = world_rows() + [session_row(f"s{i}", ("a1", "b2")) for i in range(N_SESSIONS)]
    RedisLayoutWriter(redis.Redis.from_url(redis_url), "featrec").write(rows)
    # A deadline far below the time 32 concurrent clients need: the queue must be shed.
    proc, base = start_serve(tmp_path, redis_url, "--deadline-ms", "10")
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.e2e
def test_past_capacity_every_request_is_answered_degraded_or_refused_at_once(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        # Half the sessions have a cached answer to fall back on.
        for i in range(0, N_SESSIONS, 2):
            warm = http.post("/recommend", json={"session_id": f"s{i}", "k": 5})
            assert warm.status_code == 200 and warm.json()["degraded"] is False

    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(base_url=server, timeout=10) as http:
            for n in range(25):  # bounded: 32 clients x 25 requests
                session = f"s{(worker * 25 + n) % N_SESSIONS}"
                try:
                    r = http.post("/recommend", json={"session_id": session, "k": 5})
                except httpx.HTTPError as exc:  # a timeout would mean a long queue
                    with lock:
                        problems.append(f"{type(exc).__name__}: {exc}")
                    continue
                if r.status_code == 200:
                    body = r.json()
                    kind = body["degraded_code"] or ("cached" if body["cached"] else "computed")
                    if kind == "overload":
                        ok = body["degraded"] is True and body["cached"] is True
                        ok = ok and len(body["items"]) == 5 and body["session_id"] == session
                        if not ok:
                            with lock:
                                problems.append(f"bad overload answer {body}")
                elif r.status_code == 503:
                    kind = "refused"
                    if int(r.headers.get("retry-after", "0")) < 1 or "overloaded" not in r.text:
                        with lock:
                            problems.append(f"bad 503 {r.headers} {r.text}")
                else:
                    kind = f"HTTP {r.status_code}"
                    with lock:
                        problems.append(f"{kind}: {r.text[:200]}")
                with lock:
                    outcomes[kind] += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert problems == [], (problems[:5], outcomes)
    assert sum(outcomes.values()) == 32 * 25, outcomes
    assert set(outcomes) <= {"computed", "cached", "overload", "refused"}, outcomes
    assert outcomes["overload"] > 0 and outcomes["refused"] > 0, outcomes
    assert outcomes["computed"] + outcomes["cached"] > 0, outcomes

    with httpx.Client(base_url=server, timeout=10) as http:
        text = http.get("/metrics").text
    counted = {
        line.split()[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(("featrec_http_refused_total", "featrec_recommend_degraded_total"))
    }
    assert counted['featrec_http_refused_total{reason="overloaded"}'] == outcomes["refused"]
    assert counted['featrec_recommend_degraded_total{reason="overload"}'] == outcomes["overload"]
