"""The collector log: the embedded event bus, an append-only JSON-lines file.

When no Redis is configured, ``POST /events`` appends here and the dataflows tail the file
(``FEATREC_SOURCE=collector``, :class:`dataflows.sources.CollectorLogSource`), resuming
through bytewax recovery at the byte offset after the last line they emitted.

One line per event: ``<received_at>\\t<event JSON>\\n``, where ``received_at`` is the server's
receive time (unix seconds) and the JSON is the event as the client sent it (its own ``ts``
kept). Each request's lines are written by one ``write`` under an exclusive ``flock``, so the
lines of concurrent writers (several HTTP worker processes) never interleave, and a reader
only ever takes complete lines (up to the last newline).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NamedTuple

from featrec.errors import StoreUnavailable

#: The bus name the collector reports for this log.
NAME: Final = "file"
#: Bytes read from the log at once by a tailing reader.
READ_CHUNK: Final = 1 << 20


class CollectorLog:
    """Appends accepted events to the log at ``path`` (an
    :class:`~featrec.app.collector.EventBus`)."""

    name = NAME
    atomic = True  # one locked write per request

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, received_at: float, events: Sequence[str]) -> None:
        stamp = f"{received_at:.6f}\t"
        data = "".join(stamp + e + "\n" for e in events).encode("utf-8", "surrogatepass")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError as exc:
            raise StoreUnavailable(f"appending to the collector log {self.path}: {exc}") from exc

    def close(self) -> None:
        os.close(self._fd)


class LogLine(NamedTuple):
    """One line of the log: its byte offset, the receive time and the event text."""

    offset: int
    received_at: float
    text: str


def read_lines(path: Path | str, offset: int, max_lines: int) -> tuple[list[LogLine], int]:
    """Up to ``max_lines`` complete lines from byte ``offset``, and the offset after them.

    A missing file reads as empty (the collector has not written yet). A line without a tab or
    with a bad time comes back with ``received_at`` 0 and the whole line as its text, so the
    decoder dead-letters it rather than the reader stopping.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read(READ_CHUNK)
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    out: list[LogLine] = []
    at = offset
    for raw in chunk[: end + 1].splitlines(keepends=True):
        if len(out) >= max_lines:
            break
        line = raw.rstrip(b"\n").decode("utf-8", "surrogateescape")
        stamp, sep, text = line.partition("\t")
        try:
            received = float(stamp) if sep else 0.0
        except ValueError:
            received, text = 0.0, line
        out.append(LogLine(at, received, text if sep else line))
        at += len(raw)
    return out, at
