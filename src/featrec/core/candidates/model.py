"""Candidates as the ranker sees them: the item, the sources that admitted it, their scores.

A :class:`Candidate` crosses the serving path (generation, ranking features, the request log),
so it is a value object with an exact JSON form. The source names (:data:`SOURCES`) and the
finer co-visitation facts (:data:`DETAILS`) are ranking feature names too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from featrec.core.fast_init import positional_maker

COVISIT: Final = "covisit"
SESSION: Final = "session"
HISTORY: Final = "history"
TRENDING: Final = "trending"
POPULAR: Final = "popular"
#: The batch-trained item model's scores for the session (``item_model`` rows).
MODEL: Final = "model"
#: Every source, in the order candidates list them.
SOURCES: Final = (COVISIT, SESSION, HISTORY, TRENDING, POPULAR, MODEL)

#: The finer co-visitation facts a neighbour of the session's items carries in
#: ``Candidate.details``: its normalised weight from the newest distinct item and from the one
#: before, its raw (decayed) weight and 1-based rank in the newest item's list, the best rank
#: it has in any session item's list, and how many session items list it.
DETAILS: Final = (
    "covisit_last",
    "covisit_second",
    "covisit_last_raw",
    "covisit_last_rank",
    "covisit_best_rank",
    "covisit_anchors",
)

#: Human-readable reason per source, for responses and the request log.
SOURCE_REASONS: Final = {
    COVISIT: "often viewed with the items in this session",
    SESSION: "already in this session",
    HISTORY: "related to what this user bought before",
    TRENDING: "trending in a category of interest",
    POPULAR: "popular right now",
    MODEL: "the item model expects it next in this session",
}


@dataclass(frozen=True, slots=True)
class Candidate:
    """One candidate item: the sources that admitted it, and every source's score for it
    (also sources whose cap it missed: a trending item may still carry a covisit score)."""

    item_id: str
    sources: tuple[str, ...]
    scores: Mapping[str, float]
    #: Finer co-visitation facts for the ranker (:data:`DETAILS`; absent = not a neighbour).
    details: Mapping[str, float] = field(default_factory=dict)

    def score(self, source: str) -> float:
        return self.scores.get(source, 0.0)

    @property
    def base_score(self) -> float:
        """The co-visitation scorer's score: neighbours plus the session reminder."""
        return self.scores.get(COVISIT, 0.0) + self.scores.get(SESSION, 0.0)

    def reasons(self) -> tuple[str, ...]:
        return tuple(SOURCE_REASONS[s] for s in self.sources if s in SOURCE_REASONS)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form that :meth:`from_dict` restores exactly (floats round-trip)."""
        return {
            "item_id": self.item_id,
            "sources": list(self.sources),
            "scores": dict(self.scores),
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Candidate:
        item, sources, scores = data.get("item_id"), data.get("sources"), data.get("scores")
        if not isinstance(item, str) or not item:
            raise ValueError(f"candidate item_id must be a non-empty string, got {item!r}")
        if not isinstance(sources, list | tuple) or not all(s in SOURCES for s in sources):
            raise ValueError(
                f"candidate {item!r}: sources must be some of {SOURCES}, got {sources}"
            )
        if not isinstance(scores, Mapping) or not all(
            k in SOURCES and isinstance(v, int | float) for k, v in scores.items()
        ):
            raise ValueError(f"candidate {item!r}: scores must map sources to numbers")
        details = data.get("details", {})
        if not isinstance(details, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int | float) for k, v in details.items()
        ):
            raise ValueError(f"candidate {item!r}: details must map names to numbers")
        return cls(
            item,
            tuple(sources),
            {k: float(v) for k, v in scores.items()},
            {k: float(v) for k, v in details.items()},
        )


#: ``new_candidate(item_id, sources, scores, details)``: a :class:`Candidate`, built faster than
#: by its ``__init__`` (every field positionally; :mod:`featrec.core.fast_init`). For the
#: hundreds of candidates of a request.
new_candidate: Final[
    Callable[[str, tuple[str, ...], Mapping[str, float], Mapping[str, float]], Candidate]
] = positional_maker(Candidate)
