"""Test support for declared features: declarations covering every function, window and filter,
the stream fold over an arrival order, and value comparison with a float tolerance.

Shared by the equivalence tests, the skew monitor's tests and ``benchmarks/declared.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from featrec.core.events.model import Event
from featrec.core.features.declared.model import (
    DAY_US,
    HOUR_US,
    US,
    Aggregation,
    Declaration,
    Filters,
    Function,
    validate,
)
from featrec.core.features.declared.state import DeclaredState

#: ``(window_us, hop_us)`` of the event-time windows the issue names.
WINDOWS: tuple[tuple[int, int], ...] = (
    (HOUR_US, 5 * 60 * US),
    (24 * HOUR_US, HOUR_US),
    (7 * DAY_US, DAY_US),
    (30 * DAY_US, DAY_US),
)
FUNCTIONS: tuple[tuple[Function, int, str], ...] = (
    (Function.COUNT, 0, "item_id"),
    (Function.SUM, 0, "price"),
    (Function.MEAN, 0, "price"),
    (Function.MIN, 0, "price"),
    (Function.MAX, 0, "quantity"),
    (Function.LAST, 0, "category"),
    (Function.LAST, 0, "price"),
    (Function.COUNT_DISTINCT, 0, "item_id"),
    (Function.LAST_N, 3, "item_id"),
    (Function.LAST_N, 2, "price"),
)
FILTERS: dict[str, Filters] = {
    "all": Filters(),
    "carts": Filters(event_types=("cart", "purchase")),
    "shoes": Filters(categories=("shoes",)),
    "mid": Filters(price_min=10.0, price_max=50.0),
}


def _label(window: tuple[int, int] | None) -> str:
    if window is None:
        return "session"
    return f"{window[0] // HOUR_US}h"


def covering_declarations(
    entities: Iterable[str] = ("session", "user", "item"),
) -> list[Declaration]:
    """One declaration per entity and filter, each with every function over every window
    that fits the entity (the session window and windows up to 24 h on sessions)."""
    out = []
    for entity in entities:
        windows: list[tuple[int, int] | None] = [
            w for w in WINDOWS if entity != "session" or w[0] <= 24 * HOUR_US
        ]
        if entity == "session":
            windows.insert(0, None)
        for fname, filters in FILTERS.items():
            aggs = tuple(
                Aggregation(
                    name=f"{f.value}{n or ''}_{column}_{_label(w)}",
                    column=column,
                    function=f,
                    n=n,
                    window_us=None if w is None else w[0],
                    hop_us=None if w is None else w[1],
                )
                for w in windows
                for f, n, column in FUNCTIONS
            )
            out.append(validate(Declaration(f"{entity}_{fname}", entity, aggs, filters)))
    return out


def fold_stream(decl: Declaration, arrivals: Iterable[Event]) -> dict[str, DeclaredState]:
    """The stream engine's states after folding ``arrivals`` in order, by key."""
    states: dict[str, DeclaredState] = {}
    for event in arrivals:
        key = decl.key_of(event)
        if key is None:
            continue
        state = states.get(key)
        if state is None:
            state = states[key] = DeclaredState(decl, key)
        state.update(event)
    return states


def same_value(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Equal, floats within ``rel`` (sums add in a different order in each engine)."""
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=rel)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y, rel) for x, y in zip(a, b, strict=True))
    return bool(a == b)
