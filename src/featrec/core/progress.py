"""Progress reporting for long jobs, without tying them to a terminal.

Jobs call ``stage`` when they start a step (with its size when known) and ``advance`` as they
go; the CLI draws progress bars, tests and libraries pass nothing (:data:`SILENT`).
"""

from __future__ import annotations

from typing import Final, Protocol


class Progress(Protocol):
    def stage(self, message: str, total: int | None = None) -> None:
        """A new step begins (``total`` units of work, if known)."""

    def advance(self, n: int = 1) -> None:
        """``n`` more units of the current step are done."""


class _Silent:
    def stage(self, message: str, total: int | None = None) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        return None


#: Reports nothing.
SILENT: Final[Progress] = _Silent()
