"""Files that appear whole or not at all: write a temporary file beside the target, then rename.

The temporary file is a dot-name in the target's directory (``.<name><tag>.tmp``): on the same
file system, so :func:`os.replace` is atomic, and outside the globs readers use
(``part-*.parquet``, ``*.json``, Feast's ``*.parquet``). A reader sees the old file or the new
one, never a torn one. When the write fails the temporary file is removed and the target is
left as it was. Nothing is fsync'ed: a file survives a crash of the process, not a power loss.

Callers create the target's directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, *, tag: str = "") -> Iterator[Path]:
    """A temporary path to write; it replaces ``path`` when the block ends without an error.

    ``tag`` makes the temporary name unique among concurrent writers of the same target
    (e.g. a process id).
    """
    tmp = path.with_name(f".{path.name}{tag}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str, *, encoding: str = "utf-8", tag: str = "") -> None:
    """Replace ``path`` with ``text``, atomically."""
    with atomic_path(path, tag=tag) as tmp:
        tmp.write_text(text, encoding=encoding)
