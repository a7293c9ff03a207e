"""Streaming session features: a fold over one session's events, in event time.

``fold(state, event, policy)`` updates the state in place and returns what happened;
``session_row(state)`` turns the state into a :class:`~featrec.core.features.rows.FeatureRow` of the
``session_features`` view. The dataflow only wraps these two calls in ``op.stateful``.

Policy for time (all in event time, never wall-clock):

- **Inactivity gap** (default 30 min): an event more than ``gap_s`` after the session's newest
  event starts a new session under the same ``session_id``. The counters restart; ``version``
  keeps increasing.
- **Out-of-order events** no older than ``allowed_lateness_s`` (default 5 min) behind the newest
  event are folded in where they belong in time: counts, distinct items, duration and cart
  value include them; ``last_items`` inserts them at their time position; ``last_category`` and
  ``last_price`` stay those of the newest event. Features therefore equal a batch recomputation
  over the accepted events sorted by (time, arrival).
- **Late events** older than that are rejected (``Outcome.LATE``); the dataflow dead-letters
  them with the reason, so every drop is counted.
- Ties in time are broken by arrival order: the later arrival counts as newer.
- ``user_id`` is that of the newest event (in that order) that carries one; a new session
  under the same ``session_id`` keeps it until one of its own events carries a user.
"""

from __future__ import annotations

import bisect
import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from featrec.core.events.model import CART, CLICK, PURCHASE, VIEW, Event
from featrec.core.features.catalog import LAST_ITEMS_N, SESSION_FEATURES
from featrec.core.features.rows import FeatureRow, micros
from featrec.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """How events are grouped into sessions. Validated on construction."""

    gap_s: float = 30 * 60.0
    allowed_lateness_s: float = 5 * 60.0
    last_n: int = LAST_ITEMS_N
    #: ``allowed_lateness_s`` and ``gap_s`` in whole µs (derived, for the fold's comparisons).
    lateness_us: int = field(init=False, repr=False, compare=False)
    gap_us: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.gap_s > 0:
            raise ConfigError(f"session gap must be positive, got {self.gap_s}")
        if not 0 <= self.allowed_lateness_s <= self.gap_s:
            raise ConfigError(
                f"allowed lateness must be in [0, gap={self.gap_s}], got {self.allowed_lateness_s}"
            )
        if not 1 <= self.last_n <= 100:
            raise ConfigError(f"last_n must be in [1, 100], got {self.last_n}")
        object.__setattr__(self, "lateness_us", int(self.allowed_lateness_s * 1_000_000))
        object.__setattr__(self, "gap_us", int(self.gap_s * 1_000_000))


class Outcome(Enum):
    ACCEPTED = "accepted"
    NEW_SESSION = "new_session"
    LATE = "late"


@dataclass(slots=True)
class SessionState:
    """Everything the fold needs; small, picklable, copied by ``copy()`` for snapshots."""

    session_id: str
    user_id: str | None = None
    version: int = 0
    n_events: int = 0
    n_views: int = 0
    n_clicks: int = 0
    n_carts: int = 0
    n_purchases: int = 0
    items: set[str] = field(default_factory=set)
    #: (event time in µs, arrival sequence, item id), ascending, at most ``last_n`` long.
    recent: list[tuple[int, int, str]] = field(default_factory=list)
    started_us: int = 0
    last_us: int = 0
    last_category: str | None = None
    last_price: float | None = None
    cart_value: float = 0.0
    #: (event time in µs, arrival sequence) of the event ``user_id`` was taken from.
    user_key: tuple[int, int] = (0, 0)

    def copy(self) -> SessionState:
        """An independent copy (the set and list are the only mutable members)."""
        return SessionState(
            session_id=self.session_id,
            user_id=self.user_id,
            version=self.version,
            n_events=self.n_events,
            n_views=self.n_views,
            n_clicks=self.n_clicks,
            n_carts=self.n_carts,
            n_purchases=self.n_purchases,
            items=set(self.items),
            recent=list(self.recent),
            started_us=self.started_us,
            last_us=self.last_us,
            last_category=self.last_category,
            last_price=self.last_price,
            cart_value=self.cart_value,
            user_key=self.user_key,
        )


def new_state(session_id: str) -> SessionState:
    return SessionState(session_id=session_id)


def fold(state: SessionState, event: Event, policy: SessionPolicy) -> Outcome:
    """Fold ``event`` into ``state`` (in place). Returns what happened to the event."""
    # Once per event on the ingest path: attributes are read once into locals.
    ts = micros(event.ts)
    outcome = _ACCEPTED
    n_events = state.n_events
    last_us = state.last_us
    if n_events:
        if ts < last_us - policy.lateness_us:
            return _LATE
        if ts > last_us + policy.gap_us:
            _reset(state)
            outcome = _NEW_SESSION
            n_events = last_us = 0

    # The version is an event-time clock in µs that also counts events, so it strictly
    # increases per session even across a reset or a restart after the state was discarded.
    version = state.version + 1
    if ts > version:  # noqa: PLR1730 - cheaper than max() per event
        version = ts
    state.version = version
    if event.user_id is not None and (ts, version) > state.user_key:
        state.user_id = event.user_id
        state.user_key = (ts, version)
    if n_events == 0:
        state.started_us = last_us = ts
    state.n_events = n_events + 1
    type_ = event.type
    if type_ == VIEW:
        state.n_views += 1
    elif type_ == CLICK:
        state.n_clicks += 1
    elif type_ == CART:
        state.n_carts += 1
        if event.price is not None:
            state.cart_value += event.price * (event.quantity or 1)
    elif type_ == PURCHASE:
        state.n_purchases += 1
    item = _intern(event.item_id)
    state.items.add(item)

    entry = (ts, version, item)
    recent = state.recent
    if len(recent) < policy.last_n or entry > recent[0]:
        _insort(recent, entry)
        if len(recent) > policy.last_n:
            del recent[0]

    if ts >= last_us:
        state.last_us = ts
        state.last_category = event.category
        state.last_price = event.price
    if ts < state.started_us:  # noqa: PLR1730 - cheaper than min() per event
        state.started_us = ts
    return outcome


_ACCEPTED: Final = Outcome.ACCEPTED
_NEW_SESSION: Final = Outcome.NEW_SESSION
_LATE: Final = Outcome.LATE
_intern = sys.intern
_insort = bisect.insort


def session_row(state: SessionState, ingested_at: float | None = None) -> FeatureRow:
    """The ``session_features`` row for the current state (names from the catalog)."""
    # Built once per written row: attributes read once, the row built positionally (a
    # keyword call of the dataclass costs more than the whole dict).
    n_events = state.n_events
    started_us = state.started_us
    last_us = state.last_us
    duration = (last_us - started_us) / 1_000_000
    version = state.version
    values: dict[str, object] = {
        "user_id": state.user_id,
        "n_events": n_events,
        "n_views": state.n_views,
        "n_clicks": state.n_clicks,
        "n_carts": state.n_carts,
        "n_purchases": state.n_purchases,
        "n_distinct_items": len(state.items),
        "duration_s": duration,
        "mean_dwell_s": duration / (n_events - 1) if n_events > 1 else 0.0,
        "last_items": [entry[2] for entry in state.recent][::-1],
        "last_category": state.last_category,
        "last_price": state.last_price,
        "cart_value": state.cart_value,
        "started_at_s": started_us / 1_000_000,
        "last_event_at_s": last_us / 1_000_000,
        "version": version,
    }
    return FeatureRow(_SESSION_VIEW, state.session_id, values, version, ingested_at)


_SESSION_VIEW = SESSION_FEATURES.name


def _reset(state: SessionState) -> None:
    fresh = SessionState(
        session_id=state.session_id,
        user_id=state.user_id,
        version=state.version,
        user_key=state.user_key,
    )
    for name in SessionState.__slots__:
        setattr(state, name, getattr(fresh, name))
