"""The Kafka bus in a dataflow: bytewax's own ``KafkaSource``, and a dead-letter topic sink.

:class:`KafkaEventSource` is bytewax's ``KafkaSource`` (one input partition per topic
partition; each partition's offset is its recovery state, so a run with a recovery store
resumes exactly after the last committed epoch, also with another number of processes). It
only turns each message into the :class:`~featrec.core.events.formats.RawRecord` the flows
decode, inside the partition (no extra step): origin ``topic:partition:offset``,
``ingested_at`` the message's timestamp (the producer's send time), so freshness is measured
from the moment the event reached the bus. A message without a value is a dead letter.

When a partition is caught up, it sleeps ``idle_ms`` through ``next_awake`` (bytewax's
partition would poll again at once: a busy loop on an idle topic). A consumer error stops the
flow (``raise_on_errors``): featrec's launcher restarts the cluster from recovery, with the
offsets of the last committed epoch.

Tombstones of ``featrec forget`` travel on the Redis stream only: a Kafka record cannot be
deleted, and a tombstone names the forgotten user's sessions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING

from dataflows.sinks import MAX_BACKOFF_S, dead_letter_record, retry_unavailable
from dataflows.sources import SourceItem
from featrec.adapters.kafka.producer import BusProducer, append_dead_letters
from featrec.core.events.formats import DeadLetter, RawRecord
from featrec.errors import ConfigError

Message = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None]


class KafkaEventSource(FixedPartitionedSource[SourceItem, int | None]):
    """featrec events from a Kafka topic, through bytewax's ``KafkaSource``.

    ``config``: librdkafka properties (brokers and security: see
    :func:`featrec.adapters.kafka.config.client_config`). ``tail=False`` ends each partition at
    its end (backfills, tests, benchmarks); by default the source waits for new messages.
    """

    def __init__(
        self,
        config: Mapping[str, str],
        topic: str,
        *,
        tail: bool = True,
        batch_size: int = 1000,
        idle_ms: float = 5.0,
    ) -> None:
        servers = config.get("bootstrap.servers", "")
        if not servers:
            raise ConfigError("no Kafka brokers given (FEATREC_KAFKA_BROKERS)")
        # librdkafka's fetch waits up to 500 ms for data on a quiet partition, which would be
        # the freshness of a quiet shop; 10 ms keeps a trickle fresh (configurable).
        extra = {"fetch.wait.max.ms": "10"}
        extra.update({k: v for k, v in config.items() if k != "bootstrap.servers"})
        self.topic = topic
        self.idle = timedelta(milliseconds=idle_ms)
        self.inner = KafkaSource(
            servers.split(","),
            [topic],
            tail=tail,
            starting_offset=OFFSET_BEGINNING,
            add_config=extra,
            batch_size=batch_size,
        )

    def list_parts(self) -> list[str]:
        parts = self.inner.list_parts()
        if not parts:
            raise ConfigError(f"the Kafka topic {self.topic!r} has no partitions")
        return parts

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> StatefulSourcePartition[SourceItem, int | None]:
        return _EventPartition(self.inner.build_part(step_id, for_part, resume_state), self.idle)


class _EventPartition(StatefulSourcePartition[SourceItem, int | None]):
    def __init__(self, inner: StatefulSourcePartition[Any, int | None], idle: timedelta) -> None:
        self.inner = inner
        self.idle = idle
        self.wake: datetime | None = None

    def next_batch(self) -> list[SourceItem]:
        messages = list(self.inner.next_batch())
        if not messages:
            self.wake = datetime.now(UTC) + self.idle
            return []
        self.wake = None
        now = time.time()
        return [_record(m, now) for m in messages]

    def next_awake(self) -> datetime | None:
        return self.wake

    def snapshot(self) -> int | None:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


def _record(message: Message, now: float) -> SourceItem:
    if isinstance(message, KafkaError):  # only with raise_on_errors=False; kept for safety
        return DeadLetter(_origin(message.msg), f"kafka: {message.err.str()}", "")
    origin = _origin(message)
    if message.value is None:
        return DeadLetter(origin, "message: no value (a Kafka tombstone?)", "")
    stamp = message.timestamp
    at = stamp[1] / 1000.0 if stamp is not None and stamp[0] != 0 and stamp[1] > 0 else now
    return RawRecord("featrec", origin, message.value.decode("utf-8", "surrogateescape"), at)


def _origin(message: KafkaSourceMessage[Any, Any]) -> str:
    return f"{message.topic}:{message.partition}:{message.offset}"


class KafkaDeadLetterSink(DynamicSink[DeadLetter]):
    """Refused records to a Kafka topic: JSON ``{origin, reason, payload, at}`` keyed by origin.

    Each batch waits for the broker's acknowledgement before the epoch can commit, so a dead
    letter is never lost (at-least-once, as every sink). An unreachable broker is retried with
    capped backoff, counted like a store outage (``store="dead_letters"``).
    """

    def __init__(
        self, config: Mapping[str, str], topic: str, max_backoff_s: float = MAX_BACKOFF_S
    ) -> None:
        self.config = dict(config)
        self.topic = topic
        self.max_backoff_s = max_backoff_s

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[DeadLetter]:
        return _KafkaDeadLetterPartition(BusProducer(self.config, self.topic), self.max_backoff_s)


class _KafkaDeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, producer: BusProducer, max_backoff_s: float) -> None:
        self.producer = producer
        self.max_backoff_s = max_backoff_s

    def write_batch(self, items: list[DeadLetter]) -> None:
        at = datetime.now(UTC)
        letters = [dead_letter_record(d, at) for d in items]
        retry_unavailable(
            lambda: append_dead_letters(self.producer, letters),
            f"writing {len(letters)} dead letters to {self.producer.topic!r}",
            self.max_backoff_s,
            store="dead_letters",
        )

    def close(self) -> None:
        self.producer.close()
