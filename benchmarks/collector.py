"""The event collector's cost: server CPU per event, events/s accepted per core.

``featrec serve`` (granian, one worker, pinned to core 1) runs with the embedded default bus,
the collector log (``FEATREC_SERVE_COLLECT_BUS=file``), rate limits off. This process is the
client (keep-alive connections from ``--threads`` threads). The server's CPU time (its process
tree, from /proc) is read before and after each phase, so the figures are the server's own:

- ``floor``: ``POST /events`` answered 415 before its body is read: the HTTP server and the
  middleware stack alone (the baseline);
- ``single``: ``POST /events`` with one event per request;
- ``batch N``: ``POST /events`` with ``N`` events per request (``--batch``, 50 and 200).

For each: requests and events per second of wall time (a shared machine: the client competes
for the cores), server CPU-µs per request and per event, events/s per core (1e6 / CPU-µs per
event), and the ratio of the CPU per request to the baseline's, measured in the same run.
Every answer must be 202 (200 for health); the log must hold exactly the events sent.

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/collector.py [--events 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_load import tree_cpu_s

from featrec.adapters.files.collector_log import read_lines
from featrec.testing.feast_repo import copy_feature_repo
from featrec.testing.redis_server import free_port


def start_server(home: Path, repo: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "FEATREC_HOME": str(home),
        "FEATREC_REPO": str(repo),
        "FEATREC_SERVE_COLLECT_BUS": "file",
        "FEATREC_SERVE_COLLECT_RATE": "0",
        "FEATREC_SERVE_MAX_BODY_BYTES": "1000000",
        "FEATREC_SERVE_COLLECT_MAX_EVENTS": "1000",
        "OMP_NUM_THREADS": "1",
    }
    code = "from featrec.cli.serve import serve; serve()"
    args = [sys.executable, "-c", code, "--port", str(port), "--workers", "1", "--model", "none"]
    args += ["--rate-limit", "0", "--max-body-bytes", "1000000"]
    proc = subprocess.Popen(["taskset", "-c", "1", *args], env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit(f"featrec serve exited with {proc.returncode}")
    raise SystemExit("featrec serve did not start")


#: The baseline's body: sent as text/plain, the collector answers 415 without reading it, so
#: the request costs the HTTP server and the middleware stack alone (the floor).
FLOOR = b"floor"


def event(n: int, now: float) -> dict[str, object]:
    return {
        "event_id": f"bench-{n}",
        "session_id": f"s{n % 997}",
        "user_id": f"u{n % 331}",
        "item_id": f"i{n % 5000}",
        "type": "click" if n % 3 else "view",
        "ts": now - 1.0 + n * 1e-6,
        "category": f"c{n % 30}",
        "price": 10.0 + n % 90,
    }


def run_phase(
    base: str, pid: int, requests: list[tuple[str, bytes | None]], threads: int
) -> tuple[float, float]:
    """Send ``requests`` (path, body; None: GET) from ``threads`` threads; wall and server CPU s."""
    chunks = [requests[i::threads] for i in range(threads)]
    failures: list[str] = []
    headers = {"content-type": "application/json"}

    def worker(chunk: list[tuple[str, bytes | None]]) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            for path, body in chunk:
                if body is None:
                    r = client.get(path)
                    ok = r.status_code == 200
                else:
                    floor = body == FLOOR
                    kind = {"content-type": "text/plain"} if floor else headers
                    r = client.post(path, content=body, headers=kind)
                    ok = r.status_code == (415 if floor else 202)
                if not ok:
                    failures.append(f"{r.status_code} {r.text[:200]}")

    cpu0, wall0 = tree_cpu_s(pid), time.perf_counter()
    pool = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall, cpu = time.perf_counter() - wall0, tree_cpu_s(pid) - cpu0
    if failures:
        raise SystemExit(f"{len(failures)} failed requests, e.g. {failures[0]}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per POST phase")
    parser.add_argument("--batch", type=int, action="append", default=None)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    batches: list[int] = args.batch or [50, 200]
    with tempfile.TemporaryDirectory(prefix="featrec-collector-") as tmp:
        root = Path(tmp)
        repo = copy_feature_repo(root / "feature_repo")
        proc, base = start_server(root / "home", repo)
        try:
            now = time.time()
            n = args.events
            counter = iter(range(10**9))
            warm: list[tuple[str, bytes | None]] = [("/health", None)] * 200
            warm += [("/events", json.dumps(event(next(counter), now)).encode())] * 1
            run_phase(base, proc.pid, warm, args.threads)
            phases: list[tuple[str, int, Callable[[], list[tuple[str, bytes | None]]]]] = [
                ("floor (415)", 0, lambda: [("/events", FLOOR)] * n),
                (
                    "single",
                    1,
                    lambda: [
                        ("/events", json.dumps(event(next(counter), now)).encode())
                        for _ in range(n)
                    ],
                ),
            ]
            for size in batches:
                phases.append(
                    (
                        f"batch {size}",
                        size,
                        lambda size=size: [  # type: ignore[misc]
                            (
                                "/events",
                                json.dumps(
                                    [event(next(counter), now) for _ in range(size)]
                                ).encode(),
                            )
                            for _ in range(n // size)
                        ],
                    )
                )
            print(
                f"featrec serve (granian, 1 worker on core 1), collector log bus; client: "
                f"{args.threads} threads; {n:,} events per POST phase"
            )
            header = (
                f"{'phase':<18} {'requests':>9} {'events':>8} {'req/s':>8} {'events/s':>9} "
                f"{'CPU-µs/req':>11} {'CPU-µs/event':>13} {'events/s/core':>14} {'vs floor':>9}"
            )
            print(header)
            floor_us = None
            sent = 1  # the warm-up event
            for name, per_request, build in phases:
                requests = build()
                wall, cpu = run_phase(base, proc.pid, requests, args.threads)
                reqs = len(requests)
                events = reqs * per_request
                sent += events
                us_req = cpu / reqs * 1e6
                floor_us = floor_us or us_req
                us_event = cpu / events * 1e6 if events else float("nan")
                per_core = 1e6 / us_event if events else float("nan")
                print(
                    f"{name:<18} {reqs:>9,} {events:>8,} {reqs / wall:>8,.0f} "
                    f"{events / wall:>9,.0f} {us_req:>11,.0f} {us_event:>13,.1f} "
                    f"{per_core:>14,.0f} {us_req / floor_us:>8.2f}x"
                )
            log, offset, stored = root / "home" / "collector" / "events.jsonl", 0, 0
            while True:  # the reader hands out at most a chunk per call, as the source tails
                lines, offset = read_lines(log, offset, 100_000)
                if not lines:
                    break
                stored += len(lines)
            assert stored == sent, (stored, sent)
            print(f"collector log: {stored:,} lines, every event sent (checked)")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    load = os.getloadavg()
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores, shared)")


if __name__ == "__main__":
    main()
