"""MappedFileReader on real files: foreign CSV (delimiter, encoding), JSON lines and Parquet;
resuming at a position; and round trips: featrec's own JSON lines, CSV and Parquet read
through an identity mapping give exactly the events featrec's own readers give."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featrec.adapters.files.event_files import read_events, write_events
from featrec.adapters.files.mapped_records import MappedFileReader, open_file_reader
from featrec.core.events.formats import DeadLetter, RawRecord, decode
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.mapping import parse_mapping
from featrec.core.events.model import Event
from featrec.errors import ConfigError

IDENTITY = {
    "fields": {
        name: name
        for name in (
            "event_id",
            "session_id",
            "user_id",
            "item_id",
            "type",
            "price",
            "category",
            "quantity",
        )
    },
    "ts": {"column": "ts"},  # auto: ISO text (JSON lines, CSV) or a timestamp (Parquet)
}
CLICKS = {
    "delimiter": ";",
    "encoding": "latin-1",
    "fields": {
        "session_id": "sid",
        "user_id": "uid",
        "item_id": "product",
        "type": "action",
        "category": "cat",
    },
    "ts": {"column": "ts_ms", "unit": "ms"},
    "types": {"addToCart": "cart", "pageView": "view"},
}


def events_of(items: list[Event | DeadLetter]) -> list[Event]:
    assert all(isinstance(i, Event) for i in items), [i for i in items if not isinstance(i, Event)]
    return [i for i in items if isinstance(i, Event)]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_featrec_formats_round_trip_through_an_identity_mapping(
    tmp_path: Path, suffix: str
) -> None:
    events = list(generate(GeneratorConfig(n_events=400, seed=3)))
    path = tmp_path / f"events{suffix}"
    write_events(path, events)
    native = events_of(list(read_events(path)))
    mapped = events_of(list(read_events(path, mapping=parse_mapping(IDENTITY))))
    assert mapped == native == events


def test_foreign_csv_with_delimiter_and_encoding(tmp_path: Path) -> None:
    path = tmp_path / "clicks.csv"
    path.write_bytes(
        "sid;uid;product;action;ts_ms;cat\n"
        "s1;u1;p1;pageView;1793627130000;Bücher\n"
        "s1;u1;p2;addToCart;1793627131000;Bücher\n"
        "s2;;p3;pageView;soon;Spiele\n"
        "s3;u3;p4\n".encode("latin-1")
    )
    items = list(read_events(path, mapping=parse_mapping(CLICKS)))
    first, second, bad_ts, short = items
    assert isinstance(first, Event) and isinstance(second, Event)
    assert (first.type, second.type, first.category) == ("view", "cart", "Bücher")
    assert isinstance(bad_ts, DeadLetter) and bad_ts.origin.endswith("clicks.csv:4")
    assert bad_ts.reason == "ts: column 'ts_ms': 'soon' is not epoch milliseconds"
    assert isinstance(short, DeadLetter) and short.reason == "row: expected 6 columns, got 3"


def test_wrong_encoding_is_a_dead_letter_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "clicks.csv"
    path.write_bytes(
        b"sid;uid;product;action;ts_ms;cat\ns1;u1;p1;pageView;1793627130000;B\xfccher\n"
    )
    [item] = read_events(path, mapping=parse_mapping({**CLICKS, "encoding": "utf-8"}))
    assert isinstance(item, DeadLetter)
    assert item.reason == "encoding: line 2 is not valid utf-8 text"


def test_unknown_column_refused_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "clicks.csv"
    path.write_text("sid;uid;prod;action;ts_ms;cat\n")
    with pytest.raises(ConfigError, match=r"item_id from column 'product', which is not there"):
        MappedFileReader(path, parse_mapping(CLICKS))
    parquet = tmp_path / "clicks.parquet"
    pq.write_table(pa.table({"sid": ["s"], "product": ["p"]}), parquet)
    with pytest.raises(ConfigError, match=r"column 'uid'"):
        MappedFileReader(parquet, parse_mapping({**CLICKS, "encoding": "utf-8"}))


def test_foreign_parquet_and_jsonl(tmp_path: Path) -> None:
    parquet = tmp_path / "clicks.parquet"
    pq.write_table(
        pa.table(
            {
                "sid": ["s1", "s1"],
                "uid": ["u1", None],
                "product": ["p1", "p2"],
                "action": ["pageView", "addToCart"],
                "ts_ms": [1793627130000, 1793627131000],
                "cat": ["a", "b"],
            }
        ),
        parquet,
    )
    got = events_of(list(read_events(parquet, mapping=parse_mapping(CLICKS))))
    assert [(e.item_id, e.type, e.user_id) for e in got] == [
        ("p1", "view", "u1"),
        ("p2", "cart", None),
    ]
    jsonl = tmp_path / "tracker.ndjson"
    jsonl.write_text(
        '{"s": {"id": "x"}, "item": {"id": 5}, "ev": "addToCart", "at": "2026-11-02T10:00:00Z"}\n'
        "\n"
        '{"s": {"id": "x"}, "ev": "pageView", "at": "2026-11-02T10:00:01Z"}\n'
    )
    tracker = parse_mapping(
        {
            "fields": {"session_id": "s.id", "item_id": "item.id", "type": "ev"},
            "ts": {"column": "at", "unit": "iso"},
            "types": {"addToCart": "cart", "pageView": "view"},
        }
    )
    ok, missing = read_events(jsonl, mapping=tracker)
    assert isinstance(ok, Event) and ok.item_id == "5" and ok.type == "cart"
    assert isinstance(missing, DeadLetter) and missing.origin.endswith("tracker.ndjson:3")
    assert missing.reason.startswith("item_id: path 'item.id' not found")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_resume_at_a_position_reads_the_rest_exactly(tmp_path: Path, suffix: str) -> None:
    events = list(generate(GeneratorConfig(n_events=300, seed=5)))
    path = tmp_path / f"events{suffix}"
    write_events(path, events)
    m = parse_mapping(IDENTITY)
    with open_file_reader(path, mapping=m) as reader:
        head = reader.read(120)
        position = reader.position
    with open_file_reader(path, mapping=m, position=position) as reader:
        tail = []
        while not reader.exhausted:
            tail += reader.read(50)
    decoded = [e for r in head + tail if isinstance(r, RawRecord) for e in decode(r)]
    assert decoded == events
