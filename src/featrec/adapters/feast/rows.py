"""A :class:`~featrec.core.ports.serving.RowReader` through stock ``get_online_features``.

Works on every online store Feast supports (the embedded SQLite default included); the serving
path uses :class:`featrec.adapters.redis.rows.RedisRowReader` on Redis, where it is several
times faster. When every view asks for one key (a session and its user) the rows come from a
single ``get_online_features`` call with one entity row carrying every join key; otherwise one
call per view.

As in :mod:`featrec.adapters.feast.reader`, "no row" is a zero event timestamp (Feast's Redis
store reports PRESENT for entities it never saw), and Feast's SQLite store keeps whole seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from featrec.adapters.errors import translated
from featrec.adapters.feast.reader import view_columns
from featrec.core.ports.serving import Found, StampedRow, Wanted
from featrec.errors import ConfigError

if TYPE_CHECKING:
    from feast import FeatureStore


class FeastRowReader:
    """Rows of several views through ``FeatureStore.get_online_features``.

    ``features`` names, per view, the features to read (default: all).
    """

    def __init__(
        self, store: FeatureStore, features: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self._store = store
        self._features = dict(features or {})
        self._views: dict[str, tuple[str, list[str]]] = {}

    def read_rows(self, wanted: Wanted) -> Found:
        out: Found = {}
        with translated("reading features with get_online_features"):
            singles = {view: keys[0] for view, keys in wanted.items() if len(keys) == 1}
            join_keys = [self._view(view)[0] for view in singles]
            if len(singles) > 1 and len(set(join_keys)) == len(join_keys):
                row = {jk: key for jk, key in zip(join_keys, singles.values(), strict=True)}
                found = self._call(list(singles), [row])
                out.update({view: [rows[0]] for view, rows in found.items()})
            for view, keys in wanted.items():
                if view in out:
                    continue
                if not keys:
                    out[view] = []
                    continue
                join_key = self._view(view)[0]
                out.update(self._call([view], [{join_key: key} for key in keys]))
        return {view: out[view] for view in wanted}

    def _call(self, views: Sequence[str], entity_rows: list[dict[str, str]]) -> Found:
        from feast.protos.feast.serving.ServingService_pb2 import FieldStatus
        from feast.type_map import feast_value_type_to_python_type

        refs = [(view, name) for view in views for name in self._view(view)[1]]
        response = self._store.get_online_features(
            features=[f"{view}:{name}" for view, name in refs],
            entity_rows=entity_rows,
            full_feature_names=True,
        )
        proto = response.proto
        position = {name: i for i, name in enumerate(proto.metadata.feature_names.val)}
        out: Found = {}
        for view in views:
            names = self._view(view)[1]
            results = [proto.results[position[f"{view}__{name}"]] for name in names]
            rows: list[StampedRow | None] = []
            for j in range(len(entity_rows)):
                newest = (0, 0)
                for result in results:
                    if result.statuses[j] != FieldStatus.NOT_FOUND:
                        ts = result.event_timestamps[j]
                        newest = max(newest, (ts.seconds, ts.nanos))
                if newest == (0, 0):
                    rows.append(None)
                    continue
                values: dict[str, object] = {
                    name: _plain(feast_value_type_to_python_type(result.values[j]))
                    for name, result in zip(names, results, strict=True)
                }
                rows.append(StampedRow(values, newest[0] * 1_000_000 + newest[1] // 1000))
            out[view] = rows
        return out

    def _view(self, view: str) -> tuple[str, list[str]]:
        """Join key and feature names of a view, from the registry (cached)."""
        cached = self._views.get(view)
        if cached is None:
            join_key, names = view_columns(self._store, view)
            chosen = self._features.get(view)
            if chosen is not None:
                unknown = sorted(set(chosen) - set(names))
                if unknown:
                    raise ConfigError(f"feature view {view!r} has no features {unknown}")
                names = list(chosen)
            cached = self._views[view] = (join_key, names)
        return cached


def _plain(value: object) -> object:
    """Feast may hand back numpy scalars (in lists too): make them plain python."""
    if isinstance(value, list | tuple):
        return [v.item() if isinstance(v, np.generic) else v for v in value]
    return value.item() if isinstance(value, np.generic) else value
