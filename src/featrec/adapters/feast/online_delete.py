"""Deleting entities' rows from Feast's online store, and finding a user's session rows.

Feast has no per-entity delete (its Redis store can only drop every entity of a join key), so
this module works on the stores' own layouts, through the connections Feast opens:

- SQLite: one table per view (``<project>_<view>``), one SQL row per entity and feature, keyed
  by the serialized entity key: ``DELETE ... WHERE entity_key IN (...)``.
- Redis: one hash per entity, shared by every view on that entity: ``DEL`` of the entity's key
  (views on the session and user entities hold nothing but that session or user).

Stock ``get_online_features`` then finds no row, as for an entity never written (tests check).
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any, Final

from featrec.adapters.errors import translated
from featrec.adapters.feast.layout import values as feast_wire
from featrec.adapters.feast.layout.decode import UndecodableValue, decode_value
from featrec.core.features import catalog
from featrec.errors import ConfigError

if TYPE_CHECKING:
    from feast import FeatureStore

#: Keys per DELETE / DEL command.
CHUNK: Final = 500
#: Keys per Redis SCAN call.
SCAN_COUNT: Final = 1000
_U32: Final = struct.Struct("<I")


class OnlineRows:
    """Row deletion and the session-to-user lookup on ``store``'s online store."""

    def __init__(self, store: FeatureStore) -> None:
        self._store = store
        self.store = store
        self._config = store.config
        self.kind: str = self._config.online_store.type
        if self.kind not in ("sqlite", "redis"):
            raise ConfigError(f"deleting online rows supports sqlite and redis, not {self.kind}")
        self._online: Any = store._get_provider().online_store

    def delete(
        self,
        view: str,
        keys: Collection[str],
        join_key: str | None = None,
        features: Collection[str] | None = None,
    ) -> int:
        """Delete the rows of ``keys`` in ``view``; returns how many entities had one.

        ``join_key``: the view's (default: the catalog's; give it for a declared view). On
        Redis the whole entity hash goes (every view of a session or user); with ``features``
        (the view's feature names) only this view's fields go: for an entity such as an item,
        whose hash other views share."""
        if not keys:
            return 0
        join_key = join_key or catalog.VIEWS[view].entity.join_key
        with translated(f"deleting {view} rows"):
            if self.kind == "sqlite":
                return self._delete_sqlite(view, join_key, sorted(keys))
            if features is not None:
                return self._delete_redis_fields(view, join_key, sorted(keys), features)
            return self._delete_redis(join_key, sorted(keys))

    def sessions_naming(self, user_id: str) -> set[str]:
        """Session ids whose ``session_features`` row names ``user_id``."""
        with translated("scanning session rows"):
            if self.kind == "sqlite":
                return self._sessions_sqlite(user_id)
            return self._sessions_redis(user_id)

    def keys(self, view: str) -> list[str]:
        """Every key with a row in ``view`` (for checks and tests; scans the whole view)."""
        join_key = catalog.VIEWS[view].entity.join_key
        with translated(f"listing {view} rows"):
            if self.kind == "sqlite":
                conn, table = self._sqlite(view)
                found = conn.execute(f'SELECT DISTINCT entity_key FROM "{table}"').fetchall()
                return sorted(_entity_value(join_key, bytes(k), b"") for (k,) in found)
            ts = feast_wire.ts_field(view)
            return sorted(
                _entity_value(join_key, k, self._project)
                for k in self._scan(join_key)
                if self._client.hexists(k, ts)
            )

    # -- SQLite ----------------------------------------------------------------------------

    def _sqlite(self, view: str) -> tuple[Any, str]:
        from feast.errors import FeatureViewNotFoundException
        from feast.infra.online_stores.helpers import compute_table_id

        from featrec.adapters.feast.declared import quiet_stream_views

        try:
            fv: Any = self._store.get_feature_view(view)
        except FeatureViewNotFoundException:  # a declared view is a stream feature view
            with quiet_stream_views():
                fv = self._store.get_stream_feature_view(view)
        return self._online._get_conn(self._config), compute_table_id(self._config.project, fv)

    def _delete_sqlite(self, view: str, join_key: str, keys: list[str]) -> int:
        conn, table = self._sqlite(view)
        deleted = 0
        with conn:
            for start in range(0, len(keys), CHUNK):
                chunk = [
                    feast_wire.encode_entity_key(join_key, k) for k in keys[start : start + CHUNK]
                ]
                marks = ",".join("?" * len(chunk))
                where = f'FROM "{table}" WHERE entity_key IN ({marks})'
                (n,) = conn.execute(f"SELECT count(DISTINCT entity_key) {where}", chunk).fetchone()
                conn.execute(f"DELETE {where}", chunk)
                deleted += int(n)
        return deleted

    def _sessions_sqlite(self, user_id: str) -> set[str]:
        conn, table = self._sqlite(catalog.SESSION_FEATURES.name)
        found = conn.execute(
            f'SELECT entity_key, value FROM "{table}" WHERE feature_name = ?', ("user_id",)
        ).fetchall()
        join_key = catalog.SESSION.join_key
        return {
            _entity_value(join_key, bytes(k), b"")
            for k, value in found
            if _string(value) == user_id
        }

    # -- Redis -----------------------------------------------------------------------------

    @property
    def _client(self) -> Any:
        return self._online._get_client(self._config.online_store)

    @property
    def _project(self) -> bytes:
        return str(self._config.project).encode()

    def _redis_key(self, join_key: str, key: str) -> bytes:
        return feast_wire.encode_entity_key(join_key, key) + self._project

    def _delete_redis(self, join_key: str, keys: list[str]) -> int:
        client = self._client
        deleted = 0
        for start in range(0, len(keys), CHUNK):
            chunk = [self._redis_key(join_key, k) for k in keys[start : start + CHUNK]]
            deleted += int(client.delete(*chunk))
        return deleted

    def _delete_redis_fields(
        self, view: str, join_key: str, keys: list[str], features: Collection[str]
    ) -> int:
        fields = [feast_wire.ts_field(view), *(feast_wire.field_hash(view, f) for f in features)]
        client = self._client
        deleted = 0
        for start in range(0, len(keys), CHUNK):
            with client.pipeline(transaction=False) as pipe:
                for k in keys[start : start + CHUNK]:
                    pipe.hdel(self._redis_key(join_key, k), *fields)
                deleted += sum(1 for n in pipe.execute() if n)
        return deleted

    def _scan(self, join_key: str) -> Iterator[bytes]:
        """Keys of ``join_key``'s entities in this project (SCAN: the whole keyspace)."""
        prefix = feast_wire.entity_key_prefix(join_key)
        for key in self._client.scan_iter(count=SCAN_COUNT):
            if key.startswith(prefix) and key.endswith(self._project):
                yield key

    def _sessions_redis(self, user_id: str) -> set[str]:
        client = self._client
        field = feast_wire.field_hash(catalog.SESSION_FEATURES.name, "user_id")
        join_key = catalog.SESSION.join_key
        keys = list(self._scan(join_key))
        found: set[str] = set()
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            with client.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.hget(key, field)
                values = pipe.execute()
            found.update(
                _entity_value(join_key, key, self._project)
                for key, value in zip(chunk, values, strict=True)
                if value is not None and _string(value) == user_id
            )
        return found


def _entity_value(join_key: str, key: bytes, suffix: bytes) -> str:
    """The id in a serialized one-string entity key (``suffix``: the Redis project name)."""
    prefix = feast_wire.entity_key_prefix(join_key)
    if not key.startswith(prefix):
        raise ConfigError(f"not a {join_key} entity key: {key[:40]!r}")
    (n,) = _U32.unpack_from(key, len(prefix))
    start = len(prefix) + _U32.size
    if len(key) != start + n + len(suffix):
        raise ConfigError(f"unexpected {join_key} entity key layout: {key[:40]!r}")
    return key[start : start + n].decode("utf-8")


def _string(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        decoded = decode_value(bytes(value))
    except UndecodableValue:
        return None
    return decoded if isinstance(decoded, str) else None
