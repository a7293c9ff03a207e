"""Module paths from before the restructure, still importable.

Bytewax recovery stores pickle operator state by class path (``featrec.core.rows.FeatureRow``
in a pending batch, ``featrec.adapters.raw_files.FilePosition`` in a source position), and a
saved model's skops file names the ranker's class (``featrec.core.ranking.Ranker``). So that
stores and models written before the move keep loading, :func:`install` (called when
``featrec`` is imported) registers a finder that answers each old module name with the module
that now holds its code. Old names that became packages (``featrec.core.events``,
``featrec.core.sessions``, ``featrec.core.ranking``) re-export their saved classes instead.

New code imports the new paths; these aliases are for loading old data, and the tests load a
pickle and a model saved under the old names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Final

#: Old module -> the module that holds its code now.
MOVED_MODULES: Final[dict[str, str]] = {
    "featrec.adapters.batch_job": "featrec.jobs.batch",
    "featrec.adapters.deny_list": "featrec.adapters.files.deny_list",
    "featrec.adapters.duckdb_features": "featrec.adapters.duckdb.features",
    "featrec.adapters.evaluation": "featrec.jobs.evaluation",
    "featrec.adapters.event_files": "featrec.adapters.files.event_files",
    "featrec.adapters.event_history": "featrec.adapters.files.event_history",
    "featrec.adapters.event_log": "featrec.adapters.files.event_log",
    "featrec.adapters.feast_repo": "featrec.adapters.feast.repo",
    "featrec.adapters.feast_rows": "featrec.adapters.feast.rows",
    "featrec.adapters.feast_types": "featrec.adapters.feast.types",
    "featrec.adapters.feast_wire": "featrec.adapters.feast.layout.values",
    "featrec.adapters.feast_wire_arrow": "featrec.adapters.feast.layout.arrow",
    "featrec.adapters.feast_wire_decode": "featrec.adapters.feast.layout.decode",
    "featrec.adapters.flow_status": "featrec.adapters.files.flow_status",
    "featrec.adapters.forget": "featrec.jobs.forget",
    "featrec.adapters.log_import": "featrec.jobs.log_import",
    "featrec.adapters.materialize": "featrec.jobs.materialize",
    "featrec.adapters.model_store": "featrec.adapters.files.model_store",
    "featrec.adapters.online_delete": "featrec.adapters.feast.online_delete",
    "featrec.adapters.online_reader": "featrec.adapters.feast.reader",
    "featrec.adapters.online_writers": "featrec.adapters.feast.writers",
    "featrec.adapters.raw_files": "featrec.adapters.files.raw_records",
    "featrec.adapters.redis_bulk_writer": "featrec.adapters.redis.bulk_writer",
    "featrec.adapters.redis_rows": "featrec.adapters.redis.rows",
    "featrec.adapters.redis_streams": "featrec.adapters.redis.streams",
    "featrec.adapters.request_log": "featrec.adapters.sqlite.request_log",
    "featrec.adapters.serving": "featrec.jobs.serving",
    "featrec.adapters.snapshots": "featrec.adapters.files.snapshots",
    "featrec.adapters.sqlite_bulk_writer": "featrec.adapters.sqlite.bulk_writer",
    "featrec.adapters.training_sets": "featrec.jobs.training_sets",
    "featrec.adapters.version_guard": "featrec.adapters.feast.version_guard",
    "featrec.app.ab_report": "featrec.app.evaluation.ab_report",
    "featrec.app.eval_report": "featrec.app.evaluation.report",
    "featrec.app.explain": "featrec.app.serving.explain",
    "featrec.app.http_limits": "featrec.app.serving.http_limits",
    "featrec.app.recommend": "featrec.app.serving.recommender",
    "featrec.app.serving_cache": "featrec.app.serving.cache",
    "featrec.app.serving_config": "featrec.app.serving.config",
    "featrec.app.serving_steps": "featrec.app.serving.steps",
    "featrec.cli.launch": "featrec.jobs.launch",
    "featrec.core.candidate_generation": "featrec.core.candidates.point_generators",
    "featrec.core.catalog": "featrec.core.features.catalog",
    "featrec.core.covisit": "featrec.core.items.covisit",
    "featrec.core.covisit_candidates": "featrec.core.items.session_scorer",
    "featrec.core.experiments": "featrec.core.evaluation.experiments",
    "featrec.core.formats": "featrec.core.events.formats",
    "featrec.core.freshness": "featrec.core.features.freshness",
    "featrec.core.generator": "featrec.core.events.generator",
    "featrec.core.metrics": "featrec.core.evaluation.metrics",
    "featrec.core.rerank": "featrec.core.ranking.rerank",
    "featrec.core.rows": "featrec.core.features.rows",
    "featrec.core.serving_ports": "featrec.core.ports.serving",
    "featrec.core.snapshot_days": "featrec.core.features.snapshot_days",
    "featrec.core.training_examples": "featrec.core.ranking.examples",
    "featrec.core.trending": "featrec.core.items.trending",
}


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and loads it as the new module (the same object)."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module was executed when it was imported."""


_FINDER: Final = _AliasFinder()


def install() -> None:
    """Make the old module names importable (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)
