"""Wiring of the serving path: a :class:`~featrec.app.serving.recommender.Recommender` from
settings.

Used by ``featrec recommend``, ``featrec explain`` and ``featrec serve`` (the HTTP app builds it
from ``FEATREC_*`` variables in its own process, see :func:`options_from_settings`).

- Rows: :class:`~featrec.adapters.redis.rows.RedisRowReader` on Redis (Feast's layout read
  directly), :class:`~featrec.adapters.feast.rows.FeastRowReader` otherwise (stock SDK).
- Request log: SQLite in ``<home>/requests/``, one file per hour (default: it keeps working
  when Redis does not; :mod:`featrec.adapters.sqlite.partitioned_log`), or Redis
  (``request_log="redis"``: shared by every server process), written by a
  :class:`~featrec.adapters.background_log.BackgroundRequestLog` off the request path. Both
  keep entries ``request_log_keep_h`` hours (default a week).
- Model: a version under ``<home>/models`` (the trusted directory), loaded by
  :mod:`featrec.adapters.files.model_store` (path, manifest, sha256 and feature list checked):
  ``"auto"`` is the newest version if there is one, ``"none"`` scores by candidate order.
  ``explain`` loads whichever version a logged request used from the same directory.
- Experiment: ``ServingConfig.experiment`` (an A/B split, see
:mod:`featrec.core.evaluation.experiments`);
  ``featrec serve`` hands it to the HTTP workers as JSON in :data:`ENV_EXPERIMENT`.
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from featrec.adapters.background_log import BackgroundRequestLog
from featrec.adapters.redis.request_log import RedisRequestLog
from featrec.adapters.sqlite.partitioned_log import (
    PartitionedRequestLog,
    sqlite_request_log,
)
from featrec.app.serving.config import DEFAULT_REQUEST_LOG_KEEP_H, REQUEST_LOGS
from featrec.app.serving.recommender import LoadedModel, ModelLoader, Recommender, ServingConfig
from featrec.app.serving.steps import SERVED_FEATURES
from featrec.core.candidates.config import CandidateConfig
from featrec.core.evaluation.experiments import experiment_from_dict
from featrec.core.features.declared.ranking import DeclaredColumn
from featrec.core.ports.serving import Clock, RowReader
from featrec.core.ranking.ranker import RANKING_FEATURES
from featrec.errors import ConfigError
from featrec.settings import ServeSettings, Settings

#: Environment variables through which ``featrec serve`` hands its options to the HTTP app
#: (declared in :class:`~featrec.settings.ServeSettings`).
ENV_MODEL = ServeSettings.variable("model")
ENV_REQUEST_LOG = ServeSettings.variable("request_log")
ENV_MAX_SESSION_AGE = ServeSettings.variable("max_session_age_s")
ENV_ITEM_CACHE = ServeSettings.variable("item_cache_s")
ENV_CANDIDATES = ServeSettings.variable("candidates")
ENV_REQUEST_LOG_KEEP = ServeSettings.variable("request_log_keep_h")
#: The A/B experiment as JSON (:meth:`featrec.core.evaluation.experiments.Experiment.to_dict`).
ENV_EXPERIMENT = ServeSettings.variable("experiment")


@dataclass(frozen=True, slots=True)
class ServingOptions:
    """What to serve with, beyond :class:`Settings`. Validated."""

    request_log: str = "sqlite"
    #: ``"auto"`` (newest version, none if there is none), ``"none"``, ``"latest"`` (newest,
    #: which must exist) or a version name under ``<home>/models``.
    model: str = "auto"
    config: ServingConfig = field(default_factory=ServingConfig)
    #: Hours the request log keeps its entries (SQLite: whole hours deleted; Redis: expiry).
    request_log_keep_h: float = DEFAULT_REQUEST_LOG_KEEP_H

    def __post_init__(self) -> None:
        if self.request_log not in REQUEST_LOGS:
            raise ConfigError(
                f"request log must be one of {', '.join(REQUEST_LOGS)}, got {self.request_log!r}"
            )
        check_keep_h(self.request_log_keep_h)

    def to_env(self) -> dict[str, str]:
        experiment = self.config.experiment
        return {
            ENV_REQUEST_LOG: self.request_log,
            ENV_MODEL: self.model,
            ENV_MAX_SESSION_AGE: repr(self.config.max_session_age_s),
            ENV_ITEM_CACHE: repr(self.config.item_cache_s),
            ENV_CANDIDATES: str(self.config.candidates.max_total),
            ENV_REQUEST_LOG_KEEP: repr(self.request_log_keep_h),
            ENV_EXPERIMENT: json.dumps(experiment.to_dict()) if experiment is not None else "",
        }


def pool_config(n: int) -> CandidateConfig:
    """Candidate caps that score ``n`` candidates per request: the session's neighbours and
    items first, topped up with popular items (fewer only when the catalogue has fewer)."""
    if n < 1:
        raise ConfigError(f"the candidate pool must be >= 1, got {n}")
    base = CandidateConfig()
    return replace(
        base, max_covisit=max(base.max_covisit, n), max_total=n, min_total=n, max_popular=n
    )


def options_from_env(environ: Mapping[str, str]) -> ServingOptions:
    """The options :meth:`ServingOptions.to_env` wrote (defaults for unset variables)."""
    return options_from_settings(ServeSettings.from_env(environ))


def options_from_settings(serve: ServeSettings) -> ServingOptions:
    """The serving options of validated ``FEATREC_SERVE_*`` variables."""
    config = ServingConfig(
        max_session_age_s=serve.max_session_age_s, item_cache_s=serve.item_cache_s
    )
    changes: dict[str, Any] = {}
    if serve.candidates != config.candidates.max_total:
        changes["candidates"] = pool_config(serve.candidates)
    if serve.experiment is not None:
        try:
            changes["experiment"] = experiment_from_dict(serve.experiment)
        except ConfigError as e:
            raise ConfigError(f"{ENV_EXPERIMENT}: {e}") from None
    if changes:
        config = replace(config, **changes)
    return ServingOptions(
        request_log=serve.request_log,
        model=serve.model,
        config=config,
        request_log_keep_h=serve.request_log_keep_h,
    )


def open_rows(settings: Settings, declared: bool = False) -> RowReader:
    """The fastest row reader for the configured online store (``declared``: it reads the
    declared views too, for a model that uses declared features)."""
    if settings.online_store == "redis":
        from featrec.adapters.redis.rows import open_redis_row_reader
        from featrec.core.features import catalog

        views = dict(catalog.VIEWS)
        if declared:
            from featrec.adapters.feast.declared import applied_declarations
            from featrec.adapters.feast.repo import open_store

            views.update((d.name, d.view()) for d in applied_declarations(open_store(settings)))
        return open_redis_row_reader(settings, SERVED_FEATURES, views)
    from featrec.adapters.feast.repo import open_store
    from featrec.adapters.feast.rows import FeastRowReader

    return FeastRowReader(open_store(settings), SERVED_FEATURES)


def open_request_log(
    settings: Settings, kind: str, *, keep_h: float | None = None
) -> PartitionedRequestLog | RedisRequestLog:
    """The request log ``kind`` names. ``keep_h``: hours its entries are kept, for a writer
    (None: a reader, which deletes nothing; Redis entries then expire after the default)."""
    if keep_h is not None:
        check_keep_h(keep_h)
    if kind == "redis":
        from featrec.adapters.redis.rows import serving_online_client

        hours = DEFAULT_REQUEST_LOG_KEEP_H if keep_h is None else keep_h
        return RedisRequestLog(
            serving_online_client(settings), ttl_s=round(hours * 3600), owns_client=True
        )
    if kind == "sqlite":
        return sqlite_request_log(settings, keep_h=keep_h)
    raise ConfigError(f"request log must be one of {', '.join(REQUEST_LOGS)}, got {kind!r}")


def check_keep_h(keep_h: float) -> None:
    if not (math.isfinite(keep_h) and keep_h >= 1):
        raise ConfigError(f"the request log must keep at least 1 hour, got {keep_h!r}")


def load_model(settings: Settings, model: str) -> LoadedModel | None:
    """The model ``model`` names (see :class:`ServingOptions`), or None."""
    from featrec.adapters.files import model_store

    root = model_store.models_dir(settings.home)
    if model == "none":
        return None
    if model in ("auto", "latest"):
        if model == "auto" and not model_store.list_versions(root):
            return None
        loaded = model_store.load_latest(root)
    else:
        if not model or model.startswith(".") or "/" in model or "\\" in model:
            raise ConfigError(f"invalid model version {model!r}")
        if not (root / model).is_dir():
            raise ConfigError(
                f"model {model!r} is not in {root} (versions: "
                f"{', '.join(model_store.list_versions(root)) or 'none'})"
            )
        loaded = model_store.load_model(root / model, trusted_root=root)
    extras = loaded.manifest.features[len(RANKING_FEATURES) :]
    declared: tuple[DeclaredColumn, ...] = ()
    if extras:
        from featrec.adapters.feast.declared import model_columns
        from featrec.adapters.feast.repo import open_store

        declared = model_columns(open_store(settings), extras)
    return LoadedModel(loaded.version, loaded.predictor, declared)


def model_loader(settings: Settings) -> ModelLoader:
    """Loads a version from ``<home>/models`` (for explaining requests of older models)."""

    def load(version: str) -> LoadedModel:
        if version in ("auto", "latest", "none"):
            raise ConfigError(f"invalid model version {version!r}")
        loaded = load_model(settings, version)
        assert loaded is not None
        return loaded

    return load


def open_recommender(
    settings: Settings, options: ServingOptions, *, clock: Clock = time.time
) -> Recommender:
    """A recommender on the configured store, request log and model (``clock``: the time
    session ages are judged at; a replay passes its event-time clock)."""
    log = BackgroundRequestLog(
        open_request_log(settings, options.request_log, keep_h=options.request_log_keep_h)
    )
    model = load_model(settings, options.model)
    recommender = Recommender(
        open_rows(settings, declared=model is not None and bool(model.declared)),
        log,
        model=model,
        models=model_loader(settings),
        config=options.config,
        clock=clock,
    )
    log.on_error = recommender.log_failed
    return recommender


#: The garbage collector's thresholds in a serving process (see :func:`settle_heap`).
SERVING_GC_THRESHOLDS = (10_000, 10, 1000)


def settle_heap() -> None:
    """Keep the collector's pauses off the request path of a long-running serving process.

    A request frees nearly everything it makes by reference counting, but the collector still
    walks the long-lived heap (the model, the row caches: millions of objects) on every full
    collection: 100-300 ms pauses at 200 candidates per request on this project's machine.
    Everything alive at start-up is moved out of its reach (``gc.freeze``), and a full
    collection runs after 1,000 middle-generation ones instead of 10: p99 went from ~200 ms
    to ~15 ms in-process (benchmarks/recommend.py). Young collections run every 10,000
    allocations instead of 700: at 200 candidates a request keeps a few thousand objects alive
    until it ends, so at 700 the collector ran ~1.3-1.4 young passes per request over them
    (~400-450 CPU-us per request); at 10,000 it runs ~0.03 (~50 us), and its longest pause
    was ~3 ms. Call once, when the recommender is built.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)
