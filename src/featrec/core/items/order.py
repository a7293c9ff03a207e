"""The order of scored item lists: the highest score first, ties by item id.

Every ``(item, score)`` list featrec ranks (neighbours, trending lists, candidates) uses this
key, so a tie never depends on hash or insertion order.
"""

from __future__ import annotations


def best_first(entry: tuple[str, float]) -> tuple[float, str]:
    """Sort key of an ``(item, score)`` pair: ``sorted(pairs, key=best_first)`` is best first."""
    return (-entry[1], entry[0])
