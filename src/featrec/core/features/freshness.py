"""The stale-feature guard: how old each online value is, and whether it is too old.

Feast does not apply a view's ttl to online reads (upstream issue #6821): a user row that the
batch job stopped refreshing months ago comes back as if current. Readers that return event
timestamps (``FeastOnlineReader.read_with_timestamps``) let the caller judge; this module does
the judging, the same way everywhere::

    timed = reader.read_with_timestamps("user_features", user_ids)
    for values, fresh in zip(timed, freshness(timed, BATCH_MAX_AGE, now)):
        if fresh.stale: ...  # e.g. fall back to popularity, flag the response

``now`` is passed in (no clock read here), so replays and tests judge as of any time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Protocol

from featrec.errors import ConfigError

#: A daily batch snapshot is normally under a day old; one more day of slack for a late run.
BATCH_MAX_AGE: Final = timedelta(days=2)


class Timed(Protocol):
    """Anything carrying the event time its values were written with."""

    @property
    def event_time(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Freshness:
    """``age`` of a value at the time of judging (None: no value); ``stale`` when a value
    exists and is older than the allowed age."""

    age: timedelta | None
    stale: bool

    @property
    def missing(self) -> bool:
        return self.age is None


def freshness(timed: Sequence[Timed | None], max_age: timedelta, now: datetime) -> list[Freshness]:
    """Per value in order: its age at ``now`` and whether it is older than ``max_age``."""
    if now.tzinfo is None:
        raise ConfigError(f"now must be tz-aware, got {now.isoformat()}")
    if max_age < timedelta(0):
        raise ConfigError(f"max age must not be negative, got {max_age}")
    out = []
    for value in timed:
        if value is None:
            out.append(Freshness(None, False))
            continue
        age = now - value.event_time
        out.append(Freshness(age, age > max_age))
    return out
