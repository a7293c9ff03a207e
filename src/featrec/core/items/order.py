"""The order of scored item lists: the highest score first, ties by item id.

Every ``(item, score)`` list featrec ranks (neighbours, trending lists, candidates) uses this
key, so a tie never depends on hash or insertion order.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection

#: Below ``len(pairs) <= SORT_FACTOR * n`` a full sort (C) beats ``heapq.nsmallest`` (Python
#: heap steps): 200 neighbours, top 50: 33 against 57 µs; 2,000 items, top 50: 473 against 290.
SORT_FACTOR = 16


def best_first(entry: tuple[str, float]) -> tuple[float, str]:
    """Sort key of an ``(item, score)`` pair: ``sorted(pairs, key=best_first)`` is best first."""
    return (-entry[1], entry[0])


def best_n(pairs: Collection[tuple[str, float]], n: int) -> list[tuple[str, float]]:
    """The ``n`` best ``(item, score)`` pairs, best first: ``sorted(pairs, key=best_first)[:n]``
    (which ``heapq.nsmallest`` equals), computed whichever way is faster for the sizes."""
    if len(pairs) <= SORT_FACTOR * n:
        return sorted(pairs, key=best_first)[:n]
    return heapq.nsmallest(n, pairs, key=best_first)
