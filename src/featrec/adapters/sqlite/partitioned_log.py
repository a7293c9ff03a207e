"""The SQLite request log, one file per hour, so a busy server's log stays bounded.

``<home>/requests/20261205T060000Z.db`` holds the entries created in that UTC hour: each file
is a complete :class:`~featrec.adapters.sqlite.request_log.SqliteRequestLog` (a feature row is
stored once per file). Keeping the log bounded is deleting whole files, with no entry read:

- **Retention.** With ``keep_s`` set, the writer, whenever it starts a new hour, deletes every
  hour that ended ``keep_s`` or more before the newest entry it has written. Entries are kept
  at least ``keep_s``, and at most one hour more. A server core answering ~300 requests/s at
  200 candidates logs ~12 MB/s (README, Recommendations), so an unbounded log would fill a disk
  in days.
- **prune(older_than_s)** deletes the hours that ended by then, and prunes inside the one hour
  that holds ``older_than_s`` (only that file is read).
- **forget** and **sessions_of** visit every hour. Each file counts its own deletions, as the
  one-file log does, so a writer in another process stores its rows again after a forget.

A log written before (one file, ``<home>/requests.db``) is read, forgotten in and pruned as
one more part, the oldest; nothing new is written to it.

Several server processes write the same hours safely (SQLite, WAL). The hour a process writes
is never deleted: only hours that ended ``keep_s`` (at least one hour) before the newest entry
are.
"""

from __future__ import annotations

import calendar
import contextlib
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from featrec.adapters.sqlite.request_log import SqliteRequestLog
from featrec.core.ports.serving import RequestRecord
from featrec.errors import ConfigError
from featrec.settings import Settings

#: Seconds of entries per file.
PERIOD_S = 3600
#: How a file is named after the start of its hour (UTC).
_NAME = "%Y%m%dT%H%M%SZ"
_SUFFIX = ".db"


def part_name(start_s: int) -> str:
    """The file name of the part starting at ``start_s`` (unix seconds, a period boundary)."""
    return time.strftime(_NAME, time.gmtime(start_s)) + _SUFFIX


def _part_start(name: str) -> int | None:
    """The start of the part a file name names, or None for any other file."""
    if not name.endswith(_SUFFIX):
        return None
    try:
        return calendar.timegm(time.strptime(name[: -len(_SUFFIX)], _NAME))
    except ValueError:
        return None


class PartitionedRequestLog:
    """The request log as one SQLite file per hour under ``directory`` (thread-safe).

    ``keep_s``: how long entries are kept (None: until :meth:`prune`); at least one hour, so
    the hour being written is never deleted. ``legacy``: a one-file log written before, read
    and deleted from as the oldest part.
    """

    def __init__(
        self, directory: Path, *, keep_s: float | None = None, legacy: Path | None = None
    ) -> None:
        if keep_s is not None and not keep_s >= PERIOD_S:
            raise ConfigError(
                f"the request log must keep at least {PERIOD_S} s (one hour), got {keep_s}"
            )
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.keep_s = keep_s
        self._legacy_path = legacy
        self._lock = threading.Lock()
        #: Open parts by start; the newest start written to (None: nothing written yet).
        self._open: dict[int, SqliteRequestLog] = {}
        self._legacy: SqliteRequestLog | None = None
        self._newest: int | None = None

    # -- parts -----------------------------------------------------------------------------

    def _on_disk(self) -> list[int]:
        """The starts of the parts on disk, oldest first."""
        starts = (_part_start(path.name) for path in self.directory.iterdir())
        return sorted(s for s in starts if s is not None)

    def _part(self, start: int) -> SqliteRequestLog:
        """The part starting at ``start``, opened (and created) if need be (under the lock)."""
        log = self._open.get(start)
        if log is None:
            log = self._open[start] = SqliteRequestLog(self.directory / part_name(start))
        return log

    def _parts(self) -> list[tuple[int, SqliteRequestLog]]:
        """Every part on disk, oldest first, opened; parts deleted meanwhile (by another
        process's retention) are closed and left out. The legacy file comes first (start
        -1), if there is one."""
        with self._lock:
            on_disk = self._on_disk()
            for start in set(self._open) - set(on_disk):
                self._open.pop(start).close()
            parts = [(start, self._part(start)) for start in on_disk]
            legacy = self._legacy_path
            if self._legacy is None and legacy is not None and legacy.exists():
                self._legacy = SqliteRequestLog(legacy)
            if self._legacy is not None:
                parts.insert(0, (-1, self._legacy))
        return parts

    def parts(self) -> list[Path]:
        """The files holding entries, oldest first (the legacy file first)."""
        return [log.path for _, log in self._parts()]

    def part_sizes(self) -> list[tuple[Path, int, int]]:
        """Each file holding entries, oldest first, with its entries and bytes on disk
        (its write-ahead log included)."""
        out = []
        for _, log in self._parts():
            size = sum(
                Path(f"{log.path}{suffix}").stat().st_size
                for suffix in ("", "-wal")
                if Path(f"{log.path}{suffix}").exists()
            )
            out.append((log.path, log.count(), size))
        return out

    # -- writing ---------------------------------------------------------------------------

    def append(self, record: RequestRecord) -> None:
        self.append_many([record])

    def append_many(self, records: Sequence[RequestRecord]) -> None:
        """Write ``records``, one transaction per hour they fall in; on starting a new hour,
        close the parts before the previous one and apply the retention."""
        if not records:
            return
        by_part: dict[int, list[RequestRecord]] = {}
        for record in records:
            start = int(record.created_at_s // PERIOD_S) * PERIOD_S
            by_part.setdefault(start, []).append(record)
        with self._lock:
            logs = [(self._part(start), group) for start, group in by_part.items()]
        for log, group in logs:
            log.append_many(group)
        newest = max(by_part)
        with self._lock:
            if self._newest is not None and newest <= self._newest:
                return
            self._newest = newest
            # The writer has moved on; the hour before stays open for records that straddle
            # the boundary.
            for old in [s for s in self._open if s < newest - PERIOD_S]:
                self._open.pop(old).close()
        if self.keep_s is not None:
            self._drop_ended_by(max(r.created_at_s for r in records) - self.keep_s)

    def _drop_ended_by(self, cutoff_s: float) -> None:
        """Delete every part whose hour ended at or before ``cutoff_s``, unread."""
        with self._lock:
            doomed = [s for s in self._on_disk() if s + PERIOD_S <= cutoff_s]
            for start in doomed:
                log = self._open.pop(start, None)
                if log is not None:
                    log.close()
                path = self.directory / part_name(start)
                for suffix in ("", "-wal", "-shm"):
                    # Another process's retention may have deleted it first.
                    with contextlib.suppress(FileNotFoundError):
                        Path(f"{path}{suffix}").unlink()

    # -- reading ---------------------------------------------------------------------------

    def get(self, request_id: str) -> RequestRecord | None:
        for _, log in reversed(self._parts()):
            found = log.get(request_id)
            if found is not None:
                return found
        return None

    def iter_records(self, since_s: float | None = None) -> Iterator[RequestRecord]:
        """Every entry created at or after ``since_s`` (all if None), part by part, oldest
        first, without its feature rows (as :meth:`SqliteRequestLog.iter_records`)."""
        for start, log in self._parts():
            if since_s is not None and start >= 0 and start + PERIOD_S <= since_s:
                continue
            yield from log.iter_records(since_s)

    def count(self) -> int:
        """How many entries the log holds."""
        return sum(log.count() for _, log in self._parts())

    # -- deleting --------------------------------------------------------------------------

    def prune(self, older_than_s: float) -> int:
        """Delete the entries created before ``older_than_s`` (unix seconds): whole parts
        that ended by then (unread), and inside the part that holds that time and the legacy
        file; returns how many entries were deleted."""
        deleted = 0
        for start, log in self._parts():
            if start >= 0 and start + PERIOD_S <= older_than_s:
                deleted += log.count()
        self._drop_ended_by(older_than_s)
        for start, log in self._parts():
            if start < older_than_s:  # the legacy file (-1), or the part holding the time
                deleted += log.prune(older_than_s)
        return deleted

    def sessions_of(self, user_id: str) -> set[str]:
        found: set[str] = set()
        for _, log in self._parts():
            found |= log.sessions_of(user_id)
        return found

    def forget(self, user_id: str, session_ids: Collection[str]) -> int:
        return sum(log.forget(user_id, session_ids) for _, log in self._parts())

    def close(self) -> None:
        with self._lock:
            for log in self._open.values():
                log.close()
            self._open.clear()
            if self._legacy is not None:
                self._legacy.close()
                self._legacy = None


def request_log_dir(settings: Settings) -> Path:
    """The SQLite request log: one file per hour."""
    return settings.home / "requests"


def request_log_path(settings: Settings) -> Path:
    """The one-file SQLite request log of earlier versions (still read and deleted from)."""
    return settings.home / "requests.db"


def sqlite_request_log(settings: Settings, *, keep_h: float | None = None) -> PartitionedRequestLog:
    """The SQLite request log: a file per hour, and the one file of earlier versions."""
    return PartitionedRequestLog(
        request_log_dir(settings),
        keep_s=None if keep_h is None else keep_h * 3600,
        legacy=request_log_path(settings),
    )
