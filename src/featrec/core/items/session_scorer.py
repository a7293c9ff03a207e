"""Candidates for a session: the co-visitation neighbours of its recent items (no learned model).

For the session's newest events ``p = 1, 2, ...`` (1 = newest) with items ``a_p`` and type
weights ``t_p``::

    score(c) = sum_p  t_p * p ** -recency_decay * w(a_p -> c) / norm(a_p)              (neighbours)
             + sum_p  t_p * reminder_weight * p ** -reminder_decay * [a_p == c]         (reminders)

``w(a -> c)`` comes from a neighbour lookup (a :class:`~featrec.core.items.covisit.CovisitIndex` in
batch, the ``item_neighbours`` rows when serving). ``norm(a)`` is the anchor's heaviest weight
(``"max"``), the sum of its weights (``"sum"``) or 1 (``"none"``): without it, a popular anchor
drowns the others whatever its position. With ``"max"`` one anchor adds at most ``t_p *
p ** -recency_decay`` to a candidate, which is the scale ``reminder_weight`` is measured in.

The reminder term says that what a shopper just looked at is likely to be looked at again:
on RSC15 about a quarter of next clicks repeat the previous item, which co-visitation alone
(even with self-pairs) ranks too low. Candidates are ranked by score, ties by item id, and
topped up from a fallback list (e.g. trending items) when fewer than ``k`` have a score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Final

from featrec.core.items.covisit import DEFAULT_TYPE_WEIGHTS
from featrec.core.items.order import best_n
from featrec.errors import ConfigError

#: Neighbours of one anchor: ``[(item, weight), ...]``, heaviest first.
NeighbourLookup = Callable[[str], Sequence[tuple[str, float]]]

NORMALISATIONS: Final = ("max", "sum", "none")


@dataclass(frozen=True, slots=True)
class ScorerConfig:
    """How a session's recent items are combined into candidate scores. Validated.

    Defaults tuned on RSC15-100k next-item prediction together with :class:`CovisitConfig`'s.
    """

    #: How many of the newest events are used as anchors.
    last_n: int = 10
    recency_decay: float = 2.0
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    default_type_weight: float = 1.0
    normalise: str = "max"
    reminder_weight: float = 4.0
    reminder_decay: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.last_n <= 1000:
            raise ConfigError(f"candidate last_n must be in [1, 1000], got {self.last_n}")
        for name in ("recency_decay", "reminder_weight", "reminder_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"candidate {name} must be a finite number >= 0, got {value}")
        if self.normalise not in NORMALISATIONS:
            raise ConfigError(
                f"normalise must be one of {', '.join(NORMALISATIONS)}, got {self.normalise!r}"
            )
        weights = dict(self.type_weights)
        for name, w in [*weights.items(), ("default", self.default_type_weight)]:
            if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
                raise ConfigError(f"candidate type weight {name!r} must be >= 0, got {w!r}")
        object.__setattr__(self, "type_weights", weights)


def score_session(
    items: Sequence[str],
    neighbours: NeighbourLookup,
    config: ScorerConfig,
    types: Sequence[str] | None = None,
) -> dict[str, float]:
    """Candidate scores from the session's ``items`` (newest first; ``types`` aligned with them,
    or ``None`` when unknown: every event then weighs 1)."""
    if types is not None and len(types) != len(items):
        raise ValueError(f"types has {len(types)} entries for {len(items)} items")
    scores: dict[str, float] = {}
    cache: dict[str, tuple[Sequence[tuple[str, float]], float]] = {}
    for p, anchor in enumerate(items[: config.last_n], start=1):
        t = 1.0
        if types is not None:
            t = config.type_weights.get(types[p - 1], config.default_type_weight)
        if t == 0:
            continue
        found = cache.get(anchor)
        if found is None:
            found = cache[anchor] = _normalised(neighbours(anchor), config.normalise)
        row, norm = found
        weight = t * p**-config.recency_decay / norm
        get = scores.get
        for item, w in row:
            scores[item] = get(item, 0.0) + weight * w
        if config.reminder_weight > 0:
            reminder = t * config.reminder_weight * p**-config.reminder_decay
            scores[anchor] = scores.get(anchor, 0.0) + reminder
    return scores


def recommend(
    items: Sequence[str],
    neighbours: NeighbourLookup,
    k: int,
    config: ScorerConfig,
    *,
    types: Sequence[str] | None = None,
    fallback: Sequence[str] = (),
) -> list[str]:
    """The ``k`` best candidates for a session (newest item first), topped up from ``fallback``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = score_session(items, neighbours, config, types)
    best = [i for i, s in best_n(scores.items(), k) if s > 0]
    if len(best) < k:
        chosen = set(best)
        for item in fallback:
            if item not in chosen:
                best.append(item)
                chosen.add(item)
                if len(best) == k:
                    break
    return best


def _normalised(
    row: Sequence[tuple[str, float]], how: str
) -> tuple[Sequence[tuple[str, float]], float]:
    if not row:
        return row, 1.0
    if how == "max":
        norm = max(row, key=itemgetter(1))[1]
    elif how == "sum":
        norm = sum(w for _, w in row)
    else:
        norm = 1.0
    return row, norm if norm > 0 else 1.0
