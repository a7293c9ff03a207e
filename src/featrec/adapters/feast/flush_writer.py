"""The dataflows' Redis writer: Feast's layout, one pipelined round trip per flush.

:class:`FlushWriter` is a :class:`~featrec.adapters.feast.writers.RedisLayoutWriter` (same
bytes, same contract) built for a flow's sink, where every flush is a call:

- **One round trip.** Every command of a call is packed by hiredis into one buffer, sent
  with one ``sendall`` on a connection of its own (not the pool's: nothing else interleaves),
  and the replies are read back in order. The read-then-write guard of
  ``RedisLayoutWriter(guard="read")`` needs two.
- **The version guard without a read.** A row of an entity this writer has not written yet
  is sent as the atomic compare-and-set script (``EVALSHA``: written only if newer than the
  stored ``_ts:<view>``), so a replay after a restart cannot overwrite a newer row. With
  ``remember=True`` (a flow that is the only writer of its entities, as the sessions flow is
  of its sessions) the writer then keeps the version it wrote, checks later rows against it
  in memory and sends them as plain ``HSET``: the cheapest command for Redis and for Python.
  What it remembers is bounded (``max_known`` entities, then forgotten at once: the script
  takes over again) and dropped after any connection error (the server may have restarted).

Redis and connection errors are translated as the other writers' are (``StoreUnavailable``
for an unreachable server, so the flow's sink retries the call; a retried call is safe: every
row is guarded).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Final

import hiredis
import redis

from featrec.adapters.errors import translated
from featrec.adapters.feast.layout import resp
from featrec.adapters.feast.layout.values import InvalidFeatureRow, encode_timestamp, view_of
from featrec.adapters.feast.writers import _CAS_SCRIPT, RedisLayoutWriter, Views
from featrec.core.features import catalog
from featrec.core.features.rows import FeatureRow

__all__ = ["FlushWriter"]

#: Entities whose written version is kept in memory, at most (then all are forgotten).
MAX_KNOWN: Final = 1_000_000

# hiredis's stubs type the argument as a 1-tuple; it takes any tuple of str/bytes/numbers.
_pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command


class FlushWriter(RedisLayoutWriter):
    """Feast's Redis layout in one pipelined round trip per call (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        project: str,
        *,
        key_ttl_seconds: int | None = None,
        views: Views = catalog.VIEWS,
        remember: bool = False,
        max_known: int = MAX_KNOWN,
        owns_client: bool = False,
    ) -> None:
        super().__init__(
            client, project, key_ttl_seconds=key_ttl_seconds, views=views, guard="lua",
            owns_client=owns_client,
        )  # fmt: skip
        self._remember = remember
        self._max_known = max_known
        #: view -> redis key -> version (µs) this writer wrote last.
        self._known: dict[str, dict[bytes, int]] = {name: {} for name in self._plans}
        self._n_known = 0
        self._packers = {name: resp.fields_packer(view) for name, view in self._views.items()}
        self._n_fields = {name: len(view.features) for name, view in self._views.items()}
        self._conn: Any = None
        self._reader = hiredis.Reader()
        #: The script's SHA1 is what SCRIPT LOAD answers, on every server and node.
        self._sha = hashlib.sha1(_CAS_SCRIPT.encode(), usedforsecurity=False).hexdigest().encode()

    def write(self, rows: Sequence[FeatureRow]) -> int:
        if not rows:
            return 0
        with translated("writing Feast's Redis layout"):
            return self._write(rows)

    def _write(self, rows: Sequence[FeatureRow]) -> int:
        ttl = self._ttl
        remember = self._remember
        parts: list[bytes] = []
        #: Per command: its key (a cluster routes by it).
        keys: list[bytes] = []
        #: Per command: (view, key, version) for a script call, None for HSET and EXPIRE.
        scripted: list[tuple[str, bytes, int] | None] = []
        # Versions written by this call, seen by its later rows (rows apply in order).
        written: dict[tuple[str, bytes], int] = {}
        blind = 0
        for row in rows:
            view = row.view
            key, fields = self._encoded(row)
            plan = self._plans[view]
            n_fields = self._n_fields[view]
            version = row.version
            ts = encode_timestamp(version)
            known = written.get((view, key)) if written else None
            if known is None and remember:
                known = self._known[view].get(key)
            if known is not None:
                if version <= known:
                    continue
                parts.append(resp.hset(key, plan.ts_field, ts, fields, n_fields))
                keys.append(key)
                scripted.append(None)
                blind += 1
                if ttl:
                    parts.append(_pack(("EXPIRE", key, ttl)))
                    keys.append(key)
                    scripted.append(None)
                if remember:
                    written[(view, key)] = version
            else:
                seconds, micros = divmod(version, 1_000_000)
                head = (plan.ts_field, seconds, micros * 1000, ttl)
                parts.append(
                    resp.evalsha(self._sha, key, head, plan.ts_field, ts, fields, n_fields)
                )
                keys.append(key)
                scripted.append((view, key, version))
        if not parts:
            return 0
        replies = self._send(parts, keys)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise redis.exceptions.ResponseError(str(reply))
        accepted = blind
        for what, reply in zip(scripted, replies, strict=True):
            if what is not None and reply == 1:
                accepted += 1
                if remember:
                    view, key, version = what
                    if version > written.get((view, key), 0):
                        written[(view, key)] = version
        if remember and written:
            self._remember_written(written)
        return accepted

    def _send(self, parts: list[bytes], keys: list[bytes]) -> list[Any]:
        """Every command in one round trip; their replies in order, errors as values."""
        conn = self._connection()
        replies = self._round_trip(conn, b"".join(parts), len(parts))
        no_script = [i for i, r in enumerate(replies) if _is_noscript(r)]
        if no_script:
            # The server lost its script cache (restart, SCRIPT FLUSH): load it again and
            # send the script calls once more (guarded, so repeating them is safe).
            self._load_script(conn)
            again = [parts[i] for i in no_script]
            retried = self._round_trip(conn, b"".join(again), len(again))
            for i, reply in zip(no_script, retried, strict=True):
                replies[i] = reply
        return replies

    def _encoded(self, row: FeatureRow) -> tuple[bytes, bytes]:
        """The row's Redis key and the RESP of its field/value pairs (row checked first)."""
        view_of(row, self._views)
        plan = self._plans[row.view]
        try:
            fields = self._packers[row.view](row.values)
        except InvalidFeatureRow:
            plan.encode(row)  # raises the same error, naming the feature
            raise
        return plan.redis_key(row.key), fields

    def _remember_written(self, written: dict[tuple[str, bytes], int]) -> None:
        if self._n_known + len(written) > self._max_known:
            self._forget_known()
        for (view, key), version in written.items():
            known = self._known[view]
            if key not in known:
                self._n_known += 1
            known[key] = version

    def _forget_known(self) -> None:
        for known in self._known.values():
            known.clear()
        self._n_known = 0

    def _connection(self) -> Any:
        if self._conn is None:
            conn = self._client.connection_pool.make_connection()
            self._reader = hiredis.Reader()
            try:
                conn.connect()
                self._load_script(conn)
            except BaseException:
                conn.disconnect()
                raise
            self._conn = conn
        return self._conn

    def _load_script(self, conn: Any) -> None:
        [sha] = self._round_trip(conn, _pack(("SCRIPT", "LOAD", _CAS_SCRIPT)), 1)
        if isinstance(sha, hiredis.ReplyError):
            raise redis.exceptions.ResponseError(str(sha))
        self._sha = sha if isinstance(sha, bytes) else str(sha).encode()

    def _round_trip(self, conn: Any, packed: bytes, n_replies: int) -> list[Any]:
        """Send ``packed`` in one ``sendall``, then parse ``n_replies`` replies straight off
        the socket with a hiredis reader (redis-py's per-reply ``read_response`` cost more
        than the commands). Error replies come back as values, not raised."""
        try:
            sock = conn._sock
            if sock is None:
                raise redis.exceptions.ConnectionError("connection closed")
            reader = self._reader
            sock.sendall(packed)
            replies: list[Any] = []
            gets = reader.gets
            while len(replies) < n_replies:
                reply = gets()
                if reply is False:
                    data = sock.recv(1 << 17)
                    if not data:
                        raise redis.exceptions.ConnectionError("Redis closed the connection")
                    reader.feed(data)
                    continue
                replies.append(reply)
            return replies
        except BaseException as exc:
            # The connection's state is unknown (replies half read, or the server gone):
            # start over on a new one, and trust no remembered version.
            conn.disconnect()
            self._conn = None
            self._forget_known()
            if isinstance(exc, OSError) and not isinstance(exc, ConnectionError | TimeoutError):
                raise redis.exceptions.ConnectionError(f"socket error: {exc}") from exc
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None
        super().close()


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")
