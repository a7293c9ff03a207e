"""A declared feature view: entity, event filters and aggregations; and its validation.

A :class:`Declaration` is what ``feature_repo/`` says in Feast's terms (a ``StreamFeatureView``
with ``Aggregation`` objects and featrec's filters in its tags), translated by
:mod:`featrec.adapters.feast.declared` into plain values both engines read.

Window semantics (the contract both engines honour, to the microsecond):

- a *session* window (``time_window=None``, session entity only) covers every event of the
  session up to the row's as-of time;
- an event-time window ``W`` sliding by a hop ``H`` (``H`` divides ``W``), as of time ``T``,
  covers events with ``(T // H + 1) * H - W <= ts <= T``: the last ``W / H`` hop buckets,
  the newest one still filling. This is what bucketed partial aggregates give exactly, so the
  stream keeps at most ``W / H`` buckets per key and window.

A row is as of its key's newest event time. Functions skip events whose column is null; an
empty window gives 0 for ``count``, ``count_distinct`` and ``sum``, ``[]`` for ``last_N`` and
null for the others. Ties in ``last``/``last_N`` are broken by ``(ts, event_id)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from featrec.core.events.model import Event
from featrec.core.features import catalog
from featrec.core.features.catalog import Dtype
from featrec.errors import ConfigError

US: Final = 1_000_000
HOUR_US: Final = 3600 * US
DAY_US: Final = 24 * HOUR_US

#: Event columns a declaration may aggregate, and whether each is numeric.
COLUMNS: Final[Mapping[str, bool]] = {
    "item_id": False,
    "session_id": False,
    "user_id": False,
    "category": False,
    "type": False,
    "price": True,
    "quantity": True,
}
#: Entities a declaration may key on.
ENTITIES: Final[Mapping[str, catalog.Entity]] = {
    e.name: e for e in (catalog.SESSION, catalog.USER, catalog.ITEM)
}
#: The feature every declared view carries besides its aggregations: the row's as-of time.
AS_OF: Final = "as_of_us"
#: Longest event-time window on the session entity: a session's state is freed after it goes
#: quiet, so a longer window would describe sessions that no longer exist.
SESSION_MAX_WINDOW_US: Final = DAY_US
#: Longest window on any entity, and most buckets per window (the bound on stream state).
MAX_WINDOW_US: Final = 90 * DAY_US
MAX_BUCKETS: Final = 1000
MAX_LAST_N: Final = 100

_IDENT = re.compile(r"[a-z][a-z0-9_]{0,62}")
_LAST_N = re.compile(r"last_(\d+)")

#: Tag keys the filters are carried in on the Feast object.
TAG_EVENT_TYPES: Final = "featrec.event_types"
TAG_CATEGORIES: Final = "featrec.categories"
TAG_PRICE_MIN: Final = "featrec.price_min"
TAG_PRICE_MAX: Final = "featrec.price_max"
#: Tag that marks a StreamFeatureView as a featrec declaration.
TAG_DECLARED: Final = "featrec.declared"


class DeclarationError(ConfigError):
    """A declaration is invalid; the message names the declaration and what to fix."""


class Function(StrEnum):
    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    LAST = "last"
    COUNT_DISTINCT = "count_distinct"
    LAST_N = "last_n"


_NUMERIC_ONLY: Final = frozenset({Function.SUM, Function.MEAN, Function.MIN, Function.MAX})
SUPPORTED: Final = "count, sum, mean, min, max, last, count_distinct, last_<N>"


def parse_function(text: str) -> tuple[Function, int]:
    """``"count"`` -> ``(COUNT, 0)``, ``"last_10"`` -> ``(LAST_N, 10)``; ValueError otherwise."""
    match = _LAST_N.fullmatch(text)
    if match:
        return Function.LAST_N, int(match.group(1))
    if text == Function.LAST_N.value:
        raise ValueError("last_n needs its length in the name, such as last_10")
    return Function(text), 0


@dataclass(frozen=True, slots=True)
class Aggregation:
    """One declared feature: ``function`` of ``column`` over a window (µs; None: session)."""

    name: str
    column: str
    function: Function
    n: int = 0
    window_us: int | None = None
    hop_us: int | None = None

    @property
    def dtype(self) -> Dtype:
        if self.function in (Function.COUNT, Function.COUNT_DISTINCT):
            return Dtype.INT64
        numeric = COLUMNS.get(self.column, False)
        if self.function is Function.LAST_N:
            return Dtype.FLOAT64_LIST if numeric else Dtype.STRING_LIST
        if self.function is Function.LAST and not numeric:
            return Dtype.STRING
        return Dtype.FLOAT64

    @property
    def holds_values(self) -> bool:
        """Whether the state keeps column values (not only numbers): last, last_N, distinct."""
        return self.function in (Function.LAST, Function.LAST_N, Function.COUNT_DISTINCT)

    @property
    def window_label(self) -> str:
        return "session" if self.window_us is None else duration_label(self.window_us)

    def lower_bound(self, as_of_us: int) -> int | None:
        """Earliest event time in the window as of ``as_of_us`` (None: the whole session)."""
        if self.window_us is None:
            return None
        hop = self.hop_us or self.window_us
        return (as_of_us // hop + 1) * hop - self.window_us


@dataclass(frozen=True, slots=True)
class Filters:
    """Which events a declaration counts: event types, categories, a price range [min, max)."""

    event_types: tuple[str, ...] | None = None
    categories: tuple[str, ...] | None = None
    price_min: float | None = None
    price_max: float | None = None

    def matches(self, event: Event) -> bool:
        if self.event_types is not None and event.type not in self.event_types:
            return False
        if self.categories is not None and event.category not in self.categories:
            return False
        if self.price_min is not None or self.price_max is not None:
            price = event.price
            if price is None:
                return False
            if self.price_min is not None and price < self.price_min:
                return False
            if self.price_max is not None and price >= self.price_max:
                return False
        return True

    def to_tags(self) -> dict[str, str]:
        tags: dict[str, str] = {}
        if self.event_types is not None:
            tags[TAG_EVENT_TYPES] = ",".join(self.event_types)
        if self.categories is not None:
            tags[TAG_CATEGORIES] = ",".join(self.categories)
        if self.price_min is not None:
            tags[TAG_PRICE_MIN] = repr(float(self.price_min))
        if self.price_max is not None:
            tags[TAG_PRICE_MAX] = repr(float(self.price_max))
        return tags

    @classmethod
    def from_tags(cls, view: str, tags: Mapping[str, str]) -> Filters:
        def names(key: str) -> tuple[str, ...] | None:
            raw = tags.get(key)
            return None if raw is None else tuple(s.strip() for s in raw.split(",") if s.strip())

        def number(key: str) -> float | None:
            raw = tags.get(key)
            if raw is None:
                return None
            try:
                return float(raw)
            except ValueError:
                raise DeclarationError(
                    f"declaration {view!r}: tag {key} must be a number, got {raw!r}"
                ) from None

        return cls(
            event_types=names(TAG_EVENT_TYPES),
            categories=names(TAG_CATEGORIES),
            price_min=number(TAG_PRICE_MIN),
            price_max=number(TAG_PRICE_MAX),
        )


@dataclass(frozen=True, slots=True)
class Declaration:
    """A declared view: one entity, one filter, several aggregations (one Feast view)."""

    name: str
    entity: str
    aggregations: tuple[Aggregation, ...]
    filters: Filters = Filters()

    @property
    def join_key(self) -> str:
        return ENTITIES[self.entity].join_key

    def key_of(self, event: Event) -> str | None:
        """The entity key an event belongs to (None: the event has no such key)."""
        return getattr(event, self.join_key)  # type: ignore[no-any-return]

    def view(self) -> catalog.View:
        """The declaration as a catalog view (the writers' and readers' vocabulary)."""
        return catalog.View(
            name=self.name,
            entity=ENTITIES[self.entity],
            features=(
                *(
                    catalog.Feature(
                        a.name, a.dtype, f"{a.function.value} of {a.column} ({a.window_label})"
                    )
                    for a in self.aggregations
                ),
                catalog.Feature(AS_OF, Dtype.INT64, "Event time (µs) the row is computed as of."),
            ),
            description=f"Declared features of {self.entity} ({self.name}).",
        )


def duration_label(us: int) -> str:
    """``3_600_000_000`` -> ``"1h"``: the largest unit that divides the duration."""
    for unit, size in (("d", DAY_US), ("h", HOUR_US), ("m", 60 * US), ("s", US)):
        if us % size == 0:
            return f"{us // size}{unit}"
    return f"{us}us"


def validate(decl: Declaration) -> Declaration:
    """Check a declaration; raise :class:`DeclarationError` naming it and the problem."""
    where = f"declaration {decl.name!r}"
    if not _IDENT.fullmatch(decl.name):
        raise DeclarationError(f"{where}: the name must be a lower-case identifier")
    if decl.entity not in ENTITIES:
        raise DeclarationError(
            f"{where}: entity {decl.entity!r} is not one of {', '.join(ENTITIES)}"
        )
    if not decl.aggregations:
        raise DeclarationError(f"{where}: declares no aggregation")
    seen: set[str] = set()
    for agg in decl.aggregations:
        _validate_aggregation(where, decl.entity, agg)
        if agg.name in seen:
            raise DeclarationError(f"{where}: two aggregations are named {agg.name!r}")
        seen.add(agg.name)
    _validate_filters(where, decl.filters)
    return decl


def _validate_aggregation(where: str, entity: str, agg: Aggregation) -> None:
    at = f"{where}, aggregation {agg.name!r}"
    if not _IDENT.fullmatch(agg.name) or agg.name == AS_OF:
        raise DeclarationError(
            f"{at}: the name must be a lower-case identifier other than {AS_OF!r}"
        )
    if agg.column not in COLUMNS:
        raise DeclarationError(
            f"{at}: unknown column {agg.column!r} (columns: {', '.join(COLUMNS)})"
        )
    if agg.function in _NUMERIC_ONLY and not COLUMNS[agg.column]:
        raise DeclarationError(
            f"{at}: {agg.function.value} needs a numeric column (price, quantity), "
            f"not {agg.column!r}"
        )
    if agg.function is Function.LAST_N and not 1 <= agg.n <= MAX_LAST_N:
        raise DeclarationError(f"{at}: last_N needs 1 <= N <= {MAX_LAST_N}, got {agg.n}")
    if agg.window_us is None:
        if entity != catalog.SESSION.name:
            raise DeclarationError(
                f"{at}: the session window (no time_window) does not fit entity {entity!r}: "
                "only the session entity has one; give a time_window such as 24h"
            )
        return
    window, hop = agg.window_us, agg.hop_us or agg.window_us
    if window <= 0 or hop <= 0:
        raise DeclarationError(f"{at}: time_window and slide_interval must be positive")
    limit = SESSION_MAX_WINDOW_US if entity == catalog.SESSION.name else MAX_WINDOW_US
    if window > limit:
        raise DeclarationError(
            f"{at}: window {duration_label(window)} does not fit entity {entity!r} "
            f"(at most {duration_label(limit)})"
        )
    if window % hop:
        raise DeclarationError(
            f"{at}: slide_interval {duration_label(hop)} must divide the time_window "
            f"{duration_label(window)}"
        )
    if window // hop > MAX_BUCKETS:
        raise DeclarationError(
            f"{at}: {window // hop} hops per window; at most {MAX_BUCKETS} (bounded state): "
            "use a longer slide_interval"
        )


def _validate_filters(where: str, filters: Filters) -> None:
    for t in filters.event_types or ():
        if not _IDENT.fullmatch(t):
            raise DeclarationError(f"{where}: event type filter {t!r} is not an identifier")
    if filters.event_types == () or filters.categories == ():
        raise DeclarationError(f"{where}: an empty filter list matches no event")
    low, high = filters.price_min, filters.price_max
    if low is not None and high is not None and low >= high:
        raise DeclarationError(f"{where}: price range [{low:g}, {high:g}) is empty")
