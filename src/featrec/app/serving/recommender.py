"""Recommending: candidates -> features -> score -> rerank, logged and explainable.

:class:`Recommender` talks only to ports (:mod:`featrec.core.ports.serving`) and to the scoring
core (:mod:`featrec.core.candidates.generation`, :mod:`featrec.core.ranking.ranker`,
:mod:`featrec.core.ranking.rerank`).
One request:

1. **Context** (:mod:`featrec.app.serving.context`): the session row and the user row in one
   store read (when the caller names the user; otherwise the session's ``user_id`` costs a
   second read), once the arguments passed
   :func:`~featrec.app.serving.config.check_request`.
2. **Degraded or not**: no session row, a session row older than ``max_session_age_s``, or an
   unreachable store make the request *degraded*: candidates and scores then use long-term and
   popularity signals only (the user row, trending lists), read from the in-process caches if
   the store is down, and the answer says why. Store trouble never raises to the caller; after a
   failure the store is left alone for ``store_retry_s`` (requests do not queue on timeouts).
3. **Cache**: a non-degraded answer is cached under the session's ``version`` (see
   :class:`~featrec.app.serving.cache.ResponseCache`); the same request for the same version is
   answered from it, with the same request id.
4. **Candidates and features**: neighbour lists, trending lists and item rows come through a
   :class:`~featrec.app.serving.cache.RowCache` with bounded staleness
   (:class:`~featrec.app.serving.row_signals.RowSignals`). What the request path derives from a
   cached row is derived once per row read and reused while the cache hands out that row: the
   decoded neighbour lists (:class:`~featrec.app.serving.row_signals.PairsMemo`), an item's
   merged row, log entries and ranking columns
   (:class:`~featrec.core.ranking.item_table.ItemTable`, gathered per request by index).
5. **Score**: the loaded ranker on :func:`~featrec.core.ranking.ranker.ranking_matrix`; without a
   model, the co-visitation scorer's candidate order; degraded,
   :func:`~featrec.core.ranking.ranker.fallback_scores`.
6. **Rerank** (:func:`~featrec.core.ranking.rerank.rerank`): purchased items dropped, diversity cap,
   popularity damping, stability against the list this session was shown before its newest
   event.
7. **Log**: a :class:`~featrec.app.serving.record.ServedRequest`: the request, candidates, the
   rows used (with their timestamps), model version, raw scores and every rerank decision.
   :meth:`Recommender.explain` re-scores a logged request from the log alone and checks that
   it gets the same scores, bit for bit, and the same list.

**Experiments.** With ``ServingConfig.experiment`` set, every request is bucketed into an arm
(:func:`featrec.core.evaluation.experiments.assign`, by user when known, else by session), before
the
cache: the arm may change the scorer or the model version (a version is loaded once, when the
recommender is built). A degraded request keeps its arm but scores with the fallback like any
other (the analysis compares arms as assigned). The answer and the log body carry the
experiment, the arm and the unit it was bucketed by; ``explain`` re-scores with the logged
scorer and model version, so it reproduces an arm's answer like any other.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Final

from featrec.app.serving.answers import Health, Recommendation, RecommendedItem
from featrec.app.serving.cache import ResponseCache, RowCache
from featrec.app.serving.config import (
    DEGRADED_CODES,
    MAX_ID_LENGTH,
    MAX_K,
    MAX_SHOWN,
    STORE_FAILED,
    ServingConfig,
    check_request,
)
from featrec.app.serving.context import (
    ContextReader,
    RequestContext,
    degraded_reason,
    session_version,
)
from featrec.app.serving.explain import Explanation, explain_request
from featrec.app.serving.record import ArmAssignment, ServedRequest
from featrec.app.serving.row_signals import PairsMemo, RowSignals
from featrec.app.serving.steps import (
    SCORER_MODEL,
    LoadedModel,
    ModelLoader,
    choose_scorer,
    declared_block,
    post_process,
    purchased_items,
    score,
    strings,
    values_of,
)
from featrec.core.candidates.generation import (
    context_categories,
    generate,
)
from featrec.core.evaluation.experiments import assign
from featrec.core.features.catalog import (
    ITEM_FEATURES,
    ITEM_TRENDING,
    SESSION_FEATURES,
    USER_FEATURES,
)
from featrec.core.features.declared.ranking import wanted_rows
from featrec.core.ports.serving import (
    Clock,
    DeferredRequestLog,
    LoggedRow,
    RequestLog,
    RowReader,
    StampedRow,
)
from featrec.core.ranking.item_table import ItemColumns, ItemTable
from featrec.core.ranking.ranker import item_row
from featrec.errors import ConfigError, FeatrecError, StoreError

__all__ = [
    "DEGRADED_CODES",
    "MAX_ID_LENGTH",
    "MAX_K",
    "MAX_SHOWN",
    "Explanation",
    "Health",
    "LoadedModel",
    "ModelLoader",
    "Recommendation",
    "RecommendedItem",
    "Recommender",
    "RowSignals",
    "ServingConfig",
]

#: An item's rows (``item_features``, ``item_trending``), their merged row, log entries and
#: slot in the recommender's :class:`ItemTable`.
_ItemView = tuple[
    StampedRow | None,
    StampedRow | None,
    dict[str, object] | None,
    tuple[LoggedRow, LoggedRow],
    int,
]

#: The session key the health probe reads (it need not exist).
HEALTH_PROBE_KEY: Final = "__featrec_health__"


class Recommender:
    """Answers ``recommend`` and ``explain`` (see the module docstring).

    ``clock`` is the time ages are judged at and scores computed for (unix seconds of event
    time: a replay passes its own), ``monotonic`` times the caches and the store back-off,
    ``wall_clock`` stamps the request log.
    """

    def __init__(
        self,
        rows: RowReader,
        log: RequestLog,
        *,
        model: LoadedModel | None = None,
        models: ModelLoader | None = None,
        config: ServingConfig | None = None,
        clock: Clock = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self.rows = rows
        self.log = log
        self.model = model
        self._models = models
        self.config = config if config is not None else ServingConfig()
        self._clock = clock
        self._wall_clock = wall_clock
        self._context = ContextReader(rows, self.config, monotonic)
        self.item_cache = RowCache(
            rows,
            max_age_s=self.config.item_cache_s,
            capacity=self.config.item_cache_rows,
            monotonic=monotonic,
        )
        self.responses: ResponseCache[Recommendation] = ResponseCache(self.config.cache_sessions)
        self._counters = threading.Lock()
        self.log_failures = 0
        self.last_log_error: str | None = None
        self._arm_models: dict[str, LoadedModel] = {}
        self._arm_models = self._load_arm_models()
        self._views: dict[str, _ItemView] = {}
        self._item_table = ItemTable()
        self._pairs = PairsMemo(self.item_cache.capacity)
        self._table_lock = threading.Lock()
        self._defer = log.append_deferred if isinstance(log, DeferredRequestLog) else None

    def _load_arm_models(self) -> dict[str, LoadedModel]:
        """The model of every arm that names a version (loaded now, not on the request path);
        an arm that scores with "the model" must have one loaded."""
        experiment = self.config.experiment
        out: dict[str, LoadedModel] = {}
        if experiment is None:
            return out
        for arm in experiment.arms:
            config = experiment.config_of(arm)
            version = config.model_version
            if version is not None:
                out[arm] = self._model_for(version)
            elif config.scorer == SCORER_MODEL and self.model is None:
                raise ConfigError(
                    f"arm {arm!r} of experiment {experiment.name!r} scores with the model, but "
                    "no model is loaded"
                )
        return out

    # -- recommend ---------------------------------------------------------------------------

    def recommend(
        self,
        session_id: str,
        user_id: str | None = None,
        k: int = 20,
        shown: Sequence[str] | None = None,
    ) -> Recommendation:
        """The ``k`` best items for the session now. Never raises for store trouble: the
        answer is degraded instead. Bad arguments raise :class:`ConfigError`."""
        check_request(session_id, user_id, k, shown)
        now_s = self._clock()
        context = self._context.read(session_id, user_id, now_s)
        arm = self._arm_of(session_id, context.user_id)
        code, reason = degraded_reason(session_id, context, now_s, self.config.max_session_age_s)
        session = context.session
        version = session_version(session) if reason is None else None
        cache_key = None
        if version is not None:
            cache_key = self._cache_key(context, arm, k, shown)
            hit = self.responses.get(session_id, version, cache_key)
            if hit is not None:
                return replace(hit, cached=True)
        shown_before: Sequence[str] | None = shown
        if shown_before is None and version is not None:
            shown_before = self.responses.shown_before(session_id, version)
        offline = context.failure is not None
        try:
            answer, record = self._answer(
                session_id, context, arm, code, reason, k, shown, shown_before, now_s, offline
            )
        except StoreError as e:
            # The store failed after the context read: answer again without it.
            self._context.store_failed(e)
            code, reason = STORE_FAILED, f"online store failed: {e}"
            context = replace(context, failure=e)
            answer, record = self._answer(
                session_id, context, arm, code, reason, k, shown, shown_before, now_s, True
            )
            version = cache_key = None
        answer = replace(answer, logged=self._append(record))
        if version is not None and cache_key is not None:
            self.responses.put(
                session_id, version, cache_key, answer, [item.item_id for item in answer.items]
            )
        return answer

    def _arm_of(self, session_id: str, user_id: str | None) -> ArmAssignment | None:
        experiment = self.config.experiment
        if experiment is None:
            return None
        unit, unit_id = experiment.unit_of(session_id, user_id)
        return ArmAssignment(
            experiment.name, assign(experiment, unit_id), experiment.control_arm, unit, unit_id
        )

    def _cache_key(
        self,
        context: RequestContext,
        arm: ArmAssignment | None,
        k: int,
        shown: Sequence[str] | None,
    ) -> tuple[Any, ...]:
        user_ts = context.user.ts_us if context.user is not None else None
        model = self.model.version if self.model is not None else None
        shown_key = None if shown is None else tuple(shown)
        return (context.user_id, user_ts, k, model, shown_key, arm.arm if arm else None)

    def _answer(
        self,
        session_id: str,
        context: RequestContext,
        arm: ArmAssignment | None,
        code: str | None,
        reason: str | None,
        k: int,
        shown: Sequence[str] | None,
        shown_before: Sequence[str] | None,
        now_s: float,
        offline: bool,
    ) -> tuple[Recommendation, ServedRequest]:
        cfg = self.config
        session = context.session if reason is None else None
        user = context.user
        session_values = session.values if session is not None else None
        user_values = user.values if user is not None else None
        signals = RowSignals(self.item_cache, user, offline=offline, pairs=self._pairs)
        last_items = strings(session_values.get("last_items")) if session_values else []
        candidates = generate(
            last_items,
            None,
            context.user_id,
            signals,
            cfg.candidates,
            categories=context_categories(session_values, user_values),
            session_id=session_id,
        )
        ids = [c.item_id for c in candidates]
        found = self.item_cache.get(
            {ITEM_FEATURES.name: ids, ITEM_TRENDING.name: ids}, offline=offline
        )
        views, items = self._item_views(ids, found[ITEM_FEATURES.name], found[ITEM_TRENDING.name])
        override = None
        model = self.model
        if arm is not None and cfg.experiment is not None:
            override = cfg.experiment.config_of(arm.arm).effective_scorer
            model = self._arm_models.get(arm.arm, model)
        if reason is not None:
            model = None
        scorer = choose_scorer(reason, model, override)
        if scorer != SCORER_MODEL:
            model = None
        declared_rows = self._declared_rows(model, session_id, context.user_id, ids)
        declared = declared_block(model, declared_rows, session_id, context.user_id, candidates)
        raw = score(
            scorer,
            model,
            candidates,
            session_values,
            user_values,
            items,
            now_s,
            cfg.rank_top,
            declared,
        )
        purchased = purchased_items(user_values)
        decisions = post_process(
            candidates, raw, items, now_s, purchased, shown_before, k, cfg.rerank
        )

        request_id = uuid.uuid4().hex
        version = session_version(session)
        model_version = model.version if model is not None else None
        by_id = {c.item_id: c for c in candidates}
        answer = Recommendation(
            request_id=request_id,
            session_id=session_id,
            user_id=context.user_id,
            items=tuple(
                RecommendedItem(d.item_id, d.score, d.rank, by_id[d.item_id].reasons() + d.reasons)
                for d in decisions
                if d.kept and d.rank is not None
            ),
            degraded=reason is not None,
            degraded_reason=reason,
            degraded_code=code,
            model_version=model_version,
            scorer=scorer,
            session_version=version,
            experiment=arm.experiment if arm is not None else None,
            arm=arm.arm if arm is not None else None,
        )
        logged = [
            LoggedRow(SESSION_FEATURES.name, session_id, context.session, "session"),
            *(
                [LoggedRow(USER_FEATURES.name, context.user_id, context.user_read, "user")]
                if context.user_id is not None
                else []
            ),
        ]
        for view in views:
            logged += view[3]
        if declared_rows:
            assert model is not None  # declared rows are read for a model only
            entity = {c.view: c.entity for c in model.declared}
            logged += [
                LoggedRow(view, key, row, entity[view])
                for (view, key), row in declared_rows.items()
            ]
        record = ServedRequest(
            request_id=request_id,
            created_at_s=self._wall_clock(),
            session_id=session_id,
            user_id=context.user_id,
            k=k,
            shown=None if shown is None else tuple(shown),
            shown_before=None if shown_before is None else tuple(shown_before),
            now_s=now_s,
            degraded_reason=reason,
            degraded_code=code,
            notes=context.notes,
            scorer=scorer,
            model_version=model_version,
            session_version=version,
            session_used=session is not None,
            rank_top=cfg.rank_top,
            rerank=cfg.rerank,
            candidates=tuple(candidates),
            raw_scores=tuple(raw.tolist()),
            decisions=tuple(decisions),
            experiment=arm,
            rows=tuple(logged),
        )
        return answer, record

    def _declared_rows(
        self, model: LoadedModel | None, session_id: str, user_id: str | None, ids: list[str]
    ) -> dict[tuple[str, str], StampedRow | None]:
        """The online rows of the declared features the model reads (a store failure raises
        :class:`StoreError`: the request is answered again, degraded)."""
        if model is None or not model.declared:
            return {}
        wanted = wanted_rows(model.declared, session_id, user_id, ids)
        found = self.rows.read_rows(wanted)
        return {
            (view, key): row
            for view, keys in wanted.items()
            for key, row in zip(keys, found[view], strict=True)
        }

    def _item_views(
        self,
        ids: Sequence[str],
        features: Sequence[StampedRow | None],
        trending: Sequence[StampedRow | None],
    ) -> tuple[list[_ItemView], ItemColumns]:
        """Per item, its two rows, their merged :func:`item_row`, their log entries and its
        ranking columns (:class:`ItemTable`), made once per pair of rows: the row cache hands
        out the same row objects until it re-reads them, so an item's merged row, log entries
        and columns are reused while its rows are (the merged row is only read, never
        changed). Returns the views and the items' columns gathered in ``ids`` order."""
        memo = self._views
        table = self._item_table
        out: list[_ItemView] = []
        slots: list[int] = []
        with self._table_lock:
            if len(memo) + len(ids) > self.item_cache.capacity:
                memo.clear()
                table.clear()
            for item, f, t in zip(ids, features, trending, strict=True):
                view = memo.get(item)
                if view is None or view[0] is not f or view[1] is not t:
                    merged = item_row(values_of(f), values_of(t))
                    if view is None:
                        slot = table.add(merged)
                    else:
                        slot = view[4]
                        table.put(slot, merged)
                    view = memo[item] = (
                        f,
                        t,
                        merged,
                        (
                            LoggedRow(ITEM_FEATURES.name, item, f, "item"),
                            LoggedRow(ITEM_TRENDING.name, item, t, "item"),
                        ),
                        slot,
                    )
                out.append(view)
                slots.append(view[4])
            columns = table.gather(ids, [view[2] for view in out], slots)
        return out, columns

    def _append(self, record: ServedRequest) -> bool:
        try:
            if self._defer is not None:
                self._defer(record.to_record)  # the body is built by the log's writer thread
            else:
                self.log.append(record.to_record())
        except FeatrecError as e:
            self.log_failed(1, str(e))
            return False
        return True

    def log_failed(self, count: int, message: str) -> None:
        """Count request-log records that were not stored (also called by a log that writes
        asynchronously, for records it had accepted)."""
        with self._counters:
            self.log_failures += count
            self.last_log_error = message

    def now(self) -> float:
        """The time requests are answered at (unix seconds, see the class docstring)."""
        return self._clock()

    def health(self) -> Health:
        """Probes the store with one read (ignoring the failure back-off)."""
        try:
            self.rows.read_rows({SESSION_FEATURES.name: [HEALTH_PROBE_KEY]})
        except StoreError as e:
            store = f"unreachable: {e}"
        else:
            store = "reachable"
        return Health(
            store=store,
            model_version=self.model.version if self.model is not None else None,
            log_failures=self.log_failures,
            last_log_error=self.last_log_error,
        )

    # -- explain -----------------------------------------------------------------------------

    def explain(self, request_id: str) -> Explanation:
        """Re-score a logged request from the log alone (see :mod:`featrec.app.serving.explain`)."""
        return explain_request(self.log, self._model_for, request_id)

    def _model_for(self, version: str | None) -> LoadedModel:
        if version is None:
            raise ConfigError("the logged request was scored by a model without a version")
        if self.model is not None and self.model.version == version:
            return self.model
        for model in self._arm_models.values():
            if model.version == version:
                return model
        if self._models is None:
            raise ConfigError(
                f"the request was scored by model {version!r}, which is not loaded: "
                "point featrec at the model store that holds it"
            )
        return self._models(version)
