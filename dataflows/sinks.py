"""Bytewax sinks: feature rows to the online store, dead letters, the event log.

All are ``DynamicSink``\\ s (one partition per worker, no resume state). None buffers across
``write_batch`` calls: anything buffered there would be lost by ``kill -9`` after its epoch
was committed. Batching happens upstream in :mod:`dataflows.batching`, whose state is
recovered. Output is at-least-once; the writers are idempotent (overwrite by key with a
version guard; the event log is deduplicated on read).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Final, TypeVar

from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from dataflows import metrics
from dataflows.metrics import FlowStats
from featrec.adapters.files.event_log import BackgroundEventLog, EventLogWriter
from featrec.adapters.files.flow_status import status_path, write_status
from featrec.adapters.redis.streams import append_dead_letters, connect
from featrec.core.events.formats import DeadLetter
from featrec.core.events.model import Event
from featrec.core.features.rows import FeatureRow, newest_per_key
from featrec.core.ports.features import FeatureWriter
from featrec.errors import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
WriterFactory = Callable[[], FeatureWriter]

#: Seconds between two status-file updates of one process (the last one is written on close).
STATUS_INTERVAL_S: Final = 1.0
#: Longest wait between two write attempts while a store is unreachable (the flow notices a
#: recovered store at most this late).
MAX_BACKOFF_S: Final = 5.0


def retry_unavailable(
    action: Callable[[], T], what: str, max_backoff_s: float, store: str = "online"
) -> T:
    """Run ``action`` until it does not raise ``StoreUnavailable`` (capped exponential backoff).

    Blocking here is deliberate: it is the flow's backpressure during an outage, and nothing
    is dropped. Any other error propagates (the flow stops; recovery resumes it). The outage
    is visible in the metrics while it lasts (``featrec_store_up{store=...}`` = 0, retries and
    down seconds growing) and its end is logged with its length.
    """
    delay = 0.05
    attempt = 0
    down_since = mark = 0.0
    while True:
        try:
            result = action()
        except StoreUnavailable as exc:
            now = time.monotonic()
            if attempt == 0:
                down_since = mark = now
                metrics.STORE_UP.labels(store=store).set(0)
                metrics.STORE_OUTAGES.labels(store=store).inc()
            attempt += 1
            metrics.STORE_RETRIES.inc()
            metrics.STORE_DOWN_SECONDS.labels(store=store).inc(now - mark)
            mark = now
            log.warning("%s: %s; retry %d in %.2f s", what, exc, attempt, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_backoff_s)
            continue
        if attempt:
            now = time.monotonic()
            metrics.STORE_DOWN_SECONDS.labels(store=store).inc(now - mark)
            log.warning(
                "%s: store reachable again after %d retries (%.1f s)",
                what,
                attempt,
                now - down_since,
            )
        metrics.STORE_UP.labels(store=store).set(1)
        return result


class FeatureSink(DynamicSink[list[FeatureRow]]):
    """Writes micro-batches of feature rows, newest row per entity, through a writer.

    Each worker opens its own writer from ``writer_factory``. When ``status_home`` is given,
    the process's :class:`~dataflows.metrics.FlowStats` go to
    ``<status_home>/status/<flow>-w<worker>.json`` after writes (written by the process's
    lowest worker index only, so the files of a cluster add up).
    """

    def __init__(
        self,
        writer_factory: WriterFactory,
        *,
        stats: FlowStats | None = None,
        status_home: Path | None = None,
        flow_name: str = "sessions",
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self.writer_factory = writer_factory
        self.stats = stats if stats is not None else FlowStats()
        self.status_home = status_home
        self.flow_name = flow_name
        self.max_backoff_s = max_backoff_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FeatureSinkPartition:
        with self.stats.lock:
            self.stats.sink_workers.add(worker_index)
        return _FeatureSinkPartition(self, worker_index)


class _FeatureSinkPartition(StatelessSinkPartition[list[FeatureRow]]):
    def __init__(self, sink: FeatureSink, worker_index: int) -> None:
        self.sink = sink
        self.worker_index = worker_index
        self.writer = sink.writer_factory()
        self.status_written_at = 0.0

    def write_batch(self, items: list[list[FeatureRow]]) -> None:
        rows = newest_per_key(chain.from_iterable(items))
        if not rows:
            return
        written = retry_unavailable(
            lambda: self.writer.write(rows),
            f"writing {len(rows)} feature rows",
            self.sink.max_backoff_s,
        )
        done = time.time()
        metrics.ROWS_WRITTEN.inc(written)
        metrics.observe_many(
            metrics.FRESHNESS,
            [max(done - at, 0.0) for row in rows if (at := row.ingested_at)],
        )
        self.sink.stats.wrote(written, done)
        if done - self.status_written_at >= STATUS_INTERVAL_S:
            self.write_status(done)

    def write_status(self, now: float) -> None:
        home = self.sink.status_home
        if home is None or self.worker_index != min(self.sink.stats.sink_workers):
            return
        status = {
            "flow": self.sink.flow_name,
            "worker": self.worker_index,
            "pid": os.getpid(),
            "updated_at": now,
            **self.sink.stats.as_dict(),
        }
        write_status(status_path(home, self.sink.flow_name, self.worker_index), status)
        self.status_written_at = now

    def close(self) -> None:
        self.write_status(time.time())
        self.writer.close()


def dead_letter_record(letter: DeadLetter, at: datetime | None = None) -> dict[str, str]:
    """A dead letter as stored: ``origin``, ``reason``, ``payload`` and ``at`` (ISO UTC)."""
    out = letter.to_dict()
    out["at"] = (at or datetime.now(UTC)).isoformat()
    return out


class DeadLetterSink(DynamicSink[DeadLetter]):
    """Keeps refused records: JSON lines appended to a file, or entries of a Redis stream.

    Give exactly one of ``file`` or (``redis_url`` and ``stream``).
    """

    def __init__(
        self,
        *,
        file: Path | None = None,
        redis_url: str | None = None,
        stream: str | None = None,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        if (file is None) == (redis_url is None or stream is None):
            raise ValueError("give either file or redis_url and stream")
        self.file = file
        self.redis_url = redis_url
        self.stream = stream
        self.max_backoff_s = max_backoff_s

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[DeadLetter]:
        if self.file is not None:
            return _DeadLetterFilePartition(self.file)
        assert self.redis_url is not None and self.stream is not None
        return _DeadLetterStreamPartition(self.redis_url, self.stream, self.max_backoff_s)


class _DeadLetterFilePartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write_batch(self, items: list[DeadLetter]) -> None:
        at = datetime.now(UTC)
        text = "".join(json.dumps(dead_letter_record(d, at)) + "\n" for d in items)
        # One write() of an O_APPEND file: lines of concurrent workers never interleave.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)


class _DeadLetterStreamPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, redis_url: str, stream: str, max_backoff_s: float) -> None:
        self.client = connect(redis_url)
        self.stream = stream
        self.max_backoff_s = max_backoff_s

    def write_batch(self, items: list[DeadLetter]) -> None:
        at = datetime.now(UTC)
        letters = [dead_letter_record(d, at) for d in items]
        retry_unavailable(
            lambda: append_dead_letters(self.client, self.stream, letters),
            f"writing {len(letters)} dead letters",
            self.max_backoff_s,
            store="dead_letters",
        )

    def close(self) -> None:
        self.client.close()


class EventLogSink(FixedPartitionedSink[list[Event], None]):
    """Appends batches of events to the Parquet event log, off the flow's latency path.

    Items are ``(key, events)``; the keys (shard names) pick one of ``parts`` partitions.
    All partitions of a process share one :class:`~featrec.adapters.files.event_log.
    BackgroundEventLog`: ``write_batch`` hands the events to its thread and returns (it
    blocks only while the bounded queue is full), so a Parquet write never delays a row
    write. Each partition's ``snapshot`` (at the end of every epoch, before bytewax commits
    it) waits until the events handed over are on disk, so a crash after the commit loses
    nothing; events of an uncommitted epoch are replayed (the log is deduplicated on read).
    """

    def __init__(self, directory: Path, parts: int = 16, *, max_delay_s: float = 1.0) -> None:
        self.directory = directory
        self.parts = parts
        self.max_delay_s = max_delay_s

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        return int(item_key) if item_key.isdigit() else zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _EventLogPartition:
        return _EventLogPartition(_shared_log(self.directory, self.max_delay_s))


_LOGS: dict[Path, tuple[BackgroundEventLog, list[int]]] = {}
_LOGS_LOCK = threading.Lock()


def _shared_log(directory: Path, max_delay_s: float) -> BackgroundEventLog:
    with _LOGS_LOCK:
        entry = _LOGS.get(directory)
        if entry is None:
            writer = EventLogWriter(directory, f"p{os.getpid()}")
            entry = _LOGS[directory] = (BackgroundEventLog(writer, max_delay_s=max_delay_s), [0])
        entry[1][0] += 1
        return entry[0]


def _release_log(log_: BackgroundEventLog) -> None:
    with _LOGS_LOCK:
        for directory, (held, users) in list(_LOGS.items()):
            if held is log_:
                users[0] -= 1
                if users[0] == 0:
                    del _LOGS[directory]
                    break
        else:
            return
    log_.close()


class _EventLogPartition(StatefulSinkPartition[list[Event], None]):
    def __init__(self, log_: BackgroundEventLog) -> None:
        self.log = log_

    def write_batch(self, items: list[list[Event]]) -> None:
        events = list(chain.from_iterable(items))
        if events:
            self.log.append(events)

    def snapshot(self) -> None:
        self.log.drain()

    def close(self) -> None:
        _release_log(self.log)
