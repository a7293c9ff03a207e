"""Raw file reading and the bytewax sources: formats, headers, exact resume, pacing, Redis."""

from __future__ import annotations

import csv
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import shared_file
from prometheus_client import REGISTRY

from dataflows.sources import MAX_IDLE_S, FileReplaySource, RedisStreamSource, StreamPosition
from featrec.adapters.files.event_log import events_to_table
from featrec.adapters.files.raw_records import (
    FilePosition,
    RawFileReader,
    record_time,
    resolve_format,
)
from featrec.adapters.redis.streams import connect, publish
from featrec.core.events.formats import DeadLetter, RawRecord, decode
from featrec.core.events.model import Event, event_from_mapping
from featrec.errors import ConfigError
from featrec.testing.redis_server import RedisServer

RSC15_TRAIN = shared_file("rsc15-100k", "yoochoose-clicks-100k_train_tr.txt")
T0 = 1_700_000_000.0


def make_events(n: int = 25) -> list[Event]:
    out = []
    for i in range(n):
        raw: dict[str, object] = {
            "event_id": f"e{i}",
            "session_id": f"s{i % 4}",
            "item_id": f"i{i % 7}",
            "type": ["view", "click", "cart", "purchase"][i % 4],
            "ts": T0 + i * 1.5,
        }
        if i % 3 == 0:
            raw.update(user_id=f"u{i % 2}", price=9.5 + i, category="shoes", quantity=1 + i % 2)
        out.append(event_from_mapping(raw))
    return out


def write_jsonl(path: Path, events: list[Event]) -> Path:
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in events))
    return path


def write_csv(path: Path, events: list[Event]) -> Path:
    cols = [
        "event_id",
        "session_id",
        "user_id",
        "item_id",
        "type",
        "ts",
        "price",
        "category",
        "quantity",
    ]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for e in events:
            w.writerow({k: "" if v is None else v for k, v in e.to_dict().items()})
    return path


def write_parquet(path: Path, events: list[Event], row_group_size: int = 7) -> Path:
    pq.write_table(events_to_table(events), path, row_group_size=row_group_size)
    return path


WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}


def decoded(items: list[RawRecord | DeadLetter]) -> list[Event | DeadLetter]:
    out: list[Event | DeadLetter] = []
    for item in items:
        out.extend([item] if isinstance(item, DeadLetter) else decode(item))
    return out


def read_all(path: Path, fmt: str | None = None, chunk: int = 4) -> list[RawRecord | DeadLetter]:
    out: list[RawRecord | DeadLetter] = []
    with RawFileReader(path, fmt) as reader:
        while not reader.exhausted:
            out.extend(reader.read(chunk))
    return out


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_featrec_files_round_trip(tmp_path: Path, layout: str) -> None:
    events = make_events()
    path = WRITERS[layout](tmp_path / f"events.{layout}", events)
    assert resolve_format(path).decoder == "featrec"
    assert decoded(read_all(path)) == events


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_resume_from_a_position_continues_exactly(tmp_path: Path, layout: str) -> None:
    events = make_events(30)
    path = WRITERS[layout](tmp_path / f"events.{layout}", events)
    full = read_all(path)
    for k in (0, 1, 6, 7, 13, 29, 30):
        with RawFileReader(path) as reader:
            head = reader.read(k) if k else []
            position = reader.position
        with RawFileReader(path, position=position) as reader:
            tail = reader.read(1000)
            assert reader.exhausted
        assert [r.origin for r in head + tail] == [r.origin for r in full]
        assert decoded(head + tail) == events


def test_origins_name_file_and_line(tmp_path: Path) -> None:
    events = make_events(3)
    path = tmp_path / "events.jsonl"
    path.write_text(
        json.dumps(events[0].to_dict())
        + "\n\n"
        + "\n".join(json.dumps(e.to_dict()) for e in events[1:])
    )
    origins = [r.origin for r in read_all(path)]
    assert origins == [f"{path}:1", f"{path}:3", f"{path}:4"]  # the blank line 2 is no record
    csv_path = write_csv(tmp_path / "events.csv", events)
    assert [r.origin for r in read_all(csv_path)] == [f"{csv_path}:{n}" for n in (2, 3, 4)]
    pq_path = write_parquet(tmp_path / "events.parquet", events)
    assert [r.origin for r in read_all(pq_path)] == [f"{pq_path}:{n}" for n in (0, 1, 2)]


def test_csv_row_with_wrong_column_count_is_a_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,session_id,item_id,type,ts\n"
        "e1,s1,i1,view,2024-01-01T00:00:00Z\n"
        "e2,s1,i1\n"
        "e3,s1,i2,click,1704067300\n"
    )
    records = read_all(path)
    letter = records[1]
    assert isinstance(letter, DeadLetter)
    assert letter.origin == f"{path}:3"
    assert letter.reason == "row: expected 5 columns, got 3"
    events = [e for e in decoded(records) if isinstance(e, Event)]
    assert [e.event_id for e in events] == ["e1", "e3"]
    assert events[1].ts == datetime(2024, 1, 1, 0, 1, 40, tzinfo=UTC)  # numeric ts = unix s


def test_otto_sample_is_detected_and_read(otto_sample: Path) -> None:
    assert resolve_format(otto_sample).decoder == "otto"
    records = read_all(otto_sample, chunk=1000)
    assert len(records) == 20
    assert records[0].origin == f"{otto_sample}:1"
    events = decoded(records)
    assert len(events) == 862 and all(isinstance(e, Event) for e in events)
    first = events[0]
    assert isinstance(first, Event)
    assert (first.session_id, first.item_id, first.type) == ("0", "1517085", "click")
    assert first.ts == datetime.fromtimestamp(1659304800.025, UTC)


def test_rsc15_session_rec_file_is_read(tmp_path: Path) -> None:
    head = RSC15_TRAIN.read_text().splitlines(keepends=True)[:201]
    path = tmp_path / "rsc15-head.txt"  # a tmp copy of 200 rows, never kept in the repo
    path.write_text("".join(head))
    events = decoded(read_all(path, chunk=64))
    assert len(events) == 200 and all(isinstance(e, Event) for e in events)
    first = events[0]
    assert isinstance(first, Event)
    assert (first.session_id, first.item_id, first.type) == ("3", "214716935", "click")
    assert first.ts == datetime.fromtimestamp(1396437466.94, UTC)
    # Reading the shared file itself from a mid-file position works the same.
    with RawFileReader(RSC15_TRAIN) as reader:
        assert reader.format.decoder == "session-rec"
        reader.read(150)
        position = reader.position
    with RawFileReader(RSC15_TRAIN, position=position) as reader:
        assert decoded(reader.read(50)) == events[150:200]


@pytest.mark.parametrize(
    ("name", "content", "fmt", "message"),
    [
        ("clicks.txt", "session\titem\ttime\n1\t2\t3\n", None, "SessionId ItemId Time"),
        ("events.csv", "event_id,session,item_id,type,ts\n", None, "unknown columns ['session']"),
        ("events.csv", "event_id,item_id,type,ts\n", None, "missing columns ['session_id']"),
        ("events.xml", "<events/>", None, "cannot tell the format"),
        ("events.jsonl", "{}\n", "kafka", "unknown source format"),
        ("events.txt", "{}\n", "featrec", "featrec files must end in"),
        ("events.parquet", "not parquet at all", None, "not a readable Parquet file"),
    ],
)
def test_wrong_header_or_format_is_a_config_error(
    tmp_path: Path, name: str, content: str, fmt: str | None, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        FileReplaySource([path], fmt=fmt)


def test_parquet_with_unknown_columns_is_a_config_error(tmp_path: Path) -> None:
    table = events_to_table(make_events(2)).rename_columns(
        ["event_id", "sid", "user_id", "item_id", "type", "ts", "price", "category", "quantity"]
    )
    pq.write_table(table, tmp_path / "e.parquet")
    with pytest.raises(ConfigError, match="unknown columns"):
        FileReplaySource([tmp_path / "e.parquet"])


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        FileReplaySource([tmp_path / "nope.jsonl"])


def drain(part, limit: int = 100) -> list[RawRecord | DeadLetter]:  # type: ignore[no-untyped-def]
    out: list[RawRecord | DeadLetter] = []
    for _ in range(limit):
        try:
            out.extend(part.next_batch())
        except StopIteration:
            return out
    raise AssertionError("partition did not end")


def test_file_partitions_resume_from_snapshot(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", make_events(2500))
    b = write_csv(tmp_path / "b.csv", make_events(10))
    source = FileReplaySource([a, b])
    assert source.list_parts() == [str(a), str(b)]
    part = source.build_part("input", str(a), None)
    first = part.next_batch()
    assert len(first) == 1000
    snap = part.snapshot()
    assert isinstance(snap, FilePosition) and snap.line == 1000
    resumed = source.build_part("input", str(a), snap)
    rest = drain(resumed)
    assert [r.origin for r in first + rest] == [f"{a}:{i}" for i in range(1, 2501)]


def test_paced_replay_waits_with_next_awake_and_never_blocks(tmp_path: Path) -> None:
    lines = [
        {"event_id": "e0", "session_id": "s", "item_id": "i", "type": "view", "ts": T0},
        {"event_id": "e1", "session_id": "s", "item_id": "i", "type": "view", "ts": T0 + 1000},
    ]
    path = tmp_path / "paced.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    part = FileReplaySource([path], speed=1.0).build_part("input", str(path), None)
    assert [r.origin for r in part.next_batch()] == [f"{path}:1"]
    assert part.snapshot() == FilePosition(len(json.dumps(lines[0])) + 1, 1)
    t = time.perf_counter()
    assert part.next_batch() == []  # e1 is due 1000 s later: no sleeping here
    assert time.perf_counter() - t < 5
    wake = part.next_awake()
    # Polled again soon (so bytewax can close epochs), not only when e1 is due.
    assert wake is not None
    assert wake <= datetime.now(UTC) + timedelta(seconds=MAX_IDLE_S)
    assert part.next_batch() == []
    # The peeked record is not part of the snapshot until it is emitted.
    assert part.snapshot().line == 1


def test_paced_replay_scales_and_emits_everything(tmp_path: Path) -> None:
    events = make_events(6)  # 1.5 s apart; x100 => 15 ms apart
    path = write_jsonl(tmp_path / "e.jsonl", events)
    part = FileReplaySource([path], speed=100.0).build_part("input", str(path), None)
    got: list[RawRecord | DeadLetter] = []
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            got.extend(part.next_batch())
        except StopIteration:
            break
        wake = part.next_awake()
        if wake is not None:
            time.sleep(max(0.0, (wake - datetime.now(UTC)).total_seconds()))
    assert decoded(got) == events
    assert all(isinstance(r, RawRecord) and r.ingested_at > 0 for r in got)


def test_record_time_per_format() -> None:
    assert record_time(RawRecord("session-rec", "f:2", "3\t214\t1396437466.94")) == 1396437466.94
    otto = '{"session": 1, "events": [{"aid": 5, "ts": 1659304800025, "type": "clicks"}]}'
    assert record_time(RawRecord("otto", "f:1", otto)) == 1659304800.025
    assert record_time(RawRecord("featrec", "f:1", {"ts": "2024-01-01T00:00:00Z"})) == 1704067200
    assert record_time(RawRecord("featrec", "f:1", "not json")) is None


# Redis Streams -----------------------------------------------------------------------------


def test_stream_source_reads_resumes_and_idles(redis_url: str) -> None:
    events = make_events(25)
    before = time.time()
    assert publish(redis_url, "events", events[:20]) == 20
    source = RedisStreamSource(redis_url, ["events"], batch_size=8)
    part = source.build_part("input", "events", None)
    got = part.next_batch() + part.next_batch()
    assert len(got) == 16
    snap = part.snapshot()
    assert isinstance(snap, StreamPosition)
    record = got[0]
    assert isinstance(record, RawRecord)
    assert record.origin.startswith("events:")
    assert before - 1 <= record.ingested_at <= time.time() + 1  # XADD time from the id
    assert int(record.origin.split(":")[1].split("-")[0]) == int(record.ingested_at * 1000)

    resumed = source.build_part("input", "events", snap)
    rest = resumed.next_batch()
    assert len(rest) == 4
    assert resumed.next_batch() == []  # caught up: no blocking, come back soon
    wake = resumed.next_awake()
    assert wake is not None and wake > datetime.now(UTC) - timedelta(seconds=1)
    publish(redis_url, "events", events[20:])
    assert decoded(got + rest + resumed.next_batch()) == events


def test_stream_entry_without_event_field_is_a_dead_letter(redis_url: str) -> None:
    client = connect(redis_url)
    entry_id = client.xadd("events", {"x": "1"}).decode()
    part = RedisStreamSource(redis_url, ["events"]).build_part("input", "events", None)
    [letter] = part.next_batch()
    assert isinstance(letter, DeadLetter)
    assert letter.origin == f"events:{entry_id}"
    assert letter.reason.startswith("entry: no field 'e'")


def test_stream_source_stops_when_caught_up_if_asked(redis_url: str) -> None:
    publish(redis_url, "events", make_events(3))
    part = RedisStreamSource(redis_url, ["events"], stop_when_caught_up=True).build_part(
        "input", "events", None
    )
    assert len(drain(part)) == 3


def test_stream_source_survives_an_outage_without_losing_its_place(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        events = make_events(10)
        publish(server.url, "events", events[:5])
        part = RedisStreamSource(server.url, ["events"], max_backoff_s=0.05).build_part(
            "input", "events", None
        )
        got = part.next_batch()
        server.stop()
        retries = REGISTRY.get_sample_value("featrec_source_retries_total", {"stream": "events"})
        for _ in range(3):
            assert part.next_batch() == []
        after = REGISTRY.get_sample_value("featrec_source_retries_total", {"stream": "events"})
        assert after == (retries or 0) + 3
        assert part.next_awake() is not None
        server.start()
        # Redis had no persistence: the stream is new, but the partition kept its last id,
        # so only entries after it are read.
        publish(server.url, "events", events[5:])
        got += part.next_batch()
        assert decoded(got) == events
    finally:
        server.stop()


def test_file_replay_source_reads_through_a_mapping(tmp_path: Path) -> None:
    """A shop's own CSV through FileReplaySource(mapping=...) in a real bytewax run: the mapped
    rows decode to the events written, a row that does not map arrives as a dead letter."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, run_main

    from featrec.core.events.mapping import parse_mapping

    events = make_events(12)
    path = tmp_path / "shop.csv"
    lines = ["sess|prod|what|when_ms"]
    lines += [f"{e.session_id}|{e.item_id}|{e.type}|{int(e.ts.timestamp() * 1000)}" for e in events]
    lines.append("s9|i9|view|not-a-time")
    path.write_text("\n".join(lines) + "\n")
    mapping = parse_mapping(
        {
            "delimiter": "|",
            "fields": {"session_id": "sess", "item_id": "prod", "type": "what"},
            "ts": {"column": "when_ms", "unit": "ms"},
        }
    )
    out: list[object] = []
    flow = Dataflow("mapped_source")
    stream = op.input("in", flow, FileReplaySource([path], mapping=mapping))
    op.output("out", stream, TestingSink(out))
    run_main(flow)
    decoded = [e for r in out if isinstance(r, RawRecord) for e in decode(r)]
    assert [(e.session_id, e.item_id, e.type, e.ts) for e in decoded if isinstance(e, Event)] == [
        (e.session_id, e.item_id, e.type, e.ts) for e in events
    ]
    [dead] = [r for r in out if isinstance(r, DeadLetter)]
    assert dead.reason == "ts: column 'when_ms': 'not-a-time' is not epoch milliseconds"
