"""Feature rows: what dataflows and batch jobs hand to a feature writer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """One entity's values for one view.

    ``version`` is an integer clock in microseconds since the epoch that strictly increases for
    every update of the same entity; it is also the event timestamp written to Feast (Feast
    silently skips a write whose timestamp is not newer than the stored one, so a strictly
    increasing clock means no update is lost and a replayed update is a no-op).
    ``ingested_at`` is the system time at which the newest contributing event entered featrec;
    writers use it for the freshness metric and never store it.
    """

    view: str
    key: str
    values: Mapping[str, object]
    version: int
    ingested_at: float | None = None

    @property
    def event_time(self) -> datetime:
        return datetime.fromtimestamp(self.version / 1_000_000, tz=UTC)


def newest_per_key(rows: Iterable[FeatureRow]) -> list[FeatureRow]:
    """Coalesce a micro-batch: keep only the highest-version row per (view, key).

    Order of first appearance is kept, so output is deterministic.
    """
    newest: dict[tuple[str, str], FeatureRow] = {}
    for row in rows:
        k = (row.view, row.key)
        old = newest.get(k)
        if old is None or row.version > old.version:
            newest[k] = row
    return list(newest.values())


def micros(ts: datetime) -> int:
    """Microseconds since the epoch of a tz-aware datetime (exact integer arithmetic)."""
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
