"""Reads Feast's Redis layout directly: the serving path's fast :class:`RowReader`.

One round trip per call: the ``HMGET`` commands, one per entity (views on the same entity
share Feast's hash, so ``item_features`` and ``item_trending`` of an item come back together),
are packed from byte strings prepared once per view and sent together. Values are decoded by
:mod:`featrec.adapters.feast.layout.decode`; a row exists when its ``_ts:<view>`` field does
(Feast writes it with every row). Stock ``get_online_features`` reads the same values (the
tests compare them).
"""

from __future__ import annotations

import hashlib
import marshal
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from featrec.adapters.errors import translated
from featrec.adapters.feast.layout import values as feast_wire
from featrec.adapters.feast.layout.decode import decode_column
from featrec.adapters.feast.repo import redis_layout_options
from featrec.adapters.redis.cluster import NodeChannels, cluster_client, is_redirect
from featrec.core.features import catalog
from featrec.core.features.catalog import View
from featrec.core.ports.serving import Found, StampedRow, Wanted
from featrec.errors import ConfigError
from featrec.settings import Settings

_HMGET = b"$5\r\nHMGET\r\n"


def _bulk(data: bytes) -> bytes:
    """``data`` as a RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


#: Serving fails fast: a request waits at most this long for Redis before falling back.
SOCKET_TIMEOUT_S = 0.25
CONNECT_TIMEOUT_S = 0.1


class _ViewReadPlan:
    """Fields to ask for and how to decode them, for one view (computed once)."""

    def __init__(self, view: View, project: bytes, names: Sequence[str] | None = None) -> None:
        self.name = view.name
        self.prefix = feast_wire.entity_key_prefix(view.entity.join_key)
        self.project = project
        self.names = tuple(names) if names is not None else view.feature_names
        self.fields = [
            feast_wire.ts_field(view.name),
            *(feast_wire.field_hash(view.name, name) for name in self.names),
        ]
        self.dtypes = [view.feature(name).dtype for name in self.names]
        #: The fields as RESP bulk strings, ready to follow a key in an HMGET.
        self.packed_fields = b"".join(_bulk(f) for f in self.fields)

    def redis_key(self, key: str) -> bytes:
        return feast_wire.encode_entity_key_after(self.prefix, key) + self.project

    def decode(
        self,
        replies: Sequence[Sequence[bytes | None]],
        known: Sequence[StampedRow | None] | None = None,
    ) -> list[StampedRow | None]:
        """Rows from ``HMGET`` replies (``fields`` order), decoded a column at a time, each
        with the fingerprint of its bytes. A reply with the fingerprint of its ``known`` row
        (aligned with ``replies``) is that row, not decoded again."""
        out: list[StampedRow | None] = [None] * len(replies)
        places: list[int] = []
        present: list[Sequence[bytes | None]] = []
        prints: list[bytes] = []
        for i, reply in enumerate(replies):
            if reply[0] is None:
                continue
            fingerprint = row_fingerprint(reply)
            was = None if known is None else known[i]
            if was is not None and was.fingerprint == fingerprint:
                out[i] = was
                continue
            places.append(i)
            present.append(reply)
            prints.append(fingerprint)
        if not present:
            return out
        columns = [
            decode_column(dtype, [reply[j] for reply in present])
            for j, dtype in enumerate(self.dtypes, start=1)
        ]
        stamps: dict[bytes, int] = {}
        rows = iter(zip(*columns, strict=True)) if columns else iter([()] * len(present))
        names = self.names
        for i, reply, fingerprint in zip(places, present, prints, strict=True):
            ts = reply[0]
            assert ts is not None
            us = stamps.get(ts)
            if us is None:
                us = stamps[ts] = feast_wire.decode_timestamp_ns(ts) // 1000
            out[i] = StampedRow(dict(zip(names, next(rows), strict=True)), us, fingerprint)
        return out


def row_fingerprint(reply: Sequence[bytes | None]) -> bytes:
    """A 128-bit digest of a row's stored fields (``HMGET`` reply, in the plan's order):
    equal for the same bytes; two different replies share one with probability 2^-128.
    marshal's version 2 encodes the list without back-references, so equal replies encode
    alike."""
    return hashlib.blake2b(marshal.dumps(tuple(reply), 2), digest_size=16).digest()


class RedisRowReader:
    """:class:`featrec.core.ports.serving.RowReader` over Feast's Redis layout.

    ``features`` names, per view, the features to read (default: all); rows then hold only
    those.
    """

    def __init__(
        self,
        client: redis.Redis[bytes],
        project: str,
        *,
        views: Mapping[str, View] = catalog.VIEWS,
        features: Mapping[str, Sequence[str]] | None = None,
        owns_client: bool = False,
    ) -> None:
        # redis-py's stubs leave pipeline commands untyped.
        self._client: Any = client
        self._owns_client = owns_client
        project_bytes = project.encode()
        chosen = features or {}
        self._plans = {
            name: _ViewReadPlan(view, project_bytes, chosen.get(name))
            for name, view in views.items()
        }

    def read_rows(self, wanted: Wanted) -> Found:
        return self._read(wanted, None)

    def reread_rows(self, wanted: Wanted, known: Found) -> Found:
        """:class:`~featrec.core.ports.serving.RereadingRowReader`: a row whose stored bytes
        have the fingerprint of its ``known`` row is that object (fetched, not decoded)."""
        return self._read(wanted, known)

    def _read(self, wanted: Wanted, known: Found | None) -> Found:
        groups: dict[bytes, list[tuple[_ViewReadPlan, int]]] = {}
        out: Found = {}
        for view, keys in wanted.items():
            plan = self._plans.get(view)
            if plan is None:
                raise ConfigError(f"unknown view {view!r} (known: {', '.join(self._plans)})")
            out[view] = [None] * len(keys)
            for j, key in enumerate(keys):
                groups.setdefault(plan.redis_key(key), []).append((plan, j))
        if not groups:
            return out
        commands = []
        for redis_key, members in groups.items():
            n_fields = sum(len(plan.fields) for plan, _ in members)
            commands.append(
                b"*%d\r\n%s%s%s"
                % (
                    2 + n_fields,
                    _HMGET,
                    _bulk(redis_key),
                    b"".join([plan.packed_fields for plan, _ in members]),
                )
            )
        with translated("reading Feast's Redis layout"):
            replies = self._fetch(commands, list(groups))
        # per view: the part of each reply that is its fields, and where the row goes
        parts: dict[str, tuple[_ViewReadPlan, list[int], list[Sequence[bytes | None]]]] = {}
        for members, reply in zip(groups.values(), replies, strict=True):
            start = 0
            for plan, j in members:
                end = start + len(plan.fields)
                _, places, chunks = parts.setdefault(plan.name, (plan, [], []))
                places.append(j)
                chunks.append(reply[start:end] if start or end != len(reply) else reply)
                start = end
        for name, (plan, places, chunks) in parts.items():
            found = out[name]
            was = None if known is None else known.get(name)
            before = None if was is None else [was[j] for j in places]
            for j, row in zip(places, plan.decode(chunks, before), strict=True):
                found[j] = row
        return out

    def _fetch(self, commands: list[bytes], keys: list[bytes]) -> list[Any]:
        """The replies of the packed ``HMGET`` commands (one per key), in order."""
        return self._round_trip(b"".join(commands), len(commands))

    def _round_trip(self, packed: bytes, n_replies: int) -> list[Any]:
        """Send pre-packed commands on one pooled connection and read their replies.

        What a redis-py pipeline does, without building and packing a command object per
        key (the commands are packed above from per-view byte strings computed once). A
        connection that fails is dropped; the read is tried once more on a fresh one (a
        pooled connection dies with a server restart).
        """
        pool = self._client.connection_pool
        for attempt in (1, 2):
            connection = pool.get_connection()
            try:
                connection.send_packed_command([packed])
                return [connection.read_response() for _ in range(n_replies)]
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                connection.disconnect()
                if attempt == 2:
                    raise
            except BaseException:
                connection.disconnect()  # replies may be left unread on it
                raise
            finally:
                pool.release(connection)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


class ClusterRowReader(RedisRowReader):
    """:class:`RedisRowReader` on a Redis Cluster: the ``HMGET`` commands are sent per master
    in one write each and read back in parallel (:class:`~featrec.adapters.redis.cluster.
    NodeChannels`). A redirected command is read again through redis-py; a connection error
    is tried once more on a fresh slot map (serving fails fast, then falls back)."""

    def __init__(
        self,
        client: RedisCluster[bytes],
        project: str,
        *,
        views: Mapping[str, View] = catalog.VIEWS,
        features: Mapping[str, Sequence[str]] | None = None,
        owns_client: bool = False,
    ) -> None:
        super().__init__(
            client,  # type: ignore[arg-type]  # the base only keeps it and closes it
            project,
            views=views,
            features=features,
            owns_client=owns_client,
        )
        self._channels = NodeChannels(client)
        self._lock = threading.Lock()

    def _fetch(self, commands: list[bytes], keys: list[bytes]) -> list[Any]:
        # One set of channels, used by one request at a time (serving threads share it).
        with self._lock:
            for attempt in (1, 2):
                try:
                    return self._fetch_per_node(commands, keys)
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def _fetch_per_node(self, commands: list[bytes], keys: list[bytes]) -> list[Any]:
        channels = self._channels
        by_node = channels.split(keys)
        got = channels.exchange(
            {
                node: (b"".join([commands[i] for i in idx]), len(idx))
                for node, idx in by_node.items()
            }
        )
        replies: list[Any] = [None] * len(commands)
        for node, idx in by_node.items():
            for i, reply in zip(idx, got[node], strict=True):
                if is_redirect(reply):
                    replies[i] = channels.slow(commands[i])
                elif isinstance(reply, hiredis.ReplyError):
                    raise redis.exceptions.ResponseError(str(reply))
                else:
                    replies[i] = reply
        return replies

    def close(self) -> None:
        self._channels.close()
        super().close()


def serving_client(url: str) -> redis.Redis[bytes]:
    """A redis-py client that fails fast (short timeouts, one immediate retry that covers a
    pooled connection broken by a server restart) instead of redis-py's default backoff of
    seconds."""
    client: redis.Redis[bytes] = redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 1),
    )
    return client


def serving_cluster_client(settings: Settings) -> RedisCluster[bytes]:
    """:func:`serving_client`'s short timeouts and one immediate retry, on the Redis Cluster of
    ``FEATREC_REDIS_CLUSTER_NODES``."""
    assert settings.redis_cluster_nodes
    return cluster_client(
        settings.redis_cluster_nodes,
        settings.redis_url,
        socket_timeout=SOCKET_TIMEOUT_S,
        connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 1),
    )


def serving_online_client(settings: Settings) -> Any:
    """The serving client of the online store: the cluster's, or :func:`serving_client`."""
    if settings.redis_cluster_nodes:
        return serving_cluster_client(settings)
    return serving_client(settings.redis_url)


def open_redis_row_reader(
    settings: Settings,
    features: Mapping[str, Sequence[str]] | None = None,
    views: Mapping[str, View] = catalog.VIEWS,
) -> RedisRowReader:
    """The fast reader on the online store's Redis (a single server or a Redis Cluster), for
    the project in the repo's Redis yaml."""
    project, _ = redis_layout_options(settings)
    if settings.redis_cluster_nodes:
        return ClusterRowReader(
            serving_cluster_client(settings),
            project,
            views=views,
            features=features,
            owns_client=True,
        )
    return RedisRowReader(
        serving_client(settings.redis_url),
        project,
        views=views,
        features=features,
        owns_client=True,
    )
