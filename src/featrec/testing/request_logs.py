"""Request log files as earlier versions of featrec created them (for upgrade tests and the
retention benchmark)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

#: The SQLite request log's tables before entries carried their subjects and row references
#: their entity (main at 5c9fb0a and earlier).
EARLIER_TABLES = (
    "CREATE TABLE requests (request_id TEXT PRIMARY KEY, created_at_s REAL NOT NULL, "
    "entry BLOB NOT NULL)",
    "CREATE TABLE feature_rows (digest TEXT PRIMARY KEY, row BLOB)",
    "CREATE TABLE row_refs (id INTEGER PRIMARY KEY, view TEXT NOT NULL, key TEXT NOT NULL, "
    "digest TEXT NOT NULL, UNIQUE (view, key, digest))",
    "CREATE INDEX requests_by_time ON requests (created_at_s)",
    "CREATE TABLE log_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


def earlier_log_file(path: Path) -> Path:
    """An empty SQLite request log at ``path`` with the tables of earlier versions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        for statement in EARLIER_TABLES:
            db.execute(statement)
        db.commit()
    return path
