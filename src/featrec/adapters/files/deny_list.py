"""Where the deny-list of forgotten users lives: a file next to the event log (and Redis, in
:mod:`featrec.adapters.redis.deny_list`).

- :class:`FileDenyStore`: ``<event log>/forgotten.json`` (``{"salt": hex, "digests": [...]}``).
  It sits in the log's directory because it guards that log: the batch job and ``featrec log
  import`` read it from there without being told, so an old log copy re-imported into this
  log cannot bring a forgotten user back. Writes are atomic (temporary file, rename) and
  serialized by an ``flock`` on a lock file.
- :class:`RedisDenyStore`: a set ``featrec:forgotten`` with its salt in ``featrec:forgotten:salt``
  and a counter ``featrec:forgotten:version`` bumped by every addition, so dataflow workers on
  other machines see a forget without reading the whole set again.

Each store has its own salt (see :mod:`featrec.core.privacy`); readers combine them in a
:class:`~featrec.core.privacy.DenySet`. :class:`DenyWatcher` gives a long-running dataflow the
current set, re-reading a store only when it changed, at most every ``interval_s``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Protocol

from featrec.adapters.files.atomic import atomic_write_text
from featrec.core.privacy import DenyList, DenySet, new_salt
from featrec.errors import ConfigError, FeatrecError

log = logging.getLogger(__name__)

DENY_FILE: Final = "forgotten.json"
#: Seconds between two change checks of a watched store.
WATCH_INTERVAL_S: Final = 1.0


class DenyStore(Protocol):
    """Somewhere a deny-list is kept."""

    def load(self) -> DenyList | None:
        """The stored list (None: nothing was ever forgotten here)."""
        ...

    def add(self, user_id: str, session_ids: Iterable[str]) -> DenyList:
        """Add a user and their sessions; returns the list as stored."""
        ...

    def version(self) -> object:
        """Anything that changes when the list changes (cheap to read)."""
        ...


def deny_file(log_dir: Path | str) -> Path:
    """The deny-list file guarding the event log in ``log_dir``."""
    return Path(log_dir) / DENY_FILE


class FileDenyStore:
    """The deny-list as a JSON file (see the module doc)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def load(self) -> DenyList | None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the deny-list {self.path}: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("salt"), str):
            raise ConfigError(f"{self.path} is not a featrec deny-list")
        return DenyList(raw["salt"], frozenset(raw.get("digests", [])))

    def add(self, user_id: str, session_ids: Iterable[str]) -> DenyList:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            current = self.load() or DenyList(new_salt())
            updated = current.add(user_id, session_ids)
            if updated.digests != current.digests or not self.path.exists():
                self._write(updated)
        return updated

    def version(self) -> object:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _write(self, deny: DenyList) -> None:
        body = {"salt": deny.salt, "digests": sorted(deny.digests)}
        atomic_write_text(self.path, json.dumps(body, indent=0))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self.path.with_name(f".{self.path.name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def load_deny_set(stores: Sequence[DenyStore]) -> DenySet:
    """Every store's list, read together."""
    return DenySet(tuple(d for d in (s.load() for s in stores) if d is not None))


def load_log_deny_set(log_dir: Path | str) -> DenySet:
    """The deny-list guarding the event log in ``log_dir`` (empty if there is none)."""
    return load_deny_set([FileDenyStore(deny_file(log_dir))])


class DenyWatcher:
    """The current :class:`DenySet` of some stores, for a long-running process.

    :meth:`current` checks the stores' versions at most every ``interval_s`` and reloads the
    ones that changed; :meth:`refresh` checks now (a tombstone arrived). A store that cannot be
    read keeps its last known list (logged): a Redis outage must not stop a dataflow.
    """

    def __init__(
        self,
        stores: Sequence[DenyStore],
        interval_s: float = WATCH_INTERVAL_S,
        clock: Any = time.monotonic,
    ) -> None:
        self.stores = list(stores)
        self.interval_s = interval_s
        self._clock = clock
        self._versions: list[object] = [object()] * len(self.stores)
        self._lists: list[DenyList | None] = [None] * len(self.stores)
        self._set = DenySet()
        self._checked = -float("inf")
        self.refresh()

    def current(self) -> DenySet:
        if self._clock() - self._checked >= self.interval_s:
            self.refresh()
        return self._set

    def refresh(self) -> DenySet:
        changed = False
        for i, store in enumerate(self.stores):
            try:
                version = store.version()
                if version == self._versions[i]:
                    continue
                self._lists[i] = store.load()
                self._versions[i] = version
                changed = True
            except FeatrecError as exc:
                log.warning("deny-list not re-read (%s); keeping the last one", exc)
        if changed:
            self._set = DenySet(tuple(d for d in self._lists if d is not None))
        self._checked = self._clock()
        return self._set
