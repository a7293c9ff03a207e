"""featrec: real-time recommendations from streaming session features and batch features.

The public API::

    from featrec import Settings, ServingOptions, open_recommender

    recommender = open_recommender(Settings.from_env(os.environ), ServingOptions())
    answer = recommender.recommend("s-123", k=10)
    recommender.explain(answer.request_id).reproduced

Everything named in ``__all__`` is importable from here; it loads on first use, so ``import
featrec`` stays cheap (Feast alone takes seconds to import).

Layers (dependencies point one way, enforced by import-linter):

- ``featrec.core``      pure logic by domain: events, sessions, features, items, candidates,
  ranking, evaluation, ports. Never imports feast, redis, bytewax or click.
- ``featrec.app``       use cases over the ports: serving (recommend, explain), evaluation,
  training, item signals.
- ``featrec.adapters``  the ports on real backends, one package per backend: ``feast``,
  ``redis``, ``sqlite``, ``files``, ``duckdb``.
- ``featrec.jobs``      IO workflows (evaluation, forget, batch, materialize, log import,
  training sets, the bytewax launcher) and the serving composition root.
- ``featrec.cli``, ``featrec.server``  entry points: parse, call a job, print its report.

Bytewax wiring lives outside this package, in the top-level ``dataflows`` package.
``featrec.testing`` holds the test support that tests, benchmarks and users share.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from featrec import compat
from featrec.errors import (
    ConfigError,
    FeatrecError,
    InvalidEvent,
    NotFound,
    StoreError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from featrec.app.serving.recommender import (
        Recommendation,
        RecommendedItem,
        Recommender,
    )
    from featrec.jobs.serving import ServingOptions, open_recommender
    from featrec.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FeatrecError",
    "InvalidEvent",
    "NotFound",
    "Recommendation",
    "RecommendedItem",
    "Recommender",
    "ServingOptions",
    "Settings",
    "StoreError",
    "StoreUnavailable",
    "__version__",
    "open_recommender",
]

#: Public name -> the module that defines it (imported on first use).
_LAZY = {
    "Recommendation": "featrec.app.serving.recommender",
    "RecommendedItem": "featrec.app.serving.recommender",
    "Recommender": "featrec.app.serving.recommender",
    "ServingOptions": "featrec.jobs.serving",
    "open_recommender": "featrec.jobs.serving",
    "Settings": "featrec.settings",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'featrec' has no attribute {name!r}")


compat.install()
