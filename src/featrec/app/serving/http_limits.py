"""The HTTP API's limits as settings: request body size and the per-client rate limit.

Read by the HTTP app (:mod:`featrec.server.limits` enforces them) from ``FEATREC_SERVE_*``
variable                          meaning                                         default
================================  ==============================================  =========
FEATREC_SERVE_MAX_BODY_BYTES      larger request bodies are refused (413)         65536
FEATREC_SERVE_RATE_LIMIT          requests/s per client and worker (0: no limit)  200
FEATREC_SERVE_RATE_BURST          requests a client may send at once              400
FEATREC_SERVE_MAX_CONCURRENT      recommendations computed at once per worker     1
FEATREC_SERVE_MAX_INFLIGHT        requests in progress per worker before 503      0 (off)
FEATREC_SERVE_DEADLINE_MS         a request not answerable in time is shed        50
================================  ==============================================  =========
=======
variables (declared, with defaults and bounds, in :class:`featrec.settings.ServeSettings`),
which ``featrec serve`` writes from its options.

Deadline: a worker computes one recommendation at a time; a request that cannot be answered
within ``deadline_ms`` of its arrival (the queue ahead of it, at the measured cost per request,
is too long) is shed at once: the session's cached answer flagged ``overload``, else 503 with
``Retry-After`` (:mod:`featrec.app.serving.admission`). The queue is bounded by the deadline.

Overload: a worker computes ``max_concurrent`` recommendations at once (one: the work is CPU
bound, and a second thread only interleaves two requests on the same core) and queues the
others, up to the deadline. ``max_inflight`` > 0 sheds instead: a request arriving while that many
are in progress is answered 503 with ``Retry-After`` at once, so callers can fall back while
the admitted requests keep their latency (see benchmarks/http_load.py for both, measured).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from featrec.errors import ConfigError
from featrec.settings import ServeSettings

ENV_MAX_BODY: Final = ServeSettings.variable("max_body_bytes")
ENV_RATE: Final = ServeSettings.variable("rate_limit")
ENV_BURST: Final = ServeSettings.variable("rate_burst")
ENV_MAX_INFLIGHT: Final = ServeSettings.variable("max_inflight")
ENV_MAX_CONCURRENT: Final = ServeSettings.variable("max_concurrent")
ENV_DEADLINE_MS: Final = ServeSettings.variable("deadline_ms")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Body size and rate limits. The defaults leave normal use (and one client at the
    capacity of a worker, which is well under 200 requests/s) unlimited."""

    max_body_bytes: int = 64 * 1024
    rate_per_s: float = 200.0
    burst: int = 400
    max_clients: int = 100_000
    max_inflight: int = 0
    max_concurrent: int = 1
    deadline_ms: float = 50.0

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ConfigError(f"max body size must be >= 1 byte, got {self.max_body_bytes}")
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s >= 0):
            raise ConfigError(f"rate limit must be >= 0 requests/s, got {self.rate_per_s}")
        if self.burst < 1:
            raise ConfigError(f"rate burst must be >= 1, got {self.burst}")
        if self.max_concurrent < 1:
            raise ConfigError(f"max concurrent must be >= 1, got {self.max_concurrent}")
        if self.max_inflight < 0:
            raise ConfigError(f"max in-flight requests must be >= 0, got {self.max_inflight}")
        if not (math.isfinite(self.deadline_ms) and self.deadline_ms > 0):
            raise ConfigError(f"the request deadline must be > 0 ms, got {self.deadline_ms}")
        if self.max_clients < 1:
            raise ConfigError(f"max clients must be >= 1, got {self.max_clients}")

    @property
    def rate_limited(self) -> bool:
        return self.rate_per_s > 0

    def to_env(self) -> dict[str, str]:
        return {
            ENV_MAX_BODY: str(self.max_body_bytes),
            ENV_RATE: repr(self.rate_per_s),
            ENV_BURST: str(self.burst),
            ENV_MAX_INFLIGHT: str(self.max_inflight),
            ENV_MAX_CONCURRENT: str(self.max_concurrent),
            ENV_DEADLINE_MS: repr(self.deadline_ms),
        }

    @classmethod
    def from_settings(cls, serve: ServeSettings) -> HttpLimits:
        return cls(
            max_body_bytes=serve.max_body_bytes,
            rate_per_s=serve.rate_limit,
            burst=serve.rate_burst,
            max_inflight=serve.max_inflight,
            max_concurrent=serve.max_concurrent,
            deadline_ms=serve.deadline_ms,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HttpLimits:
        return cls.from_settings(ServeSettings.from_env(environ))
