"""Recommending: candidates -> features -> score -> rerank, logged and explainable.

:class:`Recommender` talks only to ports (:mod:`featrec.core.ports.serving`) and to the scoring
core (:mod:`featrec.core.candidates.generation`, :mod:`featrec.core.ranking.ranker`,
:mod:`featrec.core.ranking.rerank`).
One request:

1. **Context**: the session row and the user row in one store read (when the caller names the
   user; otherwise the session's ``user_id`` costs a second read).
2. **Degraded or not**: no session row, a session row older than ``max_session_age_s``, or an
   unreachable store make the request *degraded*: candidates and scores then use long-term and
   popularity signals only (the user row, trending lists), read from the in-process caches if
   the store is down, and the answer says why. Store trouble never raises to the caller; after a
   failure the store is left alone for ``store_retry_s`` (requests do not queue on timeouts).
3. **Cache**: a non-degraded answer is cached under the session's ``version`` (see
   :class:`~featrec.app.serving.cache.ResponseCache`); the same request for the same version is
   answered from it, with the same request id.
4. **Candidates and features**: neighbour lists, trending lists and item rows come through a
   :class:`~featrec.app.serving.cache.RowCache` with bounded staleness.
5. **Score**: the loaded ranker on :func:`~featrec.core.ranking.ranker.ranking_matrix`; without a
   model, the co-visitation scorer's candidate order; degraded,
   :func:`~featrec.core.ranking.ranker.fallback_scores`.
6. **Rerank** (:func:`~featrec.core.ranking.rerank.rerank`): purchased items dropped, diversity cap,
   popularity damping, stability against the list this session was shown before its newest
   event.
7. **Log**: the request, candidates, the rows used (with their timestamps), model version, raw
   scores and every rerank decision. :meth:`Recommender.explain` re-scores a logged request from
   the log alone and checks that it gets the same scores, bit for bit, and the same list.

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

import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from featrec.app.item_signals import trending_key
from featrec.app.serving.cache import ResponseCache, RowCache
from featrec.app.serving.config import (
    DEGRADED_CODES,
    MAX_ID_LENGTH,
    MAX_K,
    MAX_SHOWN,
    NO_SESSION,
    STALE_SESSION,
    STORE_FAILED,
    STORE_UNREACHABLE,
    ServingConfig,
)
from featrec.app.serving.explain import Explanation, explain_request
from featrec.app.serving.steps import (
    LOG_SCHEMA,
    SCORER_MODEL,
    LoadedModel,
    ModelLoader,
    choose_scorer,
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
from featrec.core.evaluation.experiments import Experiment, assign
from featrec.core.features.catalog import (
    ITEM_FEATURES,
    ITEM_NEIGHBOURS,
    ITEM_TRENDING,
    SESSION_FEATURES,
    USER_FEATURES,
)
from featrec.core.ports.serving import (
    Clock,
    LoggedRow,
    RequestLog,
    RequestRecord,
    RowReader,
    StampedRow,
)
from featrec.core.ranking.ranker import item_row
from featrec.errors import ConfigError, FeatrecError, StoreError, StoreUnavailable

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


@dataclass(frozen=True, slots=True)
class RecommendedItem:
    item_id: str
    score: float
    rank: int
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One answer. ``cached``: served from the version cache (same request id as the answer
    that was computed); ``logged``: the request log has it (explainable)."""

    request_id: str
    session_id: str
    user_id: str | None
    items: tuple[RecommendedItem, ...]
    degraded: bool
    degraded_reason: str | None
    model_version: str | None
    scorer: str
    session_version: int | None
    #: Why degraded, as a short code for metrics (one of :data:`DEGRADED_CODES`).
    degraded_code: str | None = None
    cached: bool = False
    logged: bool = True
    #: The A/B experiment and the arm this request was bucketed into (None: no experiment).
    experiment: str | None = None
    arm: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["items"] = [asdict(item) for item in self.items]
        return out


@dataclass(frozen=True, slots=True)
class Health:
    """``store`` is ``"reachable"`` or ``"unreachable: <why>"``."""

    store: str
    model_version: str | None
    log_failures: int
    last_log_error: str | None

    @property
    def ok(self) -> bool:
        return self.store == "reachable"


#: The session key the health probe reads (it need not exist).
HEALTH_PROBE_KEY: Final = "__featrec_health__"


@dataclass(frozen=True, slots=True)
class _Arm:
    """The arm of one request and the unit it was bucketed by."""

    experiment: Experiment
    name: str
    unit: str
    unit_id: str

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.experiment.name,
            "arm": self.name,
            "control": self.experiment.control_arm,
            "unit": self.unit,
            "unit_id": self.unit_id,
        }


@dataclass(frozen=True, slots=True)
class _Context:
    session: StampedRow | None
    user: StampedRow | None
    user_id: str | None
    failure: StoreError | None
    notes: tuple[str, ...] = ()
    #: The user row as read (``user`` is None when it was ignored as stale).
    user_read: StampedRow | None = None


class RowSignals:
    """:class:`featrec.core.candidates.generation.SignalLookup` over ``item_neighbours`` rows
    (neighbour
    lists, and trending lists under their pseudo-item keys) through a :class:`RowCache`; the
    user's history is the ``recent_purchases`` of the user row already read.

    ``offline``: never touch the store, answer from the cache however old (the store is down).
    """

    def __init__(self, cache: RowCache, user: StampedRow | None, *, offline: bool = False) -> None:
        self._cache = cache
        self._user = user
        self._offline = offline

    def _lists(self, keys: Sequence[str]) -> list[StampedRow | None]:
        found = self._cache.get({ITEM_NEIGHBOURS.name: keys}, offline=self._offline)
        return found[ITEM_NEIGHBOURS.name]

    def neighbours(self, items: Sequence[str]) -> dict[str, Sequence[tuple[str, float]]]:
        out: dict[str, Sequence[tuple[str, float]]] = {}
        for item, row in zip(items, self._lists(items), strict=True):
            if row is not None:
                out[item] = _pairs(row)
        return out

    def trending(self, category: str | None = None) -> Sequence[tuple[str, float]]:
        [row] = self._lists([trending_key(category)])
        return () if row is None else _pairs(row)

    def user_history(self, user_id: str) -> Sequence[str]:
        if self._user is None:
            return ()
        return strings(self._user.values.get("recent_purchases"))


def _pairs(row: StampedRow) -> list[tuple[str, float]]:
    ids = row.values.get("neighbour_ids") or []
    weights = row.values.get("neighbour_weights") or []
    assert isinstance(ids, list | tuple) and isinstance(weights, list | tuple)
    return list(zip(ids, weights, strict=False))


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
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self.item_cache = RowCache(
            rows,
            max_age_s=self.config.item_cache_s,
            capacity=self.config.item_cache_rows,
            monotonic=monotonic,
        )
        self.responses: ResponseCache[Recommendation] = ResponseCache(self.config.cache_sessions)
        self._store_down_until = -math.inf
        self._store_error = ""
        self._counters = threading.Lock()
        self.log_failures = 0
        self.last_log_error: str | None = None
        self._arm_models: dict[str, LoadedModel] = {}
        self._arm_models = self._load_arm_models()

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
        _check_request(session_id, user_id, k, shown)
        now_s = self._clock()
        context = self._read_context(session_id, user_id, now_s)
        arm = self._arm_of(session_id, context.user_id)
        code, reason = self._degraded_reason(session_id, context, now_s)
        session = context.session
        version = _session_version(session) if reason is None else None
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
            self._store_failed(e)
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

    def _read_context(self, session_id: str, user_id: str | None, now_s: float) -> _Context:
        if self._monotonic() < self._store_down_until:
            failure = StoreUnavailable(
                f"not retried for {self.config.store_retry_s:g} s after: {self._store_error}"
            )
            return _Context(None, None, user_id, failure)
        wanted: dict[str, list[str]] = {SESSION_FEATURES.name: [session_id]}
        if user_id is not None:
            wanted[USER_FEATURES.name] = [user_id]
        try:
            found = self.rows.read_rows(wanted)
            session = found[SESSION_FEATURES.name][0]
            user = found[USER_FEATURES.name][0] if user_id is not None else None
            if user_id is None and session is not None:
                named = session.values.get("user_id")
                if isinstance(named, str) and named:
                    user_id = named
                    user = self.rows.read_rows({USER_FEATURES.name: [named]})[USER_FEATURES.name][0]
        except StoreError as e:
            self._store_failed(e)
            return _Context(None, None, user_id, e)
        notes: tuple[str, ...] = ()
        user_read = user
        max_user_age = self.config.max_user_age_s
        if user is not None and max_user_age is not None:
            age = now_s - user.ts_us / 1e6
            if age > max_user_age:
                notes = (f"user features ignored: {age / 86_400:.1f} days old",)
                user = None
        return _Context(session, user, user_id, None, notes, user_read)

    def _arm_of(self, session_id: str, user_id: str | None) -> _Arm | None:
        experiment = self.config.experiment
        if experiment is None:
            return None
        unit, unit_id = experiment.unit_of(session_id, user_id)
        return _Arm(experiment, assign(experiment, unit_id), unit, unit_id)

    def _store_failed(self, error: StoreError) -> None:
        self._store_error = str(error)
        self._store_down_until = self._monotonic() + self.config.store_retry_s

    def _degraded_reason(
        self, session_id: str, context: _Context, now_s: float
    ) -> tuple[str | None, str | None]:
        """``(code, reason)`` of a degraded answer, ``(None, None)`` when not degraded."""
        if context.failure is not None:
            return STORE_UNREACHABLE, f"online store unreachable: {context.failure}"
        if context.session is None:
            return NO_SESSION, f"no session features for session {session_id!r}"
        age = now_s - context.session.ts_us / 1e6
        if age > self.config.max_session_age_s:
            return STALE_SESSION, (
                f"session features are {age:.0f} s old (limit {self.config.max_session_age_s:g} "
                "s): the session stream may be down"
            )
        return None, None

    def _cache_key(
        self, context: _Context, arm: _Arm | None, k: int, shown: Sequence[str] | None
    ) -> tuple[Any, ...]:
        user_ts = context.user.ts_us if context.user is not None else None
        model = self.model.version if self.model is not None else None
        shown_key = None if shown is None else tuple(shown)
        return (context.user_id, user_ts, k, model, shown_key, arm.name if arm else None)

    def _answer(
        self,
        session_id: str,
        context: _Context,
        arm: _Arm | None,
        code: str | None,
        reason: str | None,
        k: int,
        shown: Sequence[str] | None,
        shown_before: Sequence[str] | None,
        now_s: float,
        offline: bool,
    ) -> tuple[Recommendation, RequestRecord]:
        cfg = self.config
        session = context.session if reason is None else None
        user = context.user
        session_values = session.values if session is not None else None
        user_values = user.values if user is not None else None
        signals = RowSignals(self.item_cache, user, offline=offline)
        last_items = strings(session_values.get("last_items")) if session_values else []
        candidates = generate(
            last_items,
            None,
            context.user_id,
            signals,
            cfg.candidates,
            categories=context_categories(session_values, user_values),
        )
        ids = [c.item_id for c in candidates]
        found = self.item_cache.get(
            {ITEM_FEATURES.name: ids, ITEM_TRENDING.name: ids}, offline=offline
        )
        item_rows = list(zip(found[ITEM_FEATURES.name], found[ITEM_TRENDING.name], strict=True))
        items = {
            item: item_row(values_of(f), values_of(t))
            for item, (f, t) in zip(ids, item_rows, strict=True)
        }
        override = None
        model = self.model
        if arm is not None:
            override = arm.experiment.config_of(arm.name).effective_scorer
            model = self._arm_models.get(arm.name, model)
        if reason is not None:
            model = None
        scorer = choose_scorer(reason, model, override)
        if scorer != SCORER_MODEL:
            model = None
        raw = score(
            scorer, model, candidates, session_values, user_values, items, now_s, cfg.rank_top
        )
        purchased = purchased_items(user_values)
        decisions = post_process(
            candidates, raw, items, now_s, purchased, shown_before, k, cfg.rerank
        )

        request_id = uuid.uuid4().hex
        version = _session_version(session)
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
            model_version=model.version if model is not None else None,
            scorer=scorer,
            session_version=version,
            experiment=arm.experiment.name if arm is not None else None,
            arm=arm.name if arm is not None else None,
        )
        logged = [
            LoggedRow(SESSION_FEATURES.name, session_id, context.session),
            *(
                [LoggedRow(USER_FEATURES.name, context.user_id, context.user_read)]
                if context.user_id is not None
                else []
            ),
        ]
        for item, (f, t) in zip(ids, item_rows, strict=True):
            logged.append(LoggedRow(ITEM_FEATURES.name, item, f))
            logged.append(LoggedRow(ITEM_TRENDING.name, item, t))
        body = {
            "schema": LOG_SCHEMA,
            "session_id": session_id,
            "user_id": context.user_id,
            "k": k,
            "shown": None if shown is None else list(shown),
            "shown_before": None if shown_before is None else list(shown_before),
            "now_s": now_s,
            "degraded_reason": reason,
            "degraded_code": code,
            "notes": list(context.notes),
            "scorer": scorer,
            "model_version": answer.model_version,
            "session_version": version,
            "session_used": session is not None,
            "rank_top": cfg.rank_top,
            "rerank": asdict(cfg.rerank),
            "candidates": [c.to_dict() for c in candidates],
            "raw_scores": [float(s) for s in raw],
            "decisions": [d.to_dict() for d in decisions],
            "experiment": arm.to_dict() if arm is not None else None,
        }
        return answer, RequestRecord(request_id, self._wall_clock(), body, logged)

    def _append(self, record: RequestRecord) -> bool:
        try:
            self.log.append(record)
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


def _check_request(
    session_id: str, user_id: str | None, k: int, shown: Sequence[str] | None
) -> None:
    for name, value in (("session_id", session_id), ("user_id", user_id)):
        if value is None and name == "user_id":
            continue
        if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
            raise ConfigError(
                f"{name} must be a non-empty string of at most {MAX_ID_LENGTH} characters, "
                f"got {value!r:.80}"
            )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ConfigError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
    if shown is not None:
        if isinstance(shown, str) or len(shown) > MAX_SHOWN:
            raise ConfigError(f"shown must be a list of at most {MAX_SHOWN} item ids")
        for item in shown:
            if not isinstance(item, str) or not item:
                raise ConfigError(f"shown must hold non-empty item ids, got {item!r:.80}")


def _session_version(session: StampedRow | None) -> int | None:
    if session is None:
        return None
    version = session.values.get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else None
