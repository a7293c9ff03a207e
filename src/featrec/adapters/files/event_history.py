"""The event log as events, for batch jobs (bootstraps, backfills).

Yields :class:`~featrec.core.events.model.Event` objects in (time, event id) order, and a
:class:`~featrec.core.events.formats.DeadLetter` for a row that does not validate, so a caller can
count and report what it skipped, like :func:`featrec.adapters.files.event_files.read_events` does
for event files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from featrec.adapters.files.event_log import read_event_log
from featrec.core.events.formats import DeadLetter
from featrec.core.events.model import Event, event_from_mapping
from featrec.errors import InvalidEvent

#: Rows converted to Python objects at a time (bounds the memory of the conversion).
LOG_CHUNK_ROWS: Final = 65_536


def events_from_log(directory: Path | str) -> Iterator[Event | DeadLetter]:
    """Every event of the event log under ``directory`` (deduplicated), oldest first."""
    table = read_event_log(directory)
    for batch in table.to_batches(max_chunksize=LOG_CHUNK_ROWS):
        for row in batch.to_pylist():
            present = {k: v for k, v in row.items() if v is not None}
            try:
                yield event_from_mapping(present)
            except InvalidEvent as exc:
                origin = f"{directory}:event {row.get('event_id')}"
                yield DeadLetter(origin, str(exc), json.dumps(row, default=str))
