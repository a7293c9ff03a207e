"""The first step of a request: the session and user rows it is answered from, and whether the
answer is degraded.

:class:`ContextReader` reads the session row and the user row in one store read (when the
caller names the user; otherwise the session's ``user_id`` costs a second read), ignores a user
row older than ``max_user_age_s`` (noted), and leaves the store alone for ``store_retry_s``
after a failure, so requests do not queue on timeouts. :func:`degraded_reason` says why an
answer must be degraded: the store is unreachable, there is no session row, or it is stale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from featrec.app.serving.config import (
    NO_SESSION,
    STALE_SESSION,
    STORE_UNREACHABLE,
    ServingConfig,
)
from featrec.app.serving.record import USER_ROW_IGNORED
from featrec.core.features.catalog import SESSION_FEATURES, USER_FEATURES
from featrec.core.ports.serving import RowReader, StampedRow
from featrec.errors import StoreError, StoreUnavailable


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The rows a request is answered from. ``failure``: the store failed (or is being left
    alone), the rows are None."""

    session: StampedRow | None
    user: StampedRow | None
    user_id: str | None
    failure: StoreError | None
    notes: tuple[str, ...] = ()
    #: The user row as read (``user`` is None when it was ignored as stale).
    user_read: StampedRow | None = None


class ContextReader:
    """Reads a request's :class:`RequestContext` and keeps the store back-off (see the module
    docstring). ``monotonic`` times the back-off."""

    def __init__(
        self, rows: RowReader, config: ServingConfig, monotonic: Callable[[], float]
    ) -> None:
        self._rows = rows
        self._config = config
        self._monotonic = monotonic
        self._store_down_until = -math.inf
        self._store_error = ""

    def read(self, session_id: str, user_id: str | None, now_s: float) -> RequestContext:
        if self._monotonic() < self._store_down_until:
            failure = StoreUnavailable(
                f"not retried for {self._config.store_retry_s:g} s after: {self._store_error}"
            )
            return RequestContext(None, None, user_id, failure)
        wanted: dict[str, list[str]] = {SESSION_FEATURES.name: [session_id]}
        if user_id is not None:
            wanted[USER_FEATURES.name] = [user_id]
        try:
            found = self._rows.read_rows(wanted)
            session = found[SESSION_FEATURES.name][0]
            user = found[USER_FEATURES.name][0] if user_id is not None else None
            if user_id is None and session is not None:
                named = session.values.get("user_id")
                if isinstance(named, str) and named:
                    user_id = named
                    user = self._rows.read_rows({USER_FEATURES.name: [named]})[USER_FEATURES.name][
                        0
                    ]
        except StoreError as e:
            self.store_failed(e)
            return RequestContext(None, None, user_id, e)
        notes: tuple[str, ...] = ()
        user_read = user
        max_user_age = self._config.max_user_age_s
        if user is not None and max_user_age is not None:
            age = now_s - user.ts_us / 1e6
            if age > max_user_age:
                notes = (f"{USER_ROW_IGNORED}: {age / 86_400:.1f} days old",)
                user = None
        return RequestContext(session, user, user_id, None, notes, user_read)

    def store_failed(self, error: StoreError) -> None:
        """Leave the store alone for ``store_retry_s`` from now."""
        self._store_error = str(error)
        self._store_down_until = self._monotonic() + self._config.store_retry_s


def degraded_reason(
    session_id: str, context: RequestContext, now_s: float, max_session_age_s: float
) -> tuple[str | None, str | None]:
    """``(code, reason)`` of a degraded answer, ``(None, None)`` when not degraded."""
    if context.failure is not None:
        return STORE_UNREACHABLE, f"online store unreachable: {context.failure}"
    if context.session is None:
        return NO_SESSION, f"no session features for session {session_id!r}"
    age = now_s - context.session.ts_us / 1e6
    if age > max_session_age_s:
        return STALE_SESSION, (
            f"session features are {age:.0f} s old (limit {max_session_age_s:g} "
            "s): the session stream may be down"
        )
    return None, None


def session_version(session: StampedRow | None) -> int | None:
    """The session row's ``version`` (its newest event time in µs), None without one."""
    if session is None:
        return None
    version = session.values.get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else None
