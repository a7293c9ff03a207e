"""Candidate generation: which items a ranker scores at one prediction point.

A :class:`CandidateGenerator` proposes items for a :class:`PredictionContext` (the session so
far). Generators that learn from the stream (popularity) also implement :class:`EventObserver`;
whoever drives them (the training-set builder, a replay) calls ``observe`` with every event in
time order *before* asking for candidates at a later point, so a generator only ever knows the
past. The training-set builder and the online scorer share these generators, so training sees
the candidates serving will see.

The default, :func:`default_generator`, is the session's own items (newest first) followed by
the globally most popular items as of the prediction time. :class:`SignalCandidates` is the
serving generation (:func:`~featrec.core.candidates.generation.generate`) over signals learned
from the replay, so a model is trained on the candidates serving will score.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from featrec.core.candidates.config import DEFAULT_CONFIG, CandidateConfig
from featrec.core.candidates.generation import generate
from featrec.core.candidates.model import Candidate
from featrec.core.candidates.signals import InMemorySignals
from featrec.core.events.model import Event
from featrec.core.features.catalog import LAST_ITEMS_N
from featrec.core.features.rows import micros
from featrec.errors import ConfigError


@dataclass(frozen=True, slots=True)
class PredictionContext:
    """What is known at a prediction point: the session's events so far (the newest last)."""

    session_id: str
    user_id: str | None
    at: datetime
    items: tuple[str, ...]
    types: tuple[str, ...]


@runtime_checkable
class CandidateGenerator(Protocol):
    """Proposes candidate items for one prediction point: distinct ids, best first."""

    def candidates(self, context: PredictionContext) -> list[str]: ...


@runtime_checkable
class EventObserver(Protocol):
    """Learns from every event, in time order (called before later prediction points)."""

    def observe(self, event: Event) -> None: ...


@runtime_checkable
class SessionEnd(Protocol):
    """Keeps per-session state, which it drops once told a session has ended (its last
    event observed), so a replay over a long log holds only the open sessions."""

    def end_session(self, session_id: str) -> None: ...


class SessionItems:
    """The session's own distinct items, most recently seen first (at most ``limit``)."""

    def __init__(self, limit: int = 20) -> None:
        if limit < 1:
            raise ConfigError(f"session candidate limit must be >= 1, got {limit}")
        self.limit = limit

    def candidates(self, context: PredictionContext) -> list[str]:
        out: dict[str, None] = {}
        for item in reversed(context.items):
            out.setdefault(item, None)
            if len(out) == self.limit:
                break
        return list(out)


class PopularItems:
    """The ``k`` items with the most events observed so far (ties: smaller id first).

    Counts only grow, so the top list changes only when the item just counted overtakes the
    last of it: an update costs O(k), not a sort of the catalogue.
    """

    def __init__(self, k: int = 20) -> None:
        if k < 1:
            raise ConfigError(f"popular candidate count must be >= 1, got {k}")
        self.k = k
        self._counts: dict[str, int] = {}
        self._top: list[tuple[int, str]] = []  # (-count, item), best first
        self._in_top: set[str] = set()

    def observe(self, event: Event) -> None:
        item = event.item_id
        new = self._counts[item] = self._counts.get(item, 0) + 1
        top = self._top
        if item in self._in_top:
            top.remove((1 - new, item))
            bisect.insort(top, (-new, item))
        elif len(top) < self.k or (-new, item) < top[-1]:
            bisect.insort(top, (-new, item))
            self._in_top.add(item)
            if len(top) > self.k:
                self._in_top.discard(top.pop()[1])

    def count(self, item: str) -> int:
        """Events observed on ``item``."""
        return self._counts.get(item, 0)

    def top(self) -> list[str]:
        return [item for _, item in self._top]

    def candidates(self, context: PredictionContext) -> list[str]:
        return self.top()


class Combined:
    """The candidates of several generators, in order, without repeats (at most ``limit``);
    ``observe`` reaches every part that observes."""

    def __init__(self, parts: Sequence[CandidateGenerator], limit: int | None = None) -> None:
        if not parts:
            raise ConfigError("a combined generator needs at least one part")
        if limit is not None and limit < 1:
            raise ConfigError(f"candidate limit must be >= 1, got {limit}")
        self.parts = list(parts)
        self.limit = limit
        self._observers = [p for p in self.parts if isinstance(p, EventObserver)]
        self._enders = [p for p in self.parts if isinstance(p, SessionEnd)]

    def observe(self, event: Event) -> None:
        for part in self._observers:
            part.observe(event)

    def end_session(self, session_id: str) -> None:
        for part in self._enders:
            part.end_session(session_id)

    def candidates(self, context: PredictionContext) -> list[str]:
        out: dict[str, None] = {}
        for part in self.parts:
            for item in part.candidates(context):
                out.setdefault(item, None)
        items = list(out)
        return items if self.limit is None else items[: self.limit]


class SignalCandidates:
    """:func:`~featrec.core.candidates.generation.generate` as a training-set candidate
    generator (:class:`CandidateGenerator` and :class:`EventObserver`).

    It sees what serving sees: the session's newest ``LAST_ITEMS_N`` items (the
    ``last_items`` of its ``session_features`` row, no event types), the session's last
    category, and the ``top_categories`` categories with the user's most events so far (the
    live twin of ``user_features.top_categories``).
    """

    def __init__(
        self,
        config: CandidateConfig = DEFAULT_CONFIG,
        signals: InMemorySignals | None = None,
        top_categories: int = 3,
    ) -> None:
        self.config = config
        self.signals = signals if signals is not None else InMemorySignals()
        self.top_categories = top_categories
        self._last_category: dict[str, str | None] = {}
        self._user_categories: dict[str, dict[str, int]] = {}
        self.last_us = 0

    def observe(self, event: Event) -> None:
        self.signals.observe(event)
        self._last_category[event.session_id] = event.category
        if event.user_id is not None and event.category is not None:
            counts = self._user_categories.setdefault(event.user_id, {})
            counts[event.category] = counts.get(event.category, 0) + 1
        self.last_us = micros(event.ts)

    def end_session(self, session_id: str) -> None:
        """Forget the ended session's last category and co-visitation buffer."""
        self._last_category.pop(session_id, None)
        self.signals.end_session(session_id)

    def categories(self, session_id: str, user_id: str | None) -> list[str]:
        out: list[str] = []
        last = self._last_category.get(session_id)
        if last is not None:
            out.append(last)
        if user_id is not None:
            counts = self._user_categories.get(user_id, {})
            top = sorted(counts, key=lambda c: (-counts[c], c))[: self.top_categories]
            out.extend(c for c in top if c not in out)
        return out

    def generate(self, context: PredictionContext) -> list[Candidate]:
        recent = list(reversed(context.items[-LAST_ITEMS_N:]))
        return generate(
            recent,
            None,
            context.user_id,
            self.signals,
            self.config,
            categories=self.categories(context.session_id, context.user_id),
            session_id=context.session_id,
        )

    def candidates(self, context: PredictionContext) -> list[str]:
        return [c.item_id for c in self.generate(context)]


def default_generator(session_items: int = 20, popular: int = 20) -> Combined:
    """The session's own items (newest first), then the most popular items so far."""
    return Combined([SessionItems(session_items), PopularItems(popular)])
