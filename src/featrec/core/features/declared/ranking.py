"""Declared features as ranker columns, picked up by name.

A data scientist lists declared features in the feature service :data:`RANKER_SERVICE` of
``feature_repo/`` (``featrec_declared.py``). ``featrec dataset build`` joins that service point
in time (Feast's full names, ``<view>__<feature>``), ``featrec train`` appends those columns,
in the service's order, after :data:`~featrec.core.ranking.ranker.RANKING_FEATURES`, and the
model's feature list names them. Serving reads the model's feature list back, reads each named
view's online row (the session's, the user's, or each candidate item's) and builds the same
columns with :func:`declared_matrix`, so training and serving turn a row into a number the
same way (:func:`column_value`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from featrec.core.features.catalog import Dtype
from featrec.core.features.declared.model import AS_OF, Declaration
from featrec.errors import ConfigError

#: The feature service whose features the ranker adds to its own (by name).
RANKER_SERVICE: Final = "ranker_declared"
#: Between view and feature in a column name (Feast's ``full_feature_names``).
SEP: Final = "__"
#: Schema metadata key of a training set listing its declared columns, in order.
METADATA_KEY: Final = b"featrec.declared_columns"

Row = Mapping[str, object]
#: Rows by ``(view, key)``: what a request read, or a training set's values.
Rows = Mapping[tuple[str, str], Row | None]


@dataclass(frozen=True, slots=True)
class DeclaredColumn:
    """One declared feature the ranker reads: ``view``'s ``feature`` of ``entity``."""

    view: str
    feature: str
    entity: str

    @property
    def name(self) -> str:
        return f"{self.view}{SEP}{self.feature}"


def column_value(value: object) -> float:
    """A feature value as a ranker input: numbers as they are, a list by its length (how many
    items, prices ...), null as NaN. Strings are refused when the columns are chosen."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        return float(len(value))
    return math.nan


def declared_columns(
    wanted: Sequence[tuple[str, str]], declarations: Sequence[Declaration]
) -> tuple[DeclaredColumn, ...]:
    """``(view, feature)`` pairs (a feature service's, or a model's) as columns; raises
    :class:`ConfigError` naming a view that is not declared, a feature it does not have, or
    a text feature (a ranker column must be a number; lists count as their length)."""
    by_name = {d.name: d for d in declarations}
    out = []
    for view, feature in wanted:
        decl = by_name.get(view)
        if decl is None:
            raise ConfigError(
                f"the ranker's declared feature {view}:{feature} is not in a declared view "
                f"(declared: {', '.join(sorted(by_name)) or 'none'}): run featrec apply"
            )
        dtypes = {f.name: f.dtype for f in decl.view().features}
        if feature not in dtypes:
            raise ConfigError(
                f"declared view {view!r} has no feature {feature!r} (features: {', '.join(dtypes)})"
            )
        if feature == AS_OF or dtypes[feature] is Dtype.STRING:
            raise ConfigError(
                f"{view}:{feature} cannot be a ranker column: a text value has no order "
                "(use a count, a sum, a mean ... or a list, read as its length)"
            )
        out.append(DeclaredColumn(view, feature, decl.entity))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"the ranker's declared features list one twice: {names}")
    return tuple(out)


def parse_names(names: Sequence[str]) -> list[tuple[str, str]]:
    """``["view__feature", ...]`` -> ``[(view, feature), ...]`` (a model's extra columns)."""
    out = []
    for name in names:
        view, sep, feature = name.partition(SEP)
        if not sep or not view or not feature:
            raise ConfigError(f"{name!r} is not a declared feature column (view__feature)")
        out.append((view, feature))
    return out


def keys_of(column: DeclaredColumn, session_id: str, user_id: str | None) -> str | None:
    """The key of a session or user column's row (None: no user)."""
    return session_id if column.entity == "session" else user_id


def wanted_rows(
    columns: Sequence[DeclaredColumn],
    session_id: str,
    user_id: str | None,
    items: Sequence[str],
) -> dict[str, list[str]]:
    """The rows a request needs, by view (for a row reader)."""
    out: dict[str, list[str]] = {}
    for c in columns:
        if c.view in out:
            continue
        if c.entity == "item":
            out[c.view] = list(items)
        else:
            key = keys_of(c, session_id, user_id)
            out[c.view] = [key] if key is not None else []
    return out


def declared_matrix(
    columns: Sequence[DeclaredColumn],
    rows: Rows,
    session_id: str,
    user_id: str | None,
    items: Sequence[str],
) -> npt.NDArray[np.float64]:
    """One row per item of ``items``, one column per declared column (NaN: no row)."""
    out = np.full((len(items), len(columns)), math.nan, dtype=np.float64)
    for j, c in enumerate(columns):
        if c.entity == "item":
            for i, item in enumerate(items):
                row = rows.get((c.view, item))
                if row is not None:
                    out[i, j] = column_value(row.get(c.feature))
        else:
            key = keys_of(c, session_id, user_id)
            row = rows.get((c.view, key)) if key is not None else None
            if row is not None:
                out[:, j] = column_value(row.get(c.feature))
    return out
