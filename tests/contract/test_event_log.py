"""The Parquet event log: partitioned by UTC date, atomic files, deduplicated on read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from featrec.adapters.files.event_log import (
    EVENT_SCHEMA,
    EventLogWriter,
    event_log_files,
    read_event_log,
)
from featrec.core.events.model import Event, event_from_mapping

MIDNIGHT = datetime(2024, 3, 1, tzinfo=UTC)


def event(i: int, at: datetime, **extra: object) -> Event:
    raw: dict[str, object] = {
        "event_id": f"e{i}",
        "session_id": f"s{i % 3}",
        "item_id": f"i{i}",
        "type": "view",
        "ts": at.isoformat(),
    }
    raw.update(extra)
    return event_from_mapping(raw)


def test_files_are_partitioned_by_utc_date(tmp_path: Path) -> None:
    # 23:59:59 UTC on Feb 29 and 00:00:01 UTC on Mar 1; local time zones must not matter.
    events = [
        event(0, MIDNIGHT - timedelta(seconds=1)),
        event(1, MIDNIGHT + timedelta(seconds=1)),
        event(2, MIDNIGHT + timedelta(hours=23)),
    ]
    files = EventLogWriter(tmp_path, "w3").write(events)
    assert [f.parent.name for f in files] == ["date=2024-02-29", "date=2024-03-01"]
    assert all(f.name.startswith("part-w3-") and f.suffix == ".parquet" for f in files)
    assert pq.read_table(files[0]).column("event_id").to_pylist() == ["e0"]
    assert sorted(pq.read_table(files[1]).column("event_id").to_pylist()) == ["e1", "e2"]
    assert pq.read_schema(files[1]).remove_metadata() == EVENT_SCHEMA


def test_one_file_per_date_per_write(tmp_path: Path) -> None:
    writer = EventLogWriter(tmp_path)
    writer.write([event(i, MIDNIGHT + timedelta(minutes=i)) for i in range(100)])
    writer.write([event(i, MIDNIGHT + timedelta(minutes=i)) for i in range(100, 150)])
    assert len(event_log_files(tmp_path)) == 2


def test_read_deduplicates_replayed_events_and_keeps_values(tmp_path: Path) -> None:
    events = [
        event(0, MIDNIGHT, price=12.5, quantity=2, category="shoes", user_id="u1"),
        event(1, MIDNIGHT + timedelta(seconds=5)),
        event(2, MIDNIGHT + timedelta(days=1)),
    ]
    EventLogWriter(tmp_path, "w0").write(events)
    EventLogWriter(tmp_path, "w1").write(events[:2])  # a recovery replay of the last epoch
    table = read_event_log(tmp_path)
    assert table.num_rows == 3
    rows = table.to_pylist()
    assert [r["event_id"] for r in rows] == ["e0", "e1", "e2"]
    assert rows[0] == {
        "event_id": "e0",
        "session_id": "s0",
        "user_id": "u1",
        "item_id": "i0",
        "type": "view",
        "ts": MIDNIGHT,
        "price": 12.5,
        "category": "shoes",
        "quantity": 2,
    }
    assert rows[1]["price"] is None and rows[1]["quantity"] is None


def test_read_ignores_unfinished_files_and_handles_empty_dirs(tmp_path: Path) -> None:
    assert read_event_log(tmp_path / "missing").num_rows == 0
    assert read_event_log(tmp_path / "missing").schema == EVENT_SCHEMA
    EventLogWriter(tmp_path).write([event(0, MIDNIGHT)])
    (tmp_path / "date=2024-03-01" / ".part-x.parquet.tmp").write_bytes(b"half a file")
    assert read_event_log(tmp_path).column("event_id").to_pylist() == ["e0"]
