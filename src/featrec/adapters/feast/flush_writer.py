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
from featrec.adapters.feast.layout.resp import CRLF, _len
from featrec.adapters.feast.layout.values import InvalidFeatureRow, encode_timestamp, view_of
from featrec.adapters.feast.writers import _CAS_SCRIPT, RedisLayoutWriter, Views, _ViewPlan
from featrec.core.features import catalog
from featrec.core.features.catalog import View
from featrec.core.features.rows import FeatureRow

__all__ = ["FlushWriter"]

#: Entities whose written version is kept in memory, at most (then all are forgotten).
MAX_KNOWN: Final = 1_000_000

# hiredis's stubs type the argument as a 1-tuple; it takes any tuple of str/bytes/numbers.
_pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command


class _ViewSpec:
    """One view's constants for :meth:`FlushWriter._write`, looked up once per row."""

    __slots__ = ("after_key", "hset_head", "known", "n_fields", "pack", "plan")

    def __init__(self, plan: _ViewPlan, view: View) -> None:
        self.plan = plan
        self.pack = resp.fields_packer(view)
        self.n_fields = len(view.features)
        # HSET key _ts:<view> ts <fields>: the command's head, and what follows the key.
        self.hset_head = b"*%d\r\n$4\r\nHSET\r\n" % (4 + 2 * self.n_fields)
        self.after_key = resp.CRLF + resp.bulk(plan.ts_field)
        self.known: dict[bytes, int] = {}


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
        #: view -> everything its rows need (with what this writer wrote: key -> version µs).
        self._specs = {
            name: _ViewSpec(self._plans[name], view) for name, view in self._views.items()
        }
        #: view -> redis key -> version (µs) this writer wrote last (the specs' dicts).
        self._known: dict[str, dict[bytes, int]] = {n: s.known for n, s in self._specs.items()}
        self._n_known = 0
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
        specs = self._specs
        parts: list[bytes] = []
        #: Per command: its key (a cluster routes by it).
        keys: list[bytes] = []
        #: Per command: (view, key, version) for a script call, None for HSET and EXPIRE.
        scripted: list[tuple[str, bytes, int] | None] = []
        # view -> key -> version written by this call, seen by its later rows (rows apply in
        # order); with ``remember``, what this writer keeps once the replies are in.
        written: dict[str, dict[bytes, int]] = {}
        blind = 0
        for row in rows:
            view = row.view
            spec = specs.get(view)
            values = row.values
            version = row.version
            if (
                spec is None
                or type(version) is not int
                or version <= 0
                or type(row.key) is not str
                or len(values) != spec.n_fields
            ):
                view_of(row, self._views)  # raises, naming what is wrong
                spec = specs[view]
            try:
                fields = spec.pack(values)
            except (InvalidFeatureRow, KeyError):
                view_of(row, self._views)  # a missing feature: raises, naming it
                spec.plan.encode(row)  # raises the same error, naming the feature
                raise
            key = spec.plan.redis_key(row.key)
            ts = encode_timestamp(version)
            mine = written.get(view)
            known = mine.get(key) if mine else None
            if known is None and remember:
                known = spec.known.get(key)
            if known is not None:
                if version <= known:
                    continue
                parts.append(
                    b"".join(
                        (spec.hset_head, _len(len(key)), key, spec.after_key, _len(len(ts)), ts,
                         CRLF, fields)
                    )
                )  # fmt: skip
                keys.append(key)
                scripted.append(None)
                blind += 1
                if ttl:
                    parts.append(_pack(("EXPIRE", key, ttl)))
                    keys.append(key)
                    scripted.append(None)
                if remember:
                    if mine is None:
                        mine = written[view] = {}
                    mine[key] = version
            else:
                seconds, micros = divmod(version, 1_000_000)
                ts_field = spec.plan.ts_field
                head = (ts_field, seconds, micros * 1000, ttl)
                parts.append(
                    resp.evalsha(self._sha, key, head, ts_field, ts, fields, spec.n_fields)
                )
                keys.append(key)
                scripted.append((view, key, version))
        if not parts:
            return 0
        replies = self._send(parts, keys)
        for reply in replies:
            if type(reply) is hiredis.ReplyError:
                raise redis.exceptions.ResponseError(str(reply))
        accepted = blind
        for what, reply in zip(scripted, replies, strict=True):
            if what is not None and reply == 1:
                accepted += 1
                if remember:
                    view, key, version = what
                    mine = written.get(view)
                    if mine is None:
                        mine = written[view] = {}
                    if version > mine.get(key, 0):
                        mine[key] = version
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

    def _remember_written(self, written: dict[str, dict[bytes, int]]) -> None:
        if self._n_known + sum(map(len, written.values())) > self._max_known:
            self._forget_known()
        for view, versions in written.items():
            known = self._specs[view].known
            before = len(known)
            known.update(versions)
            self._n_known += len(known) - before

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
