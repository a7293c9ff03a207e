"""Item signals in batch, written: neighbour lists and trending rows from past events into the
online store (``featrec items bootstrap``, the replay evaluation's training phase, the demo).

The computation is :func:`featrec.app.item_signals.bootstrap`, the same core calls the items
dataflow makes; this job feeds it the events the flow would take (reserved item ids become
dead letters, as in the flow) and writes the rows through the configured writer, which never
replaces a newer stored row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from featrec.app.item_signals import (
    ItemSignals,
    ItemSignalsConfig,
    bootstrap,
    is_reserved,
    reserved_reason,
    write_rows,
)
from featrec.core.events.formats import DeadLetter
from featrec.core.events.model import Event
from featrec.errors import ConfigError, NotFound
from featrec.settings import Settings


@dataclass(frozen=True, slots=True)
class BootstrapReport:
    """What a bootstrap computed and wrote."""

    signals: ItemSignals
    where: str
    rows: int
    written: int
    refused: list[DeadLetter] = field(default_factory=list)

    @property
    def neighbour_lists(self) -> int:
        return len(self.signals.index.sketches)

    @property
    def trending_items(self) -> int:
        return len(self.signals.board.items)

    @property
    def trending_lists(self) -> int:
        return self.rows - self.neighbour_lists - self.trending_items


def history(
    settings: Settings, source: Path | None, fmt: str | None = None
) -> tuple[Iterator[Event | DeadLetter], str]:
    """Past events from an event file, or from the event log when ``source`` is None, and
    where they come from (for messages)."""
    if source is not None:
        if not source.is_file():
            raise ConfigError(f"--source {str(source)!r} is not an existing file")
        from featrec.adapters.files.event_files import read_events

        return read_events(source, fmt), str(source)
    from featrec.adapters.files.event_history import events_from_log

    return events_from_log(settings.event_log_dir), f"the event log {settings.event_log_dir}"


def bootstrap_items(
    settings: Settings, events: Iterable[Event | DeadLetter], where: str = "the events"
) -> BootstrapReport:
    """Compute the item signals of ``events`` and write their rows to the online store.

    Raises :class:`NotFound` when no event is valid."""
    from featrec.adapters.feast.writers import open_writer

    refused: list[DeadLetter] = []
    signals = bootstrap(_valid(events, refused), ItemSignalsConfig.from_settings(settings))
    if signals.n_events == 0:
        raise NotFound(f"no valid events in {where}")
    rows = signals.rows()
    writer = open_writer(settings)
    try:
        written = write_rows(writer, rows)
    finally:
        writer.close()
    return BootstrapReport(signals, where, len(rows), written, refused)


def _valid(history: Iterable[Event | DeadLetter], refused: list[DeadLetter]) -> Iterator[Event]:
    """The events the flow would take; everything else goes to ``refused`` (as the flow's
    dead letters)."""
    for item in history:
        if isinstance(item, DeadLetter):
            refused.append(item)
        elif is_reserved(item.item_id):
            payload = json.dumps(item.to_dict(), separators=(",", ":"))
            refused.append(DeadLetter(item.event_id, reserved_reason(item.item_id), payload))
        else:
            yield item
