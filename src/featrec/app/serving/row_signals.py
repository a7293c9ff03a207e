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

    One object serves one request. Generation first calls :meth:`prefetch` with every list it
    may read: they come from the cache in one call (the rows it does not hold fresh in one
    round trip), and the reads that follow answer from what that call found.
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
        #: Per view, the rows :meth:`prefetch` found, by key.
        self._fetched: dict[str, dict[str, StampedRow | None]] = {}

    def prefetch(
        self, items: Sequence[str], model: Sequence[str], trending: Sequence[str | None]
    ) -> None:
        wanted: dict[str, list[str]] = {}
        lists = list(dict.fromkeys([*items, *map(trending_key, trending)]))
        if lists:
            wanted[ITEM_NEIGHBOURS.name] = lists
        if model:
            wanted[ITEM_MODEL.name] = list(dict.fromkeys(model))
        if not wanted:
            return
        found = self._cache.get(wanted, offline=self._offline)
        self._fetched = {
            view: dict(zip(keys, found[view], strict=True)) for view, keys in wanted.items()
        }

    def _rows(self, view: str, keys: Sequence[str]) -> list[StampedRow | None]:
        """The rows of ``keys``: those :meth:`prefetch` found, else through the cache."""
        fetched = self._fetched.get(view)
        if fetched is not None:
            try:
                return [fetched[key] for key in keys]
            except KeyError:  # a key not announced: the cache
                pass
        return self._cache.get({view: keys}, offline=self._offline)[view]

    def _lists(self, keys: Sequence[str]) -> list[StampedRow | None]:
        return self._rows(ITEM_NEIGHBOURS.name, keys)

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
        out: dict[str, Sequence[tuple[str, float]]] = {}
        decoded = self._pairs.model
        for item, row in zip(items, self._rows(ITEM_MODEL.name, items), strict=True):
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
