"""Session features: a pure fold over one session's events, in event time.

The classes below were saved under ``featrec.core.sessions`` before it became a package (bytewax
recovery stores pickle state by class path; model manifests name the ranker's class), so they
are still reachable here, lazily: see :mod:`featrec.compat`.
"""

from typing import Any

_MOVED = ("SessionPolicy", "Outcome", "SessionState")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module("featrec.core.sessions.fold"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
