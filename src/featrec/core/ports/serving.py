"""Ports of the serving path: stored rows with their timestamps, and the request log.

The recommender (:mod:`featrec.app.serving.recommender`) talks only to these; adapters implement
them on
Redis (Feast's layout, read directly), on Feast's SDK, and on SQLite. The in-memory classes here
are the reference behaviour used by unit tests.

Rows carry the event timestamp they were written with (``ts_us``), because Feast does not apply
a view's ttl to online reads (upstream issue #6821): staleness is judged by the caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from featrec.core.ports.features import InMemoryFeatureStore

#: Seconds since the epoch, as a float (``time.time`` or a replay clock).
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class StampedRow:
    """One entity's stored values of one view and the event time they were written with
    (µs since the epoch; Feast's SQLite store keeps whole seconds).

    ``fingerprint``: what a reader that can tell an unchanged row from its stored bytes
    (:class:`RereadingRowReader`) keeps to do so; not part of the row's value (equality,
    the request log)."""

    values: Mapping[str, object]
    ts_us: int
    fingerprint: bytes | None = field(default=None, compare=False, repr=False)


#: Per view name, the entity keys wanted (``{"item_features": ["a", "b"], ...}``).
Wanted = Mapping[str, Sequence[str]]
#: Per view name, one row per wanted key in order (None: the entity has no row).
Found = dict[str, list[StampedRow | None]]


@runtime_checkable
class RowReader(Protocol):
    """Reads the stored rows of several views at once (one round trip where the store allows).

    Raises :class:`featrec.errors.StoreUnavailable` when the store cannot be reached and
    :class:`featrec.errors.StoreError` when it fails otherwise.
    """

    def read_rows(self, wanted: Wanted) -> Found: ...


@runtime_checkable
class RereadingRowReader(RowReader, Protocol):
    """A :class:`RowReader` that reads rows again cheaply: ``known`` holds, aligned with
    ``wanted``, the rows read before (or None), and a row whose stored bytes are unchanged
    comes back as that very object, not decoded again (the row cache uses it)."""

    def reread_rows(self, wanted: Wanted, known: Found) -> Found: ...


class InMemoryRows:
    """:class:`RowReader` over an :class:`InMemoryFeatureStore` (the row version is its
    timestamp, as every writer stores it)."""

    def __init__(self, store: InMemoryFeatureStore) -> None:
        self.store = store

    def read_rows(self, wanted: Wanted) -> Found:
        out: Found = {}
        for view, keys in wanted.items():
            rows: list[StampedRow | None] = []
            for key in keys:
                row = self.store.row(view, key)
                rows.append(None if row is None else StampedRow(dict(row.values), row.version))
            out[view] = rows
        return out


@dataclass(frozen=True, slots=True)
class LoggedRow:
    """A row an answer was computed from: which one, and what it held (None: no row).

    ``entity``: what ``key`` names, ``"session"``, ``"user"`` or ``"item"``, so forgetting a
    user can delete the rows that describe them without reading every entry. None (unknown)
    counts as a row of whoever its key names: forgetting never keeps a row it should delete.
    Not part of equality (a log may not keep it)."""

    view: str
    key: str
    row: StampedRow | None
    entity: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request-log entry.

    ``body`` is JSON-ready (str, int, float, bool, None, lists, dicts with str keys): the
    request, candidates, raw scores, post-processing decisions, model version; opaque to the
    stores, except that its ``session_id`` and ``user_id`` say whom the entry is about (for
    forgetting). Its schema belongs to :mod:`featrec.app.serving.record`, the one place that
    writes and reads it. ``rows`` are the feature rows read; stores may keep each distinct row
    once and refer to it from every entry that used it.
    """

    request_id: str
    created_at_s: float
    body: Mapping[str, Any]
    rows: Sequence[LoggedRow]


@runtime_checkable
class RequestLog(Protocol):
    """Keeps request records for explaining them later.

    ``append`` must store values that read back equal, floats bit for bit. Raises
    :class:`featrec.errors.StoreError` (or ``StoreUnavailable``) when the store fails.
    """

    def append(self, record: RequestRecord) -> None: ...

    def get(self, request_id: str) -> RequestRecord | None: ...

    def close(self) -> None: ...


class InMemoryRequestLog:
    """A dict-backed request log keeping the newest ``capacity`` records."""

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        # Oldest first; an OrderedDict drops its oldest in O(1) (a dict's first key is not).
        self._records: OrderedDict[str, RequestRecord] = OrderedDict()

    def append(self, record: RequestRecord) -> None:
        self._records[record.request_id] = record
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)

    def get(self, request_id: str) -> RequestRecord | None:
        return self._records.get(request_id)

    def close(self) -> None:
        return None


@runtime_checkable
class DeferredRequestLog(Protocol):
    """A request log that can take a record to build later, off the request path (the
    background log's writer thread builds it just before writing)."""

    def append_deferred(self, build: Callable[[], RequestRecord]) -> None: ...
