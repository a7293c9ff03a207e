"""Tables of rows for a bulk write into Feast's online store, checked and reduced to the newest
row per entity: what every bulk writer (Redis, SQLite) does before encoding."""

from __future__ import annotations

from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featrec.core.features.catalog import View
from featrec.errors import ConfigError

EVENT_TIMESTAMP: Final = "event_timestamp"


def checked_newest_rows(view: View, table: pa.Table) -> pa.Table:
    """``table`` reduced to the newest row per key, after checking it has every column of
    ``view`` and an event timestamp on every row (ConfigError otherwise)."""
    missing = [
        c
        for c in (view.entity.join_key, *view.feature_names, EVENT_TIMESTAMP)
        if c not in table.column_names
    ]
    if missing:
        raise ConfigError(f"{view.name} rows lack columns {missing}")
    if table.column(EVENT_TIMESTAMP).null_count:
        raise ConfigError(f"{view.name} rows with a null {EVENT_TIMESTAMP}")
    return newest_per_key(table, view.entity.join_key)


def newest_per_key(table: pa.Table, join_key: str) -> pa.Table:
    """One row per key: the newest (the first of the newest on ties, as a row-by-row store
    that skips not-newer rows would keep). The table itself when keys are unique."""
    keys = table.column(join_key)
    if pc.count_distinct(keys).as_py() == table.num_rows:
        return table
    indexed = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    order = pc.sort_indices(
        indexed,
        sort_keys=[(join_key, "ascending"), (EVENT_TIMESTAMP, "descending"), ("_row", "ascending")],
    )
    ordered = indexed.take(order)
    sorted_keys = ordered.column(join_key).to_numpy(zero_copy_only=False)
    first = np.ones(len(sorted_keys), dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return ordered.filter(pa.array(first)).sort_by("_row").drop_columns(["_row"])
