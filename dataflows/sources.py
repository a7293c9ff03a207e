"""Bytewax sources of raw records: file replay, the collector log and Redis Streams.

Both are ``FixedPartitionedSource``\\ s whose snapshot is the read position, so a dataflow run
with a recovery store resumes exactly after the last record of the last committed epoch.
Neither blocks in ``next_batch``: when nothing is due they return ``[]`` and say when to come
back through ``next_awake``.

Both emit :class:`~featrec.core.events.formats.RawRecord` objects, or a
:class:`~featrec.core.events.formats.DeadLetter` when a record is broken at the transport level (a
CSV
row with the wrong number of columns, a stream entry without the ``e`` field).

A stream entry with a ``forget`` field is a tombstone (see :mod:`featrec.core.privacy`): a
source built with ``tombstones=True`` (the sessions flow's) emits it as a raw record of format
``tombstone`` and deletes it from the stream once its read position has moved past it (it names
the forgotten user's sessions, so it must not stay on the bus); any other source skips it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeAlias

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows import metrics
from featrec.adapters.errors import translated
from featrec.adapters.files.collector_log import read_lines
from featrec.adapters.files.mapped_records import FileReader, open_file_reader
from featrec.adapters.files.raw_records import FilePosition, record_time
from featrec.adapters.redis.collector_bus import RECEIVED_FIELD
from featrec.adapters.redis.streams import EVENT_FIELD, connect, stream_id_ms
from featrec.core.events.formats import DeadLetter, RawRecord
from featrec.core.events.mapping import EventMapping
from featrec.core.privacy import TOMBSTONE_FIELD, TOMBSTONE_FORMAT
from featrec.errors import ConfigError, StoreUnavailable

log = logging.getLogger(__name__)

SourceItem: TypeAlias = RawRecord | DeadLetter

#: Records per ``next_batch`` of a file partition.
FILE_BATCH: Final = 1000
#: Longest a paced partition sleeps before it is polled again (see ``_PacedFilePartition``).
MAX_IDLE_S: Final = 0.5


class FileReplaySource(FixedPartitionedSource[SourceItem, FilePosition]):
    """Replays event files, one partition per file (see :mod:`featrec.adapters.files.raw_records`).

    ``speed`` = 0 replays as fast as possible; ``speed`` > 0 replays at the recorded pace of
    the events' own timestamps times ``speed`` (2 = twice as fast). Out-of-order records are
    due at once. Every file is checked when the source is built, so a wrong header fails the
    flow before it starts.
    """

    def __init__(
        self,
        paths: Sequence[Path | str],
        fmt: str | None = None,
        speed: float = 0.0,
        mapping: EventMapping | None = None,
    ):
        if not paths:
            raise ConfigError("no source files given")
        if not speed >= 0:
            raise ConfigError(f"replay speed must be >= 0 (0 = as fast as possible), got {speed}")
        self.paths = [str(p) for p in paths]
        if len(set(self.paths)) != len(self.paths):
            raise ConfigError(f"a source file is listed twice: {self.paths}")
        self.fmt = fmt
        self.speed = speed
        self.mapping = mapping
        for path in self.paths:
            open_file_reader(path, fmt, mapping=mapping).close()

    def list_parts(self) -> list[str]:
        return list(self.paths)

    def build_part(
        self, step_id: str, for_part: str, resume_state: FilePosition | None
    ) -> StatefulSourcePartition[SourceItem, FilePosition]:
        position = FilePosition(*resume_state) if resume_state is not None else None
        reader = open_file_reader(for_part, self.fmt, position, self.mapping)
        if self.speed > 0:
            return _PacedFilePartition(reader, self.speed)
        return _FilePartition(reader)


class _FilePartition(StatefulSourcePartition[SourceItem, FilePosition]):
    def __init__(self, reader: FileReader) -> None:
        self.reader = reader

    def next_batch(self) -> list[SourceItem]:
        if self.reader.exhausted:
            raise StopIteration
        return self.reader.read(FILE_BATCH, time.time())

    def snapshot(self) -> FilePosition:
        return self.reader.position

    def close(self) -> None:
        self.reader.close()


class _PacedFilePartition(StatefulSourcePartition[SourceItem, FilePosition]):
    """Emits each record when its recorded time, scaled by ``speed``, has come.

    The replay clock starts at the first record (or the first after a resume): a record with
    event time ``t`` is due at ``start_wall + (t - start_t) / speed``.
    """

    def __init__(self, reader: FileReader, speed: float) -> None:
        self.reader = reader
        self.speed = speed
        self.position = reader.position
        self.pending: SourceItem | None = None
        self.pending_position = self.position
        self.pending_due = 0.0
        self.start: tuple[float, float] | None = None
        self.wake: datetime | None = None

    def next_batch(self) -> list[SourceItem]:
        out: list[SourceItem] = []
        now = time.time()
        while len(out) < FILE_BATCH:
            if self.pending is None and not self._peek(now):
                if not out:
                    raise StopIteration
                break
            if self.pending_due > now:
                # Wake at least every MAX_IDLE_S: bytewax closes epochs (and snapshots)
                # only when the input is activated, so a long wait would delay recovery.
                self.wake = datetime.fromtimestamp(min(self.pending_due, now + MAX_IDLE_S), UTC)
                return out
            assert self.pending is not None
            item = self.pending
            if isinstance(item, RawRecord):
                item = RawRecord(item.fmt, item.origin, item.payload, now)
            out.append(item)
            self.position = self.pending_position
            self.pending = None
        self.wake = None
        return out

    def _peek(self, now: float) -> bool:
        batch = self.reader.read(1, now)
        if not batch:
            return False
        self.pending = batch[0]
        self.pending_position = self.reader.position
        t = record_time(self.pending) if isinstance(self.pending, RawRecord) else None
        if t is None:
            self.pending_due = now
        elif self.start is None:
            self.start = (now, t)
            self.pending_due = now
        else:
            wall0, t0 = self.start
            self.pending_due = wall0 + (t - t0) / self.speed
        return True

    def next_awake(self) -> datetime | None:
        return self.wake

    def snapshot(self) -> FilePosition:
        return self.position

    def close(self) -> None:
        self.reader.close()


class CollectorLogSource(FixedPartitionedSource[SourceItem, int]):
    """Tails the collector log (:mod:`featrec.adapters.files.collector_log`): one partition,
    whose state is the byte offset after the last line emitted, so a flow with a recovery store
    resumes exactly there. Never ends; when caught up it sleeps ``idle_ms``.

    Each line becomes a featrec record whose ``ingested_at`` is the server's receive time and
    whose origin is ``<path>@<byte offset>``.
    """

    def __init__(self, path: Path | str, batch_size: int = 1000, idle_ms: float = 10.0) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.idle = timedelta(milliseconds=idle_ms)

    def list_parts(self) -> list[str]:
        return [str(self.path)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> StatefulSourcePartition[SourceItem, int]:
        return _CollectorLogPartition(self, resume_state or 0)


class _CollectorLogPartition(StatefulSourcePartition[SourceItem, int]):
    def __init__(self, source: CollectorLogSource, offset: int) -> None:
        self.source = source
        self.offset = offset
        self.wake: datetime | None = None

    def next_batch(self) -> list[SourceItem]:
        lines, self.offset = read_lines(self.source.path, self.offset, self.source.batch_size)
        if not lines:
            self.wake = datetime.now(UTC) + self.source.idle
            return []
        self.wake = None
        path = self.source.path
        return [
            RawRecord("featrec", f"{path}@{line.offset}", line.text, line.received_at)
            for line in lines
        ]

    def next_awake(self) -> datetime | None:
        return self.wake

    def snapshot(self) -> int:
        return self.offset


@dataclass(frozen=True)
class StreamPosition:
    """Recovery state of a stream partition: the id of the last entry emitted."""

    last_id: str


class RedisStreamSource(FixedPartitionedSource[SourceItem, StreamPosition]):
    """Reads featrec events from Redis Streams, one partition per stream key.

    Entries carry the event JSON in field ``e``; ``ingested_at`` is the XADD time from the
    entry id, so freshness is measured from the moment the event reached the bus. Reads use
    ``XREAD COUNT`` without ``BLOCK``; when caught up the partition sleeps ``idle_ms`` through
    ``next_awake``. Connection errors are retried inside the partition with capped exponential
    backoff (counted in ``featrec_source_retries``); the position is kept, nothing is skipped.
    ``stop_when_caught_up`` ends the partition once it has read everything (for draining a
    stream in batch jobs and tests); by default the source never ends.
    """

    def __init__(
        self,
        redis_url: str,
        streams: Sequence[str],
        batch_size: int = 1000,
        *,
        start_id: str = "0-0",
        idle_ms: float = 5.0,
        max_backoff_s: float = 5.0,
        stop_when_caught_up: bool = False,
        tombstones: bool = False,
    ) -> None:
        if not streams:
            raise ConfigError("no Redis stream given")
        if batch_size < 1:
            raise ConfigError(f"stream batch size must be >= 1, got {batch_size}")
        self.redis_url = redis_url
        self.streams = list(dict.fromkeys(streams))
        self.batch_size = batch_size
        self.start_id = start_id
        self.idle = timedelta(milliseconds=idle_ms)
        self.max_backoff_s = max_backoff_s
        self.stop_when_caught_up = stop_when_caught_up
        self.tombstones = tombstones

    def list_parts(self) -> list[str]:
        return list(self.streams)

    def build_part(
        self, step_id: str, for_part: str, resume_state: StreamPosition | None
    ) -> StatefulSourcePartition[SourceItem, StreamPosition]:
        last_id = resume_state.last_id if resume_state is not None else self.start_id
        return _StreamPartition(self, for_part, last_id)


class _StreamPartition(StatefulSourcePartition[SourceItem, StreamPosition]):
    def __init__(self, source: RedisStreamSource, stream: str, last_id: str) -> None:
        self.source = source
        self.stream = stream
        self.last_id = last_id
        # A short socket timeout: a hung server must not stall the worker for long.
        self.client = connect(source.redis_url, timeout_s=1.0)
        self.wake: datetime | None = None
        self.backoff_s = 0.0
        self.retries = 0
        #: Ids of tombstones read and not yet deleted from the stream.
        self.read_tombstones: list[str] = []

    def next_batch(self) -> list[SourceItem]:
        # Only an unavailable store is retried; any other error (a wrong password: ConfigError)
        # stops the flow with its message.
        try:
            with translated(f"reading the stream {self.stream!r}"):
                reply: Any = self.client.xread(
                    {self.stream: self.last_id}, count=self.source.batch_size
                )
        except StoreUnavailable as exc:
            self._back_off(exc)
            return []
        if self.backoff_s:
            log.warning(
                "stream %s: Redis reachable again after %d retries", self.stream, self.retries
            )
            self.backoff_s = 0.0
        entries = reply[0][1] if reply else []
        if not entries:
            if self.source.stop_when_caught_up:
                raise StopIteration
            self.wake = datetime.now(UTC) + self.source.idle
            return []
        self.wake = None
        out: list[SourceItem] = []
        stream = self.stream
        for entry_id, fields in entries:
            sid = entry_id.decode("ascii")
            origin = f"{stream}:{sid}"
            raw = fields.get(b"e")
            control = fields.get(TOMBSTONE_FIELD.encode())
            if control is not None:
                if self.source.tombstones:
                    text = control.decode("utf-8", "surrogateescape")
                    at = stream_id_ms(sid) / 1000.0
                    out.append(RawRecord(TOMBSTONE_FORMAT, origin, text, at))
                    self.read_tombstones.append(sid)
            elif raw is None:
                names = sorted(k.decode("utf-8", "replace") for k in fields)
                reason = f"entry: no field {EVENT_FIELD!r} (fields: {names})"
                out.append(DeadLetter(origin, reason, repr(fields)[:4096]))
            else:
                text = raw.decode("utf-8", "surrogateescape")
                out.append(RawRecord("featrec", origin, text, _received(fields, sid)))
        self.last_id = entries[-1][0].decode("ascii")
        return out

    def _back_off(self, exc: Exception) -> None:
        self.retries += 1
        metrics.SOURCE_RETRIES.labels(stream=self.stream).inc()
        self.backoff_s = min(max(self.backoff_s * 2, 0.01), self.source.max_backoff_s)
        if self.retries == 1 or self.backoff_s >= self.source.max_backoff_s:
            log.warning("%s; retry %d in %.2f s", exc, self.retries, self.backoff_s)
        self.wake = datetime.now(UTC) + timedelta(seconds=self.backoff_s)

    def next_awake(self) -> datetime | None:
        return self.wake

    def snapshot(self) -> StreamPosition:
        self._delete_tombstones()
        return StreamPosition(self.last_id)

    def _delete_tombstones(self) -> None:
        """XDEL the tombstones read so far. Done at a snapshot, when the position past them is
        being saved; should a crash lose that snapshot, the resumed session state is still
        dropped: the dataflow discards resumed state of a denied session."""
        if not self.read_tombstones:
            return
        try:
            with translated(f"deleting tombstones from {self.stream!r}"):
                self.client.xdel(self.stream, *self.read_tombstones)
        except StoreUnavailable as exc:
            log.warning("tombstones not deleted yet: %s", exc)
            return
        self.read_tombstones = []

    def close(self) -> None:
        self._delete_tombstones()
        self.client.close()


_RECEIVED: Final = RECEIVED_FIELD.encode()


def _received(fields: dict[bytes, bytes], entry_id: str) -> float:
    """The collector's receive time of an entry (field ``r``), else its XADD time."""
    stamp = fields.get(_RECEIVED)
    if stamp is not None:
        try:
            return float(stamp)
        except ValueError:
            pass
    return stream_id_ms(entry_id) / 1000.0
