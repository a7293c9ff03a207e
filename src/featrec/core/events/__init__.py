"""Events: the event model, the input formats, and synthetic shop traffic.

The classes below were saved under ``featrec.core.events`` before it became a package (bytewax
recovery stores pickle state by class path; model manifests name the ranker's class), so they
are still reachable here, lazily: see :mod:`featrec.compat`.
"""

from typing import Any

_MOVED = ("Event", "EventType")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module("featrec.core.events.model"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
