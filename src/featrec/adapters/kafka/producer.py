"""Producing to the Kafka bus: events keyed by session id, and dead letters.

A :class:`BusProducer` wraps one confluent-kafka ``Producer`` (idempotent, Java's murmur2
partitioner: see :mod:`featrec.adapters.kafka.config`). Delivery failures come back through
librdkafka's callbacks; :meth:`BusProducer.flush` raises the first one as featrec's error, so
nothing is reported as sent that the broker did not acknowledge.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from confluent_kafka import KafkaError, Message, Producer

from featrec.adapters.kafka.errors import kafka_error, translated_kafka
from featrec.core.events.model import Event
from featrec.errors import StoreError

#: Messages queued before the producer waits for deliveries (bounds its memory).
QUEUE_BOUND: Final = 50_000


class BusProducer:
    """Produces featrec's messages to one topic (events or dead letters)."""

    def __init__(self, config: Mapping[str, str], topic: str) -> None:
        self.producer = Producer(dict(config))
        self.topic = topic
        self.failed: list[KafkaError] = []
        self.queued = 0

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failed.append(error)

    def send(self, value: bytes, key: bytes | None = None, timestamp_ms: int = 0) -> None:
        """Queue one message; ``timestamp_ms`` (0: the producer's clock) becomes the message
        timestamp, which featrec's Kafka source reads as the event's ingestion time."""
        with translated_kafka(f"producing to {self.topic!r}"):
            while True:
                try:
                    self.producer.produce(
                        self.topic,
                        value,
                        key,
                        on_delivery=self._delivered,
                        timestamp=timestamp_ms,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.1)  # librdkafka's queue is full: deliver first
        self.queued += 1
        if self.queued % 1000 == 0:
            self.producer.poll(0)
        if self.queued >= QUEUE_BOUND:
            self.flush()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every queued message's delivery; raise the first failure."""
        left = self.producer.flush(timeout_s)
        self.queued = 0
        if self.failed:
            error, self.failed = self.failed[0], []
            raise kafka_error(f"producing to {self.topic!r}", error)
        if left:
            raise StoreError(f"producing to {self.topic!r}: {left} messages not delivered in time")

    def close(self) -> None:
        self.flush()


def event_message(event: Event | Mapping[str, Any] | str) -> tuple[bytes, bytes | None]:
    """``(value, key)`` of an event: featrec JSON, keyed by its session id."""
    if isinstance(event, Event):
        text = json.dumps(event.to_dict(), separators=(",", ":"))
        session: Any = event.session_id
    elif isinstance(event, str):
        text = event
        try:
            session = json.loads(event).get("session_id")
        except (ValueError, AttributeError):
            session = None  # the flow dead-letters it; any partition will do
    else:
        text = json.dumps(dict(event), separators=(",", ":"), default=str)
        session = event.get("session_id")
    key = str(session).encode() if session is not None else None
    return text.encode("utf-8", "surrogateescape"), key


def publish(
    config: Mapping[str, str], topic: str, events: Iterable[Event | Mapping[str, Any] | str]
) -> int:
    """Produce each event to ``topic`` (keyed by session id); returns how many were acked."""
    producer = BusProducer(config, topic)
    sent = 0
    for event in events:
        producer.send(*event_message(event))
        sent += 1
    producer.flush()
    return sent


def append_dead_letters(producer: BusProducer, letters: Sequence[Mapping[str, str]]) -> int:
    """Produce dead letters (``origin``, ``reason``, ``payload``, ``at``) as JSON values keyed
    by their origin, and wait for their delivery."""
    for letter in letters:
        producer.send(json.dumps(dict(letter)).encode(), str(letter.get("origin", "")).encode())
    producer.flush()
    return len(letters)
