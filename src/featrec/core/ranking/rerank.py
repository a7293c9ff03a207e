"""Post-processing of scored candidates into the list a shopper sees, every decision recorded.

:func:`rerank` applies, in this order:

1. **Drop purchased** items (``drop_purchased``): nobody wants to be offered what they just
   bought.
2. **Popularity damping** (``popularity_damping`` = d in [0, 1)): a score loses the share
   ``d x popularity / max popularity`` of its size, so the most popular candidate loses ``d``
   of its score and an unknown item nothing. 0 leaves scores bit-identical.
3. The list is filled slot by slot in score order (ties: input order), with two rules:

   - **Diversity cap** (``max_per_category``): an item whose category already fills the cap
     waits; it is placed only when nothing else is left.
   - **Stability** (``stability_window`` = N, ``stability_margin`` = m): an item the shopper
     was just shown at rank q keeps a rank within q +- N. At slot q + N it is placed unless
     the best remaining item outscores it by more than m (then it *falls* and competes on
     score alone); it is not placed above q - N unless it outscores the next best item by
     more than m. When two held items are due at one slot, the one shown higher goes first.

Every input item gets a :class:`Decision`: the kept ones in rank order, then the others in
input order, each with the reasons that moved it. Everything is deterministic, so a request
log that keeps the inputs reproduces the list exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from featrec.core.fast_init import positional_maker
from featrec.errors import ConfigError


@dataclass(frozen=True, slots=True)
class RerankConfig:
    """Post-processing knobs. Validated; the defaults only drop purchased items."""

    drop_purchased: bool = True
    max_per_category: int | None = None
    popularity_damping: float = 0.0
    stability_window: int = 0
    stability_margin: float = 0.05

    def __post_init__(self) -> None:
        cap = self.max_per_category
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ConfigError(f"max_per_category must be an integer >= 1 or None, got {cap!r}")
        if not (math.isfinite(self.popularity_damping) and 0 <= self.popularity_damping < 1):
            raise ConfigError(
                f"popularity_damping must be in [0, 1), got {self.popularity_damping!r}"
            )
        window = self.stability_window
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ConfigError(f"stability_window must be an integer >= 0, got {window!r}")
        if not (math.isfinite(self.stability_margin) and self.stability_margin >= 0):
            raise ConfigError(f"stability_margin must be >= 0, got {self.stability_margin!r}")


@dataclass(frozen=True, slots=True)
class Decision:
    """What happened to one candidate. ``rank`` is 1-based and set only when ``kept``;
    ``score`` is after damping, ``raw_score`` the ranker's."""

    item_id: str
    score: float
    rank: int | None
    kept: bool
    reasons: tuple[str, ...]
    raw_score: float

    def to_dict(self) -> dict[str, object]:
        return {
            "item_id": self.item_id,
            "score": self.score,
            "rank": self.rank,
            "kept": self.kept,
            "reasons": list(self.reasons),
            "raw_score": self.raw_score,
        }


#: A :class:`Decision` from its fields, positionally, built faster than by ``__init__`` (one
#: per candidate per request; :mod:`featrec.core.fast_init`).
_new_decision: Final[Callable[[str, float, int | None, bool, tuple[str, ...], float], Decision]] = (
    positional_maker(Decision)
)


def rerank(
    items: Sequence[str],
    scores: Sequence[float],
    categories: Mapping[str, str | None],
    popularity: Mapping[str, float],
    purchased: set[str] | frozenset[str],
    shown_before: Sequence[str] | None,
    k: int,
    config: RerankConfig = RerankConfig(),
) -> list[Decision]:
    """The top ``k`` of ``items`` after the rules above, and a decision for every item.

    ``items`` are distinct, in candidate order (the tie-break); ``scores`` aligned with them
    (higher is better, finite). ``categories``/``popularity`` may miss items (no category,
    popularity 0). ``shown_before`` is the list the shopper saw last, best first.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(scores) != len(items):
        raise ValueError(f"{len(scores)} scores for {len(items)} items")
    index: dict[str, int] = {}
    for i, item in enumerate(items):
        if item in index:
            raise ValueError(f"item {item!r} appears twice in the candidates")
        index[item] = i
    raw = [float(s) for s in scores]
    for item, s in zip(items, raw, strict=True):
        if not math.isfinite(s):
            raise ValueError(f"score of {item!r} is {s}: scores must be finite")

    reasons: dict[str, list[str]] = {item: [] for item in items}
    pool: list[str] = []
    for item in items:
        if config.drop_purchased and item in purchased:
            reasons[item].append("dropped: already purchased")
        else:
            pool.append(item)

    adjusted = dict(zip(items, raw, strict=True))
    if config.popularity_damping > 0 and pool:
        top = max(max(popularity.get(item, 0.0), 0.0) for item in pool)
        if top > 0:
            for item in pool:
                share = max(popularity.get(item, 0.0), 0.0) / top
                if share > 0:
                    cut = config.popularity_damping * share
                    adjusted[item] = raw[index[item]] - abs(raw[index[item]]) * cut
                    reasons[item].append(f"popularity damping: score -{cut:.1%}")

    remaining = _score_order(pool, adjusted, index)
    previous: dict[str, int] = {}
    if config.stability_window > 0 and shown_before:
        for q, item in enumerate(shown_before, start=1):
            if item in adjusted:
                previous.setdefault(item, q)
    window, margin, cap = config.stability_window, config.stability_margin, config.max_per_category
    if cap is None and not previous:
        # Neither rule can move an item: the list is the score order's head.
        return _decisions(items, remaining[:k], adjusted, raw, index, reasons, pool, k)

    # Items whose category is full wait in `waiting` (score order); the others are `open`.
    # A category only fills up, so an item leaves `open` once, when its category reaches the
    # cap, and gets its reason at the next slot (as a scan of every item at every slot would).
    placed: list[str] = []
    per_category: dict[str, int] = {}
    fallen: set[str] = set()
    relaxed: set[str] = set()
    category_of = {item: categories.get(item) for item in remaining}
    position = {item: i for i, item in enumerate(remaining)}
    open_items = remaining
    waiting: list[str] = []
    full: list[str] = []
    while (open_items or waiting) and len(placed) < k:
        slot = len(placed) + 1
        if full:
            closed = set(full)
            moved = [item for item in open_items if category_of[item] in closed]
            if moved:
                open_items = [item for item in open_items if category_of[item] not in closed]
                for item in moved:
                    reasons[item].append(
                        f"diversity: category {category_of[item]} already has {cap} item(s)"
                    )
                waiting = sorted(waiting + moved, key=position.__getitem__)
            full = []
        if open_items:
            eligible = open_items
        else:
            eligible = waiting
            for item in eligible:
                if item not in relaxed:
                    relaxed.add(item)
                    reasons[item].append("diversity cap relaxed: no other candidates left")
        choice = _held(eligible, previous, fallen, slot, window, margin, adjusted, reasons)
        if choice is None:
            choice = _natural(eligible, previous, fallen, slot, window, margin, adjusted, reasons)
        placed.append(choice)
        eligible.remove(choice)
        category = category_of[choice]
        if category is not None:
            count = per_category[category] = per_category.get(category, 0) + 1
            if cap is not None and count == cap:
                full.append(category)

    return _decisions(items, placed, adjusted, raw, index, reasons, pool, k)


def _score_order(
    pool: list[str], adjusted: Mapping[str, float], index: Mapping[str, int]
) -> list[str]:
    """``pool`` by adjusted score, best first, ties in input order: one stable ``argsort`` of
    the negated scores over the pool in input order (``pool`` is in input order, and the
    negation and comparison are exact, so this is ``sorted`` with key ``(-score, index)``)."""
    if len(pool) < 2:
        return list(pool)
    negated = np.fromiter((-adjusted[item] for item in pool), dtype=np.float64, count=len(pool))
    return [pool[i] for i in np.argsort(negated, kind="stable").tolist()]


def _decisions(
    items: Sequence[str],
    placed: list[str],
    adjusted: Mapping[str, float],
    raw: list[float],
    index: Mapping[str, int],
    reasons: dict[str, list[str]],
    pool: list[str],
    k: int,
) -> list[Decision]:
    """The kept items' decisions in rank order, then every other item's in input order."""
    out = [
        _new_decision(item, adjusted[item], rank, True, tuple(reasons[item]), raw[index[item]])
        for rank, item in enumerate(placed, start=1)
    ]
    kept = set(placed)
    in_pool = set(pool)
    below = f"below the top {k}"
    for item in items:
        if item in kept:
            continue
        why = reasons[item]
        if item in in_pool:
            why.append(below)
        out.append(_new_decision(item, adjusted[item], None, False, tuple(why), raw[index[item]]))
    return out


def _held(
    eligible: list[str],
    previous: Mapping[str, int],
    fallen: set[str],
    slot: int,
    window: int,
    margin: float,
    adjusted: Mapping[str, float],
    reasons: dict[str, list[str]],
) -> str | None:
    """A shown item due at this slot (its rank would otherwise leave its window), if any is
    not clearly outscored by the best eligible item."""
    if not previous:
        return None
    # Walk the (few) shown items, not the (many) eligible ones.
    members = set(eligible)
    due = sorted(
        (q, item)
        for item, q in previous.items()
        if q + window <= slot and item not in fallen and item in members
    )
    best = eligible[0]
    for q, item in due:
        if item == best:
            return None  # it wins on score anyway
        gap = adjusted[best] - adjusted[item]
        if gap > margin:
            fallen.add(item)
            reasons[item].append(
                f"stability: shown at {q}, outscored by {best} by {gap:.4g} > {margin:g}"
            )
            continue
        reasons[item].append(f"stability: shown at {q}, kept within +-{window}")
        return item
    return None


def _natural(
    eligible: list[str],
    previous: Mapping[str, int],
    fallen: set[str],
    slot: int,
    window: int,
    margin: float,
    adjusted: Mapping[str, float],
    reasons: dict[str, list[str]],
) -> str:
    """The best eligible item, except that a shown item does not rise above its window
    unless it clearly outscores the next best item that may take the slot."""

    def rising(item: str) -> bool:
        return item in previous and item not in fallen and previous[item] - window > slot

    for i, item in enumerate(eligible):
        if not rising(item):
            return item
        nxt = next((other for other in eligible[i + 1 :] if not rising(other)), None)
        if nxt is None:
            break
        gap = adjusted[item] - adjusted[nxt]
        if gap > margin:
            reasons[item].append(
                f"stability: shown at {previous[item]}, rose above {nxt} by {gap:.4g} > {margin:g}"
            )
            return item
        note = f"stability: shown at {previous[item]}, not raised above {previous[item] - window}"
        if note not in reasons[item]:
            reasons[item].append(note)
    # Only shown items that would rise too far are left: the best of them moves up anyway.
    for item in eligible:
        if rising(item):
            reasons[item].append(f"stability: shown at {previous[item]}, raised: nothing else left")
            return item
    return eligible[0]
