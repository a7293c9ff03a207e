"""In-process caches of the serving path.

- :class:`RowCache`: feature rows (items, neighbour lists, trending lists) kept for at most
  ``max_age_s`` of monotonic time, so staleness is bounded by a number, not by traffic. Misses
  of one call are read in one round trip. When the store fails, :meth:`RowCache.get` can answer
  from whatever it holds, however old (``stale_ok``): the degraded path still has popularity.
- :class:`ResponseCache`: answers keyed by session *version*. A session's ``version`` feature
  strictly increases with every event, and the cache holds entries for one version per session
  only: the first answer stored for a newer version drops the older ones, and a lookup must
  name the exact version, so an old answer can never be served after the next event (no TTL).
  It also remembers the list last served for an *older* version: what the shopper saw before
  the newest event, which the stability rule keeps in place.

Both are thread-safe (the HTTP server runs requests in a thread pool) and bounded (least
recently used entries go first).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from featrec.core.ports.serving import Found, RereadingRowReader, RowReader, StampedRow, Wanted
from featrec.errors import ConfigError, StoreError, StoreUnavailable

T = TypeVar("T")

_EMPTY: OrderedDict[str, tuple[float, StampedRow | None]] = OrderedDict()


class RowCache:
    """Rows per (view, key), re-read once older than ``max_age_s`` (monotonic seconds). At most
    ``capacity`` rows: the rows stored longest ago (in any view) go first."""

    def __init__(
        self,
        reader: RowReader,
        *,
        max_age_s: float,
        capacity: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not max_age_s >= 0:
            raise ConfigError(f"row cache max age must be >= 0 s, got {max_age_s}")
        if capacity < 1:
            raise ConfigError(f"row cache capacity must be >= 1, got {capacity}")
        self.reader = reader
        #: The reader tells unchanged rows from their bytes (the rows held are passed to it).
        self._rereads = isinstance(reader, RereadingRowReader)
        self.max_age_s = max_age_s
        self.capacity = capacity
        self._monotonic = monotonic
        #: Per view, (stored at, row) per key, oldest first (a row read again moves to the end).
        self._views: dict[str, OrderedDict[str, tuple[float, StampedRow | None]]] = {}
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return self._size

    def get(self, wanted: Wanted, *, stale_ok: bool = False, offline: bool = False) -> Found:
        """Rows for ``wanted``: fresh ones from the cache, the rest read in one call.

        Raises what the reader raises, unless ``stale_ok``: then a failed read answers from
        the cache whatever the age, with None for rows never read. ``offline`` answers from
        the cache that way without trying the store.
        """
        now = self._monotonic()
        oldest = now - self.max_age_s
        out: Found = {}
        missing: dict[str, list[str]] = {}
        positions: dict[str, list[int]] = {}
        known: Found = {}  # the rows held for the keys read again (None: never read)
        hits = misses = 0
        with self._lock:
            views = self._views
            for view, keys in wanted.items():
                entries = views.get(view)
                if entries is None:
                    entries = views[view] = OrderedDict()
                lookup = entries.get
                cached = [lookup(key) for key in keys]
                found = [
                    entry[1] if entry is not None and entry[0] >= oldest else None
                    for entry in cached
                ]
                stale = [j for j, entry in enumerate(cached) if entry is None or entry[0] < oldest]
                if stale:
                    missing[view] = [keys[j] for j in stale]
                    positions[view] = stale
                    if self._rereads:
                        known[view] = [_row_of(cached[j]) for j in stale]
                    misses += len(stale)
                hits += len(keys)
                out[view] = found
            self.hits += hits - misses
            self.misses += misses
        if not missing:
            return out
        try:
            if offline:
                raise StoreUnavailable("offline")
            reader = self.reader
            if self._rereads:
                fetched = reader.reread_rows(missing, known)  # type: ignore[attr-defined]
            else:
                fetched = reader.read_rows(missing)
        except StoreError:
            if not (stale_ok or offline):
                raise
            fetched = self._stale(missing)
        else:
            self._store(fetched, missing, now)
        for view, places in positions.items():
            found = out[view]
            for j, row in zip(places, fetched[view], strict=True):
                found[j] = row
        return out

    def _store(self, fetched: Found, missing: dict[str, list[str]], now: float) -> None:
        """Keep the rows read at ``now``. A row read again with exactly the values and time it
        had is kept as the *same object*, and ``fetched`` is given that object too: the serving
        path's memos key on a row's identity (decoded lists, merged item rows and their ranking
        columns, the request log's row digests), so an unchanged row costs them nothing when
        its age runs out, only the read."""
        with self._lock:
            views = self._views
            for view, keys in missing.items():
                entries = views.get(view)
                if entries is None:
                    entries = views[view] = OrderedDict()
                before = len(entries)
                rows = fetched[view]
                for j, (key, row) in enumerate(zip(keys, rows, strict=True)):
                    old = entries.get(key)
                    kept = row
                    if old is not None and row is not None and same_row(old[1], row):
                        kept = rows[j] = old[1]
                    entries[key] = (now, kept)
                    entries.move_to_end(key)
                self._size += len(entries) - before
            while self._size > self.capacity:
                # The oldest row of any view goes first (each view's rows are oldest first).
                entries = min(
                    (e for e in views.values() if e), key=lambda e: next(iter(e.values()))[0]
                )
                entries.popitem(last=False)
                self._size -= 1

    def _stale(self, missing: dict[str, list[str]]) -> Found:
        with self._lock:
            out: Found = {}
            for view, keys in missing.items():
                lookup = self._views.get(view, _EMPTY).get
                found: list[StampedRow | None] = []
                for key in keys:
                    entry = lookup(key)
                    found.append(None if entry is None else entry[1])
                out[view] = found
            return out

    def clear(self) -> None:
        with self._lock:
            self._views.clear()
            self._size = 0


def _row_of(entry: tuple[float, StampedRow | None] | None) -> StampedRow | None:
    return None if entry is None else entry[1]


def same_row(old: StampedRow | None, new: StampedRow) -> bool:
    """Whether ``new`` holds ``old``'s time and values: equal, and each value of the same type
    (``1`` is not ``1.0``: the log stores a row's values as they were). A list's items compare
    by value (a reader's lists hold its dtype's type); two NaNs are not equal."""
    if old is new:
        return True
    if old is None or old.ts_us != new.ts_us or old.values != new.values:
        return False  # equality first, in C: most changed rows stop here
    was = old.values
    return all(was[name].__class__ is value.__class__ for name, value in new.values.items())


@dataclass(slots=True)
class _SessionSlot(Generic[T]):
    version: int
    #: The list served for an older version (what the shopper saw before this version).
    prior: tuple[str, ...] | None
    entries: dict[Hashable, T] = field(default_factory=dict)
    #: The list last served for this version.
    last: tuple[str, ...] | None = None


class ResponseCache(Generic[T]):
    """Answers for one session version at a time, per session (see the module docstring)."""

    def __init__(self, capacity: int = 10_000, variants: int = 8) -> None:
        if capacity < 1 or variants < 1:
            raise ConfigError(
                f"response cache capacity and variants must be >= 1, got {capacity}, {variants}"
            )
        self.capacity = capacity
        self.variants = variants
        self._slots: OrderedDict[str, _SessionSlot[T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str, version: int, key: Hashable) -> T | None:
        """The answer stored for exactly this session version and request key, if any."""
        with self._lock:
            slot = self._slots.get(session_id)
            if slot is None or slot.version != version:
                return None
            self._slots.move_to_end(session_id)
            return slot.entries.get(key)

    def latest(self, session_id: str) -> T | None:
        """The answer stored last for the session's newest version (any request key), if any:
        what an overloaded server may serve instead of computing."""
        with self._lock:
            slot = self._slots.get(session_id)
            if slot is None or not slot.entries:
                return None
            return next(reversed(slot.entries.values()))

    def shown_before(self, session_id: str, version: int) -> tuple[str, ...] | None:
        """The list served to this session for the newest version older than ``version``."""
        with self._lock:
            slot = self._slots.get(session_id)
            if slot is None or version < slot.version:
                return None
            if version == slot.version:
                return slot.prior
            return slot.last if slot.last is not None else slot.prior

    def put(
        self, session_id: str, version: int, key: Hashable, value: T, items: Sequence[str]
    ) -> bool:
        """Store an answer (``items``: the list it shows). An answer for a version older than
        the one held is refused (returns False): it is already outdated."""
        with self._lock:
            slot = self._slots.get(session_id)
            if slot is None or version > slot.version:
                prior = None
                if slot is not None:
                    prior = slot.last if slot.last is not None else slot.prior
                slot = self._slots[session_id] = _SessionSlot(version, prior)
            elif version < slot.version:
                return False
            slot.entries[key] = value
            if len(slot.entries) > self.variants:
                del slot.entries[next(iter(slot.entries))]
            slot.last = tuple(items)
            self._slots.move_to_end(session_id)
            while len(self._slots) > self.capacity:
                self._slots.popitem(last=False)
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)
