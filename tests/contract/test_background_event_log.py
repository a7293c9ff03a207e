"""BackgroundEventLog: the event log off the flow's latency path, losing nothing."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from featrec.adapters.files.event_log import BackgroundEventLog, EventLogWriter, read_event_log
from featrec.core.events.model import Event

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def events(start: int, n: int) -> list[Event]:
    return [
        Event(f"e{i}", "s", "i", "view", T0 + timedelta(seconds=i)) for i in range(start, start + n)
    ]


class SlowWriter(EventLogWriter):
    def __init__(self, directory: Path, gate: threading.Event) -> None:
        super().__init__(directory)
        self.gate = gate

    def write(self, batch: object) -> list[Path]:  # type: ignore[override]
        self.gate.wait()
        return super().write(batch)  # type: ignore[arg-type]


def test_drain_returns_once_everything_appended_is_on_disk(tmp_path: Path) -> None:
    log = BackgroundEventLog(EventLogWriter(tmp_path), max_rows=1_000_000, max_delay_s=60)
    for i in range(10):
        log.append(events(i * 100, 100))
    log.drain()  # long before max_delay_s: drain forces the write
    assert read_event_log(tmp_path).num_rows == 1000
    log.close()


def test_the_bounded_queue_applies_backpressure_and_loses_nothing(tmp_path: Path) -> None:
    gate = threading.Event()
    log = BackgroundEventLog(SlowWriter(tmp_path, gate), max_pending=2, max_rows=1, max_delay_s=0)
    done = threading.Event()

    def produce() -> None:
        for i in range(6):
            log.append(events(i * 10, 10))
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.3)
    assert not done.is_set()  # blocked: the writer is stuck and the queue is full
    gate.set()
    producer.join(5)
    log.close()
    assert read_event_log(tmp_path).num_rows == 60


def test_a_write_error_surfaces_in_the_flow(tmp_path: Path) -> None:
    blocker = tmp_path / "log"
    blocker.write_text("a file where the log directory should be")
    log = BackgroundEventLog(EventLogWriter(blocker), max_rows=1)
    log.append(events(0, 1))
    with pytest.raises(RuntimeError, match="event log writer failed"):
        log.drain()
