"""Limits of the HTTP API: request body size and a per-client rate limit.

- **Body size** (413): a declared ``Content-Length`` over the limit is refused before anything
  is read; the bytes of a streamed (chunked) body are counted as they arrive, and reading
  stops at the limit, so an unbounded body is never read. (FastAPI's own ``max_body_size``
  does the same but answers in plain text, without the limit.)
- **Rate** (429 with ``Retry-After``): a token bucket per client (its IP as uvicorn reports it;
  behind a proxy run uvicorn with ``--proxy-headers``). A client may send ``burst`` requests at
  once and ``rate_per_s`` per second after that. ``/health`` and ``/metrics`` are never limited
  (probes and scrapes). Buckets live in the worker process: with ``--workers N`` a client
  may reach N times the rate. At most ``max_clients`` buckets are kept; the least recently seen
  client's is dropped first (it comes back full, which only errs on the generous side).

- **Overload** (503 with ``Retry-After``, only when ``max_inflight`` > 0): a request arriving
  while ``max_inflight`` requests are in progress in this worker is refused at once.

The settings are :class:`featrec.app.serving.http_limits.HttpLimits` (``FEATREC_SERVE_*``
variables).
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from featrec.app.serving.http_limits import HttpLimits

__all__ = [
    "BodyLimitMiddleware",
    "HttpLimits",
    "InflightLimitMiddleware",
    "RateLimitMiddleware",
    "TokenBuckets",
]

#: Paths never rate limited.
UNLIMITED_PATHS: Final = frozenset({"/health", "/metrics"})


class BodyLimitMiddleware:
    """ASGI middleware refusing request bodies over ``max_bytes`` with a JSON 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await send_json(send, 400, {"detail": "Content-Length is not a number"})
                return
            if int(declared) > self.max_bytes:
                await send_json(send, 413, {"detail": self._reason(f"of {int(declared)} bytes")})
                return
        received = 0

        async def receive_at_most() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException met while reading the body, and its
                    # exception middleware turns it into a JSON response.
                    raise HTTPException(413, self._reason("streamed"))
            return message

        await self.app(scope, receive_at_most, send)

    def _reason(self, which: str) -> str:
        return f"request body {which} is over the limit of {self.max_bytes} bytes"


class TokenBuckets:
    """One token bucket per key: ``take(key)`` is 0.0 when a request may pass, else the
    seconds until it may (the ``Retry-After``)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        #: key -> (tokens, time of the last refill), least recently seen first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens (a request: 1; a batch of events: one per event)."""
        now = self.clock()
        tokens, then = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimitMiddleware:
    """ASGI middleware answering 429 (JSON reason, ``Retry-After``) to clients over their rate.

    ``on_limited`` is called for each refused request (a metrics counter)."""

    def __init__(
        self,
        app: ASGIApp,
        buckets: TokenBuckets,
        on_limited: Callable[[], None] = lambda: None,
    ) -> None:
        self.app = app
        self.buckets = buckets
        self.on_limited = on_limited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self.buckets.take(client[0] if client else "unknown")
        if not wait:
            await self.app(scope, receive, send)
            return
        self.on_limited()
        retry_after = max(1, math.ceil(wait))
        reason = (
            f"rate limit: more than {self.buckets.rate:g} requests/s (burst "
            f"{self.buckets.burst:g}) from this client; retry after {retry_after} s"
        )
        await send_json(send, 429, {"detail": reason}, [(b"retry-after", b"%d" % retry_after)])


class InflightLimitMiddleware:
    """ASGI middleware shedding load: 503 (JSON reason, ``Retry-After: 1``) for a request that
    arrives while ``max_inflight`` requests are in progress. ``on_shed`` counts them."""

    def __init__(
        self, app: ASGIApp, max_inflight: int, on_shed: Callable[[], None] = lambda: None
    ) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.on_shed = on_shed
        self.inflight = 0  # one event loop per worker: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            self.on_shed()
            reason = f"overloaded: {self.inflight} requests in progress; retry after 1 s"
            await send_json(send, 503, {"detail": reason}, [(b"retry-after", b"1")])
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1").strip())
    return None


async def send_json(
    send: Send, status: int, content: object, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer with ``content`` as JSON, from middleware (before the app saw the request)."""
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
