"""Status files that running dataflows leave for ``featrec status``.

Each dataflow process writes ``<home>/status/<flow>-w<worker>.json`` after its writes: a small
JSON object (``flow``, ``worker``, ``pid``, ``events_in``, ``dead_letters``, ``rows_written``,
``last_write_at`` (unix seconds), ``updated_at``). Files are replaced atomically (temporary
file + rename), so a reader never sees a torn file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from featrec.adapters.files.atomic import atomic_write_text


def status_dir(home: Path) -> Path:
    return home / "status"


def status_path(home: Path, flow: str, worker: int) -> Path:
    return status_dir(home) / f"{flow}-w{worker}.json"


def write_status(path: Path, status: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``status`` as JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(status), sort_keys=True)
    atomic_write_text(path, text, tag=f".{os.getpid()}")


def read_status(home: Path) -> list[dict[str, Any]]:
    """Every status file under ``home``, sorted by name; unreadable files are reported as such."""
    out: list[dict[str, Any]] = []
    directory = status_dir(home)
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            data = {"error": f"unreadable status file: {exc}"}
        if not isinstance(data, dict):
            data = {"error": "status file does not hold a JSON object"}
        data.setdefault("file", path.name)
        out.append(data)
    return out
