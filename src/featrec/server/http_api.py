"""The HTTP API: ``POST /recommend``, ``GET /health``, ``GET /metrics``; OpenAPI at ``/docs``.

Input is validated by pydantic with limits (ids up to 256 characters, ``k`` in [1, 100], at
most 200 ``shown`` items, no unknown fields, no type coercion): bad input is a 422 whose body
names each offending field. Store trouble is never an error status: the recommender answers
degraded (``"degraded": true`` and the reason). Metrics live in a registry of their own per
app (Prometheus text format).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from featrec.app.recommend import Recommendation, Recommender
from featrec.app.serving_config import DEGRADED_CODES, MAX_ID_LENGTH, MAX_K, MAX_SHOWN
from featrec.errors import ConfigError

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


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


def create_app(recommender: Recommender) -> FastAPI:
    """The HTTP app around ``recommender``."""
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
    registry.register(_RecommenderCollector(recommender))
    for outcome in ("computed", "cached", "degraded"):
        requests.labels(outcome)
    for code in DEGRADED_CODES:
        degraded.labels(code)

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

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(body: RecommendRequest) -> RecommendResponse:
        """The ``k`` best items for the session now, each with its score and reasons."""
        started = time.perf_counter()
        answer = recommender.recommend(body.session_id, body.user_id, body.k, body.shown)
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
    )
