"""What the serving path can be told: limits of a request (checked by :func:`check_request`),
degraded codes, :class:`ServingConfig`.

A module of its own, free of the scoring stack (numpy, scikit-learn), so the command line can
build its options without importing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from featrec.core.candidates.config import CandidateConfig
from featrec.core.evaluation.experiments import Experiment
from featrec.core.features.freshness import BATCH_MAX_AGE
from featrec.core.ranking.rerank import RerankConfig
from featrec.core.ranking.two_stage import DEFAULT_KEEP, check_keep
from featrec.errors import ConfigError

#: Largest ``k`` a request may ask for, and most ``shown`` items it may send.
MAX_K: Final = 100
MAX_SHOWN: Final = 200
MAX_ID_LENGTH: Final = 256

NO_SESSION: Final = "no_session"
STALE_SESSION: Final = "stale_session"
STORE_UNREACHABLE: Final = "store_unreachable"
STORE_FAILED: Final = "store_failed"
DEGRADED_CODES: Final = (NO_SESSION, STALE_SESSION, STORE_UNREACHABLE, STORE_FAILED)


def check_request(
    session_id: str, user_id: str | None, k: int, shown: Sequence[str] | None
) -> None:
    """Raise :class:`ConfigError` naming the argument of a request that is out of its limits."""
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


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """Knobs of the serving path. Validated."""

    #: A session row older than this (event time vs the clock) is stale: degraded answer.
    max_session_age_s: float = 600.0
    #: A user row older than this is ignored (the batch job stopped); None: never.
    max_user_age_s: float | None = BATCH_MAX_AGE.total_seconds()
    #: Bounded staleness of cached item rows, neighbour lists and trending lists (seconds).
    item_cache_s: float = 5.0
    item_cache_rows: int = 200_000
    #: After a store failure, requests skip the store for this long (seconds).
    store_retry_s: float = 1.0
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    rerank: RerankConfig = field(
        default_factory=lambda: RerankConfig(max_per_category=5, stability_window=2)
    )
    cache_sessions: int = 10_000
    #: Two-stage ranking: the model scores the first ``rank_top`` candidates of the candidate
    #: order, the rest follow in that order (None: all; see featrec.core.ranking.two_stage).
    rank_top: int | None = DEFAULT_KEEP
    #: An A/B experiment: each request is bucketed into an arm, which may change the scorer
    #: or the model version (see :mod:`featrec.core.evaluation.experiments`); None: no experiment.
    experiment: Experiment | None = None

    def __post_init__(self) -> None:
        for name in ("max_session_age_s", "item_cache_s", "store_retry_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value >= 0):
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if self.max_user_age_s is not None and not self.max_user_age_s >= 0:
            raise ConfigError(f"max_user_age_s must be >= 0 or None, got {self.max_user_age_s}")
        try:
            check_keep(self.rank_top)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.item_cache_rows < 1 or self.cache_sessions < 1:
            raise ConfigError("item_cache_rows and cache_sessions must be >= 1")


#: Where the request log can live: local SQLite files (one per hour), or Redis.
REQUEST_LOGS: Final = ("sqlite", "redis")
#: Hours the request log keeps an entry by default: a week.
DEFAULT_REQUEST_LOG_KEEP_H: Final = 168.0
