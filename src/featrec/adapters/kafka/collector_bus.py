"""The Kafka topic as the collector's bus: one message per event, keyed by session id.

The message timestamp is the server's receive time (ms), which the flows' Kafka source reads
as the event's ``ingested_at``, as the Redis stream's ``r`` field and the collector log's first
column are read. A request's events are produced, then flushed: the answer is 202 only once
the broker has acknowledged every one of them. Kafka has no multi-message atomicity without
transactions, so when the flush fails (503), some of the request's events may already be on
the topic: a client that retries delivers them again, and the flows' idempotent output (event
ids) absorbs the copies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from featrec.adapters.kafka.producer import BusProducer, event_message
from featrec.errors import StoreError, StoreUnavailable

#: Seconds a request waits for the broker's acknowledgements before it is answered 503.
ACK_TIMEOUT_S = 5.0


class KafkaBus:
    """Appends accepted events to ``topic`` (an :class:`~featrec.app.collector.EventBus`)."""

    name = "kafka"
    atomic = False  # see the module docstring

    def __init__(self, config: Mapping[str, str], topic: str) -> None:
        self.topic = topic
        self.producer = BusProducer(config, topic)

    def append(self, received_at: float, events: Sequence[str]) -> None:
        stamp = round(received_at * 1000)
        try:
            for text in events:
                self.producer.send(*event_message(text), timestamp_ms=stamp)
            self.producer.flush(timeout_s=ACK_TIMEOUT_S)
        except StoreUnavailable:
            raise
        except StoreError as exc:  # not acknowledged: to the client, the bus is unavailable
            raise StoreUnavailable(f"the Kafka topic {self.topic!r}: {exc}") from exc

    def close(self) -> None:
        self.producer.close()
