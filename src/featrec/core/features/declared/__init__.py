"""Declared features: aggregations a data scientist declares once in ``feature_repo/``.

:mod:`.model` holds a declaration and its validation, :mod:`.state` the incremental (stream)
computation with bounded state, :mod:`.shard` a stream shard's states (and forgetting ids),
:mod:`.ranking` declared features as the ranker's columns (by name, from a feature service),
:mod:`.builtins` the built-in session features written as declarations. The batch computation
of the same declarations is DuckDB SQL in :mod:`featrec.adapters.duckdb.declared`; the Feast
objects they are written with live in :mod:`featrec.adapters.feast.declared`.
"""

from featrec.core.features.declared.model import (
    Aggregation,
    Declaration,
    DeclarationError,
    Filters,
    Function,
    parse_function,
)
from featrec.core.features.declared.state import DeclaredState

__all__ = [
    "Aggregation",
    "Declaration",
    "DeclarationError",
    "DeclaredState",
    "Filters",
    "Function",
    "parse_function",
]
