"""The candidate generator's signals on the serving path: neighbour and trending lists read
through the item cache, the user's history from the user row already read."""

from __future__ import annotations

from collections.abc import Sequence

from featrec.app.item_signals import trending_key
from featrec.app.serving.cache import RowCache
from featrec.app.serving.steps import strings
from featrec.core.features.catalog import ITEM_MODEL, ITEM_NEIGHBOURS
from featrec.core.ports.serving import StampedRow


class RowSignals:
    """:class:`featrec.core.candidates.signals.SignalLookup` over ``item_neighbours`` rows
    (neighbour lists, and trending lists under their pseudo-item keys) and ``item_model`` rows
    (the batch-trained item model's lists) through a :class:`RowCache`; the user's history is
    the ``recent_purchases`` of the user row already read.

    ``offline``: never touch the store, answer from the cache however old (the store is down).
    """

    def __init__(self, cache: RowCache, user: StampedRow | None, *, offline: bool = False) -> None:
        self._cache = cache
        self._user = user
        self._offline = offline

    def _lists(self, keys: Sequence[str]) -> list[StampedRow | None]:
        found = self._cache.get({ITEM_NEIGHBOURS.name: keys}, offline=self._offline)
        return found[ITEM_NEIGHBOURS.name]

    def neighbours(self, items: Sequence[str]) -> dict[str, Sequence[tuple[str, float]]]:
        out: dict[str, Sequence[tuple[str, float]]] = {}
        for item, row in zip(items, self._lists(items), strict=True):
            if row is not None:
                out[item] = _pairs(row)
        return out

    def trending(self, category: str | None = None) -> Sequence[tuple[str, float]]:
        [row] = self._lists([trending_key(category)])
        return () if row is None else _pairs(row)

    def model_neighbours(
        self, items: Sequence[str], session_id: str | None = None
    ) -> dict[str, Sequence[tuple[str, float]]]:
        if not items:
            return {}
        found = self._cache.get({ITEM_MODEL.name: items}, offline=self._offline)
        out: dict[str, Sequence[tuple[str, float]]] = {}
        for item, row in zip(items, found[ITEM_MODEL.name], strict=True):
            if row is not None:
                out[item] = _pairs(row, "model_ids", "model_weights")
        return out

    def user_history(self, user_id: str) -> Sequence[str]:
        if self._user is None:
            return ()
        return strings(self._user.values.get("recent_purchases"))


def _pairs(
    row: StampedRow, ids_name: str = "neighbour_ids", weights_name: str = "neighbour_weights"
) -> list[tuple[str, float]]:
    ids = row.values.get(ids_name) or []
    weights = row.values.get(weights_name) or []
    assert isinstance(ids, list | tuple) and isinstance(weights, list | tuple)
    return list(zip(ids, weights, strict=False))
