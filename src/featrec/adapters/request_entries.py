"""The request log's stored form, shared by its SQLite and Redis backends.

An entry is JSON: ``{"request_id", "created_at_s", "body", "rows": [[view, key, digest], ...]}``
(Redis, and SQLite before row ids), or on SQLite ``{..., "row_ids": [id, ...]}``, each id a
stored ``[view, key, digest]`` (:mod:`featrec.adapters.sqlite.request_log`).
The body is opaque here (the serving application writes and reads it, see
:mod:`featrec.app.serving.record`), except for the ``session_id`` and ``user_id`` that say whom
the entry is about (forgetting a user). Each distinct feature row is stored once, apart from the
entries, as ``{"ts_us", "values"}`` JSON addressed by a digest of its content: two hundred item
rows are shared by every request that used them, so an entry costs the size of its candidates
and scores, not of its features. JSON keeps floats exact (shortest round-trip representation),
so a record reads back bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar

import orjson

from featrec.core.bounded import drop_oldest
from featrec.core.ports.serving import LoggedRow, RequestRecord, StampedRow
from featrec.errors import StoreError

_JSON_OPTIONS: Final = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
#: Row digests remembered per process (rows already stored need not be sent again).
_MEMO_SIZE: Final = 200_000
#: Entries read per page (SQLite query, Redis SCAN + MGET) when iterating the log.
PAGE: Final = 1000


def _dumps(value: object) -> bytes:
    return orjson.dumps(value, option=_JSON_OPTIONS)


#: One logged row's reference in an entry: ``[view, key, digest]`` (digest None: no row),
#: then its entity unless it is an item (see :func:`_ref`).
RowRef = list[str | None]

V = TypeVar("V")


class IdentityMemo(Generic[V]):
    """Values memoised by the identity of an object, which the memo holds meanwhile (so no
    other object can take its id); the oldest quarter goes when ``size`` is passed. Look a
    batch up in C with ``map(memo.values.get, map(id, objects))``."""

    def __init__(self, size: int = _MEMO_SIZE) -> None:
        self._size = size
        self.values: dict[int, V] = {}
        self._held: dict[int, object] = {}

    def put(self, obj: object, value: V) -> None:
        key = id(obj)
        self.values[key] = value
        self._held[key] = obj
        if len(self.values) > self._size:
            for oldest in drop_oldest(self.values, len(self.values) // 4):
                del self._held[oldest]


class RowDigests:
    """Content digests of rows, memoised by object identity (cached rows are shared objects),
    which digests this process has stored, and when; and each logged row's reference in an
    entry, memoised by the identity of its :class:`LoggedRow` once its row is stored.

    The recommender hands out the same ``LoggedRow`` objects for an item while the row cache
    keeps its rows, so most of an entry's ~400 references are found by one identity lookup per
    row, in C (``map``), and the reference lists are shared by every entry that uses them. A
    memo entry holds its ``LoggedRow``: while it is there, no other object can have its id.
    """

    def __init__(self, size: int = _MEMO_SIZE, created_at: float = -math.inf) -> None:
        self._size = size
        #: When the memo started (monotonic): every reference in it was stored since then.
        self.created_at = created_at
        self._by_id: dict[int, tuple[StampedRow, str, bytes]] = {}
        self.stored: dict[str, float] = {}
        #: Each ``LoggedRow``'s reference (only once its row is stored).
        self._refs: IdentityMemo[RowRef] = IdentityMemo(size)
        #: References of rows sent in the batch being written (memoised by :meth:`remember`).
        self._pending: list[tuple[LoggedRow, RowRef]] = []

    def encode(self, logged: LoggedRow) -> tuple[str, bytes]:
        """``(digest, json)`` of a row (the row must not be None)."""
        row = logged.row
        assert row is not None
        found = self._by_id.get(id(row))
        if found is not None and found[0] is row:
            return found[1], found[2]
        data = _dumps({"ts_us": row.ts_us, "values": row.values})
        digest = hashlib.blake2b(
            logged.view.encode() + b"\0" + logged.key.encode() + b"\0" + data, digest_size=16
        ).hexdigest()
        self._by_id[id(row)] = (row, digest, data)
        if len(self._by_id) > self._size:
            drop_oldest(self._by_id, len(self._by_id) // 4)
        return digest, data

    def start_batch(self) -> None:
        """Forget the references of a batch that was not written (call before encoding one)."""
        self._pending.clear()

    def refs(
        self,
        rows: Sequence[LoggedRow],
        new_rows: dict[str, bytes],
        stale_before: float = -math.inf,
    ) -> list[RowRef]:
        """The references ``[view, key, digest]`` of ``rows`` in order (digest None for a
        missing row); every row this process has not stored (or stored before
        ``stale_before``) goes into ``new_rows``. Rows met before are found by identity in C;
        the rest (the session's row, rows the cache re-read) by :meth:`encode`. The returned
        lists are shared: do not change them."""
        out: list[RowRef | None] = list(map(self._refs.values.get, map(id, rows)))
        if all(out):
            return out  # type: ignore[return-value]
        stored = self.stored
        for i, found in enumerate(out):
            if found is not None:
                continue
            logged = rows[i]
            ref: RowRef
            if logged.row is None:
                ref = _ref(logged, None)
                self._refs.put(logged, ref)
            else:
                digest, data = self.encode(logged)
                ref = _ref(logged, digest)
                at = stored.get(digest)
                if at is None or at < stale_before:
                    new_rows[digest] = data
                    self._pending.append((logged, ref))
                else:
                    self._refs.put(logged, ref)
            out[i] = ref
        return out  # type: ignore[return-value]

    def remember(self, digests: Iterable[str], now: float) -> None:
        """The rows ``digests`` were stored at ``now``: the references sent with them are
        memoised (those of a batch that failed are dropped unless their row is stored)."""
        for digest in digests:
            self.stored[digest] = now
        if len(self.stored) > self._size:
            drop_oldest(self.stored, len(self.stored) // 4)
        pending, self._pending = self._pending, []
        for logged, ref in pending:
            if ref[2] in self.stored:
                self._refs.put(logged, ref)


def _ref(logged: LoggedRow, digest: str | None) -> RowRef:
    """``[view, key, digest]``, and what the key names unless it is an item (so forgetting
    knows a user's and a session's rows): ``[view, key, digest, entity]``, entity None when
    unknown. Entries written before hold three fields."""
    if logged.entity == "item":
        return [logged.view, logged.key, digest]
    return [logged.view, logged.key, digest, logged.entity]


def entry_json(record: RequestRecord, refs: Sequence[RowRef]) -> bytes:
    """The stored entry; ``refs`` are :meth:`RowDigests.refs` of ``record.rows``."""
    return _entry(record, "rows", refs)


def entry_with_ids(record: RequestRecord, row_ids: Sequence[int]) -> bytes:
    """The stored entry referring to its rows by the store's short ids (SQLite) instead of
    ``[view, key, digest]`` lists: ``{"request_id", "created_at_s", "body", "row_ids"}``."""
    return _entry(record, "row_ids", row_ids)


def _entry(record: RequestRecord, name: str, rows: Sequence[object]) -> bytes:
    return _dumps(
        {
            "request_id": record.request_id,
            "created_at_s": record.created_at_s,
            "body": record.body,
            name: rows,
        }
    )


def entry_from_json(data: bytes, rows: dict[str, bytes | None]) -> RequestRecord:
    """An entry whose ``rows`` are ``[view, key, digest]`` lists, with ``rows`` by digest."""
    raw = orjson.loads(data)
    return record_from(raw, raw["rows"], rows)


def record_from(
    raw: dict[str, Any], refs: Iterable[Sequence[str | None]], rows: dict[str, bytes | None]
) -> RequestRecord:
    """The record of a decoded entry whose rows are ``refs`` (``[view, key, digest]``, digest
    None for no row, and the entity when the entry has it), with the stored ``rows`` by
    digest."""
    logged: list[LoggedRow] = []
    for view, key, ref, *named in refs:
        assert view is not None and key is not None
        entity = named[0] if named else None
        if ref is None:
            logged.append(LoggedRow(view, key, None, entity))
            continue
        row_data = rows.get(ref)
        if row_data is None:
            raise StoreError(
                f"request {raw['request_id']}: the logged {view} row of {key!r} ({ref}) is "
                "no longer in the request log"
            )
        row = orjson.loads(row_data)
        logged.append(LoggedRow(view, key, StampedRow(row["values"], row["ts_us"]), entity))
    return RequestRecord(raw["request_id"], raw["created_at_s"], raw["body"], logged)


def body_only(data: bytes) -> RequestRecord:
    """An entry without its feature rows (they are not read)."""
    raw = orjson.loads(data)
    return RequestRecord(raw["request_id"], raw["created_at_s"], raw["body"], [])


def row_refs(data: bytes) -> list[str]:
    return [ref for _, _, ref, *_ in orjson.loads(data)["rows"] if ref is not None]


#: Views whose logged rows describe one person, in entries that do not say (written before
#: references held their entity): they go with the entry when forgetting.
_PERSONAL_VIEWS = {"session_features": "session", "user_features": "user"}


def names(data: bytes, user_id: str, session_ids: Collection[str]) -> bool:
    """Whether an entry is about ``user_id`` or one of ``session_ids``."""
    body = orjson.loads(data)["body"]
    return body.get("user_id") == user_id or body.get("session_id") in session_ids


def personal_refs(data: bytes, user_id: str, session_ids: Collection[str]) -> list[str]:
    """Digests of the entry's logged rows of ``user_id`` or of ``session_ids``: by what their
    key names (unknown: the user's or a session's, if the key is theirs), or, in entries
    written before references held it, by their view."""
    out = []
    for view, key, ref, *named in orjson.loads(data)["rows"]:
        if ref is None:
            continue
        if named:
            entity = named[0]
            user, session = entity in (None, "user"), entity in (None, "session")
        else:
            kind = _PERSONAL_VIEWS.get(view)
            user, session = kind == "user", kind == "session"
        if (user and key == user_id) or (session and key in session_ids):
            out.append(ref)
    return out


def subjects(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The user id and session id an entry's body names (None where it names none)."""
    user, session = body.get("user_id"), body.get("session_id")
    return (user if isinstance(user, str) else None, session if isinstance(session, str) else None)


def sessions_named(entries: Iterable[bytes], user_id: str) -> set[str]:
    found: set[str] = set()
    for data in entries:
        body = orjson.loads(data)["body"]
        if body.get("user_id") == user_id and isinstance(body.get("session_id"), str):
            found.add(body["session_id"])
    return found
