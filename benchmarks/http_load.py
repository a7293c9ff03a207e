"""The HTTP service under load: its capacity, then twice that rate offered for 60 s.

The setup is benchmarks/recommend.py's (a private redis-server, the Feast repo applied to a
temp dir, 5,000 items with neighbours and trending rows, a fitted 200-tree ranker, the request
log on SQLite), with more sessions so that no request is answered from the session-version
cache: every request runs the whole path. ``featrec serve`` (``--server``, default granian) runs in
a subprocess pinned to core 1; the client is this process, asyncio with keep-alive
connections, on core 0. The server's CPU time (its process tree, from /proc) over the
capacity phase gives its CPU per answer.

1. **Capacity**: a closed loop (``--concurrency`` connections, each sending its next request
   when the last is answered) for ``--capacity-seconds``: answers per second.
2. **Load**: an open loop offering ``--factor`` (2) times that rate for ``--seconds`` (60):
   request i is due at ``start + i / rate`` whether or not earlier ones were answered, so a
   slow server cannot slow the client down (no coordinated omission). Latency is measured
   from the time a request was due, so it includes any queueing, in the client's connection
   pool or in the server. After the offered window the client waits up to ``--drain-seconds``
   for the answers still owed; a request not answered by then is an error.

Answers are 2xx (degraded ones counted by code: ``overload`` is the cached answer of a shed
request); refusals are 503s (explicit shedding, ``Retry-After``); errors are every other
status (429 included: the server's rate limit is set above the offered rate here unless
``--rate-limit`` says otherwise) and transport errors. The client's own CPU
time is printed, to show it was not the bottleneck.

    .venv/bin/python benchmarks/http_load.py [--seconds 60] [--factor 2] [--workers 1]
    .venv/bin/python benchmarks/http_load.py --serve-arg=--max-inflight --serve-arg=8  # shed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recommend as setup
from measure import load_average, percentile, prepare_world

from featrec.settings import Settings


@dataclass
class Tally:
    """Latencies of 2xx answers (and of 503 refusals), degraded answers by code, errors by
    kind. A 503 (explicit shedding, with Retry-After) is counted as refused, not as an
    error."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    answered_at: list[float] = field(default_factory=list)
    degraded: Counter[str] = field(default_factory=Counter)
    refused_s: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies_s) + len(self.refused_s) + sum(self.errors.values())

    def record(
        self,
        due: float,
        status: int | None,
        error: str | None = None,
        degraded_code: str | None = None,
    ) -> None:
        now = time.perf_counter()
        if status is not None and 200 <= status < 300:
            self.latencies_s.append(now - due)
            self.answered_at.append(now)
            if degraded_code is not None:
                self.degraded[degraded_code] += 1
        elif status == 503:
            self.refused_s.append(now - due)
        else:
            self.errors[error or f"HTTP {status}"] += 1


def summary(name: str, tally: Tally, seconds: float) -> str:
    ms = sorted(x * 1000 for x in tally.latencies_s)
    refused = sorted(x * 1000 for x in tally.refused_s)
    errors = ", ".join(f"{n} {kind}" for kind, n in tally.errors.most_common()) or "none"
    degraded = ", ".join(f"{n} {code}" for code, n in tally.degraded.most_common()) or "none"
    return (
        f"{name}: {tally.requests:,} requests, {len(ms):,} answered 2xx (degraded: "
        f"{degraded}), {len(refused):,} refused 503, "
        f"{sum(tally.errors.values()):,} errors ({errors})\n"
        f"  answers latency ms p50 {percentile(ms, 0.5):.1f}  p95 {percentile(ms, 0.95):.1f}  "
        f"p99 {percentile(ms, 0.99):.1f}  max {ms[-1] if ms else math.nan:.1f}  "
        f"mean {statistics.fmean(ms) if ms else math.nan:.1f}\n"
        f"  refusals latency ms p50 {percentile(refused, 0.5):.1f}  "
        f"p99 {percentile(refused, 0.99):.1f}\n"
        f"  achieved {len(ms) / seconds:.1f} answers/s over {seconds:.1f} s"
    )


class Requests:
    """Request bodies, each for another session (the session-version cache never answers)."""

    def __init__(self, n_sessions: int, seed: int = 3) -> None:
        self.order = [f"s{i}" for i in range(n_sessions)]
        random.Random(seed).shuffle(self.order)
        self.next = 0

    def body(self) -> dict[str, object]:
        session = self.order[self.next % len(self.order)]
        self.next += 1
        return {"session_id": session, "k": 20}


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol to POST JSON
    and read a Content-Length answer. httpx's async client costs ~3 ms of client CPU per
    request: at 2x capacity it saturated the client's core and the queue it built there was
    counted as server latency. This costs a few tens of microseconds."""

    def __init__(self, base: str) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            payload = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            raise
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def send(http: Connection, body: dict[str, object], due: float, tally: Tally) -> None:
    try:
        status, payload = await http.post("/recommend", json.dumps(body).encode())
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        tally.record(due, None, type(exc).__name__)
        return
    code = None
    if status == 200:
        code = json.loads(payload)["degraded_code"]
    tally.record(due, status, degraded_code=code)


async def closed_loop(
    base: str, requests: Requests, concurrency: int, seconds: float
) -> tuple[Tally, float]:
    tally = Tally()
    start = time.perf_counter()
    end = start + seconds

    async def loop() -> None:
        http = Connection(base)
        while time.perf_counter() < end:
            await send(http, requests.body(), time.perf_counter(), tally)
        http.close()

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return tally, time.perf_counter() - start


async def open_loop(
    base: str,
    requests: Requests,
    rate: float,
    seconds: float,
    connections: int,
    drain_s: float,
) -> tuple[Tally, float, int]:
    """Offer ``rate`` requests/s for ``seconds``; returns the tally, the time until the last
    answer, and how many requests were still unanswered at the drain deadline.

    A dispatcher puts each request on a queue when it is due; ``connections`` senders take
    them in order (a request waiting for a free connection waits in that queue, and its
    latency counts from when it was due). One queue instead of thousands of tasks waiting
    in a pool keeps the client's cost per request flat under overload. Each sender owns one
    keep-alive :class:`Connection`."""
    tally = Tally()
    due_queue: asyncio.Queue[tuple[float, dict[str, object]] | None] = asyncio.Queue()

    async def sender() -> None:
        http = Connection(base)
        while (item := await due_queue.get()) is not None:
            await send(http, item[1], item[0], tally)
        http.close()

    senders = [asyncio.create_task(sender()) for _ in range(connections)]
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        due_queue.put_nowait((due, requests.body()))
    for _ in senders:
        due_queue.put_nowait(None)
    _, pending = await asyncio.wait(senders, timeout=drain_s)
    # each unfinished sender holds one request and left its stop marker in the queue
    unanswered = due_queue.qsize()
    for task in pending:
        task.cancel()
    if unanswered > 0:
        tally.errors["unanswered at the drain deadline"] += unanswered
    last = max(tally.answered_at, default=time.perf_counter())
    return tally, last - start, unanswered


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += (int(stats[p][11]) + int(stats[p][12])) / os.sysconf("SC_CLK_TCK")
        todo.extend(children.get(p, []))
    return total


def prepare(tmp: Path, redis_url: str, n_sessions: int) -> Settings:
    """benchmarks/recommend.py's world, with ``n_sessions`` sessions, in Redis; a model."""
    return prepare_world(tmp, redis_url, setup, n_sessions)


def start_server(
    settings: Settings, args: argparse.Namespace, rate_limit: float
) -> tuple[subprocess.Popen[bytes], int]:
    port = setup.free_port()
    env = {**os.environ, **settings.to_env(), "OMP_NUM_THREADS": "1"}
    code = "from featrec.cli.serve import serve; serve()"
    serve = [sys.executable, "-c", code, "--port", str(port), "--workers", str(args.workers)]
    serve += ["--model", "latest", "--max-session-age", str(setup.MAX_SESSION_AGE_S)]
    serve += ["--rate-limit", repr(rate_limit), "--rate-burst", str(max(1, int(rate_limit)))]
    serve += ["--server", args.server]
    serve += list(args.serve_arg)
    cores = "1" if args.workers == 1 else "0,1"
    proc = subprocess.Popen(
        ["taskset", "-c", cores, *serve],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    setup.wait_for(proc, port)
    return proc, port


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="open-loop load duration")
    ap.add_argument("--factor", type=float, default=2.0, help="offered rate / capacity")
    ap.add_argument("--capacity-seconds", type=float, default=15.0)
    ap.add_argument("--concurrency", type=int, default=4, help="closed-loop connections")
    ap.add_argument("--connections", type=int, default=64, help="open-loop connection pool")
    ap.add_argument("--drain-seconds", type=float, default=180.0)
    ap.add_argument("--workers", type=int, default=1, help="featrec serve --workers")
    ap.add_argument("--server", default="granian", help="featrec serve --server")
    ap.add_argument("--capacity-only", action="store_true", help="measure the capacity phase alone")
    ap.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        help="the server's per-client rate limit (default: 10x the offered rate)",
    )
    ap.add_argument("--serve-arg", action="append", default=[], help="extra featrec serve argument")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="featrec-bench-http-load-"))
    server = setup.RedisServer(tmp)
    server.start()
    try:
        run(args, tmp, server.url)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, redis_url: str) -> None:
    print("applying the Feast repo and writing the catalogue ...", flush=True)
    # Enough sessions that every request of both phases is for a new one.
    n_sessions = 80_000
    settings = prepare(tmp, redis_url, n_sessions)
    requests = Requests(n_sessions)

    # Capacity: the rate limit must not interfere with measuring it.
    proc, port = start_server(settings, args, rate_limit=1e6)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(closed_loop(base, requests, args.concurrency, 3.0))  # warm-up
        server_cpu0 = tree_cpu_s(proc.pid)
        capacity_tally, elapsed = asyncio.run(
            closed_loop(base, requests, args.concurrency, args.capacity_seconds)
        )
        server_cpu = tree_cpu_s(proc.pid) - server_cpu0
        print(summary("capacity (closed loop)", capacity_tally, elapsed), flush=True)
        capacity = len(capacity_tally.latencies_s) / elapsed
        cpu_per_request_ms = 1000 * server_cpu / max(len(capacity_tally.latencies_s), 1)
        print(
            f"  server CPU {server_cpu:.1f} s: {cpu_per_request_ms:.2f} ms per answer "
            f"({1000 / cpu_per_request_ms:.0f} answers per server-core second)",
            flush=True,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    if args.capacity_only:
        return
    rate = args.factor * capacity
    rate_limit = args.rate_limit if args.rate_limit is not None else 10 * rate
    proc, port = start_server(settings, args, rate_limit=rate_limit)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(closed_loop(base, requests, args.concurrency, 3.0))  # warm-up
        print(
            f"offering {rate:.1f} requests/s ({args.factor:g}x capacity) for {args.seconds:g} s, "
            f"server rate limit {rate_limit:g}/s ...",
            flush=True,
        )
        cpu0 = time.process_time()
        tally, until_last, _ = asyncio.run(
            open_loop(base, requests, rate, args.seconds, args.connections, args.drain_seconds)
        )
        client_cpu = time.process_time() - cpu0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print()
    print(f"load average at the end (1, 5, 15 min): {load_average()}")
    print(
        f"capacity ({args.server}, {args.workers} worker(s)): {capacity:.1f} answers/s "
        f"({args.concurrency} connections, closed loop); server CPU {cpu_per_request_ms:.2f} ms "
        "per answer"
    )
    print(summary(f"load at {args.factor:g}x ({rate:.1f}/s offered)", tally, until_last))
    print(
        f"  client CPU {client_cpu:.1f} s over {until_last:.1f} s "
        f"({100 * client_cpu / until_last:.0f}% of its core)"
    )


if __name__ == "__main__":
    main()
