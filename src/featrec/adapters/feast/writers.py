"""Feature writers into Feast's online store, all honouring the writer contract.

=======================  =============================================================  =======
writer                   path                                                           stores
=======================  =============================================================  =======
``FeastApiWriter``       stock ``FeatureStore.write_to_online_store(view, DataFrame)``    both
``FeastBatchWriter``     protobufs built here, the provider's ``online_write_batch``     both
``RedisLayoutWriter``    Feast's Redis layout written directly (no Feast import)        Redis
=======================  =============================================================  =======

Contract (:class:`featrec.core.ports.features.FeatureWriter`): a row whose version is not newer
than the
stored one is skipped, writing the same row twice changes nothing, ``write`` returns how many
rows were written. ``row.event_time`` is Feast's event timestamp. A bad row (unknown view,
missing or unknown feature, wrong value type) fails the whole call before anything is written.
Stock ``FeatureStore.get_online_features`` reads back the same values whichever writer wrote.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import redis

from featrec.adapters.errors import translated
from featrec.adapters.feast.layout import values as feast_wire
from featrec.adapters.feast.layout.values import (
    InvalidFeatureRow,
    group_by_view,
    normalized_values,
    view_of,
)
from featrec.adapters.feast.repo import open_store, redis_layout_options
from featrec.adapters.feast.version_guard import accept_newer, guard_for_store
from featrec.core.features import catalog
from featrec.core.features.catalog import View
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import FeatureWriter
from featrec.errors import ConfigError

if TYPE_CHECKING:
    from feast import FeatureStore

    from featrec.settings import Settings

__all__ = [
    "FeastApiWriter",
    "FeastBatchWriter",
    "InvalidFeatureRow",
    "RedisLayoutWriter",
    "open_writer",
]

Views = Mapping[str, View]


def _normalize_all(rows: Sequence[FeatureRow], views: Views) -> dict[int, list[object]]:
    """Check every row and normalize its values (by ``id(row)``) before anything is written."""
    return {id(row): normalized_values(view_of(row, views), row) for row in rows}


class FeastApiWriter:
    """The stock path: one ``write_to_online_store`` DataFrame per view and call.

    The baseline the other writers are measured and tested against.
    """

    def __init__(self, store: FeatureStore, views: Views = catalog.VIEWS) -> None:
        self._store = store
        self._views = dict(views)
        with translated("opening the Feast writer"):
            self._guard = guard_for_store(store)

    def write(self, rows: Sequence[FeatureRow]) -> int:
        normals = _normalize_all(rows, self._views)
        written = 0
        with translated("writing features with write_to_online_store"):
            for name, view_rows in group_by_view(rows).items():
                view = self._views[name]
                write = functools.partial(self._write_frame, view, normals=normals)
                written += self._guard.guarded(view, view_rows, write)
        return written

    def _write_frame(
        self, view: View, rows: list[FeatureRow], *, normals: dict[int, list[object]]
    ) -> None:
        import pandas as pd
        import pyarrow as pa

        from featrec.adapters.feast.types import EVENT_TIMESTAMP, arrow_schema

        columns: dict[str, list[Any]] = {view.entity.join_key: [r.key for r in rows]}
        for i, feature in enumerate(view.features):
            columns[feature.name] = [normals[id(r)][i] for r in rows]
        columns[EVENT_TIMESTAMP] = [r.event_time for r in rows]
        table = pa.Table.from_pydict(columns, schema=arrow_schema(view))
        frame = table.to_pandas(types_mapper=pd.ArrowDtype)
        if all(v is None for r in rows for v in normals[id(r)]):
            # write_to_online_store skips (with only a warning) a frame whose feature columns
            # are all null; the provider call behind it writes the nulls as any other row.
            self._store._get_provider().ingest_df(_registered_view(self._store, view.name), frame)
        else:
            self._store.write_to_online_store(view.name, frame)

    def close(self) -> None:
        return None


class FeastBatchWriter:
    """Builds Feast's protobufs itself (no pandas) and calls the provider's
    ``online_write_batch`` with cached ``FeatureView`` objects: the fast path for SQLite."""

    def __init__(self, store: FeatureStore, views: Views = catalog.VIEWS) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._entity_key = EntityKey
        self._value = Value
        self._store = store
        self._config = store.config
        self._views = dict(views)
        self._feature_views: dict[str, Any] = {}
        with translated("opening the Feast batch writer"):
            self._provider = store._get_provider()
            self._guard = guard_for_store(store)

    def _feature_view(self, view: View) -> Any:
        fv = self._feature_views.get(view.name)
        if fv is None:
            fv = _registered_view(self._store, view.name)
            # A StreamFeatureView read back from the registry lists its join key as a feature.
            registered = {f.name for f in fv.features} - {view.entity.join_key}
            if registered != set(view.feature_names):
                raise ConfigError(
                    f"feature view {view.name!r} in the registry has features "
                    f"{sorted(registered)}, the catalog {sorted(view.feature_names)}: "
                    "apply the feature repo again"
                )
            self._feature_views[view.name] = fv
        return fv

    def write(self, rows: Sequence[FeatureRow]) -> int:
        normals = _normalize_all(rows, self._views)
        written = 0
        with translated("writing features with online_write_batch"):
            for name, view_rows in group_by_view(rows).items():
                view = self._views[name]
                self._feature_view(view)  # fail before the guard if the view is not applied
                write = functools.partial(self._write_batch, view, normals=normals)
                written += self._guard.guarded(view, view_rows, write)
        return written

    def _write_batch(
        self, view: View, rows: list[FeatureRow], *, normals: dict[int, list[object]]
    ) -> None:
        from featrec.adapters.feast.types import value_proto

        join_keys = [view.entity.join_key]
        features = [(f.name, f.dtype) for f in view.features]
        data = [
            (
                self._entity_key(
                    join_keys=join_keys, entity_values=[self._value(string_val=r.key)]
                ),
                {
                    name: value_proto(dtype, v)
                    for (name, dtype), v in zip(features, normals[id(r)], strict=True)
                },
                r.event_time,
                None,
            )
            for r in rows
        ]
        self._provider.online_write_batch(self._config, self._feature_view(view), data, None)

    def close(self) -> None:
        return None


# Compare-and-set of one row in Feast's layout, atomic in Redis. KEYS[1] = entity hash;
# ARGV = ts field, new seconds, new nanos, key ttl (0: none), then field/value pairs
# (the ts field and its serialized Timestamp first). Decodes the stored protobuf Timestamp
# (field 1 seconds, field 2 nanos, varints) and returns 1 if written, 0 if skipped.
_CAS_SCRIPT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local s, n, i = 0, 0, 1
  while i <= #cur do
    local tag = string.byte(cur, i)
    i = i + 1
    local v, mul, b = 0, 1, 128
    while b >= 128 do
      b = string.byte(cur, i)
      i = i + 1
      v = v + (b % 128) * mul
      mul = mul * 128
    end
    if tag == 8 then s = v elseif tag == 16 then n = v end
  end
  local ns, nn = tonumber(ARGV[2]), tonumber(ARGV[3])
  if ns < s or (ns == s and nn <= n) then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
if ARGV[4] ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"""


class _ViewPlan:
    """Everything about one view that does not change between rows, computed once."""

    def __init__(self, view: View, project: bytes) -> None:
        self.view = view
        self.prefix = feast_wire.entity_key_prefix(view.entity.join_key)
        self.project = project
        self.ts_field = feast_wire.ts_field(view.name)
        self.features = [(f.name, feast_wire.ENCODERS[f.dtype]) for f in view.features]
        self.hashes = [feast_wire.field_hash(view.name, f.name) for f in view.features]

    def redis_key(self, key: str) -> bytes:
        return feast_wire.encode_entity_key_after(self.prefix, key) + self.project

    def encode(self, row: FeatureRow) -> list[bytes]:
        """``[ts field, timestamp, field, value, ...]`` as HSET wants them."""
        values = row.values
        try:
            encoded = [encode(values[name]) for name, encode in self.features]
        except InvalidFeatureRow:
            for name, encode in self.features:
                try:
                    encode(values[name])
                except InvalidFeatureRow as e:
                    raise InvalidFeatureRow(
                        f"{self.view.name} row for key {row.key!r}, feature {name!r}: {e}"
                    ) from None
            raise
        args = [b""] * (2 + 2 * len(encoded))
        args[0] = self.ts_field
        args[1] = feast_wire.encode_timestamp(row.version)
        args[2::2] = self.hashes
        args[3::2] = encoded
        return args


class RedisLayoutWriter:
    """Writes Feast's Redis layout directly (see :mod:`featrec.adapters.feast.layout.values`).

    ``guard="read"`` reads every ``_ts:<view>`` in one pipelined round trip and writes only
    newer rows in a second one (as Feast's own Redis store does); ``guard="lua"`` sends one
    atomic compare-and-set script call per row in a single round trip. Field hashes, key
    prefixes and encoders are computed once per view.
    """

    def __init__(
        self,
        client: redis.Redis[bytes],
        project: str,
        *,
        key_ttl_seconds: int | None = None,
        views: Views = catalog.VIEWS,
        guard: Literal["read", "lua"] = "read",
        owns_client: bool = False,
    ) -> None:
        if guard not in ("read", "lua"):
            raise ConfigError(f"guard must be 'read' or 'lua', got {guard!r}")
        # redis-py's stubs leave pipeline commands untyped.
        self._client: Any = client
        self._owns_client = owns_client
        self._views = dict(views)
        self._ttl = key_ttl_seconds or 0
        project_bytes = project.encode()
        self._plans = {name: _ViewPlan(view, project_bytes) for name, view in self._views.items()}
        self._guard = guard
        self._script_sha: str | None = None

    def write(self, rows: Sequence[FeatureRow]) -> int:
        if not rows:
            return 0
        encoded = []
        for row in rows:
            view_of(row, self._views)
            plan = self._plans[row.view]
            encoded.append((row, plan.redis_key(row.key), plan.encode(row)))
        with translated("writing Feast's Redis layout"):
            if self._guard == "lua":
                return self._write_lua(encoded)
            return self._write_read_then_set(encoded)

    def _write_read_then_set(self, encoded: list[tuple[FeatureRow, bytes, list[bytes]]]) -> int:
        by_view: dict[str, dict[str, int]] = {}
        keys: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        for row, redis_key, args in encoded:
            keys.setdefault((row.view, row.key), (redis_key, args[0]))
        with self._client.pipeline(transaction=False) as pipe:
            for redis_key, ts_field in keys.values():
                pipe.execute_command("HGET", redis_key, ts_field)
            replies = pipe.execute()
        for (view, key), reply in zip(keys, replies, strict=True):
            if reply is not None:
                by_view.setdefault(view, {})[key] = feast_wire.decode_timestamp_ns(reply)
        args_of = {id(row): (redis_key, args) for row, redis_key, args in encoded}
        written = 0
        with self._client.pipeline(transaction=False) as pipe:
            for view, view_rows in group_by_view([row for row, _, _ in encoded]).items():
                accepted, newest = accept_newer(view_rows, by_view.get(view, {}))
                written += accepted
                for row in newest:
                    redis_key, args = args_of[id(row)]
                    pipe.execute_command("HSET", redis_key, *args)
                    if self._ttl:
                        pipe.execute_command("EXPIRE", redis_key, self._ttl)
            pipe.execute()
        return written

    def _write_lua(self, encoded: list[tuple[FeatureRow, bytes, list[bytes]]]) -> int:
        def run(sha: str) -> int:
            with self._client.pipeline(transaction=False) as pipe:
                for row, redis_key, args in encoded:
                    seconds, micros = divmod(row.version, 1_000_000)
                    pipe.execute_command(
                        "EVALSHA", sha, 1, redis_key, args[0], seconds, micros * 1000, self._ttl,
                        *args,
                    )  # fmt: skip
                return sum(int(n) for n in pipe.execute())

        if self._script_sha is None:
            self._script_sha = str(self._client.script_load(_CAS_SCRIPT))
        try:
            return run(self._script_sha)
        except redis.exceptions.NoScriptError:
            # The server lost its script cache (restart, SCRIPT FLUSH). Rows are guarded, so
            # running the whole batch again is safe.
            self._script_sha = str(self._client.script_load(_CAS_SCRIPT))
            return run(self._script_sha)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def _registered_view(store: FeatureStore, name: str) -> Any:
    """A feature view from the registry; a declared view is a ``StreamFeatureView``."""
    from feast.errors import FeatureViewNotFoundException

    try:
        return store.get_feature_view(name)
    except FeatureViewNotFoundException:
        from featrec.adapters.feast.declared import quiet_stream_views

        with quiet_stream_views():
            return store.get_stream_feature_view(name)


def open_writer(
    settings: Settings,
    store: FeatureStore | None = None,
    *,
    flow: bool = False,
    exclusive: bool = False,
    views: Views = catalog.VIEWS,
) -> FeatureWriter:
    """The writer ``settings`` ask for.

    ``writer="feast"``: :class:`FeastApiWriter`. ``writer="fast"``: :class:`RedisLayoutWriter`
    on Redis (client from ``settings.redis_url``), :class:`FeastBatchWriter` on SQLite.
    ``flow=True`` (a dataflow's sink) picks, on Redis,
    :class:`~featrec.adapters.feast.flush_writer.FlushWriter` (one round trip per call);
    ``exclusive=True`` says the caller is the only writer of its entities, so that writer may
    remember what it wrote instead of guarding every row in Redis. ``views``: the views rows
    may name (default: the catalog's; the declared flow passes its declared views). With
    ``FEATREC_REDIS_CLUSTER_NODES`` set the same writers run on the cluster (the flow's is
    :class:`~featrec.adapters.feast.cluster_writer.ClusterFlushWriter`).
    """
    if settings.writer == "feast":
        return FeastApiWriter(store if store is not None else open_store(settings), views)
    if settings.online_store == "redis":
        project, ttl = redis_layout_options(settings)
        if settings.redis_cluster_nodes:
            return _cluster_writer(
                settings, project, ttl, flow=flow, exclusive=exclusive, views=views
            )
        client = redis.Redis.from_url(settings.redis_url)
        if flow:
            from featrec.adapters.feast.flush_writer import FlushWriter

            return FlushWriter(
                client,
                project,
                key_ttl_seconds=ttl,
                views=views,
                remember=exclusive,
                owns_client=True,
            )
        return RedisLayoutWriter(
            client, project, key_ttl_seconds=ttl, views=views, owns_client=True
        )
    return FeastBatchWriter(store if store is not None else open_store(settings), views)


def _cluster_writer(
    settings: Settings,
    project: str,
    ttl: int | None,
    *,
    flow: bool,
    exclusive: bool,
    views: Views,
) -> FeatureWriter:
    """:func:`open_writer`'s writers on a Redis Cluster (``FEATREC_REDIS_CLUSTER_NODES``)."""
    from featrec.adapters.redis.cluster import online_client

    client = online_client(settings)
    if flow:
        from featrec.adapters.feast.cluster_writer import ClusterFlushWriter

        return ClusterFlushWriter(
            client,
            project,
            key_ttl_seconds=ttl,
            views=views,
            remember=exclusive,
            owns_client=True,
            wait_replicas=settings.redis_cluster_wait_replicas,
        )
    # redis-py splits this writer's pipelines per node and follows redirections itself.
    return RedisLayoutWriter(client, project, key_ttl_seconds=ttl, views=views, owns_client=True)
