"""Which daily snapshots a batch run computes, and the windows each one covers.

A snapshot *as of* ``T`` (always a UTC midnight) describes an entity from the events strictly
before ``T`` and carries ``T`` as its event timestamp. A trailing window of ``d`` days covers
``[T - d days, T)``. Everything here is in integer microseconds or tz-aware UTC datetimes, so
the SQL, the oracle and Feast agree to the microsecond.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Final

from featrec.core.features.rows import micros
from featrec.errors import ConfigError

DAY_US: Final = 86_400_000_000
#: A backfill longer than this is almost certainly a typo in ``--since``.
MAX_SNAPSHOTS: Final = 3660


def midnight(day: date) -> datetime:
    """00:00 UTC of ``day``."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def default_as_of(newest_event: datetime | None, now: datetime) -> date:
    """The snapshot date a run without ``--as-of`` computes.

    The day after the newest logged event (so the snapshot covers the whole log), but never
    after today: a day still in progress is not summarized. Without events: today.
    """
    today = now.astimezone(UTC).date()
    if newest_event is None:
        return today
    return min(newest_event.astimezone(UTC).date() + timedelta(days=1), today)


def snapshot_dates(as_of: date, since: date | None = None) -> list[date]:
    """Every day from ``since`` (default: ``as_of``) to ``as_of``, both included, oldest first."""
    first = as_of if since is None else since
    if first > as_of:
        raise ConfigError(f"--since {first.isoformat()} is after --as-of {as_of.isoformat()}")
    n = (as_of - first).days + 1
    if n > MAX_SNAPSHOTS:
        raise ConfigError(
            f"{n} daily snapshots from {first.isoformat()} to {as_of.isoformat()}: "
            f"at most {MAX_SNAPSHOTS} per run"
        )
    return [first + timedelta(days=i) for i in range(n)]


def window_start_us(as_of: datetime, days: int) -> int:
    """First microsecond of the trailing ``days``-day window of the snapshot as of ``as_of``."""
    return micros(as_of) - days * DAY_US


def parse_day(text: str) -> date:
    """A ``YYYY-MM-DD`` date (the CLI's ``--as-of`` and ``--since``)."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{text!r} is not a date: use YYYY-MM-DD") from None
