"""Forgetting a user: the deny-list, the tombstone record, and the ingest rule (pure, no IO).

A forgotten user must not come back: not through a replay of the event bus, a re-import of an
old log copy, a batch re-run or a re-materialization. Every one of those paths consults a
:class:`DenyList`: the user's id and the ids of their sessions (events of a session before
login carry no user id), each stored as a keyed hash, never in clear.

Why hashed: the deny-list is the one record that outlives everything else, so it should not
itself be a list of the people who asked to be forgotten. A plain hash of a guessable id
(``u123``) is reversed by trying every id; a keyed BLAKE2b with a random per-store ``salt``
needs that salt too. It is pseudonymisation, not anonymity: whoever holds the salt can test a
candidate id (which is exactly what ingest must do).

The ingest rule (:func:`is_denied`, :func:`is_denied_payload` for an invalid record): an event
is dropped when its user or its session is on the list. Dropped events are counted, never
dead-lettered: a dead letter keeps the payload, and keeping it is what forgetting must not do.

A tombstone (:func:`tombstone_payload`) is a control record on the event bus, next to the
events, naming the sessions whose live dataflow state must be discarded. It carries session
ids only (the state is keyed by them), never the user id.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from featrec.core.events.model import Event
from featrec.errors import ConfigError, InvalidEvent

Kind = Literal["user", "session"]

#: Hex characters of a deny-list digest (16 bytes: collisions are not a practical concern).
DIGEST_BYTES: Final = 16
#: Bytes of a fresh salt (BLAKE2b keys may be up to 64 bytes).
SALT_BYTES: Final = 32
#: The stream-entry field of a tombstone (events use ``e``).
TOMBSTONE_FIELD: Final = "forget"
#: The raw-record format a source gives a tombstone (never a valid event format).
TOMBSTONE_FORMAT: Final = "tombstone"
#: Answers a :class:`DenySet` remembers before it starts over.
MEMO_SIZE: Final = 100_000
#: Most session ids one tombstone names; a user with more gets several tombstones.
TOMBSTONE_MAX_SESSIONS: Final = 1000


def new_salt() -> str:
    """A random salt, hex-encoded."""
    return secrets.token_hex(SALT_BYTES)


def digest(salt: str, kind: Kind, identifier: str) -> str:
    """The keyed hash stored for ``identifier`` of ``kind`` under ``salt``."""
    h = hashlib.blake2b(
        kind.encode() + b"\0" + identifier.encode("utf-8", "surrogateescape"),
        key=bytes.fromhex(salt),
        digest_size=DIGEST_BYTES,
    )
    return h.hexdigest()


@dataclass(frozen=True)
class DenyList:
    """Hashed ids of forgotten users and sessions, under one salt. Immutable: ``add`` returns
    a new list."""

    salt: str
    digests: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        try:
            key = bytes.fromhex(self.salt)
        except ValueError:
            raise ConfigError("deny-list salt is not hex") from None
        if not 16 <= len(key) <= 64:
            raise ConfigError(f"deny-list salt must be 16..64 bytes, got {len(key)}")

    def __len__(self) -> int:
        return len(self.digests)

    def digest(self, kind: Kind, identifier: str) -> str:
        return digest(self.salt, kind, identifier)

    def contains(self, kind: Kind, identifier: str | None) -> bool:
        if identifier is None or not self.digests:
            return False
        return self.digest(kind, identifier) in self.digests

    def add(self, user_id: str, session_ids: Iterable[str] = ()) -> DenyList:
        new = {self.digest("user", user_id)}
        new.update(self.digest("session", s) for s in session_ids)
        return DenyList(self.salt, self.digests | new)


@dataclass(frozen=True)
class DenySet:
    """Several deny-lists read together (a file and a Redis set, each with its own salt).

    Checks memoise their answer per id (sessions repeat many times in a stream); the memo is
    bounded and belongs to this snapshot, so a reload starts afresh.
    """

    lists: tuple[DenyList, ...] = ()
    _memo: dict[str, dict[str, bool]] = field(
        default_factory=lambda: {"user": {}, "session": {}}, compare=False, repr=False
    )
    _any: bool = field(init=False, default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_any", any(d.digests for d in self.lists))

    def __len__(self) -> int:
        return sum(len(d) for d in self.lists)

    def __bool__(self) -> bool:
        return self._any

    def contains(self, kind: Kind, identifier: str | None) -> bool:
        if identifier is None or not self._any:
            return False
        memo = self._memo[kind]
        found = memo.get(identifier)
        if found is None:
            found = any(d.contains(kind, identifier) for d in self.lists)
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[identifier] = found
        return found


#: Nothing denied.
EMPTY: Final = DenySet()


def is_denied(event: Event, deny: DenySet) -> bool:
    """The ingest rule: the event's user or session has been forgotten."""
    if not deny:
        return False
    return deny.contains("session", event.session_id) or deny.contains("user", event.user_id)


def is_denied_payload(payload: str, deny: DenySet) -> bool:
    """The ingest rule for a record refused as invalid: it would be dead-lettered with its
    payload, so it is dropped instead when the payload is a JSON object naming a forgotten
    user or session."""
    if not deny or not payload.startswith("{"):
        return False
    try:
        raw = json.loads(payload)
    except ValueError:
        return False
    if not isinstance(raw, dict):
        return False
    user, session = raw.get("user_id"), raw.get("session_id")
    return deny.contains("user", None if user is None else str(user)) or deny.contains(
        "session", None if session is None else str(session)
    )


def keep_allowed(events: Sequence[Event], deny: DenySet) -> tuple[list[Event], int]:
    """``events`` without the denied ones, and how many were dropped."""
    if not deny:
        return list(events), 0
    kept = [e for e in events if not is_denied(e, deny)]
    return kept, len(events) - len(kept)


def tombstone_payload(session_ids: Sequence[str]) -> str:
    """The JSON a tombstone carries: ``{"sessions": [...]}``."""
    if len(session_ids) > TOMBSTONE_MAX_SESSIONS:
        raise ValueError(f"a tombstone names at most {TOMBSTONE_MAX_SESSIONS} sessions")
    return json.dumps({"sessions": list(session_ids)}, separators=(",", ":"))


def tombstones(session_ids: Iterable[str]) -> list[str]:
    """Payloads for all of ``session_ids``, :data:`TOMBSTONE_MAX_SESSIONS` at a time."""
    ids = sorted(set(session_ids))
    return [
        tombstone_payload(ids[i : i + TOMBSTONE_MAX_SESSIONS])
        for i in range(0, len(ids), TOMBSTONE_MAX_SESSIONS)
    ]


def parse_tombstone(payload: str) -> list[str]:
    """The session ids of a tombstone; raises :class:`InvalidEvent` if it is malformed."""
    try:
        raw = json.loads(payload)
    except ValueError as exc:
        raise InvalidEvent("tombstone", f"invalid JSON: {exc}") from None
    sessions = raw.get("sessions") if isinstance(raw, dict) else None
    if not isinstance(sessions, list) or not all(isinstance(s, str) and s for s in sessions):
        raise InvalidEvent("tombstone", "expected {'sessions': [non-empty strings]}")
    return list(sessions)
