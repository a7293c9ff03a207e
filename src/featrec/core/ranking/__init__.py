"""Ranking: the ranking features, the learned ranker, rerank rules and training examples.

The classes below were saved under ``featrec.core.ranking`` before it became a package (bytewax
recovery stores pickle state by class path; model manifests name the ranker's class), so they
are still reachable here, lazily: see :mod:`featrec.compat`.
"""

from typing import Any

_MOVED = ("Ranker",)


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module("featrec.core.ranking.ranker"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
