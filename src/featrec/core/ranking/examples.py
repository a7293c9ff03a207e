"""Labelled examples for the ranker: prediction points, candidates, and which one came next.

A *prediction point* is a moment in a session after which the shopper moved on to another
item: with ``collapse_repeats`` (the default) the last event of each run of events on the same
item (view, click, cart of item A, then item B: one point, at the cart, target B); without it
every event followed by another event of the session (the target may repeat the item). The
point's time is its event's time; its candidates come from a
:class:`~featrec.core.candidates.point_generators.CandidateGenerator` that has observed every event
up to and including the point's event, and nothing later. Each candidate becomes one example,
labelled 1 if it is the target and 0 otherwise; a point whose target is not among its
candidates still yields its (all-0) examples, so the candidate recall can be measured.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from featrec.core.candidates.point_generators import (
    CandidateGenerator,
    EventObserver,
    PredictionContext,
    SessionEnd,
)
from featrec.core.events.model import Event
from featrec.core.features.snapshot_days import midnight
from featrec.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Example:
    """One (prediction point, candidate) pair."""

    point: int
    session_id: str
    user_id: str | None
    at: datetime
    #: How many events of the session the point has seen (its event included).
    position: int
    current_item: str
    candidate: str
    #: The candidate's place in the generator's list (0 = first).
    rank: int
    label: int


def next_item_targets(events: Sequence[Event], collapse_repeats: bool = True) -> list[str | None]:
    """Per event (``events`` in time order): the next item of its session if the event is a
    prediction point, else None."""
    targets: list[str | None] = [None] * len(events)
    following: dict[str, str] = {}
    for i in range(len(events) - 1, -1, -1):
        event = events[i]
        after = following.get(event.session_id)
        if after is not None and not (collapse_repeats and after == event.item_id):
            targets[i] = after
        following[event.session_id] = event.item_id
    return targets


def last_flags(events: Sequence[Event]) -> list[bool]:
    """Per event (``events`` in time order): whether it is its session's last event."""
    flags = [False] * len(events)
    seen: set[str] = set()
    for i in range(len(events) - 1, -1, -1):
        session_id = events[i].session_id
        if session_id not in seen:
            seen.add(session_id)
            flags[i] = True
    return flags


def build_examples(
    events: Sequence[Event],
    targets: Sequence[str | None],
    generator: CandidateGenerator,
) -> Iterator[Example]:
    """Walk ``events`` in time order and yield the examples of every point whose target is
    not None (``targets`` aligned with ``events``; see :func:`next_item_targets`).

    ``generator`` observes each event (if it is an :class:`EventObserver`) before the point
    at that event asks for candidates. The in-memory form of :func:`stream_examples`.
    """
    if len(targets) != len(events):
        raise ValueError(f"{len(targets)} targets for {len(events)} events")
    return stream_examples(zip(events, targets, last_flags(events), strict=True), generator)


def stream_examples(
    rows: Iterable[tuple[Event, str | None, bool]],
    generator: CandidateGenerator,
) -> Iterator[Example]:
    """:func:`build_examples` over a stream: ``(event, target, last)`` in time order, where
    ``last`` says the event is its session's last (the session is then forgotten, here and
    by a generator that keeps per-session state: :class:`SessionEnd`). Memory holds the
    open sessions only, never the stream.
    """
    observer = generator if isinstance(generator, EventObserver) else None
    ender = generator if isinstance(generator, SessionEnd) else None
    sessions: dict[str, tuple[list[str], list[str], list[str | None]]] = {}
    previous: datetime | None = None
    point = 0
    for event, target, last in rows:
        if previous is not None and event.ts < previous:
            raise ValueError(
                f"events out of time order: {event.event_id} at {event.ts.isoformat()} "
                f"after {previous.isoformat()}"
            )
        previous = event.ts
        if observer is not None:
            observer.observe(event)
        items, types, user = sessions.setdefault(event.session_id, ([], [], [None]))
        items.append(event.item_id)
        types.append(event.type)
        if event.user_id is not None:
            user[0] = event.user_id
        if target is not None:
            context = PredictionContext(
                event.session_id, user[0], event.ts, tuple(items), tuple(types)
            )
            for rank, candidate in enumerate(generator.candidates(context)):
                yield Example(
                    point,
                    event.session_id,
                    user[0],
                    event.ts,
                    len(items),
                    event.item_id,
                    candidate,
                    rank,
                    int(candidate == target),
                )
            point += 1
        if last:
            del sessions[event.session_id]
            if ender is not None:
                ender.end_session(event.session_id)


def choose_points(
    events: Sequence[Event],
    targets: Sequence[str | None],
    *,
    since: date | None = None,
    until: date | None = None,
    max_points: int | None = None,
    seed: int = 0,
) -> list[str | None]:
    """``targets`` with the points outside ``[since, until]`` (UTC days) set to None, and a
    seeded uniform sample of at most ``max_points`` of the rest."""
    start = midnight(since) if since is not None else None
    end = midnight(until) + timedelta(days=1) if until is not None else None
    kept = [
        i
        for i, target in enumerate(targets)
        if target is not None
        and (start is None or events[i].ts >= start)
        and (end is None or events[i].ts < end)
    ]
    if max_points is not None:
        if max_points < 1:
            raise ConfigError(f"max points must be >= 1, got {max_points}")
        if len(kept) > max_points:
            kept = sorted(random.Random(seed).sample(kept, max_points))
    chosen: list[str | None] = [None] * len(targets)
    for i in kept:
        chosen[i] = targets[i]
    return chosen
