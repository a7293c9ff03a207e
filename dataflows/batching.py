"""Micro-batching with a real latency bound: flush on size, or on a deadline armed by the
first item of a batch, or at end of input.

Bytewax's ``op.collect`` re-arms its timeout on every item, so a steady trickle never flushes
until the input ends; here the deadline is set when a batch gets its first item and is not
moved by later ones. The logic is a :class:`~bytewax.operators.StatefulBatchLogic` (the batch
form of ``StatefulLogic``): it receives all of a key's items of one activation at once, which
keeps the per-item cost to a list append. A flushed key is discarded, so idle keys cost nothing.

The input is a keyed stream of *chunks* (lists of items): callers group each activation's
items per shard with :func:`shard_chunks` (one ``flat_map_batch`` step), so the keyed routing
cost is paid per chunk, not per item, and several workers share the shards. Output batches
are flat lists of at most ``max_rows`` items, in arrival order per key.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Generic, NamedTuple, TypeVar

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

X = TypeVar("X")


class BatchSnapshot(NamedTuple, Generic[X]):
    """Recovery state of one key: the pending items and when they must be flushed."""

    items: tuple[X, ...]
    flush_at: datetime | None


def utc_now() -> datetime:
    return datetime.now(UTC)


def shard_of(key: str, shards: int) -> str:
    """A stable shard name for ``key`` (crc32, identical in every process; not ``hash()``)."""
    return str(zlib.crc32(key.encode("utf-8", "surrogateescape")) % shards)


def shard_chunks(
    items: Iterable[X], key: Callable[[X], str], shards: int
) -> list[tuple[str, list[X]]]:
    """Group ``items`` into one chunk per shard of ``key(item)``, keeping their order."""
    chunks: dict[str, list[X]] = {}
    for item in items:
        shard = shard_of(key(item), shards)
        chunk = chunks.get(shard)
        if chunk is None:
            chunks[shard] = [item]
        else:
            chunk.append(item)
    return list(chunks.items())


class FirstItemDeadlineBatcher(StatefulBatchLogic[list[X], list[X], BatchSnapshot[X]]):
    """Accumulates one key's chunks; emits lists of at most ``max_rows`` items."""

    def __init__(
        self,
        max_rows: int,
        deadline: timedelta,
        resume: BatchSnapshot[X] | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.max_rows = max_rows
        self.deadline = deadline
        self.now = now
        self.pending: list[X] = list(resume.items) if resume else []
        self.flush_at: datetime | None = resume.flush_at if resume else None

    def on_batch(self, values: list[list[X]]) -> tuple[Iterable[list[X]], bool]:
        if not self.pending:
            self.flush_at = self.now() + self.deadline
        for chunk in values:
            self.pending.extend(chunk)
        out: list[list[X]] = []
        if len(self.pending) >= self.max_rows:
            n = self.max_rows
            while len(self.pending) >= n:
                out.append(self.pending[:n])
                del self.pending[:n]
            # What is left is a new batch whose first item arrived now.
            self.flush_at = self.now() + self.deadline
        return out, not self.pending

    def on_notify(self) -> tuple[Iterable[list[X]], bool]:
        return self._flush()

    def on_eof(self) -> tuple[Iterable[list[X]], bool]:
        return self._flush()

    def notify_at(self) -> datetime | None:
        return self.flush_at if self.pending else None

    def snapshot(self) -> BatchSnapshot[X]:
        return BatchSnapshot(tuple(self.pending), self.flush_at)

    def _flush(self) -> tuple[Iterable[list[X]], bool]:
        out = [self.pending] if self.pending else []
        self.pending = []
        self.flush_at = None
        return out, StatefulBatchLogic.DISCARD


@operator
def micro_batch(
    step_id: str, up: KeyedStream[list[X]], max_rows: int, deadline: timedelta
) -> KeyedStream[list[X]]:
    """Batch chunks per key: size ``max_rows`` or ``deadline`` after a batch's first item.

    The inner step id is ``flush``; the whole operator's state lives under ``step_id``.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if deadline <= timedelta(0):
        raise ValueError(f"deadline must be positive, got {deadline}")

    def builder(resume: BatchSnapshot[X] | None) -> FirstItemDeadlineBatcher[X]:
        return FirstItemDeadlineBatcher(max_rows, deadline, resume)

    return op.stateful_batch("flush", up, builder)
