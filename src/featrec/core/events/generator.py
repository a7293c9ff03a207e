"""Synthetic shop traffic: a catalogue, returning users with tastes, and concurrent sessions.

Used by demos, benchmarks and tests that need realistic volume (the real data sets are small or
clicks-only). Deterministic for a seed; pure Python and numpy, no IO.

The model, kept simple but with the signals a recommender should be able to learn:

- **Catalogue.** Items belong to categories of uneven size; popularity is Zipf-like over a random
  ranking of the items; prices are log-normal around a per-category median. Every item has a few
  *related* items in its category (drawn by popularity, strongest first).
- **Users** have persistent tastes (a sparse Dirichlet mixture over a few favourite categories)
  and a heavy-tailed activity level, so the active ones return across many sessions. A share of
  sessions is anonymous (no ``user_id``), browsing with some user's tastes.
- **Sessions** walk the catalogue: the next item is a related item of the current one, another
  item of the same category, or an item of a category drawn from the tastes. Every visited item
  is a ``view``; funnel ``view -> click -> cart``; carted items are bought together at checkout.
- **Time.** ``concurrent_sessions`` slots each run one session after another; their events are
  merged into one stream in time order (timestamps are tz-aware UTC and never decrease). Memory
  is bounded by the slots: a session's events are drawn when it starts.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from featrec.core.events.model import CART, CLICK, MIN_TS, PURCHASE, VIEW, Event
from featrec.core.features.rows import micros
from featrec.errors import ConfigError

#: Longest pause between two items of one session (below the default 30 min session gap).
MAX_DWELL_S = 20 * 60.0
_BLOCK = 4096
#: Leaves years of room below events.MAX_TS for long streams.
_LATEST_START = datetime(2090, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """What to generate. Set ``n_events``, ``n_sessions`` or both (the first limit reached wins)."""

    n_events: int | None = 100_000
    n_sessions: int | None = None
    n_users: int = 10_000
    n_items: int = 5_000
    n_categories: int = 30
    concurrent_sessions: int = 1_000
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    seed: int = 0
    #: Share of sessions without a user id.
    anonymous_share: float = 0.3
    #: Mean number of items visited per session (geometric), capped by ``max_session_items``.
    mean_session_items: float = 6.0
    max_session_items: int = 60
    #: Funnel: P(click | view), P(cart | click), P(checkout | session has a cart).
    click_rate: float = 0.35
    cart_rate: float = 0.1
    purchase_rate: float = 0.4
    related_per_item: int = 5
    #: Where the next item of a session comes from; the rest is a category from the tastes.
    related_share: float = 0.55
    same_category_share: float = 0.25
    item_zipf: float = 0.8
    user_zipf: float = 0.9
    tastes_per_user: int = 3
    #: Median seconds between two items of a session (log-normal, sigma 1).
    median_dwell_s: float = 25.0

    def __post_init__(self) -> None:
        if self.n_events is None and self.n_sessions is None:
            raise ConfigError("set n_events or n_sessions (or both): the stream needs an end")
        for name in ("n_events", "n_sessions"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        minimum = {
            "n_users": 1,
            "n_items": 1,
            "n_categories": 1,
            "concurrent_sessions": 1,
            "max_session_items": 1,
            "related_per_item": 1,
            "tastes_per_user": 1,
        }
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.n_categories > self.n_items:
            raise ConfigError(
                f"n_categories ({self.n_categories}) must not exceed n_items ({self.n_items})"
            )
        rates = ("anonymous_share", "click_rate", "cart_rate", "purchase_rate")
        for name in (*rates, "related_share", "same_category_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
        if self.related_share + self.same_category_share > 1.0:
            raise ConfigError("related_share + same_category_share must not exceed 1")
        for name in ("item_zipf", "user_zipf"):
            if not 0.0 <= getattr(self, name) <= 5.0:
                raise ConfigError(f"{name} must be in [0, 5], got {getattr(self, name)!r}")
        if not 1.0 <= self.mean_session_items <= self.max_session_items:
            raise ConfigError("mean_session_items must be in [1, max_session_items]")
        if not 0.0 < self.median_dwell_s <= MAX_DWELL_S:
            raise ConfigError(f"median_dwell_s must be in (0, {MAX_DWELL_S:g}]")
        if not isinstance(self.start, datetime) or self.start.tzinfo is None:
            raise ConfigError(f"start must be a tz-aware datetime, got {self.start!r}")
        if not MIN_TS <= self.start < _LATEST_START:
            raise ConfigError(f"start must be in 2000..2090, got {self.start.isoformat()}")


@dataclass(frozen=True, eq=False)
class Catalogue:
    """The item table. Item ``i`` is ``item_ids[i]``; arrays are indexed the same way."""

    item_ids: tuple[str, ...]
    #: Category id of each item.
    categories: tuple[str, ...]
    prices: tuple[float, ...]
    #: Sampling weight of each item across the whole shop (sums to 1).
    popularity: npt.NDArray[np.float64]
    #: Category index of each item (into ``category_ids``).
    category_index: npt.NDArray[np.int64]
    category_ids: tuple[str, ...]
    #: ``related[i]``: items related to item ``i``, strongest first: drawn by popularity from
    #: its category (so repeats are possible), never the item itself unless it is alone there.
    related: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows(self) -> Iterator[tuple[str, str, float]]:
        """``(item_id, category, price)`` per item."""
        return zip(self.item_ids, self.categories, self.prices, strict=True)

    def index(self, item_id: str) -> int:
        """Position of ``item_id`` in the table (raises ``KeyError`` if it is not ours)."""
        i = int(item_id[1:]) if item_id[:1] == "i" and item_id[1:].isdecimal() else -1
        if not 0 <= i < len(self.item_ids) or self.item_ids[i] != item_id:
            raise KeyError(item_id)
        return i

    def related_ids(self, item_id: str) -> list[str]:
        return [self.item_ids[j] for j in self.related[self.index(item_id)]]


def catalogue(config: GeneratorConfig) -> Catalogue:
    """The catalogue ``generate(config)`` draws from (depends on the seed and catalogue sizes)."""
    rng = np.random.default_rng([config.seed, 1])
    n, n_cat, k = config.n_items, config.n_categories, config.related_per_item
    sizes = rng.dirichlet(np.full(n_cat, 2.0))
    cats = np.concatenate([np.arange(n_cat), rng.choice(n_cat, size=n - n_cat, p=sizes)])
    cats = rng.permutation(cats).astype(np.int64)
    raw = (rng.permutation(n) + 1.0) ** -config.item_zipf
    weights: npt.NDArray[np.float64] = raw / raw.sum()
    medians = np.exp(rng.uniform(math.log(3.0), math.log(300.0), n_cat))
    prices = np.maximum(0.5, np.round(medians[cats] * np.exp(rng.normal(0.0, 0.6, n)), 2))
    related = np.empty((n, k), dtype=np.int64)
    for c in range(n_cat):
        members = np.flatnonzero(cats == c)
        cdf = np.cumsum(weights[members])
        picks = np.searchsorted(cdf, rng.random((members.size, k)) * cdf[-1], side="right")
        picks = np.minimum(picks, members.size - 1)
        own = np.arange(members.size)[:, None]
        picks = np.where(picks == own, (own + 1) % members.size, picks)
        chosen = members[picks]
        order = np.argsort(-weights[chosen], axis=1, kind="stable")
        related[members] = np.take_along_axis(chosen, order, axis=1)
    category_ids = tuple(f"c{c}" for c in range(n_cat))
    return Catalogue(
        item_ids=tuple(f"i{i}" for i in range(n)),
        categories=tuple(category_ids[c] for c in cats.tolist()),
        prices=tuple(prices.tolist()),
        popularity=weights,
        category_index=cats,
        category_ids=category_ids,
        related=related,
    )


def generate(config: GeneratorConfig) -> Iterator[Event]:
    """Stream events in time order; the catalogue and users are built before the first event."""
    return _Shop(config).stream()


#: One drawn event of a session: (time in µs, type, item index, quantity).
_Draft = tuple[int, str, int, int | None]


class _Session:
    __slots__ = ("drafts", "pos", "session_id", "user_id")

    def __init__(self, drafts: list[_Draft], session_id: str, user_id: str | None) -> None:
        self.drafts = drafts
        self.pos = 0
        self.session_id = session_id
        self.user_id = user_id


class _Shop:
    """Catalogue, users and random streams of one generator run."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.cat = catalogue(config)
        cats = self.cat.category_index
        self.cat_of: list[int] = cats.tolist()
        self.members: list[list[int]] = []
        self.member_cdf: list[list[float]] = []
        for c in range(config.n_categories):
            members = np.flatnonzero(cats == c)
            self.members.append(members.tolist())
            self.member_cdf.append(np.cumsum(self.cat.popularity[members]).tolist())
        self.related: list[list[int]] | npt.NDArray[np.int64] = (
            self.cat.related.tolist() if config.n_items <= 200_000 else self.cat.related
        )
        weights = 1.0 / np.arange(1, config.related_per_item + 1)
        self.related_cdf: list[float] = np.cumsum(weights / weights.sum()).tolist()
        cat_pop = np.bincount(cats, weights=self.cat.popularity, minlength=config.n_categories)
        self.category_cdf: list[float] = np.cumsum(cat_pop).tolist()

        rng = np.random.default_rng([config.seed, 2])
        n_users, m = config.n_users, config.tastes_per_user
        favourites = np.searchsorted(
            self.category_cdf, rng.random((n_users, m)) * self.category_cdf[-1], side="right"
        )
        self.favourites = np.minimum(favourites, config.n_categories - 1)
        # Dirichlet(1, ..., 1) weights over a user's favourite categories, as cumulative sums.
        mix = rng.gamma(1.0, size=(n_users, m)) + 1e-12
        self.taste_cdf = np.cumsum(mix / mix.sum(axis=1, keepdims=True), axis=1)
        activity = (rng.permutation(n_users) + 1.0) ** -config.user_zipf
        self.user_cdf = np.cumsum(activity / activity.sum())
        self.block_rng = np.random.default_rng([config.seed, 3])
        self.users: list[int] = []
        self.dwells: list[int] = []
        self.rnd = random.Random(config.seed)
        self.p_more = 1.0 - 1.0 / config.mean_session_items

    def _next_user(self) -> int:
        if not self.users:
            draws = np.searchsorted(self.user_cdf, self.block_rng.random(_BLOCK), "right")
            self.users = np.minimum(draws, self.config.n_users - 1).tolist()
        return self.users.pop()

    def _next_dwell_us(self) -> int:
        if not self.dwells:
            seconds = self.block_rng.lognormal(math.log(self.config.median_dwell_s), 1.0, _BLOCK)
            self.dwells = (np.minimum(seconds, MAX_DWELL_S) * 1_000_000 + 1).astype(int).tolist()
        return self.dwells.pop()

    def _pick_in_category(self, c: int) -> int:
        cdf = self.member_cdf[c]
        return self.members[c][min(bisect(cdf, self.rnd.random() * cdf[-1]), len(cdf) - 1)]

    def new_session(self, number: int, start_us: int) -> _Session:
        """Draw every event of one session, starting at ``start_us``."""
        cfg, rnd = self.config, self.rnd.random
        user = self._next_user()
        favourites = self.favourites[user].tolist()
        taste: list[float] = self.taste_cdf[user].tolist()
        last_taste = len(taste) - 1
        t = start_us
        item = self._pick_in_category(favourites[min(bisect(taste, rnd()), last_taste)])
        drafts: list[_Draft] = []
        cart: list[tuple[int, int]] = []
        for step in range(cfg.max_session_items):
            if step:
                if rnd() >= self.p_more:
                    break
                t += self._next_dwell_us()
                u = rnd()
                if u < cfg.related_share:
                    j = min(bisect(self.related_cdf, rnd()), len(self.related_cdf) - 1)
                    item = int(self.related[item][j])
                elif u < cfg.related_share + cfg.same_category_share:
                    item = self._pick_in_category(self.cat_of[item])
                else:
                    item = self._pick_in_category(favourites[min(bisect(taste, rnd()), last_taste)])
            drafts.append((t, VIEW, item, None))
            if rnd() < cfg.click_rate:
                t += int(rnd() * 5_000_000) + 500_000
                drafts.append((t, CLICK, item, None))
                if rnd() < cfg.cart_rate:
                    t += int(rnd() * 60_000_000) + 2_000_000
                    quantity = 1
                    while quantity < 10 and rnd() < 0.2:
                        quantity += 1
                    drafts.append((t, CART, item, quantity))
                    cart.append((item, quantity))
        if cart and rnd() < cfg.purchase_rate:
            t += int(rnd() * 240_000_000) + 30_000_000
            drafts.extend((t, PURCHASE, item, quantity) for item, quantity in cart)
        user_id = None if rnd() < cfg.anonymous_share else f"u{user}"
        return _Session(drafts, f"s{number}", user_id)

    def stream(self) -> Iterator[Event]:
        cfg, rnd = self.config, self.rnd.random
        start_us = micros(cfg.start.astimezone(UTC))
        # Slots start spread over about one session length, so concurrency ramps up smoothly.
        spread_us = cfg.mean_session_items * cfg.median_dwell_s * 1.6 * 1_000_000
        max_sessions = cfg.n_sessions if cfg.n_sessions is not None else math.inf
        slots: list[_Session] = []
        while len(slots) < min(cfg.concurrent_sessions, max_sessions):
            slots.append(self.new_session(len(slots), start_us + int(rnd() * spread_us)))
        return self._merge(slots, max_sessions)

    def _merge(self, slots: list[_Session], max_sessions: float) -> Iterator[Event]:
        # The heap holds plain ints (fast to compare): time * n_slots + slot. Each slot has one
        # entry, so keys are unique and ties in time are broken by slot number.
        n_slots = len(slots)
        heap = [session.drafts[0][0] * n_slots + slot for slot, session in enumerate(slots)]
        heapq.heapify(heap)
        started = n_slots
        max_events = self.config.n_events if self.config.n_events is not None else math.inf
        item_ids, categories, prices = self.cat.item_ids, self.cat.categories, self.cat.prices
        fromtimestamp, heapreplace, rnd = datetime.fromtimestamp, heapq.heapreplace, self.rnd.random
        emitted = 0
        while heap and emitted < max_events:
            t, slot = divmod(heap[0], n_slots)
            session = slots[slot]
            _, type_, item, quantity = session.drafts[session.pos]
            yield Event(
                f"e{emitted}",
                session.session_id,
                item_ids[item],
                type_,
                # Exact: at this magnitude a float second holds the µs to within 0.25 µs.
                fromtimestamp(t / 1_000_000, UTC),
                session.user_id,
                prices[item],
                categories[item],
                quantity,
            )
            emitted += 1
            session.pos += 1
            if session.pos < len(session.drafts):
                heapreplace(heap, session.drafts[session.pos][0] * n_slots + slot)
            elif started < max_sessions:
                pause_us = int(-math.log(1.0 - rnd()) * 30_000_000)
                session = slots[slot] = self.new_session(started, t + pause_us)
                started += 1
                heapreplace(heap, session.drafts[0][0] * n_slots + slot)
            else:
                heapq.heappop(heap)
