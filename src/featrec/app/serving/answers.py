"""What the recommender answers: a :class:`Recommendation` of :class:`RecommendedItem` and, for
the health probe, :class:`Health`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
    #: Why degraded, as a short code for metrics (one of
    #: :data:`~featrec.app.serving.config.DEGRADED_CODES`).
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
