"""Item signals in batch: neighbour lists and trending rows from a sequence of events.

The batch twin of the item signals dataflow (``dataflows/items.py``): both make exactly the same
core calls (:func:`featrec.core.items.covisit.observe` per session, ``NeighbourSketch.add`` per
anchor, :func:`featrec.core.items.trending.fold` per item) and build rows with the same functions,
so
a bootstrap over the events a flow has seen writes the rows the flow wrote (the oracle tests
check it).

**Trending lists.** A scorer reads the global top-N in one online lookup: it is an
``item_neighbours`` row under the pseudo-item :data:`TRENDING_KEY` (ids heaviest first, weights
= trend scores, ``as_of_s`` = the time they are decayed to); per category under
``__trending__:<category>`` (see :func:`trending_key`). Item ids that start with
:data:`TRENDING_KEY` are refused by the item signals (dead-lettered, never silently dropped),
so a real item cannot overwrite a list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from featrec.core.events.model import Event
from featrec.core.features.catalog import ITEM_NEIGHBOURS, NEIGHBOURS_K, TRENDING_N
from featrec.core.features.rows import FeatureRow
from featrec.core.items import covisit
from featrec.core.items.covisit import CovisitConfig, CovisitIndex, neighbour_row
from featrec.core.items.trending import TrendingBoard, TrendingConfig, trending_row
from featrec.core.ports.features import FeatureWriter
from featrec.errors import ConfigError
from featrec.settings import Settings

#: Key of the global trending list in the ``item_neighbours`` view.
TRENDING_KEY: Final = "__trending__"
#: A sketch whose total decayed weight fell below this may be dropped.
NEGLIGIBLE_WEIGHT: Final = 0.01
#: Rows per writer call when writing a bootstrap.
WRITE_CHUNK: Final = 1000


def trending_key(category: str | None = None) -> str:
    """The pseudo-item key of the global list, or of one category's list."""
    return TRENDING_KEY if category is None else f"{TRENDING_KEY}:{category}"


def is_reserved(item_id: str) -> bool:
    """True for item ids the trending lists own (such events are refused)."""
    return item_id.startswith(TRENDING_KEY)


def reserved_reason(item_id: str) -> str:
    return (
        f"item_id: {item_id[:40]!r} starts with {TRENDING_KEY!r}, which is reserved for the "
        "trending lists in item_neighbours"
    )


@dataclass(frozen=True, slots=True)
class ItemSignalsConfig:
    """Everything both the flow and the bootstrap need to compute the same rows. Validated."""

    covisit: CovisitConfig = field(default_factory=CovisitConfig)
    trending: TrendingConfig = field(default_factory=TrendingConfig)
    #: Neighbours per ``item_neighbours`` row.
    neighbours_k: int = NEIGHBOURS_K
    #: Items per trending list.
    trending_n: int = TRENDING_N
    #: Anchors whose total decayed weight fell below this are forgotten (bounded memory).
    epsilon: float = NEGLIGIBLE_WEIGHT
    #: Event-time seconds after which the bootstrap forgets a session's recent items; ``None``
    #: keeps them all. The default (window + allowed lateness) forgets only buffers that can
    #: never pair again with an event that is at most that late.
    session_idle_s: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.neighbours_k <= self.covisit.capacity:
            raise ConfigError(
                f"neighbours_k must be in [1, covisit capacity={self.covisit.capacity}], "
                f"got {self.neighbours_k}"
            )
        if self.trending_n < 1:
            raise ConfigError(f"trending_n must be >= 1, got {self.trending_n}")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"item signals epsilon must be > 0, got {self.epsilon}")
        if self.session_idle_s is not None and not self.session_idle_s > 0:
            raise ConfigError(f"session_idle_s must be > 0 or None, got {self.session_idle_s}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ItemSignalsConfig:
        """Core defaults; sessions are forgotten after the covisit window + allowed lateness."""
        base = CovisitConfig()
        return cls(covisit=base, session_idle_s=base.window_s + settings.allowed_lateness_s)


@dataclass(slots=True)
class ItemSignals:
    """The result of a bootstrap: one sketch per anchor, one trend per item."""

    config: ItemSignalsConfig
    index: CovisitIndex
    board: TrendingBoard
    n_events: int = 0

    def neighbour_rows(self) -> list[FeatureRow]:
        """One ``item_neighbours`` row per anchor, in anchor order."""
        cfg = self.config
        return [
            neighbour_row(anchor, self.index.sketches[anchor], cfg.covisit, cfg.neighbours_k)
            for anchor in sorted(self.index.sketches)
        ]

    def trending_rows(self) -> list[FeatureRow]:
        """One ``item_trending`` row per (unpruned) item, in item order."""
        return [
            trending_row(item, self.board.items[item], self.config.trending)
            for item in sorted(self.board.items)
        ]

    def list_rows(self) -> list[FeatureRow]:
        """The global and per-category trending lists, as of the newest event."""
        board = self.board
        lists = trending_lists(board, self.config.trending_n)
        return list_rows(lists, board.watermark_us, board.watermark_us)

    def rows(self) -> list[FeatureRow]:
        return [*self.neighbour_rows(), *self.trending_rows(), *self.list_rows()]


def bootstrap(events: Iterable[Event], config: ItemSignalsConfig) -> ItemSignals:
    """Fold ``events`` (in the given order) into neighbour sketches and trends, in one pass.

    Events whose item id is reserved (:func:`is_reserved`) must be filtered out by the caller,
    as the flow does (it dead-letters them).
    """
    signals = ItemSignals(config, CovisitIndex(config.covisit), TrendingBoard(config.trending))

    def counted(stream: Iterable[Event]) -> Iterator[Event]:
        board = signals.board
        for event in stream:
            signals.n_events += 1
            board.observe(event)
            yield event

    covisit.bootstrap(
        counted(events),
        config.covisit,
        session_idle_s=config.session_idle_s,
        index=signals.index,
    )
    return signals


def trending_lists(
    board: TrendingBoard, n: int, now_us: int | None = None
) -> dict[str, list[tuple[str, float]]]:
    """Global and per-category top ``n`` in one pass (:meth:`TrendingBoard.top_lists`), keyed
    by :func:`trending_key`, categories sorted."""
    top, by_category = board.top_lists(n, now_us)
    out = {TRENDING_KEY: top}
    for category in sorted(by_category):
        out[trending_key(category)] = by_category[category]
    return out


def list_rows(
    lists: Mapping[str, Sequence[tuple[str, float]]],
    as_of_us: int,
    version: int,
    ingested_at: float | None = None,
) -> list[FeatureRow]:
    """Trending lists as ``item_neighbours`` rows (ids best first, weights = scores)."""
    return [
        FeatureRow(
            view=ITEM_NEIGHBOURS.name,
            key=key,
            values={
                "neighbour_ids": [item for item, _ in top],
                "neighbour_weights": [score for _, score in top],
                "as_of_s": as_of_us / 1_000_000,
            },
            version=version,
            ingested_at=ingested_at,
        )
        for key, top in lists.items()
    ]


def write_rows(writer: FeatureWriter, rows: Sequence[FeatureRow], chunk: int = WRITE_CHUNK) -> int:
    """Write ``rows`` in chunks; returns how many were written (older ones are skipped by the
    writer's version guard)."""
    written = 0
    for start in range(0, len(rows), chunk):
        written += writer.write(rows[start : start + chunk])
    return written
