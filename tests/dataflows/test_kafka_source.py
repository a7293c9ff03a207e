"""The Kafka bus in-process, on a private Tansu broker: bytewax's KafkaSource as featrec's
source (records, keys, resume offsets), the dead-letter topic sink, and the flows' choice of
sink beside their source."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.items import dead_letter_sink as items_dead_letter_sink
from dataflows.kafka import KafkaDeadLetterSink, KafkaEventSource
from dataflows.sessions import dead_letter_sink, source_from_env
from featrec.adapters.kafka.config import PARTITIONER
from featrec.adapters.kafka.producer import BusProducer, publish
from featrec.core.events.formats import DeadLetter, RawRecord
from featrec.core.events.model import event_from_mapping
from featrec.errors import ConfigError
from featrec.settings import Settings
from featrec.testing.kafka_broker import KafkaBroker, read_topic, running_kafka


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    with running_kafka(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


def events(n: int, sessions: int = 6) -> list[dict[str, object]]:
    return [
        {
            "event_id": f"e{i}",
            "session_id": f"s{i % sessions}",
            "item_id": f"i{i % 5}",
            "type": "view",
            "ts": 1_700_000_000.0 + i,
        }
        for i in range(n)
    ]


def read_all(source: KafkaEventSource) -> list[RawRecord | DeadLetter]:
    out: list[RawRecord | DeadLetter] = []
    flow = Dataflow("read")
    op.output("out", op.input("in", flow, source), TestingSink(out))
    run_main(flow)
    return out


def test_events_keyed_by_session_stay_in_order_on_one_partition(kafka: KafkaBroker) -> None:
    kafka.create_topic("keyed", 4)
    config = {"bootstrap.servers": kafka.bootstrap, "partitioner": PARTITIONER}
    before = time.time()
    assert publish(config, "keyed", [event_from_mapping(e) for e in events(60)]) == 60
    records = read_all(
        KafkaEventSource({"bootstrap.servers": kafka.bootstrap}, "keyed", tail=False)
    )
    assert len(records) == 60 and all(isinstance(r, RawRecord) for r in records)
    partitions: dict[str, set[str]] = {}
    by_session: dict[str, list[int]] = {}
    for record in records:
        assert isinstance(record, RawRecord) and isinstance(record.payload, str)
        topic, partition, offset = record.origin.split(":")
        assert topic == "keyed" and int(offset) >= 0
        data = json.loads(record.payload)
        partitions.setdefault(data["session_id"], set()).add(partition)
        by_session.setdefault(data["session_id"], []).append(int(data["event_id"][1:]))
        # ingested_at is the producer's timestamp: when the event reached the bus
        assert before - 1 <= record.ingested_at <= time.time() + 1
    assert all(len(p) == 1 for p in partitions.values()), partitions
    assert len({p for ps in partitions.values() for p in ps}) > 1  # spread over partitions
    assert all(ids == sorted(ids) for ids in by_session.values())


def test_a_partition_resumes_at_its_snapshot_offset(kafka: KafkaBroker) -> None:
    kafka.create_topic("resume", 1)
    publish({"bootstrap.servers": kafka.bootstrap}, "resume", [json.dumps(e) for e in events(10)])
    source = KafkaEventSource({"bootstrap.servers": kafka.bootstrap}, "resume", tail=False)
    [part] = source.list_parts()
    partition = source.build_part("in", part, 7)
    got: list[RawRecord | DeadLetter] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            got += partition.next_batch()
        except StopIteration:
            break
    assert [r.origin for r in got] == [f"resume:0:{i}" for i in (7, 8, 9)]
    assert partition.snapshot() == 10
    partition.close()


def test_a_message_without_value_is_a_dead_letter(kafka: KafkaBroker) -> None:
    kafka.create_topic("novalue", 1)
    producer = BusProducer({"bootstrap.servers": kafka.bootstrap}, "novalue")
    producer.producer.produce("novalue", None, b"s1")
    producer.flush()
    del producer
    [letter] = read_all(
        KafkaEventSource({"bootstrap.servers": kafka.bootstrap}, "novalue", tail=False)
    )
    assert isinstance(letter, DeadLetter) and letter.origin == "novalue:0:0"
    assert "no value" in letter.reason


def test_dead_letters_reach_their_topic_with_the_reason(kafka: KafkaBroker) -> None:
    kafka.create_topic("dead", 1)
    letters = [DeadLetter("t:0:5", "type: 'teleport' is not an event type", '{"type":"x"}')]
    flow = Dataflow("letters")
    op.output(
        "out",
        op.input("in", flow, TestingSource(letters)),
        KafkaDeadLetterSink({"bootstrap.servers": kafka.bootstrap}, "dead"),
    )
    run_main(flow)
    [value] = read_topic(kafka.bootstrap, "dead", 1)
    stored = json.loads(value)
    assert stored["origin"] == "t:0:5" and stored["reason"].startswith("type:")
    assert stored["payload"] == '{"type":"x"}' and stored["at"]


def test_flows_read_kafka_from_the_environment_and_dead_letter_beside_it(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    kafka.create_topic("envtopic", 2)
    env = {
        "FEATREC_SOURCE": "kafka",
        "FEATREC_KAFKA_BROKERS": kafka.bootstrap,
        "FEATREC_KAFKA_TOPIC": "envtopic",
        "FEATREC_KAFKA_DEAD_LETTER_TOPIC": "envdead",
    }
    settings = Settings(home=tmp_path)
    source = source_from_env(env, settings)
    assert isinstance(source, KafkaEventSource) and source.topic == "envtopic"
    assert sorted(source.list_parts()) == ["0-envtopic", "1-envtopic"]
    sessions_sink = dead_letter_sink(env, settings, source, items=False)
    items_sink = items_dead_letter_sink(settings, source, env)
    assert isinstance(sessions_sink, KafkaDeadLetterSink) and sessions_sink.topic == "envdead"
    assert isinstance(items_sink, KafkaDeadLetterSink) and items_sink.topic == "envdead.items"
    with pytest.raises(ConfigError, match="FEATREC_KAFKA_BROKERS"):
        KafkaEventSource({"bootstrap.servers": ""}, "envtopic")
