"""The HTTP API: ``POST /recommend``, ``GET /health``, ``GET /metrics``,
``POST /admin/forget/{user_id}``; OpenAPI at ``/docs``.

Every bad request is a 4xx with a JSON ``detail`` that says why, never a 5xx:

- 422: input fails validation (pydantic, with limits: printable ids of up to 256 characters
  without surrounding whitespace, ``k`` in [1, 100], at most 200 ``shown`` items, no unknown
  fields, no type coercion); the body names each offending field. The offending values are
  not echoed back (they may be huge, NaN, or unencodable lone surrogates);
- 400: a body that cannot be parsed (malformed JSON, bad UTF-8); 415: a body that is not
  declared as JSON;
- 413: a body over the size limit; 429: a client over its rate; 503 with ``Retry-After``:
  overloaded, when a request cannot be answered within its deadline and the session has no
  cached answer (one it has comes back flagged ``degraded_code: "overload"``; see
  :mod:`featrec.server.fast_route`), or past ``max_inflight`` (:mod:`featrec.server.limits`);
- 401: an admin request without the right bearer token; 503: admin disabled (no token set).

Valid ``POST /recommend`` requests are answered by the plain ASGI hot path in
:mod:`featrec.server.fast_route` (msgspec, no pydantic); the FastAPI route documents the API and
answers the invalid ones with pydantic's messages.

Store trouble is never an error status either: the recommender answers degraded
(``"degraded": true`` and the reason). Metrics live in a registry of their own per app
(Prometheus text format).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.requests import Request

from featrec.app.serving.admission import OVERLOAD, Admission
from featrec.app.serving.config import DEGRADED_CODES, MAX_ID_LENGTH, MAX_K, MAX_SHOWN
from featrec.app.serving.privacy_gate import (
    FORGOTTEN,
    DenySource,
    is_forgotten,
    non_personalised,
)
from featrec.app.serving.recommender import Recommendation, Recommender
from featrec.errors import ConfigError, FeatrecError
from featrec.server.collector import CollectorMetrics, CollectorRoute, Storefront
from featrec.server.fast_route import FastRecommend
from featrec.server.limits import (
    BodyLimitMiddleware,
    HttpLimits,
    InflightLimitMiddleware,
    RateLimitMiddleware,
    TokenBuckets,
)

#: Forgets a user everywhere and reports what it removed (counts per place).
Forget = Callable[[str], Mapping[str, object]]
#: Shortest admin token accepted: a guessable token is worse than none.
MIN_ADMIN_TOKEN_LENGTH = 16


def _printable(value: str) -> str:
    # The rule event ids follow (featrec.core.events.model): such an id can never name a session.
    if not value.isprintable() or value != value.strip():
        raise ValueError("must be printable, without control characters or surrounding spaces")
    return value


#: The ``Authorization: Bearer`` credentials of an admin request (None when absent).
BearerCredentials = Annotated[
    HTTPAuthorizationCredentials | None,
    Depends(HTTPBearer(auto_error=False, description="The token in FEATREC_ADMIN_TOKEN.")),
]

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(_printable)]


class RecommendRequest(BaseModel):
    """What to recommend for."""

    model_config = ConfigDict(extra="forbid", strict=True)

    session_id: Id = Field(description="The session to recommend for.")
    user_id: Id | None = Field(
        default=None, description="The shopper, if known (default: the session's user)."
    )
    k: int = Field(default=20, ge=1, le=MAX_K, description="How many items.")
    shown: list[Id] | None = Field(
        default=None,
        max_length=MAX_SHOWN,
        description="The list the shopper sees now, best first (default: the list this "
        "session was served before its newest event). Items keep their place within the "
        "stability window unless clearly outscored.",
    )


class Item(BaseModel):
    item_id: str
    score: float
    rank: int
    reasons: list[str]


class RecommendResponse(BaseModel):
    """A recommendation. ``request_id`` names it in the request log (``featrec explain``)."""

    request_id: str
    session_id: str
    user_id: str | None
    items: list[Item]
    degraded: bool = Field(description="True when session features could not be used.")
    degraded_reason: str | None
    degraded_code: str | None = Field(description=f"One of {', '.join(DEGRADED_CODES)}.")
    model_version: str | None
    scorer: str = Field(description="model, candidate-order (no model) or fallback.")
    session_version: int | None
    cached: bool = Field(description="Served from the session-version cache.")
    logged: bool = Field(description="Written to the request log (explainable).")
    experiment: str | None = Field(
        default=None, description="The A/B experiment the request was bucketed in, if any."
    )
    arm: str | None = Field(default=None, description="Its arm (see `featrec evaluate --ab`).")


class HealthResponse(BaseModel):
    status: str = Field(description="ok, or degraded when the online store is unreachable.")
    store: str
    model_version: str | None
    request_log_failures: int
    last_request_log_error: str | None


class _RecommenderCollector(Collector):
    """Counters the recommender keeps itself, read at scrape time."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender

    def collect(self) -> Iterator[Any]:
        r = self.recommender
        cache = CounterMetricFamily(
            "featrec_row_cache_lookups", "Row cache lookups (items, lists).", labels=["result"]
        )
        cache.add_metric(["hit"], r.item_cache.hits)
        cache.add_metric(["miss"], r.item_cache.misses)
        yield cache
        yield CounterMetricFamily(
            "featrec_request_log_failures", "Request log appends that failed.", r.log_failures
        )
        yield GaugeMetricFamily(
            "featrec_response_cache_sessions", "Sessions in the version cache.", len(r.responses)
        )


def create_app(
    recommender: Recommender,
    *,
    limits: HttpLimits | None = None,
    forget: Forget | None = None,
    admin_token: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    deny: DenySource | None = None,
    storefront: Storefront | None = None,
) -> FastAPI:
    """The HTTP app around ``recommender``.

    ``forget`` serves ``POST /admin/forget/{user_id}`` to callers that present
    ``admin_token`` (at least 16 characters) as a bearer token; without both, admin answers
    503. ``limits``: body size and rate limits (defaults: :class:`HttpLimits`); ``clock``
    drives the rate limiter's buckets. ``deny``: the current deny-set; a request naming a
    forgotten user or session gets a non-personalised answer and is not logged.
    ``storefront``: ``POST /events`` (:mod:`featrec.server.collector`), the ``/shop`` page
    (:mod:`featrec.server.shop`) and the CORS policy.
    """
    limits = limits if limits is not None else HttpLimits()
    admin_token = admin_token or None
    if admin_token is not None and len(admin_token) < MIN_ADMIN_TOKEN_LENGTH:
        raise ConfigError(
            f"the admin token must have at least {MIN_ADMIN_TOKEN_LENGTH} characters "
            f"(got {len(admin_token)}): generate one, e.g. `openssl rand -hex 32`"
        )
    registry = CollectorRegistry(auto_describe=True)
    requests = Counter(
        "featrec_recommend_requests",
        "Recommend requests answered, by outcome.",
        ["outcome"],
        registry=registry,
    )
    degraded = Counter(
        "featrec_recommend_degraded",
        "Degraded answers, by reason.",
        ["reason"],
        registry=registry,
    )
    latency = Histogram(
        "featrec_recommend_seconds",
        "Time to answer a recommend request (in the handler).",
        buckets=(0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0),
        registry=registry,
    )
    refused = Counter(
        "featrec_http_refused",
        "Requests refused: rate limited, overloaded (shed), or unauthorized (admin).",
        ["reason"],
        registry=registry,
    )
    registry.register(_RecommenderCollector(recommender))
    for outcome in ("computed", "cached", "degraded"):
        requests.labels(outcome)
    for code in (*DEGRADED_CODES, OVERLOAD, FORGOTTEN):
        degraded.labels(code)
    for reason in ("rate_limited", "overloaded", "unauthorized"):
        refused.labels(reason)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        recommender.log.close()  # write what is still queued

    app = FastAPI(
        title="featrec",
        summary="Real-time recommendations from streaming session features.",
        version="1",
        lifespan=lifespan,
    )

    def answered(answer: Recommendation, seconds: float) -> None:
        latency.observe(seconds)
        if answer.degraded:
            requests.labels("degraded").inc()
            degraded.labels(answer.degraded_code or "unknown").inc()
        else:
            requests.labels("cached" if answer.cached else "computed").inc()

    def shed(kind: str) -> None:
        if kind == "degraded":
            requests.labels("degraded").inc()
            degraded.labels(OVERLOAD).inc()
        else:
            refused.labels("overloaded").inc()

    # At most this many recommendations are computed at once; the others wait here, in the
    # event loop, at no cost. Without the bound every queued request took one of anyio's 40
    # threads, and under overload the threads' fight for the GIL halved the throughput.
    workers = anyio.CapacityLimiter(limits.max_concurrent)

    # Added first: innermost, behind the limits below.
    app.add_middleware(
        FastRecommend,
        recommender=recommender,
        admission=Admission(deadline_s=limits.deadline_ms / 1000),
        limiter=workers,
        on_answer=answered,
        on_shed=shed,
        deny=deny,
    )
    if storefront is not None:
        buckets_ = None
        if storefront.rate_per_s > 0:
            buckets_ = TokenBuckets(storefront.rate_per_s, storefront.burst, limits.max_clients)
        app.add_middleware(
            CollectorRoute,
            collector=storefront.collector,
            metrics=CollectorMetrics(registry),
            buckets=buckets_,
            max_events=storefront.max_events,
            token=storefront.token,
        )
        if storefront.shop_page:
            from featrec.server.shop import add_shop

            add_shop(app, recommender.item_cache, registry)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    if limits.max_inflight:
        app.add_middleware(
            InflightLimitMiddleware,
            max_inflight=limits.max_inflight,
            on_shed=refused.labels("overloaded").inc,
        )
    if limits.rate_limited:  # added last: outermost, before the body is looked at
        buckets = TokenBuckets(limits.rate_per_s, limits.burst, limits.max_clients, clock)
        app.add_middleware(
            RateLimitMiddleware, buckets=buckets, on_limited=refused.labels("rate_limited").inc
        )
    if storefront is not None and storefront.cors_origins:  # outermost: answers preflights
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(storefront.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["content-type", "authorization"],
            max_age=600,
        )
    _add_error_handlers(app)
    _add_admin_routes(app, forget, admin_token, refused.labels("unauthorized").inc)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        """The ``k`` best items for the session now, each with its score and reasons."""
        started = time.perf_counter()
        if deny is not None and is_forgotten(deny(), body.session_id, body.user_id):
            answer = await anyio.to_thread.run_sync(
                non_personalised, recommender, body.session_id, body.k, limiter=workers
            )
        else:
            answer = await anyio.to_thread.run_sync(
                recommender.recommend,
                body.session_id,
                body.user_id,
                body.k,
                body.shown,
                limiter=workers,
            )
        latency.observe(time.perf_counter() - started)
        if answer.degraded:
            requests.labels("degraded").inc()
            degraded.labels(answer.degraded_code or "unknown").inc()
        else:
            requests.labels("cached" if answer.cached else "computed").inc()
        return _response(answer)

    @app.get("/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        """Liveness and the online store's reachability (always 200: serving degrades)."""
        h = recommender.health()
        return HealthResponse(
            status="ok" if h.ok else "degraded",
            store=h.store,
            model_version=h.model_version,
            request_log_failures=h.log_failures,
            last_request_log_error=h.last_log_error,
        )

    @app.get("/metrics", response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics (text format)."""
        return Response(
            generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return app


def _json(status: int, content: object, headers: Mapping[str, str] | None = None) -> Response:
    # ensure_ascii: a lone surrogate (valid in JSON text, not in UTF-8) stays escaped.
    body = json.dumps(content, ensure_ascii=True)
    return Response(body, status, headers=headers, media_type="application/json")


def _is_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        if not _is_json(request) and any(e["loc"][:1] == ("body",) for e in errors):
            return _json(
                415, {"detail": "the body must be JSON: send Content-Type: application/json"}
            )
        # Not the offending input: it may be large, NaN, or a lone surrogate.
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        return _json(422, {"detail": detail})

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError) -> Response:
        return _json(422, {"detail": str(exc)})


class ForgetResponse(BaseModel):
    user_id: str
    forgotten: dict[str, Any] = Field(description="What was removed, per place (counts).")


def _add_admin_routes(
    app: FastAPI, forget: Forget | None, token: str | None, on_unauthorized: Callable[[], None]
) -> None:
    """``POST /admin/forget/{user_id}``, behind a bearer token compared in constant time."""

    def require_admin(credentials: BearerCredentials) -> None:
        if token is None or forget is None:
            raise HTTPException(
                503, "admin disabled: start the server with FEATREC_ADMIN_TOKEN set"
            )
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            on_unauthorized()
            reason = "wrong admin token" if given else "missing 'Authorization: Bearer <token>'"
            raise HTTPException(401, reason, headers={"WWW-Authenticate": "Bearer"})

    @app.post(
        "/admin/forget/{user_id}",
        response_model=ForgetResponse,
        dependencies=[Depends(require_admin)],
        tags=["admin"],
        responses={401: {"description": "No or a wrong bearer token."}, 503: {}},
    )
    def forget_user(
        user_id: Annotated[
            str, PathParam(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(_printable)
        ],
    ) -> ForgetResponse | Response:
        """Forget a user everywhere featrec keeps a copy (idempotent: safe to repeat)."""
        assert forget is not None  # require_admin checked it
        try:
            report = forget(user_id)
        except ConfigError:
            raise
        except FeatrecError as exc:
            return _json(503, {"detail": f"forgetting {user_id!r} failed, retry: {exc}"})
        return ForgetResponse(user_id=user_id, forgotten=dict(report))


def _response(answer: Recommendation) -> RecommendResponse:
    return RecommendResponse(
        request_id=answer.request_id,
        session_id=answer.session_id,
        user_id=answer.user_id,
        items=[
            Item(item_id=i.item_id, score=i.score, rank=i.rank, reasons=list(i.reasons))
            for i in answer.items
        ],
        degraded=answer.degraded,
        degraded_reason=answer.degraded_reason,
        degraded_code=answer.degraded_code,
        model_version=answer.model_version,
        scorer=answer.scorer,
        session_version=answer.session_version,
        cached=answer.cached,
        logged=answer.logged,
        experiment=answer.experiment,
        arm=answer.arm,
    )
