"""The one exception tree of featrec.

::

    FeatrecError                 base: anything featrec raises on purpose
    ├── ConfigError              a setting or argument is wrong (the message says how to fix it)
    ├── InvalidEvent             an event failed validation (``field`` and ``reason``)
    ├── StoreError               the store failed (Feast or Redis errors, translated)
    │   └── StoreUnavailable     the store cannot be reached at all
    └── NotFound                 a requested entity has no data

Adapters translate ``redis``/``feast`` exceptions into this tree at their boundary; the CLI
turns any ``FeatrecError`` into a one-line message and a non-zero exit.
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
