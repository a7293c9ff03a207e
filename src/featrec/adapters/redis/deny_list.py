"""The deny-list of forgotten users on Redis, and the set of stores a deployment keeps it in.

:class:`RedisDenyStore`: a set ``featrec:forgotten`` with its salt in ``featrec:forgotten:salt``
and a counter ``featrec:forgotten:version`` bumped by every addition, so dataflow workers on
other machines see a forget without reading the whole set again. The file store and the
watcher are in :mod:`featrec.adapters.files.deny_list`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import redis
from redis.cluster import RedisCluster

from featrec.adapters.errors import translated
from featrec.adapters.files.deny_list import DenyStore, FileDenyStore, deny_file
from featrec.adapters.redis.cluster import online_client
from featrec.core.privacy import DenyList, new_salt
from featrec.settings import Settings

REDIS_KEY: Final = "featrec:forgotten"
#: On a Redis Cluster: the same key with a hash tag, so the set, its salt and its version share
#: one slot and are updated in one transaction.
CLUSTER_KEY: Final = "{featrec:forgotten}"


class RedisDenyStore:
    """The deny-list as a Redis set (see the module doc)."""

    def __init__(
        self, client: redis.Redis[bytes] | RedisCluster[bytes], key: str = REDIS_KEY
    ) -> None:
        self._client: Any = client
        self.key = key

    def load(self) -> DenyList | None:
        with translated(f"reading the deny-list {self.key!r}"):
            salt = self._client.get(f"{self.key}:salt")
            if salt is None:
                return None
            members = self._client.smembers(self.key)
        return DenyList(salt.decode("ascii"), frozenset(m.decode("ascii") for m in members))

    def add(self, user_id: str, session_ids: Iterable[str]) -> DenyList:
        with translated(f"adding to the deny-list {self.key!r}"):
            self._client.set(f"{self.key}:salt", new_salt(), nx=True)
            salt = self._client.get(f"{self.key}:salt").decode("ascii")
            added = DenyList(salt).add(user_id, session_ids)
            pipe = self._client.pipeline(transaction=True)
            pipe.sadd(self.key, *sorted(added.digests))
            pipe.incr(f"{self.key}:version")
            pipe.execute()
        loaded = self.load()
        assert loaded is not None
        return loaded

    def version(self) -> object:
        with translated(f"reading the deny-list version {self.key!r}"):
            return self._client.get(f"{self.key}:version")


def stores_for(settings: Settings, *, redis_client: Any = None) -> list[DenyStore]:
    """The stores ``settings`` use: the file next to the event log, and the Redis set when
    the online store is Redis."""
    stores: list[DenyStore] = [FileDenyStore(deny_file(settings.event_log_dir))]
    if settings.online_store == "redis":
        client = redis_client if redis_client is not None else online_client(settings)
        key = CLUSTER_KEY if settings.redis_cluster_nodes else REDIS_KEY
        stores.append(RedisDenyStore(client, key))
    return stores
