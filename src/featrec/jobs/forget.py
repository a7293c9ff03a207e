"""Forget a user everywhere featrec keeps a copy of them: :func:`forget_user`.

Order matters, so that nothing brings the user back while the copies are being removed:

1. **find** the user's sessions: the event log, the online session rows that name the user,
   the request log, and (Redis) the event stream not yet consumed;
2. **deny** them: the deny-list next to the event log, and the Redis set when the online store
   is Redis (salted hashes, see :mod:`featrec.core.privacy`). From here on the sessions
   dataflow, ``featrec log import``, the batch job and materialization drop them;
3. **tombstone** (Redis): one control entry on the event stream naming the sessions, so a
   running sessions dataflow discards their live state (and re-reads the deny-list);
4. **purge** the files and logs: event log files, batch outputs (snapshots and Parquet batch
   sources under ``<repo>/data``, training sets under ``<home>/datasets``), the request logs,
   the user's entries on the event stream, and dead letters whose payload names them;
5. **delete** the online rows last: ``user_features`` of the user, ``session_features`` of the
   sessions (a row the dataflow wrote just before it read the tombstone is deleted too), and
   the declared views' rows of the user, the sessions, and (views that keep ids as values) the
   items they touched. The declared dataflow drops its state of them at the tombstone.

Every step is idempotent: forgetting twice is safe, and re-running after a failure finishes the
job. What is kept, and why: co-visitation neighbours, trending scores and item features are
item-level aggregates with no user or session id (see the README's "Forgetting a user").
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from featrec.adapters.errors import translated
from featrec.adapters.files.atomic import atomic_write_text
from featrec.adapters.files.event_log import items_of, remove_events, sessions_of_user
from featrec.adapters.files.snapshots import remove_rows
from featrec.adapters.redis.cluster import online_client
from featrec.adapters.redis.deny_list import stores_for
from featrec.adapters.redis.request_log import RedisRequestLog
from featrec.adapters.redis.streams import EVENT_FIELD, connect
from featrec.adapters.sqlite.partitioned_log import PartitionedRequestLog
from featrec.core.events.model import MAX_ID_LENGTH
from featrec.core.features import catalog
from featrec.core.privacy import TOMBSTONE_FIELD, tombstones
from featrec.errors import ConfigError
from featrec.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

#: Event columns whose values are personal ids.
_ID_COLUMNS: Final = ("user_id", "session_id")
#: Stream entries read per XRANGE call.
STREAM_PAGE: Final = 1000


@dataclass(frozen=True)
class ForgetReport:
    """What :func:`forget_user` found and removed, per place (counts only)."""

    user_id: str
    sessions: int
    deny_lists: list[str]
    tombstones: int
    events_removed: int
    event_files_rewritten: int
    batch_rows_removed: int
    request_log_entries: int
    stream_entries: int
    dead_letters: int
    online_rows: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """One line per place, for the command line."""
        online = ", ".join(f"{view} {n:,}" for view, n in self.online_rows.items())
        return [
            f"sessions found        {self.sessions:,}",
            f"deny-list             {', '.join(self.deny_lists)}",
            f"tombstones sent       {self.tombstones:,}",
            f"event log             {self.events_removed:,} events "
            f"({self.event_files_rewritten:,} files rewritten)",
            f"batch outputs         {self.batch_rows_removed:,} rows",
            f"request log           {self.request_log_entries:,} entries",
            f"event stream          {self.stream_entries:,} entries",
            f"dead letters          {self.dead_letters:,}",
            f"online rows           {online}",
        ]


def forget_user(
    settings: Settings, user_id: str, *, store: FeatureStore | None = None
) -> ForgetReport:
    """Forget ``user_id`` everywhere (see the module doc); ``store``: an open Feast store on
    ``settings`` (opened here if not given).

    Redis places: the deny-list set and the Redis request log when the online store is Redis;
    the event bus (tombstones, events, dead letters) when the online store is Redis or a
    ``FEATREC_BUS_URL`` is set.
    """
    _check_user_id(user_id)
    from featrec.adapters.feast.online_delete import OnlineRows
    from featrec.adapters.feast.repo import open_store

    online = OnlineRows(store if store is not None else open_store(settings))
    with _Places(settings) as places:
        sessions = sessions_of_user(settings.event_log_dir, user_id)
        sessions |= online.sessions_naming(user_id)
        sessions |= places.request_log_sessions(user_id)
        sessions |= places.stream_sessions(user_id)

        deny_lists = []
        for deny_store in stores_for(settings, redis_client=places.store_client):
            deny_store.add(user_id, sessions)
            deny_lists.append(type(deny_store).__name__.removesuffix("DenyStore").lower())
        sent = places.send_tombstones(sessions)

        items = items_of(settings.event_log_dir, user_id, sessions)
        events, files = remove_events(settings.event_log_dir, user_id, sessions)
        return ForgetReport(
            user_id=user_id,
            sessions=len(sessions),
            deny_lists=deny_lists,
            tombstones=sent,
            events_removed=events,
            event_files_rewritten=files,
            batch_rows_removed=places.purge_batch_outputs(user_id, sessions),
            request_log_entries=places.purge_request_logs(user_id, sessions),
            stream_entries=places.purge_streams(user_id, sessions),
            dead_letters=places.purge_dead_letters(user_id, sessions),
            online_rows={
                **_forget_declared(online, user_id, sessions, items),
                catalog.SESSION_FEATURES.name: online.delete(
                    catalog.SESSION_FEATURES.name, sessions
                ),
                catalog.USER_FEATURES.name: online.delete(catalog.USER_FEATURES.name, [user_id]),
            },
        )


def _forget_declared(
    online: Any, user_id: str, sessions: Collection[str], items: Collection[str]
) -> dict[str, int]:
    """Delete the declared views' online rows of the user and their sessions, and the rows of
    the items they touched in a view that keeps user or session ids as values (``last``,
    ``last_N``, ``count_distinct`` of ``user_id``/``session_id``): the next event or
    ``featrec declared backfill`` computes those from the cleaned log."""
    from featrec.adapters.feast.declared import applied_declarations

    out: dict[str, int] = {}
    for decl in applied_declarations(online.store):
        if decl.entity == catalog.USER.name:
            keys: Collection[str] = [user_id]
        elif decl.entity == catalog.SESSION.name:
            keys = sessions
        elif any(a.column in _ID_COLUMNS and a.holds_values for a in decl.aggregations):
            keys = items
        else:
            continue
        features = [f.name for f in decl.view().features]
        out[decl.name] = online.delete(decl.name, keys, decl.join_key, features)
    return out


def _check_user_id(user_id: str) -> None:
    if (
        not isinstance(user_id, str)
        or not user_id
        or len(user_id) > MAX_ID_LENGTH
        or not user_id.isprintable()
        or user_id != user_id.strip()
    ):
        raise ConfigError(
            f"user id must be a printable string of 1..{MAX_ID_LENGTH} characters without "
            f"surrounding whitespace, got {user_id!r:.80}"
        )


class _Places:
    """The places other than the event log and the online store, as ``settings`` configure
    them (see :func:`forget_user` for which Redis ones)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        on_redis = settings.online_store == "redis"
        self.store_client: Any = online_client(settings) if on_redis else None
        uses_bus = on_redis or settings.bus_url is not None
        self.bus: Any = None
        if settings.redis_cluster_nodes and settings.bus_url is None and on_redis:
            # the streams live on the cluster (one key each: every command is single-slot)
            self.bus = online_client(settings)
        elif uses_bus:
            self.bus = connect(settings.stream_url)
        self.streams = [s.strip() for s in settings.stream.split(",") if s.strip()]

    def __enter__(self) -> _Places:
        return self

    def __exit__(self, *exc: object) -> None:
        for client in (self.store_client, self.bus):
            if client is not None:
                client.close()

    # -- request logs --------------------------------------------------------------------

    def _request_logs(self) -> Iterator[PartitionedRequestLog | RedisRequestLog]:
        from featrec.adapters.sqlite.partitioned_log import (
            request_log_dir,
            request_log_path,
            sqlite_request_log,
        )

        if request_log_dir(self.settings).exists() or request_log_path(self.settings).exists():
            log = sqlite_request_log(self.settings)
            try:
                yield log
            finally:
                log.close()
        if self.store_client is not None:
            yield RedisRequestLog(self.store_client)

    def request_log_sessions(self, user_id: str) -> set[str]:
        found: set[str] = set()
        for log in self._request_logs():
            found |= log.sessions_of(user_id)
        return found

    def purge_request_logs(self, user_id: str, sessions: Collection[str]) -> int:
        return sum(log.forget(user_id, sessions) for log in self._request_logs())

    # -- the event bus -------------------------------------------------------------------

    def _entries(self, stream: str) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
        """Every entry of ``stream``, oldest first, a page at a time."""
        start = "-"
        while True:
            with translated(f"reading the stream {stream!r}"):
                page = self.bus.xrange(stream, min=start, max="+", count=STREAM_PAGE)
            yield from page
            if len(page) < STREAM_PAGE:
                return
            start = "(" + page[-1][0].decode("ascii")

    def stream_sessions(self, user_id: str) -> set[str]:
        """Sessions of the user's events still on the event stream(s)."""
        found: set[str] = set()
        for stream in self.streams if self.bus is not None else []:
            for _, fields in self._entries(stream):
                event = _mapping(fields.get(EVENT_FIELD.encode()))
                if event is None or event.get("session_id") is None:
                    continue
                if str(event.get("user_id")) == user_id:
                    found.add(str(event["session_id"]))
        return found

    def send_tombstones(self, sessions: Collection[str]) -> int:
        if self.bus is None or not sessions:
            return 0
        payloads = tombstones(sessions)
        with translated("sending tombstones"):
            for stream in self.streams:
                for payload in payloads:
                    self.bus.xadd(stream, {TOMBSTONE_FIELD: payload})
        return len(payloads) * len(self.streams)

    def _purge_stream(
        self, stream: str, field: bytes, user_id: str, sessions: Collection[str]
    ) -> int:
        """XDEL the entries of ``stream`` whose ``field`` is an event of the user."""
        doomed = [
            entry_id
            for entry_id, fields in self._entries(stream)
            if _about(fields.get(field), user_id, sessions)
        ]
        removed = 0
        with translated(f"deleting from the stream {stream!r}"):
            for start in range(0, len(doomed), STREAM_PAGE):
                removed += int(self.bus.xdel(stream, *doomed[start : start + STREAM_PAGE]))
        return removed

    def purge_streams(self, user_id: str, sessions: Collection[str]) -> int:
        """The user's events on the event stream(s)."""
        if self.bus is None:
            return 0
        field = EVENT_FIELD.encode()
        return sum(self._purge_stream(s, field, user_id, sessions) for s in self.streams)

    # -- dead letters --------------------------------------------------------------------

    def purge_dead_letters(self, user_id: str, sessions: Collection[str]) -> int:
        """Dead letters whose payload is an event of the user: the files under the home, and
        the sessions and item flows' dead-letter streams."""
        home = self.settings.home
        files = {self.settings.dead_letter_file, *home.glob("deadletters*.jsonl")}
        removed = sum(_purge_jsonl(p, user_id, sessions) for p in sorted(files) if p.exists())
        if self.bus is not None:
            settings = self.settings
            for stream in (settings.dead_letter_stream, settings.items_dead_letter_stream):
                removed += self._purge_stream(stream, b"payload", user_id, sessions)
        return removed

    # -- batch outputs -------------------------------------------------------------------

    def purge_batch_outputs(self, user_id: str, sessions: Collection[str]) -> int:
        """Rows of the user or their sessions in every Parquet file under ``<repo>/data``
        (snapshots, batch sources) and ``<home>/datasets`` (training sets)."""
        roots = [self.settings.repo.resolve() / "data", self.settings.home / "datasets"]
        removed = 0
        for root in roots:
            for path in sorted(root.rglob("*.parquet")) if root.is_dir() else []:
                if path.name.startswith("."):
                    continue
                removed += remove_rows(path, "user_id", {user_id})
                removed += remove_rows(path, "session_id", sessions)
        return removed


def _mapping(payload: object) -> dict[str, Any] | None:
    """A featrec event given as a mapping or as its JSON text (None if it is neither)."""
    if isinstance(payload, str | bytes):
        try:
            payload = json.loads(payload)
        except ValueError:
            return None
    return payload if isinstance(payload, dict) else None


def _about(payload: object, user_id: str, sessions: Collection[str]) -> bool:
    """Whether a featrec event (a mapping, or its JSON) belongs to the user or a session."""
    event = _mapping(payload)
    if event is None:
        return False
    user, session = event.get("user_id"), event.get("session_id")
    return (user is not None and str(user) == user_id) or (
        session is not None and str(session) in sessions
    )


def _purge_jsonl(path: Path, user_id: str, sessions: Collection[str]) -> int:
    """Rewrite a dead-letter file without the letters whose payload is the user's event."""
    kept: list[str] = []
    removed = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                letter = json.loads(line)
            except ValueError:
                kept.append(line)
                continue
            payload = letter.get("payload") if isinstance(letter, dict) else None
            if _about(payload, user_id, sessions):
                removed += 1
            else:
                kept.append(line)
    if removed:
        atomic_write_text(path, "".join(kept))
    return removed
