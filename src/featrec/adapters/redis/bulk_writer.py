"""Bulk writes of Arrow tables in Feast's Redis layout: the fast materialization path.

A row is written only if its event timestamp is newer than the stored ``_ts:<view>`` (Feast's
own rule and that of the featrec writers). Per chunk of rows:

1. **read**: one script call returns every row's stored ``_ts:<view>`` as one array reply;
2. **write**: the newer rows' ``HSET`` (and ``EXPIRE``) commands, their Redis protocol built by
   Arrow kernels (:mod:`featrec.adapters.feast.layout.arrow`), sent in one write between
   ``CLIENT REPLY OFF`` and ``ON``: Redis sends no per-row reply for Python to parse;
3. **verify**: the same read again; every written row must now hold its timestamp (or a newer
   one from a concurrent writer), so a write that failed silently is an error, not a loss.

Python never touches a row or a value one at a time. A background thread writes and verifies
one chunk while the next is read and encoded (Redis and Python then use a core each). As in
Feast's own Redis store, a concurrent writer could slip in between a row's read and its write;
materialization is the only writer of the batch views.

Needs ``CLIENT REPLY`` (Redis >= 3.2) on a single Redis server or, with
:class:`ClusterBulkWriter`, on every master of a Redis Cluster (not Sentinel).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

import hiredis
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis

from featrec.adapters.errors import translated
from featrec.adapters.feast.bulk_rows import EVENT_TIMESTAMP, checked_newest_rows
from featrec.adapters.feast.layout import arrow as feast_wire_arrow
from featrec.adapters.feast.layout import values as feast_wire
from featrec.adapters.redis.cluster import NodeChannels, is_cluster, is_redirect
from featrec.core.features.catalog import View
from featrec.errors import ConfigError, StoreError

#: Rows read, encoded and written per round trip.
CHUNK_ROWS: Final = 20_000
#: Redis Cluster: writes of one chunk, at most, until every row is verified.
CLUSTER_ATTEMPTS: Final = 3

# KEYS: entity hashes; ARGV[1]: a field. The field of every key (false: none), one reply.
_READ_FIELD: Final = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HGET', KEYS[i], ARGV[1])
end
return out
"""

_REPLY_OFF: Final = feast_wire_arrow.resp_commands([b"CLIENT", b"REPLY", b"OFF"], 1)
_REPLY_ON: Final = feast_wire_arrow.resp_commands([b"CLIENT", b"REPLY", b"ON"], 1)

Micros = np.ndarray[Any, np.dtype[np.int64]]


class RedisBulkWriter:
    """Writes tables of ``(join key, features..., event_timestamp)`` for one view at a time."""

    def __init__(
        self, client: redis.Redis[bytes], project: str, *, key_ttl_seconds: int | None = None
    ) -> None:
        if not isinstance(client, redis.Redis):
            raise ConfigError(
                "the fast materialization path needs a single Redis server (not Redis Cluster)"
            )
        self._client: Any = client
        self._project = project.encode()
        self._ttl = key_ttl_seconds or 0
        self._sha: bytes | None = None

    def write_table(self, view: View, table: pa.Table, chunk_rows: int = CHUNK_ROWS) -> int:
        """Write the newest row per key of ``table`` if it is newer than the stored one;
        returns how many rows were written."""
        table = checked_newest_rows(view, table)
        written = 0
        pending: list[Future[None]] = []
        with (
            translated(f"writing {view.name} to Redis"),
            ThreadPoolExecutor(max_workers=1) as writer,
            _Connection(self._client) as reads,
            _Connection(self._client) as writes,
        ):
            try:
                for start in range(0, table.num_rows, chunk_rows):
                    chunk = table.slice(start, chunk_rows)
                    keys = feast_wire_arrow.entity_keys(
                        view.entity.join_key, chunk.column(view.entity.join_key), self._project
                    )
                    micros = _micros(chunk)
                    newer = micros * 1000 > self._stored_ns(reads, view, keys)
                    n = int(newer.sum())
                    if n == 0:
                        continue
                    if n < chunk.num_rows:
                        mask = pa.array(newer)
                        chunk, keys, micros = chunk.filter(mask), keys.filter(mask), micros[newer]
                    payload = self._hsets(view, chunk, keys, micros)
                    # One chunk in flight: it is written and verified while this one encodes.
                    while pending:
                        pending.pop().result()
                    pending.append(writer.submit(self._write, writes, view, payload, keys, micros))
                    written += n
            finally:
                for future in pending:
                    future.result()
        return written

    def _script(self, conn: _Connection) -> bytes:
        if self._sha is None:
            load = [b"SCRIPT", b"LOAD", _READ_FIELD.encode()]
            self._sha = bytes(conn.call(feast_wire_arrow.resp_commands(load, 1)))
        return self._sha

    def _stored_ns(self, conn: _Connection, view: View, keys: pa.Array) -> Micros:
        """Per key: the stored ``_ts:<view>`` in ns, -1 where there is none."""

        def read(sha: bytes) -> Any:
            head = b"*%d\r\n" % (4 + len(keys)) + b"".join(
                feast_wire_arrow.bulk(a) for a in (b"EVALSHA", sha, b"%d" % len(keys))
            )
            tail = feast_wire_arrow.bulk(feast_wire.ts_field(view.name))
            return conn.call(head + feast_wire_arrow.resp_bulks([keys], len(keys)) + tail)

        try:
            replies = read(self._script(conn))
        except redis.exceptions.NoScriptError:  # the server lost its script cache
            self._sha = None
            replies = read(self._script(conn))
        decoded: dict[bytes, int] = {}
        stored = np.full(len(keys), -1, dtype=np.int64)
        for i, reply in enumerate(replies):
            if reply is not None:
                ns = decoded.get(reply)
                if ns is None:
                    ns = decoded[reply] = feast_wire.decode_timestamp_ns(reply)
                stored[i] = ns
        return stored

    def _hsets(self, view: View, chunk: pa.Table, keys: pa.Array, micros: Micros) -> bytes:
        args: list[feast_wire_arrow.Arg] = [
            b"HSET",
            keys,
            feast_wire.ts_field(view.name),
            feast_wire_arrow.timestamps(micros),
        ]
        for feature in view.features:
            args.append(feast_wire.field_hash(view.name, feature.name))
            args.append(feast_wire_arrow.encode_column(feature.dtype, chunk.column(feature.name)))
        payload = feast_wire_arrow.resp_commands(args, chunk.num_rows)
        if self._ttl:
            ttl = b"%d" % self._ttl
            payload += feast_wire_arrow.resp_commands([b"EXPIRE", keys, ttl], chunk.num_rows)
        return payload

    def _write(
        self, conn: _Connection, view: View, payload: bytes, keys: pa.Array, micros: Micros
    ) -> None:
        try:
            reply = conn.call(_REPLY_OFF + payload + _REPLY_ON)
        except redis.exceptions.ResponseError as e:
            reply = e
        if reply != b"OK":
            conn.disconnect()  # replies of the rows may follow: this connection is spent
            raise StoreError(
                f"CLIENT REPLY is not available on this Redis server ({reply!r}): "
                "run without --fast"
            )
        missed = int((self._stored_ns(conn, view, keys) < micros * 1000).sum())
        if missed:
            raise StoreError(f"{missed} of {len(keys)} {view.name} rows were not written")


def _micros(table: pa.Table) -> Micros:
    ts = pc.cast(table.column(EVENT_TIMESTAMP), pa.timestamp("us", tz="UTC"))
    out: Micros = pc.cast(ts, pa.int64()).to_numpy()
    return out


class _Connection:
    """One pooled connection for raw commands whose protocol is built by the caller."""

    def __init__(self, client: Any) -> None:
        self._pool = client.connection_pool
        self._conn: Any = None

    def __enter__(self) -> _Connection:
        self._conn = self._pool.get_connection()
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.release(self._conn)

    def disconnect(self) -> None:
        self._conn.disconnect()

    def call(self, payload: bytes) -> Any:
        """Send ``payload`` and read exactly one reply (an error reply is raised)."""
        try:
            self._conn.send_packed_command([payload])
            return self._conn.read_response()
        except redis.exceptions.ResponseError:
            raise
        except BaseException:
            # A reply left unread would answer the next command on this connection.
            self._conn.disconnect()
            raise


def check_single_server(online_store_config: Any) -> None:
    """Refuse Sentinel configurations (the fast path writes to a server or a cluster)."""
    kind = getattr(online_store_config, "redis_type", "redis")
    if str(getattr(kind, "value", kind)) not in ("redis", "redis_cluster"):
        raise StoreError(
            f"the fast materialization path supports a single Redis server or a Redis "
            f"Cluster, not {kind}: run without --fast"
        )


class ClusterBulkWriter(RedisBulkWriter):
    """:class:`RedisBulkWriter` on a Redis Cluster: every chunk is split per master.

    Per chunk: the stored ``_ts:<view>`` of every key is read with pipelined ``HGET`` per
    master (a script cannot read keys of several slots); each master then gets its rows'
    ``HSET`` commands (built by the same Arrow kernels) between ``CLIENT REPLY OFF`` and
    ``ON`` in one write, all masters in parallel; and the same read verifies them. Rows a
    verification finds missing (a slot moved or a master failed over while replies were off,
    so its ``MOVED`` was never seen) are written again on a fresh slot map, up to
    :data:`CLUSTER_ATTEMPTS` times; still missing is an error, never a silent loss.
    """

    def __init__(self, client: Any, project: str, *, key_ttl_seconds: int | None = None) -> None:
        if not is_cluster(client):
            raise ConfigError("ClusterBulkWriter needs a Redis Cluster client")
        self._client = client
        self._project = project.encode()
        self._ttl = key_ttl_seconds or 0
        self._sha = None
        self._channels = NodeChannels(client)

    def write_table(self, view: View, table: pa.Table, chunk_rows: int = CHUNK_ROWS) -> int:
        table = checked_newest_rows(view, table)
        written = 0
        with translated(f"writing {view.name} to Redis Cluster"):
            try:
                for start in range(0, table.num_rows, chunk_rows):
                    written += self._write_chunk(view, table.slice(start, chunk_rows))
            finally:
                self._channels.close()
        return written

    def _write_chunk(self, view: View, chunk: pa.Table) -> int:
        keys = feast_wire_arrow.entity_keys(
            view.entity.join_key, chunk.column(view.entity.join_key), self._project
        )
        micros = _micros(chunk)
        newer = micros * 1000 > self._stored_ns_per_node(view, keys)
        n = int(newer.sum())
        if n == 0:
            return 0
        mask = pa.array(newer)
        chunk, keys, micros = chunk.filter(mask), keys.filter(mask), micros[newer]
        for _ in range(CLUSTER_ATTEMPTS):
            by_node = self._channels.split(keys.to_pylist())
            payloads = {}
            for node, idx in by_node.items():
                take = pa.array(idx, pa.int64())
                payload = self._hsets(view, chunk.take(take), keys.take(take), micros[idx])
                payloads[node] = (_REPLY_OFF + payload + _REPLY_ON, 1)
            for node, [reply] in self._channels.exchange(payloads).items():
                if reply != b"OK":
                    raise StoreError(
                        f"CLIENT REPLY is not available on {node} ({reply!r}): run without --fast"
                    )
            missing = self._stored_ns_per_node(view, keys) < micros * 1000
            if not missing.any():
                return n
            # replies were off: a redirection went unseen. Write those rows again.
            self._channels.stale = True
            keep = pa.array(missing)
            chunk, keys, micros = chunk.filter(keep), keys.filter(keep), micros[missing]
        raise StoreError(f"{len(keys)} {view.name} rows were not written to the Redis Cluster")

    def _stored_ns_per_node(self, view: View, keys: pa.Array) -> Micros:
        """Per key: the stored ``_ts:<view>`` in ns, -1 where there is none."""
        field = feast_wire.ts_field(view.name)
        channels = self._channels
        by_node = channels.split(keys.to_pylist())
        payloads = {}
        for node, idx in by_node.items():
            sub = keys.take(pa.array(idx, pa.int64()))
            payloads[node] = (
                feast_wire_arrow.resp_commands([b"HGET", sub, field], len(idx)),
                len(idx),
            )
        got = channels.exchange(payloads)
        stored = np.full(len(keys), -1, dtype=np.int64)
        decoded: dict[bytes, int] = {}
        for node, idx in by_node.items():
            for i, reply in zip(idx, got[node], strict=True):
                value = reply
                if is_redirect(reply):
                    value = channels.client.hget(keys[i].as_py(), field)
                elif isinstance(reply, hiredis.ReplyError):
                    raise redis.exceptions.ResponseError(str(reply))
                if value is not None:
                    ns = decoded.get(value)
                    if ns is None:
                        ns = decoded[value] = feast_wire.decode_timestamp_ns(value)
                    stored[i] = ns
        return stored


def bulk_writer_for(client: Any, project: str, *, key_ttl_seconds: int | None) -> RedisBulkWriter:
    """The bulk writer for Feast's Redis client: a single server's or a cluster's."""
    if is_cluster(client):
        return ClusterBulkWriter(client, project, key_ttl_seconds=key_ttl_seconds)
    return RedisBulkWriter(client, project, key_ttl_seconds=key_ttl_seconds)
