"""The one exception tree of featrec.

::

    FeatrecError                 base: anything featrec raises on purpose
    ├── ConfigError              a setting or argument is wrong (the message says how to fix it)
    ├── InvalidEvent             an event failed validation (``field`` and ``reason``)
    ├── StoreError               the store failed (Feast, Redis or SQLite errors, translated)
    │   └── StoreUnavailable     the store cannot be reached at all
    └── NotFound                 a requested entity has no data

Adapters translate the exceptions of redis-py, sqlite3 and Feast into this tree at their
boundary, through one table, :mod:`featrec.adapters.errors` (``with translated("what"):``):

- ``StoreUnavailable``: Redis ``ConnectionError``/``TimeoutError``/``BusyLoadingError`` (and the
  builtin ``ConnectionError``/``TimeoutError``), a locked SQLite file (``SQLITE_BUSY``/
  ``SQLITE_LOCKED``). Retrying may help: flows back off and retry, serving degrades.
- ``ConfigError``: a wrong Redis password (``AuthenticationError``) or ACL (``NoPermissionError``),
  Feast errors about the feature repo or its yaml. The message says what to fix.
- ``StoreError``: everything else those libraries raise (``ResponseError`` such as WRONGTYPE,
  other ``sqlite3.Error``, Feast's "not found" with "apply the feature repo first").
- ``NotFound`` and ``InvalidEvent`` are featrec's own; no library error maps to them.

Library exceptions the table does not list (``KeyError``, a file's ``OSError``) pass through.
The message names what was being done and the library's class, passwords redacted, and the
original is chained as ``__cause__``. The CLI turns any ``FeatrecError`` into a one-line
message and a non-zero exit.
"""

from __future__ import annotations


class FeatrecError(Exception):
    """Base class of every error featrec raises on purpose."""


class ConfigError(FeatrecError):
    """A setting or argument is invalid; the message says how to fix it."""


class InvalidEvent(FeatrecError):
    """An event failed validation. ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class StoreError(FeatrecError):
    """The feature store (Feast, Redis, SQLite) failed an operation."""


class StoreUnavailable(StoreError):
    """The feature store cannot be reached."""


class NotFound(FeatrecError):
    """The requested entity has no stored data."""
