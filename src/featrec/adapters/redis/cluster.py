"""Redis Cluster for featrec's own Redis paths: clients built from settings, and pre-packed
commands sent per node.

**Clients.** ``FEATREC_REDIS_CLUSTER_NODES`` (``host:port,host:port,...``) turns every featrec
Redis client of the online store into redis-py's :class:`~redis.cluster.RedisCluster` (password,
user and TLS options still come from ``FEATREC_REDIS_URL``). redis-py follows ``MOVED``/``ASK``
redirections itself, splits non-transactional pipelines per node, and retries connection and
cluster errors with exponential back-off (:data:`FAILOVER_RETRY`: long enough to ride out a
failover, ~5 s here with a 2 s node timeout).

**Pre-packed commands.** featrec's fast paths (the dataflow writer, the serving row reader) build
the Redis protocol of a whole batch themselves and send it in one write per round trip; redis-py
cannot route bytes. :class:`NodeChannels` does: it maps each command's key to its slot's master
(a table of 16,384 owners rebuilt from the cluster's slot map), sends every node its share in
one write, then reads every node's replies (the nodes work in parallel). Commands are single-key,
so no command spans slots. Replies come back as values (errors included) for the caller to
judge; a reply that is a redirection (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``) marks the
slot map stale and the caller sends that one command again through redis-py
(:meth:`NodeChannels.slow`), which follows the redirection with back-off. A connection error
drops every channel, marks the slot map stale and is raised as redis-py's ``ConnectionError``
(featrec's :class:`~featrec.errors.StoreUnavailable`): the caller's retry finds the new
topology.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import hiredis
import redis
from redis.backoff import EqualJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import SSLConnection, parse_url
from redis.crc import key_slot
from redis.retry import Retry

from featrec.errors import ConfigError
from featrec.settings import redact_url

if TYPE_CHECKING:
    from featrec.settings import Settings

SLOTS: Final = 16384

#: Writers and jobs: retry connection and cluster errors for ~15 s in all (a failover here
#: takes ~5 s: the 2 s node timeout, the election, the new slot map).
FAILOVER_RETRY: Final = Retry(EqualJitterBackoff(cap=2.0, base=0.05), retries=12)

_REDIRECTS: Final = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


def parse_nodes(spec: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` as ``[(host, port), ...]`` (the settings validated the form)."""
    nodes = []
    for node in spec.split(","):
        host, _, port = node.strip().rpartition(":")
        nodes.append((host, int(port)))
    return nodes


def cluster_client(
    nodes: str,
    url: str,
    *,
    socket_timeout: float = 10.0,
    connect_timeout: float = 5.0,
    retry: Retry | None = None,
) -> RedisCluster[bytes]:
    """A :class:`RedisCluster` on the seed ``nodes``, with the credentials and TLS options of
    the redis-py ``url`` (its host is not used; its database must be 0)."""
    options = dict(parse_url(url))
    if urlsplit(url).scheme == "unix":
        raise ConfigError(
            "a Redis Cluster is reached over TCP: FEATREC_REDIS_URL cannot be unix://"
        )
    if int(options.pop("db", 0) or 0) != 0:
        raise ConfigError(
            f"Redis Cluster has only database 0, but FEATREC_REDIS_URL names another: "
            f"{redact_url(url)}"
        )
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    client: RedisCluster[bytes] = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parse_nodes(nodes)],
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=retry if retry is not None else FAILOVER_RETRY,
        **options,
    )
    return client


def online_client(settings: Settings, *, timeout_s: float = 10.0) -> Any:
    """A client of the online store's Redis: a :class:`RedisCluster` when
    ``FEATREC_REDIS_CLUSTER_NODES`` is set, else a plain ``redis.Redis`` on the URL."""
    if settings.redis_cluster_nodes:
        return cluster_client(
            settings.redis_cluster_nodes,
            settings.redis_url,
            socket_timeout=timeout_s,
            connect_timeout=min(timeout_s, 5.0),
        )
    from featrec.adapters.redis.streams import connect

    return connect(settings.redis_url, timeout_s=timeout_s)


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


def unpack_command(packed: bytes) -> list[bytes]:
    """The arguments of one RESP-packed command (hiredis parses a request as an array)."""
    reader = hiredis.Reader()
    reader.feed(packed)
    args = reader.gets()
    if not isinstance(args, list):
        raise ValueError("not one packed command")
    return args


def is_redirect(reply: object) -> bool:
    """A reply that says the command belongs to, or must wait for, another node."""
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(_REDIRECTS)


class _Channel:
    """One connection of our own to one node, read with a hiredis reader."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.reader = hiredis.Reader()

    def send(self, packed: bytes) -> None:
        sock = self.conn._sock
        if sock is None:
            raise redis.exceptions.ConnectionError("connection closed")
        sock.sendall(packed)

    def read(self, n_replies: int) -> list[Any]:
        sock = self.conn._sock
        replies: list[Any] = []
        gets = self.reader.gets
        while len(replies) < n_replies:
            reply = gets()
            if reply is False:
                data = sock.recv(1 << 17)
                if not data:
                    raise redis.exceptions.ConnectionError("Redis closed the connection")
                self.reader.feed(data)
                continue
            replies.append(reply)
        return replies


class NodeChannels:
    """Pre-packed single-key commands sent per master of a Redis Cluster (module docstring).

    ``on_connect(node, call)`` runs on every new channel (``call(packed, n)`` is one round trip
    on it): the dataflow writer loads its script there, as the script cache is per node.
    """

    def __init__(
        self,
        client: RedisCluster[bytes],
        on_connect: Callable[[str, Callable[[bytes, int], list[Any]]], None] | None = None,
    ) -> None:
        self.client: Any = client
        self._on_connect = on_connect
        self._channels: dict[str, _Channel] = {}
        self._owners: list[str] = []
        self.stale = True

    def refresh(self) -> None:
        """Rebuild the slot -> master table from the cluster's current slot map."""
        try:
            self.client.nodes_manager.initialize()
        except redis.exceptions.RedisClusterException as e:  # e.g. slots not covered yet
            raise redis.exceptions.ConnectionError(f"Redis Cluster slot map: {e}") from e
        cache = self.client.nodes_manager.slots_cache
        owners = [""] * SLOTS
        for slot, nodes in cache.items():
            owners[slot] = nodes[0].name
        if "" in owners:
            raise redis.exceptions.ConnectionError("Redis Cluster has slots without a master")
        self._owners = owners
        self.stale = False

    def split(self, keys: Iterable[bytes]) -> dict[str, list[int]]:
        """Indices of ``keys`` per master node name (the order of each node's share kept)."""
        if self.stale:
            self.refresh()
        owners = self._owners
        by_node: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            by_node.setdefault(owners[key_slot(key)], []).append(i)
        return by_node

    def _channel(self, node: str) -> _Channel:
        channel = self._channels.get(node)
        if channel is None:
            cluster_node = self.client.get_node(node_name=node)
            if cluster_node is None:
                raise redis.exceptions.ConnectionError(f"Redis Cluster node {node} is gone")
            pool = self.client.get_redis_connection(cluster_node).connection_pool
            conn = pool.make_connection()
            channel = _Channel(conn)
            try:
                conn.connect()
                if self._on_connect is not None:
                    self._on_connect(node, lambda packed, n: self._trip(channel, packed, n))
            except BaseException:
                conn.disconnect()
                raise
            self._channels[node] = channel
        return channel

    @staticmethod
    def _trip(channel: _Channel, packed: bytes, n_replies: int) -> list[Any]:
        channel.send(packed)
        return channel.read(n_replies)

    def exchange(self, payloads: Mapping[str, tuple[bytes, int]]) -> dict[str, list[Any]]:
        """Send every node its ``(packed, n_replies)``, then read every node's replies."""
        try:
            channels = {node: self._channel(node) for node in payloads}
            for node, (packed, _) in payloads.items():
                channels[node].send(packed)
            return {node: channels[node].read(n) for node, (_, n) in payloads.items()}
        except BaseException as exc:
            # Replies may be half read and the topology may have changed: start over.
            self.close()
            self.stale = True
            if isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError):
                raise redis.exceptions.ConnectionError(f"socket error: {exc}") from exc
            raise

    def call(self, node: str, packed: bytes, n_replies: int) -> list[Any]:
        return self.exchange({node: (packed, n_replies)})[node]

    def slow(
        self, packed: bytes, rewrite: Callable[[list[bytes]], list[bytes]] | None = None
    ) -> Any:
        """One packed command through redis-py, which follows redirections with back-off
        (``rewrite`` may change its arguments first, e.g. ``EVALSHA`` into ``EVAL``)."""
        self.stale = True
        args = unpack_command(packed)
        if rewrite is not None:
            args = rewrite(args)
        # redis-py routes by the command's name, which it wants as str
        return self.client.execute_command(args[0].decode(), *args[1:])

    def close(self) -> None:
        for channel in self._channels.values():
            channel.conn.disconnect()
        self._channels.clear()
