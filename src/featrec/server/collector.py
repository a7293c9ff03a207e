"""``POST /events``: the HTTP event collector (plain ASGI, msgspec).

The body is one featrec event (a JSON object) or a batch (a JSON array of them). Answers:

- 202 ``{"accepted": n, "bus": "file" | "redis" | "kafka", "received_at": t}``: every event was
  appended to the bus (:class:`featrec.app.collector.Collector`), with the server's receive
  time ``t`` kept next to each event's own ``ts``;
- 422 ``{"detail", "refused": [{"index", "field", "reason"}]}``: some event failed the
  dataflows' decoder (each refused event is named by its index in the batch and its field);
  nothing of the request is stored. 403, same shape: every refused event belongs to a
  forgotten user or session (they are never stored);
- 400: the body is not JSON (or not an object or an array); 415: not declared as JSON;
  413: over ``FEATREC_SERVE_MAX_BODY_BYTES`` or ``FEATREC_SERVE_COLLECT_MAX_EVENTS``;
- 401: ``FEATREC_INGEST_TOKEN`` is set and the request lacks ``Authorization: Bearer <it>``;
- 429 with ``Retry-After``: the client posted more than ``FEATREC_SERVE_COLLECT_RATE`` events/s
  (token bucket per client IP and worker, ``FEATREC_SERVE_COLLECT_BURST`` at once; an event
  costs one token, so batching does not dodge it);
- 503 with ``Retry-After``: the bus cannot be reached (nothing stored, retry).

Accepted and refused events are counted in ``featrec_collector_accepted`` and
``featrec_collector_refused{reason}`` (the field at fault, ``forgotten``, ``rate_limited``,
``unauthorized``, ``body``). A file bus is appended to inline (a few µs under a lock); a Redis
bus from a worker thread, so an unreachable Redis never stalls the event loop.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio.to_thread
import msgspec
from prometheus_client import CollectorRegistry, Counter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from featrec.app.collector import Checked, Collector
from featrec.errors import StoreUnavailable
from featrec.server.fast_route import _is_json, _read_body, _send
from featrec.server.limits import TokenBuckets

PATH: Final = "/events"

_ONE: Final = msgspec.json.Decoder(msgspec.Raw)
_MANY: Final = msgspec.json.Decoder(list[msgspec.Raw])
_ENCODER: Final = msgspec.json.Encoder()


@dataclass(frozen=True)
class Storefront:
    """What ``featrec serve`` adds for a shop: the collector, its limits, CORS, the page."""

    collector: Collector
    rate_per_s: float = 100.0
    burst: int = 500
    max_events: int = 200
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    shop_page: bool = True


class CollectorMetrics:
    """The collector's counters, in the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.accepted = Counter(
            "featrec_collector_accepted", "Events accepted by POST /events.", registry=registry
        )
        self.refused = Counter(
            "featrec_collector_refused",
            "Events (or requests, for rate_limited, unauthorized and body) refused by "
            "POST /events, by reason: the field at fault, or forgotten.",
            ["reason"],
            registry=registry,
        )
        for reason in ("forgotten", "rate_limited", "unauthorized", "body"):
            self.refused.labels(reason)


def event_texts(raw: bytes) -> list[str]:
    """The JSON text of each event in a body (an object or an array), one line each.

    Raises ``ValueError`` (with the reason) for a body that is neither. An event spread over
    several lines (pretty-printed) is re-encoded on one line: the bus holds one per line.
    """
    head = raw.lstrip()[:1]
    try:
        if head == b"[":
            items = _MANY.decode(raw)
        elif head == b"{":
            items = [_ONE.decode(raw)]
        else:
            raise ValueError("the body must be a JSON object (one event) or an array of them")
    except msgspec.DecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    out = []
    for item in items:
        text = bytes(item).decode("utf-8")
        if "\n" in text or "\r" in text:
            text = _ENCODER.encode(msgspec.json.decode(item)).decode("utf-8")
        out.append(text)
    return out


class CollectorRoute:
    """ASGI middleware answering ``POST /events`` (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        collector: Collector,
        metrics: CollectorMetrics,
        buckets: TokenBuckets | None,
        max_events: int,
        token: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.collector = collector
        self.metrics = metrics
        self.buckets = buckets
        self.max_events = max_events
        self.token = token.encode() if token else None
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await self._error(send, 405, "POST events as JSON", "body", [(b"allow", b"POST")])
            return
        received_at = self.clock()
        if self.token is not None and not self._authorized(scope):
            await self._error(
                send,
                401,
                "missing or wrong 'Authorization: Bearer <FEATREC_INGEST_TOKEN>'",
                "unauthorized",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if not _is_json(scope):
            await self._error(send, 415, "send Content-Type: application/json", "body")
            return
        try:
            raw = await _read_body(receive)
        except HTTPException as exc:  # the body limit, counted as it streamed
            await self._error(send, exc.status_code, str(exc.detail), "body")
            return
        try:
            texts = event_texts(raw)
        except (ValueError, UnicodeError) as exc:
            await self._error(send, 400, f"body: {exc}", "body")
            return
        if not texts:
            await self._error(send, 422, "an empty batch: send at least one event", "body")
            return
        if len(texts) > self.max_events:
            detail = f"{len(texts)} events in one request; at most {self.max_events}"
            await self._error(send, 413, detail, "body")
            return
        if self.buckets is not None:
            client = scope.get("client")
            wait = self.buckets.take(client[0] if client else "unknown", len(texts))
            if wait:
                retry = max(1, math.ceil(wait))
                detail = (
                    f"rate limit: more than {self.buckets.rate:g} events/s (burst "
                    f"{self.buckets.burst:g}) from this client; retry after {retry} s"
                )
                await self._error(
                    send, 429, detail, "rate_limited", [(b"retry-after", b"%d" % retry)]
                )
                return
        try:
            if self.collector.bus.name == "file":
                checked = self.collector.collect(texts, received_at)
            else:
                checked = await anyio.to_thread.run_sync(self.collector.collect, texts, received_at)
        except StoreUnavailable as exc:
            stored = "nothing stored" if self.collector.bus.atomic else "not every event stored"
            await self._error(
                send,
                503,
                f"the event bus is unavailable, {stored}; retry: {exc}",
                "unavailable",
                [(b"retry-after", b"1")],
            )
            return
        await self._answer(send, checked, len(texts), received_at)

    def _authorized(self, scope: Scope) -> bool:
        assert self.token is not None
        for key, value in scope["headers"]:
            if key == b"authorization":
                scheme, _, given = bytes(value).partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    given.strip(), self.token
                )
        return False

    async def _answer(self, send: Send, checked: Checked, n: int, received_at: float) -> None:
        if not checked.refused:
            self.metrics.accepted.inc(len(checked.accepted))
            body: dict[str, object] = {
                "accepted": len(checked.accepted),
                "bus": self.collector.bus.name,
                "received_at": received_at,
            }
            await _send(send, 202, _ENCODER.encode(body))
            return
        for refusal in checked.refused:
            reason = "forgotten" if refusal.reason.startswith("forgotten") else refusal.field
            self.metrics.refused.labels(reason).inc()
        status = 403 if checked.forgotten == len(checked.refused) else 422
        detail = f"{len(checked.refused)} of {n} events refused; nothing stored"
        refused = [
            {"index": r.index, "field": r.field, "reason": r.reason} for r in checked.refused
        ]
        await _send(send, status, _ENCODER.encode({"detail": detail, "refused": refused}))

    async def _error(
        self,
        send: Send,
        status: int,
        detail: str,
        reason: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.metrics.refused.labels(reason).inc()
        await _send(send, status, _ENCODER.encode({"detail": detail}), headers or [])
