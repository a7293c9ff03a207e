"""Ports: the small interfaces that application code talks to.

Adapters (Feast, Redis, SQLite, files) implement them; :class:`InMemoryFeatureStore` is the
reference implementation used by unit tests and by the contract suite as the expected
behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from featrec.core.features.rows import FeatureRow


@runtime_checkable
class FeatureWriter(Protocol):
    """Writes feature rows to an online store.

    Contract: idempotent (writing the same row twice changes nothing) and guarded by version:
    a row whose ``version`` is not newer than the stored one for the same (view, key) is
    skipped. Returns the number of rows actually written.
    """

    def write(self, rows: Sequence[FeatureRow]) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class FeatureReader(Protocol):
    """Reads the latest stored values of one view for a list of entity keys.

    Returns, per key in order, a mapping of feature name to value, or ``None`` if the entity
    has no row.
    """

    def read(self, view: str, keys: Sequence[str]) -> list[Mapping[str, object] | None]: ...


class InMemoryFeatureStore:
    """A dict-backed feature store with the writer contract's semantics."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], FeatureRow] = {}

    def write(self, rows: Sequence[FeatureRow]) -> int:
        written = 0
        for row in rows:
            k = (row.view, row.key)
            old = self._rows.get(k)
            if old is None or row.version > old.version:
                self._rows[k] = row
                written += 1
        return written

    def read(self, view: str, keys: Sequence[str]) -> list[Mapping[str, object] | None]:
        out: list[Mapping[str, object] | None] = []
        for key in keys:
            row = self._rows.get((view, key))
            out.append(dict(row.values) if row is not None else None)
        return out

    def row(self, view: str, key: str) -> FeatureRow | None:
        return self._rows.get((view, key))

    def keys(self, view: str) -> list[str]:
        return sorted(k for v, k in self._rows if v == view)

    def close(self) -> None:
        return None
