"""The hot path of ``POST /recommend``: plain ASGI, msgspec in and out, deadline admission.

FastAPI's route (pydantic request and response models, a thread hop per request) costs about
three times the server CPU of a plain route. :class:`FastRecommend` sits innermost in the
app's middleware stack (behind the body-size, rate and in-flight limits) and answers every
*valid* recommend request itself:

- the body is decoded by one reused ``msgspec`` decoder into a strict struct and checked
  with the same rules as the documented pydantic model (printable ids of 1..256 characters
  without surrounding spaces, ``k`` in [1, 100], at most 200 ``shown`` items, no unknown
  fields, no coercion). Anything it does not accept is handed on, body replayed, to the
  FastAPI route, which answers the error with pydantic's exact messages (or, should the fast
  check ever be stricter than pydantic, the answer). Errors are rare; the contract stays
  one;
- the recommendation is computed in a worker thread, at most ``limiter`` at once (one by
  default: one worker process per core computes one request at a time), so the event loop
  stays free to read, time and shed the requests that queue;
- the answer (a dataclass) is encoded to JSON bytes by ``msgspec`` in one call;
- a request naming a forgotten user or session gets the non-personalised answer and leaves
  nothing in the request log (:mod:`featrec.app.serving.privacy_gate`);
- :class:`~featrec.app.serving.admission.Admission` bounds the queue by the deadline: a
  request that cannot be answered in time gets the session's cached answer flagged
  ``degraded_code: "overload"`` (200), or, without one, 503 with ``Retry-After``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Final

import anyio
import anyio.to_thread
import msgspec
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from featrec.app.serving.admission import OVERLOAD, Admission
from featrec.app.serving.config import MAX_ID_LENGTH, MAX_K, MAX_SHOWN
from featrec.app.serving.privacy_gate import DenySource, is_forgotten, non_personalised
from featrec.app.serving.recommender import Recommendation, Recommender
from featrec.errors import ConfigError

PATH: Final = "/recommend"
_JSON_HEADERS: Final = [(b"content-type", b"application/json")]


class RecommendBody(msgspec.Struct, forbid_unknown_fields=True):
    """The request body (the pydantic ``RecommendRequest`` documents it in OpenAPI)."""

    session_id: str
    user_id: str | None = None
    k: int = 20
    shown: list[str] | None = None


def _good_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_LENGTH and value.isprintable() and value == value.strip()


def valid(body: RecommendBody) -> bool:
    """True when pydantic's ``RecommendRequest`` accepts the same values."""
    if not _good_id(body.session_id) or (body.user_id is not None and not _good_id(body.user_id)):
        return False
    if not 1 <= body.k <= MAX_K:
        return False
    shown = body.shown
    return shown is None or (len(shown) <= MAX_SHOWN and all(_good_id(s) for s in shown))


def _is_json(scope: Scope) -> bool:
    for key, value in scope["headers"]:
        if key == b"content-type":
            media = str(value.decode("latin-1")).partition(";")[0].strip().lower()
            return media == "application/json" or media.endswith("+json")
    return False


#: Called with each answer and its compute time in seconds (metrics).
OnAnswer = Callable[[Recommendation, float], None]


class FastRecommend:
    """ASGI middleware answering valid ``POST /recommend`` requests (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        recommender: Recommender,
        admission: Admission,
        limiter: anyio.CapacityLimiter,
        on_answer: OnAnswer = lambda answer, seconds: None,
        on_shed: Callable[[str], None] = lambda kind: None,
        deny: DenySource | None = None,
    ) -> None:
        self.app = app
        self.recommender = recommender
        self.admission = admission
        self.limiter = limiter
        self.on_answer = on_answer
        self.on_shed = on_shed
        self.deny = deny
        self._decoder = msgspec.json.Decoder(RecommendBody)
        self._encoder = msgspec.json.Encoder()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "POST"
            or not _is_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()
        try:
            raw = await _read_body(receive)
        except HTTPException as exc:  # the body limit, counted as it streamed
            await _send(send, exc.status_code, self._encoder.encode({"detail": exc.detail}))
            return
        try:
            body = self._decoder.decode(raw)
        except msgspec.DecodeError:
            body = None
        if body is None or not valid(body):
            await self.app(scope, _replay(raw, receive), send)
            return
        if self.deny is not None and is_forgotten(self.deny(), body.session_id, body.user_id):
            # At the door: no row read, no cache, nothing logged (featrec.app.serving.privacy_gate).
            answer = await anyio.to_thread.run_sync(
                non_personalised, self.recommender, body.session_id, body.k, limiter=self.limiter
            )
            self.on_answer(answer, 0.0)
            await _send(send, 200, self._encoder.encode(answer))
            return
        admission = self.admission
        if not admission.arrive():
            admission.leave()
            await self._shed(send, body)
            return
        try:
            result = await anyio.to_thread.run_sync(
                self._compute, body, arrived, limiter=self.limiter
            )
        except ConfigError as exc:
            admission.leave()
            await _send(send, 422, self._encoder.encode({"detail": str(exc)}))
            return
        except BaseException:
            admission.leave()
            raise
        if result is None:
            admission.leave()
            await self._shed(send, body)
            return
        answer, cpu_s, seconds = result
        admission.done(cpu_s)
        self.on_answer(answer, seconds)
        await _send(send, 200, self._encoder.encode(answer))

    def _compute(
        self, body: RecommendBody, arrived: float
    ) -> tuple[Recommendation, float, float] | None:
        """The answer, its CPU and wall seconds; None when it could no longer be in time."""
        if not self.admission.start(arrived):
            return None
        started, cpu = time.perf_counter(), time.thread_time()
        answer = self.recommender.recommend(body.session_id, body.user_id, body.k, body.shown)
        return answer, time.thread_time() - cpu, time.perf_counter() - started

    async def _shed(self, send: Send, body: RecommendBody) -> None:
        """The session's cached answer flagged ``overload``, else 503 with ``Retry-After``."""
        cached = self.recommender.responses.latest(body.session_id)
        if cached is not None and body.user_id in (None, cached.user_id):
            self.on_shed("degraded")
            await _send(send, 200, self._encoder.encode(overload_answer(cached, body.k)))
            return
        self.on_shed("refused")
        retry = self.admission.retry_after_s()
        detail = f"overloaded: no answer within the deadline; retry after {retry} s"
        await _send(
            send,
            503,
            self._encoder.encode({"detail": detail}),
            [(b"retry-after", b"%d" % retry)],
        )


def overload_answer(answer: Recommendation, k: int) -> Recommendation:
    """A cached answer (its first ``k`` items) re-flagged as an overloaded worker's."""
    return replace(
        answer,
        items=answer.items[:k],
        degraded=True,
        degraded_code=OVERLOAD,
        degraded_reason="overloaded: the session's last answer, served from the cache",
        cached=True,
    )


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def _send(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON_HEADERS, (b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})
