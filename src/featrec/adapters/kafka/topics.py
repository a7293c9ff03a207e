"""Creating and describing Kafka topics (confluent-kafka ``AdminClient``)."""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from featrec.adapters.kafka.errors import translated_kafka


def create_topic(
    config: Mapping[str, str],
    name: str,
    partitions: int,
    *,
    timeout_s: float = 10.0,
    exist_ok: bool = True,
) -> None:
    """Create ``name`` with ``partitions`` partitions (replication factor 1 on a test broker;
    production topics are usually created by their operators). An existing topic is kept."""
    admin = AdminClient(dict(config))
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    with translated_kafka(f"creating the topic {name!r}"):
        try:
            futures[name].result(timeout=timeout_s)
        except KafkaException as exc:
            if not (exist_ok and "TOPIC_ALREADY_EXISTS" in str(exc)):
                raise


def partition_count(config: Mapping[str, str], name: str, timeout_s: float = 10.0) -> int:
    """How many partitions ``name`` has (0 if the broker does not know it)."""
    admin = AdminClient(dict(config))
    with translated_kafka(f"describing the topic {name!r}"):
        metadata = admin.list_topics(name, timeout=timeout_s)
    topic = metadata.topics.get(name)
    if topic is None or topic.error is not None:
        return 0
    return len(topic.partitions)
