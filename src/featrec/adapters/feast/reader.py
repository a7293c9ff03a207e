"""Reads online features through stock ``FeatureStore.get_online_features``.

Feast does not apply a view's ttl to online reads (upstream issue #6821), so
:meth:`FeastOnlineReader.read_with_timestamps` returns each row's event timestamp for callers
to judge staleness. Timestamps keep µs on Redis; Feast's SQLite store keeps whole seconds.

"No row" is recognised by the event timestamp, not by Feast's field status: Feast's Redis store
reports PRESENT with a zero timestamp for an entity it has never seen, and featrec writes
strictly positive versions, so a zero timestamp always means the entity has no row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from featrec.adapters.errors import translated
from featrec.errors import ConfigError

if TYPE_CHECKING:
    from feast import FeatureStore

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TimedValues:
    """One entity's stored values of a view and the event time they were written with."""

    values: Mapping[str, object]
    event_time: datetime


class FeastOnlineReader:
    """:class:`featrec.core.ports.features.FeatureReader` over a Feast ``FeatureStore``."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store
        self._views: dict[str, tuple[str, list[str]]] = {}

    def read(self, view: str, keys: Sequence[str]) -> list[Mapping[str, object] | None]:
        return [
            None if timed is None else timed.values
            for timed in self.read_with_timestamps(view, keys)
        ]

    def read_with_timestamps(self, view: str, keys: Sequence[str]) -> list[TimedValues | None]:
        """Per key in order: the stored values and their event time, or None (no row)."""
        if not keys:
            return []
        from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

        with translated(f"reading {view} with get_online_features"):
            join_key, names = self._view(view)
            response = self._store.get_online_features(
                features=[f"{view}:{name}" for name in names],
                entity_rows=[{join_key: key} for key in keys],
            )
            columns = response.to_dict()
            proto = response.proto
        position = {name: i for i, name in enumerate(proto.metadata.feature_names.val)}
        results = [proto.results[position[name]] for name in names]
        out: list[TimedValues | None] = []
        for j in range(len(keys)):
            newest: tuple[int, int] = (0, 0)
            for result in results:
                if result.statuses[j] == FieldStatus.NOT_FOUND:
                    continue
                ts = result.event_timestamps[j]
                newest = max(newest, (ts.seconds, ts.nanos))
            if newest == (0, 0):
                out.append(None)
                continue
            event_time = _EPOCH + timedelta(seconds=newest[0], microseconds=newest[1] // 1000)
            out.append(TimedValues({name: columns[name][j] for name in names}, event_time))
        return out

    def _view(self, view: str) -> tuple[str, list[str]]:
        """Join key and feature names of a view, from the registry (cached)."""
        cached = self._views.get(view)
        if cached is None:
            cached = self._views[view] = view_columns(self._store, view)
        return cached


def view_columns(store: Any, view: str) -> tuple[str, list[str]]:
    """The join key and feature names of a single-entity view, from the registry."""
    from feast.errors import FeatureViewNotFoundException

    from featrec.adapters.feast.declared import quiet_stream_views

    try:
        fv: Any = store.get_feature_view(view)
    except FeatureViewNotFoundException:  # a declared view is a stream feature view
        with quiet_stream_views():
            fv = store.get_stream_feature_view(view)
    join_keys = [column.name for column in fv.entity_columns]
    if len(join_keys) != 1:
        raise ConfigError(
            f"feature view {view!r} has join keys {join_keys}: the reader reads views "
            "on exactly one entity"
        )
    return join_keys[0], [f.name for f in fv.features]
