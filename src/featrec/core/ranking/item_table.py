"""The item side of the ranking matrix as columns, computed once per item row.

Of the ranking features, the item's own (its price and its log, conversion, counts, the share of
purchases in its trend, when it was first seen, its trending counts and when they were taken) do
not depend on the request. :func:`item_values` computes them from an item's merged row
(:func:`~featrec.core.ranking.ranker.item_row`) once; :class:`ItemTable` keeps them by slot so the
serving path computes them once per row read (while the row cache hands out the same rows) and
gathers a request's candidates by index; :class:`ItemColumns` is that gather, aligned with the
request's candidates, which :func:`~featrec.core.ranking.ranker.ranking_matrix` reads instead of
~10 values per candidate out of dicts. The request-dependent parts (the trend decayed to now, the
item's age, comparisons with the session and the user) are computed per request from these
columns, with the same float operations in the same order as the row-at-a-time version, so the
matrix is the same bit for bit (``tests/unit/test_ranking_oracle.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from featrec.core.events.model import PURCHASE, VIEW
from featrec.core.features.catalog import TRENDING_TYPES, count_feature

Row = Mapping[str, object]
Matrix = npt.NDArray[np.float64]

NAN: Final = math.nan

#: The columns of :func:`item_values`, in order (the four from ``trend_purchase_share`` to
#: ``conversion_30d`` are the ranking features ``item_trend_purchase_share`` to
#: ``item_conversion_30d``, in their order).
ITEM_COLUMNS: Final[tuple[str, ...]] = (
    "price",
    "log_price",
    "trend_purchase_share",
    "views_7d",
    "purchases_30d",
    "conversion_30d",
    "first_seen_s",
    "as_of_s",
    *(f"trend_{t}" for t in TRENDING_TYPES),
)
ITEM_WIDTH: Final = len(ITEM_COLUMNS)
PRICE: Final = 0
LOG_PRICE: Final = 1
TREND_PURCHASE_SHARE: Final = 2
CONVERSION: Final = 5
FIRST_SEEN: Final = 6
AS_OF: Final = 7
#: The first trending count (one column per :data:`TRENDING_TYPES` entry, in that order).
TREND_COUNTS: Final = 8

_VIEWS_7D: Final = count_feature(VIEW, 7)
_PURCHASES_30D: Final = count_feature(PURCHASE, 30)
_TREND_COLUMNS: Final = tuple(f"trend_{t}" for t in TRENDING_TYPES)
_UNKNOWN: Final = (NAN,) * ITEM_WIDTH


def _float(value: object) -> float:
    """``value`` as a float when it is a number (not a bool), else NaN."""
    if value.__class__ is float:
        return value  # type: ignore[return-value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return NAN


def item_values(item: Row | None) -> tuple[float, ...]:
    """The request-independent item columns (:data:`ITEM_COLUMNS`) of one merged item row;
    all NaN without a row."""
    if item is None:
        return _UNKNOWN
    get = item.get
    price = _float(get("price"))
    trend_view, trend_purchase = _float(get("trend_view")), _float(get("trend_purchase"))
    return (
        price,
        math.log1p(price) if price >= 0 else NAN,
        trend_purchase / trend_view if trend_view > 0 else NAN,
        _float(get(_VIEWS_7D)),
        _float(get(_PURCHASES_30D)),
        _float(get("conversion_rate_30d")),
        _float(get("first_seen_s")),
        _float(get("as_of_s")),
        *[_float(get(column)) for column in _TREND_COLUMNS],
    )


def item_category(item: Row | None) -> str | None:
    """The item's category when it is a string (possibly empty), else None."""
    category = None if item is None else item.get("category")
    return category if isinstance(category, str) else None


class ItemColumns:
    """The item side of one request's candidates, row ``i`` for candidate ``i``: the merged
    rows, their :func:`item_values` (``values``, shape ``(n, ITEM_WIDTH)``) and categories."""

    __slots__ = ("categories", "ids", "rows", "values")

    def __init__(
        self,
        ids: Sequence[str],
        rows: Sequence[Row | None],
        values: Matrix,
        categories: Sequence[str | None],
    ) -> None:
        if not len(ids) == len(rows) == values.shape[0] == len(categories):
            raise ValueError(
                f"item columns of {len(ids)} ids, {len(rows)} rows, {values.shape[0]} values "
                f"and {len(categories)} categories"
            )
        self.ids = ids
        self.rows = rows
        self.values = values
        self.categories = categories

    @classmethod
    def of(cls, ids: Sequence[str], items: Mapping[str, Row | None]) -> ItemColumns:
        """The columns of ``ids`` from their merged rows (a missing key is a missing row)."""
        rows = [items.get(item) for item in ids]
        values = np.array([item_values(row) for row in rows], dtype=np.float64)
        categories = [item_category(row) for row in rows]
        return cls(ids, rows, values.reshape(len(rows), ITEM_WIDTH), categories)

    def mapping(self) -> dict[str, Row | None]:
        """The merged rows by item id."""
        return dict(zip(self.ids, self.rows, strict=True))


class ItemTable:
    """:func:`item_values` and categories of item rows by slot, computed once when a row is
    added, gathered by slot per request (:meth:`gather`).

    Not thread-safe: the caller serialises :meth:`add`, :meth:`put`, :meth:`clear` and
    :meth:`gather` (a slot is reused after :meth:`clear`; a gather is a copy).
    """

    def __init__(self, initial: int = 1024) -> None:
        self._values = np.empty((max(initial, 1), ITEM_WIDTH), dtype=np.float64)
        self._categories: list[str | None] = []

    def __len__(self) -> int:
        return len(self._categories)

    def add(self, item: Row | None) -> int:
        """Add one merged item row; returns its slot."""
        slot = len(self._categories)
        if slot == self._values.shape[0]:
            grown = np.empty((2 * slot, ITEM_WIDTH), dtype=np.float64)
            grown[:slot] = self._values
            self._values = grown
        self._values[slot] = item_values(item)
        self._categories.append(item_category(item))
        return slot

    def put(self, slot: int, item: Row | None) -> None:
        """Replace the row at ``slot`` (the item's rows were read again)."""
        if not 0 <= slot < len(self._categories):
            raise IndexError(f"no item at slot {slot} of {len(self._categories)}")
        self._values[slot] = item_values(item)
        self._categories[slot] = item_category(item)

    def clear(self) -> None:
        self._categories.clear()

    def gather(
        self, ids: Sequence[str], rows: Sequence[Row | None], slots: Sequence[int]
    ) -> ItemColumns:
        """The columns of the items at ``slots`` (copies), aligned with ``ids`` and ``rows``."""
        categories = self._categories
        return ItemColumns(
            ids,
            rows,
            self._values[np.asarray(slots, dtype=np.intp)],
            [categories[s] for s in slots],
        )
