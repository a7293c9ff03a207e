"""Daily snapshots of the batch views: one Parquet file per as-of instant, in one directory.

Layout: ``<repo>/data/<view>/snapshot-<YYYYMMDDTHHMMSSZ>.parquet``, in the view's batch-source
schema (:func:`featrec.adapters.feast.types.arrow_schema`); every row of a snapshot carries the
as-of instant as its event timestamp. The directory is the view's Feast ``FileSource``: Feast's
DuckDB offline store reads every ``*.parquet`` in it, so a point-in-time join picks, per entity,
the newest snapshot not after the entity row's time. ``empty.parquet`` (written at apply time)
keeps the directory readable before the first batch run.

Files appear atomically (written under a dot-name, then renamed); re-running a date replaces
its file, so a batch run is idempotent. Forgetting a user rewrites the files holding their rows
the same way (:func:`remove_rows`).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featrec.adapters.files.atomic import atomic_path
from featrec.errors import ConfigError

#: The schema-only file that keeps a snapshot directory readable before any batch run.
EMPTY_SNAPSHOT: Final = "empty.parquet"

_NAME = re.compile(r"snapshot-(\d{8}T\d{6}Z)\.parquet")
_STAMP = "%Y%m%dT%H%M%SZ"


def snapshot_dir(data_dir: Path | str, view: str) -> Path:
    """The directory holding ``view``'s snapshots (its Feast batch source)."""
    return Path(data_dir) / view


def snapshot_path(directory: Path | str, as_of: datetime) -> Path:
    """The file of the snapshot as of ``as_of`` (tz-aware, whole seconds) in ``directory``."""
    if as_of.tzinfo is None:
        raise ConfigError(f"snapshot time must be tz-aware, got {as_of.isoformat()}")
    if as_of.microsecond:
        raise ConfigError(f"snapshot time must be whole seconds, got {as_of.isoformat()}")
    return Path(directory) / f"snapshot-{as_of.astimezone(UTC).strftime(_STAMP)}.parquet"


def write_snapshot(directory: Path | str, as_of: datetime, table: pa.Table) -> Path:
    """Write (or replace) the snapshot as of ``as_of`` atomically; returns its path."""
    path = snapshot_path(directory, as_of)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def list_snapshots(directory: Path | str) -> list[tuple[datetime, Path]]:
    """``(as_of, path)`` of every snapshot in ``directory``, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.fullmatch(path.name)
        if match:
            as_of = datetime.strptime(match.group(1), _STAMP).replace(tzinfo=UTC)
            found.append((as_of, path))
    return sorted(found)


def remove_rows(path: Path | str, column: str, keys: Collection[str]) -> int:
    """Rewrite the Parquet file ``path`` without the rows whose ``column`` is in ``keys``
    (atomically, schema kept); returns how many rows were removed (0: file untouched)."""
    path = Path(path)
    if not keys or column not in pq.read_schema(path).names:
        return 0
    table = pq.read_table(path)
    values = pa.array(sorted(keys), table.schema.field(column).type)
    drop = pc.fill_null(pc.is_in(table[column], value_set=values), False)
    n = int(pc.sum(drop).as_py() or 0)
    if n:
        with atomic_path(path) as tmp:
            pq.write_table(table.filter(pc.invert(drop)), tmp)
    return n
