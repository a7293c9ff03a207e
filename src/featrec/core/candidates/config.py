"""How many candidates each source may admit, and how the session's items are weighed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Final

from featrec.core.features.catalog import LAST_ITEMS_N, RECENT_PURCHASES_N
from featrec.core.items.session_scorer import ScorerConfig
from featrec.errors import ConfigError

#: Candidate orders (:attr:`CandidateConfig.order`).
ORDERS: Final = ("covisit", "model")


def _count(name: str, value: int, low: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"candidate {name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True, slots=True)
class CandidateConfig:
    """Caps per source and what to include. Validated.

    ``scoring`` weights the session's items (recency, event type, normalisation, reminder)
    exactly as the tuned co-visitation scorer does.
    """

    scoring: ScorerConfig = field(default_factory=ScorerConfig)
    max_covisit: int = 50
    #: Re-view / re-buy: offer the session's own items.
    include_session_items: bool = True
    max_session: int = LAST_ITEMS_N
    #: History items used as anchors, and neighbours of them admitted.
    history_anchors: int = RECENT_PURCHASES_N
    max_history: int = 10
    #: Re-buy across sessions: offer the history items themselves.
    include_history_items: bool = False
    #: Head of the global trending list always admitted.
    max_trending: int = 10
    #: Items admitted per context category, and how many categories are used.
    max_category_trending: int = 10
    max_categories: int = 3
    #: Popular items top the pool up to ``min_total``, at most ``max_popular`` of them.
    min_total: int = 50
    max_popular: int = 50
    #: The pool is cut to this size, in candidate order.
    max_total: int = 100
    #: Items the batch-trained item model admits (its best scores for the session).
    max_model: int = 50
    #: How the item model weighs the session's items: ``exp(-(p - 1) / model_predict_weight)``
    #: for the ``p``-th newest of the newest ``model_last_n`` (0: every item weighs 1).
    model_predict_weight: float = 0.5
    model_last_n: int = LAST_ITEMS_N
    #: Candidate order: ``"covisit"`` (the co-visitation scorer's score first) or ``"model"``
    #: (the item model's score first: the item-model policy's answer without a ranker).
    order: str = "covisit"
    _plain: ScorerConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.scoring, ScorerConfig):
            raise ConfigError(f"candidate scoring must be a ScorerConfig, got {self.scoring!r}")
        for name in (
            "max_covisit",
            "max_session",
            "history_anchors",
            "max_history",
            "max_trending",
            "max_category_trending",
            "max_categories",
            "min_total",
            "max_popular",
            "max_model",
        ):
            _count(name, getattr(self, name))
        _count("max_total", self.max_total, 1)
        _count("model_last_n", self.model_last_n, 1)
        if not (math.isfinite(self.model_predict_weight) and self.model_predict_weight >= 0):
            raise ConfigError(
                f"candidate model_predict_weight must be a finite number >= 0, "
                f"got {self.model_predict_weight!r}"
            )
        if self.order not in ORDERS:
            raise ConfigError(
                f"candidate order must be one of {', '.join(ORDERS)}, got {self.order!r}"
            )
        # The same weights without the reminder term: the covisit and history sources.
        object.__setattr__(self, "_plain", replace(self.scoring, reminder_weight=0.0))


DEFAULT_CONFIG: Final = CandidateConfig()
