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
    ``pairs``: the lists decoded from rows already seen (one per recommender, shared by its
    requests); without it every list is decoded again.
    """

    def __init__(
        self,
        cache: RowCache,
        user: StampedRow | None,
        *,
        offline: bool = False,
        pairs: PairsMemo | None = None,
    ) -> None:
        self._cache = cache
        self._user = user
        self._offline = offline
        self._pairs = pairs if pairs is not None else PairsMemo(capacity=1)

    def _lists(self, keys: Sequence[str]) -> list[StampedRow | None]:
        found = self._cache.get({ITEM_NEIGHBOURS.name: keys}, offline=self._offline)
        return found[ITEM_NEIGHBOURS.name]

    def neighbours(self, items: Sequence[str]) -> dict[str, Sequence[tuple[str, float]]]:
        out: dict[str, Sequence[tuple[str, float]]] = {}
        decoded = self._pairs.neighbours
        for item, row in zip(items, self._lists(items), strict=True):
            if row is not None:
                out[item] = decoded(item, row)
        return out

    def trending(self, category: str | None = None) -> Sequence[tuple[str, float]]:
        key = trending_key(category)
        [row] = self._lists([key])
        return () if row is None else self._pairs.neighbours(key, row)

    def model_neighbours(
        self, items: Sequence[str], session_id: str | None = None
    ) -> dict[str, Sequence[tuple[str, float]]]:
        if not items:
            return {}
        found = self._cache.get({ITEM_MODEL.name: items}, offline=self._offline)
        out: dict[str, Sequence[tuple[str, float]]] = {}
        decoded = self._pairs.model
        for item, row in zip(items, found[ITEM_MODEL.name], strict=True):
            if row is not None:
                out[item] = decoded(item, row)
        return out

    def user_history(self, user_id: str) -> Sequence[str]:
        if self._user is None:
            return ()
        return strings(self._user.values.get("recent_purchases"))


Pairs = tuple[tuple[str, float], ...]


class PairsMemo:
    """``(item, weight)`` lists decoded once per row read: the row cache hands out the same row
    object until it reads the row again, so a list is decoded again only then (the entry is
    kept with the row it came from and used only for that very row). Lists are tuples: the
    requests that share them cannot change them. At most ``capacity`` entries per view (then
    it starts over). Safe to share between threads (a race decodes a list twice)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._neighbours: dict[str, tuple[StampedRow, Pairs]] = {}
        self._model: dict[str, tuple[StampedRow, Pairs]] = {}

    def neighbours(self, key: str, row: StampedRow) -> Pairs:
        """An ``item_neighbours`` row's neighbour (or trending) list."""
        return _memo(
            self._neighbours, key, row, "neighbour_ids", "neighbour_weights", self.capacity
        )

    def model(self, key: str, row: StampedRow) -> Pairs:
        """An ``item_model`` row's list."""
        return _memo(self._model, key, row, "model_ids", "model_weights", self.capacity)


def _memo(
    memo: dict[str, tuple[StampedRow, Pairs]],
    key: str,
    row: StampedRow,
    ids_name: str,
    weights_name: str,
    capacity: int,
) -> Pairs:
    entry = memo.get(key)
    if entry is not None and entry[0] is row:
        return entry[1]
    pairs = _pairs(row, ids_name, weights_name)
    if len(memo) >= capacity:
        memo.clear()
    memo[key] = (row, pairs)
    return pairs


def _pairs(row: StampedRow, ids_name: str, weights_name: str) -> Pairs:
    ids = row.values.get(ids_name) or []
    weights = row.values.get(weights_name) or []
    assert isinstance(ids, list | tuple) and isinstance(weights, list | tuple)
    return tuple(zip(ids, weights, strict=False))
