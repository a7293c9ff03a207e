"""The synthetic traffic generator, and event files written from it and read back."""

from __future__ import annotations

import itertools
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from featrec.adapters.files.event_files import read_events, write_events
from featrec.core.events.formats import DeadLetter
from featrec.core.events.generator import Catalogue, GeneratorConfig, catalogue, generate
from featrec.core.events.model import CART, CLICK, PURCHASE, VIEW, Event, event_from_mapping
from featrec.errors import ConfigError

#: Complete sessions (no n_events cut), few users so that they return, moderate concurrency.
SESSIONS = GeneratorConfig(
    n_events=None,
    n_sessions=4000,
    n_users=600,
    n_items=2000,
    n_categories=25,
    concurrent_sessions=300,
    seed=11,
)


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return list(generate(SESSIONS))


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return catalogue(SESSIONS)


def by_session(events: list[Event]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        out[e.session_id].append(e)
    return out


# -- stream shape ----------------------------------------------------------------------------


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    config = GeneratorConfig(n_events=3000, concurrent_sessions=100, n_items=500, seed=3)
    first = list(generate(config))
    assert first == list(generate(config))
    other = list(generate(GeneratorConfig(n_events=3000, concurrent_sessions=100, n_items=500)))
    assert [e.item_id for e in first] != [e.item_id for e in other]


def test_exact_event_count_unique_ids_and_global_time_order() -> None:
    start = datetime(2023, 6, 1, 8, tzinfo=timezone(timedelta(hours=2)))
    config = GeneratorConfig(n_events=20_000, concurrent_sessions=2000, start=start)
    events = list(generate(config))
    assert len(events) == 20_000
    assert len({e.event_id for e in events}) == 20_000
    assert all(e.ts.tzinfo is UTC for e in events)
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))
    assert events[0].ts >= start
    assert events[-1].ts - events[0].ts < timedelta(days=1)


def test_n_sessions_gives_exactly_that_many_sessions() -> None:
    events = list(generate(GeneratorConfig(n_events=None, n_sessions=250, concurrent_sessions=40)))
    assert len({e.session_id for e in events}) == 250
    both = GeneratorConfig(n_events=100, n_sessions=250, concurrent_sessions=40)
    assert len(list(generate(both))) == 100  # the first limit reached wins


def test_concurrency_is_bounded_and_used() -> None:
    limit = 60
    events = list(generate(GeneratorConfig(n_events=30_000, concurrent_sessions=limit)))
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, e in enumerate(events):
        first.setdefault(e.session_id, i)
        last[e.session_id] = i
    opened = Counter(first.values())
    closed = Counter(last.values())
    open_now, most = 0, 0
    for i in range(len(events)):
        open_now += opened[i]
        most = max(most, open_now)
        open_now -= closed[i]
    assert most <= limit
    assert most >= limit * 0.8  # sessions really interleave


def test_one_slot_runs_sessions_one_after_another() -> None:
    config = GeneratorConfig(n_events=500, concurrent_sessions=1, n_items=3, n_categories=3)
    events = list(generate(config))
    order = [k for k, _ in itertools.groupby(e.session_id for e in events)]
    assert len(order) == len(set(order)) > 10  # each session's events are contiguous
    items = catalogue(config)
    # One item per category: an item is its own only relative.
    assert [items.related_ids(i) for i in items.item_ids] == [[i] * 5 for i in items.item_ids]
    assert {e.item_id for e in events} == set(items.item_ids)


def test_sessions_fit_in_the_default_inactivity_gap(events: list[Event]) -> None:
    for session in by_session(events).values():
        for a, b in itertools.pairwise(session):
            assert timedelta(0) <= b.ts - a.ts <= timedelta(minutes=30)


def test_all_events_are_valid(events: list[Event]) -> None:
    for e in events:
        assert event_from_mapping(json.loads(json.dumps(e.to_dict()))) == e


# -- users ------------------------------------------------------------------------------------


def test_users_return_and_some_sessions_are_anonymous(events: list[Event]) -> None:
    sessions = by_session(events)
    users = [s[0].user_id for s in sessions.values()]
    assert all(len({e.user_id for e in s}) == 1 for s in sessions.values())
    anonymous = users.count(None) / len(users)
    assert 0.25 <= anonymous <= 0.35  # configured 0.3
    per_user = Counter(u for u in users if u is not None)
    returning = sum(1 for n in per_user.values() if n >= 2)
    assert returning >= 0.5 * len(per_user)
    # Heavy-tailed activity: the most active user has far more sessions than the median one.
    assert max(per_user.values()) >= 5 * statistics.median(per_user.values())


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_anonymous_share_extremes(share: float) -> None:
    config = GeneratorConfig(n_events=2000, concurrent_sessions=50, anonymous_share=share)
    users = {e.user_id for e in generate(config)}
    assert (None in users) == (share > 0)
    assert (len(users - {None}) > 0) == (share < 1)


def test_users_keep_their_category_tastes(events: list[Event]) -> None:
    views_by_user: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        if e.user_id is not None and e.type == VIEW and e.category is not None:
            views_by_user[e.user_id][e.category] += 1
    regulars = [c for c in views_by_user.values() if sum(c.values()) >= 40]
    assert len(regulars) >= 20
    shares = [sum(n for _, n in c.most_common(3)) / sum(c.values()) for c in regulars]
    everyone = sum(views_by_user.values(), Counter[str]())
    global_share = sum(n for _, n in everyone.most_common(3)) / sum(everyone.values())
    # Three favourite categories per user (the walk never leaves an item's category except by
    # a taste draw), against a shop where the top three categories are a minority.
    assert statistics.median(shares) >= 0.95
    assert global_share <= 0.6


# -- funnel and sessions ----------------------------------------------------------------------


def test_funnel_rates_are_plausible(events: list[Event]) -> None:
    types = Counter(e.type for e in events)
    assert set(types) == {VIEW, CLICK, CART, PURCHASE}
    assert 0.32 <= types[CLICK] / types[VIEW] <= 0.38  # configured 0.35
    assert 0.08 <= types[CART] / types[CLICK] <= 0.12  # configured 0.1
    sessions = by_session(events).values()
    with_cart = [s for s in sessions if any(e.type == CART for e in s)]
    buying = [s for s in with_cart if any(e.type == PURCHASE for e in s)]
    assert 0.32 <= len(buying) / len(with_cart) <= 0.48  # configured 0.4
    conversion = len(buying) / len(sessions)
    assert 0.02 <= conversion <= 0.12
    lengths = [sum(e.type == VIEW for e in s) for s in sessions]
    assert 5.0 <= statistics.mean(lengths) <= 7.0  # configured 6 items per session


def test_funnel_order_within_sessions(events: list[Event]) -> None:
    for session in by_session(events).values():
        viewed: set[str] = set()
        clicked: set[str] = set()
        carted: Counter[tuple[str, int | None]] = Counter()
        for e in session:
            if e.type == VIEW:
                viewed.add(e.item_id)
            elif e.type == CLICK:
                assert e.item_id in viewed
                clicked.add(e.item_id)
            elif e.type == CART:
                assert e.item_id in clicked
                carted[e.item_id, e.quantity] += 1
            else:
                assert e.type == PURCHASE
                carted[e.item_id, e.quantity] -= 1
                assert carted[e.item_id, e.quantity] >= 0, "bought more than was carted"
            assert (e.quantity is not None) == (e.type in (CART, PURCHASE))
            if e.quantity is not None:
                assert 1 <= e.quantity <= 10


def test_sessions_walk_through_related_items(events: list[Event], cat: Catalogue) -> None:
    related = same_category = pairs = 0
    for session in by_session(events).values():
        views = [e.item_id for e in session if e.type == VIEW]
        for a, b in itertools.pairwise(views):
            pairs += 1
            related += b in cat.related_ids(a)
            same_category += cat.categories[cat.index(a)] == cat.categories[cat.index(b)]
    assert pairs > 10_000
    assert 0.5 <= related / pairs <= 0.7  # configured 0.55, plus chance
    assert same_category / pairs >= 0.8


def test_without_related_moves_consecutive_items_are_rarely_related() -> None:
    config = GeneratorConfig(
        n_events=20_000, related_share=0.0, same_category_share=0.0, n_items=2000, seed=5
    )
    items = catalogue(config)
    related = pairs = 0
    for session in by_session(list(generate(config))).values():
        views = [e.item_id for e in session if e.type == VIEW]
        for a, b in itertools.pairwise(views):
            pairs += 1
            related += b in items.related_ids(a)
    assert related / pairs < 0.2  # chance: related items are the popular ones of a category


# -- catalogue --------------------------------------------------------------------------------


def test_events_carry_catalogue_prices_and_categories(events: list[Event], cat: Catalogue) -> None:
    table = {item: (category, price) for item, category, price in cat.rows()}
    for e in events:
        assert (e.category, e.price) == table[e.item_id]


def test_catalogue_shape(cat: Catalogue) -> None:
    assert len(cat) == 2000
    assert len(set(cat.item_ids)) == 2000
    assert set(cat.categories) == set(cat.category_ids)
    assert len(cat.category_ids) == 25
    assert abs(cat.popularity.sum() - 1.0) < 1e-9
    assert all(p >= 0.5 for p in cat.prices)
    assert max(cat.prices) / min(cat.prices) > 20  # log-normal prices, spread over categories
    for item in cat.item_ids[:300]:
        assert item not in cat.related_ids(item)
        assert {cat.categories[cat.index(r)] for r in cat.related_ids(item)} == {
            cat.categories[cat.index(item)]
        }
    with pytest.raises(KeyError):
        cat.index("i2000")
    with pytest.raises(KeyError):
        cat.index("x1")


def test_catalogue_is_deterministic_and_shared_with_the_stream() -> None:
    config = GeneratorConfig(n_events=500, n_items=300, n_categories=7, seed=9)
    a, b = catalogue(config), catalogue(config)
    assert list(a.rows()) == list(b.rows())
    assert (a.related == b.related).all()
    assert list(a.rows()) != list(catalogue(GeneratorConfig(n_items=300, n_categories=7)).rows())
    assert {e.item_id for e in generate(config)} <= set(a.item_ids)


def test_popularity_is_heavy_tailed(events: list[Event], cat: Catalogue) -> None:
    counts = sorted(Counter(e.item_id for e in events).values(), reverse=True)
    total = sum(counts)
    top_1pct = sum(counts[: len(cat) // 100]) / total
    top_10pct = sum(counts[: len(cat) // 10]) / total
    assert top_1pct >= 0.15
    assert top_10pct >= 0.5
    assert counts[0] / total <= 0.1  # no single item swamps the shop
    assert len(counts) >= 0.6 * len(cat)  # and the long tail is visited


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_events": None, "n_sessions": None}, "set n_events or n_sessions"),
        ({"n_events": 0}, "n_events must be a positive integer"),
        ({"n_sessions": -1}, "n_sessions must be a positive integer"),
        ({"n_events": True}, "n_events must be a positive integer"),
        ({"n_events": 2.5}, "n_events must be a positive integer"),
        ({"n_users": 0}, "n_users must be an integer >= 1"),
        ({"n_items": 2.5}, "n_items must be an integer >= 1"),
        ({"concurrent_sessions": 0}, "concurrent_sessions must be an integer >= 1"),
        ({"n_items": 10, "n_categories": 11}, "must not exceed n_items"),
        ({"click_rate": 1.5}, "click_rate must be in [0, 1]"),
        ({"anonymous_share": -0.1}, "anonymous_share must be in [0, 1]"),
        ({"purchase_rate": float("nan")}, "purchase_rate must be in [0, 1]"),
        ({"related_share": 0.8, "same_category_share": 0.3}, "must not exceed 1"),
        ({"item_zipf": -1.0}, "item_zipf must be in [0, 5]"),
        ({"mean_session_items": 0.5}, "mean_session_items must be in [1, max_session_items]"),
        ({"mean_session_items": 70.0}, "mean_session_items must be in [1, max_session_items]"),
        ({"median_dwell_s": 0.0}, "median_dwell_s must be in"),
        ({"start": datetime(2024, 1, 1)}, "start must be a tz-aware datetime"),
        ({"start": datetime(1999, 1, 1, tzinfo=UTC)}, "start must be in 2000..2090"),
    ],
)
def test_bad_config_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        GeneratorConfig(**changes)


# -- event files ------------------------------------------------------------------------------

FIXED = [
    Event(
        event_id="e-1",
        session_id='s,"quoted"',
        item_id="Größe 商品",
        type="wishlist",
        ts=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        category='Küche, "Bad" 🍳',
        price=0.1 + 0.2,
        quantity=None,
    ),
    Event(
        event_id="e-2",
        session_id="s",
        item_id="007",
        type=PURCHASE,
        ts=datetime(2024, 3, 1, tzinfo=UTC),
        user_id="0042",
        price=1e9,
        quantity=1_000_000,
    ),
]


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_generated_events_round_trip_through_files(
    tmp_path: Path, events: list[Event], suffix: str
) -> None:
    sample = [*events[:5000], *FIXED]
    path = tmp_path / "out" / f"events.{suffix}"
    assert write_events(path, iter(sample)) == len(sample)
    assert list(read_events(path)) == sample
    assert list(read_events(path, fmt=suffix)) == sample
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_parquet_is_written_in_row_groups(tmp_path: Path, events: list[Event]) -> None:
    path = tmp_path / "events.parquet"
    assert write_events(path, events[:2500], row_group_rows=1000) == 2500
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000, 1000, 500]


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_empty_stream_writes_a_readable_empty_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty.{suffix}"
    assert write_events(path, []) == 0
    assert list(read_events(path)) == []


def test_explicit_format_overrides_an_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    assert write_events(path, FIXED, fmt="jsonl") == 2
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [event_from_mapping(json.loads(line)) for line in lines] == FIXED


def test_bad_rows_come_back_as_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_events(path, FIXED)
    with path.open("a", encoding="utf-8") as f:
        f.write('{"event_id": "e-3", "session_id": "s", "item_id": "i", "type": "view"}\n')
        f.write("not json\n")
    out = list(read_events(path))
    assert out[:2] == FIXED
    assert [(d.origin, d.reason.split(":")[0]) for d in out[2:] if isinstance(d, DeadLetter)] == [
        (f"{path}:3", "ts"),
        (f"{path}:4", "json"),
    ]


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    def broken() -> Iterator[Event]:
        yield FIXED[0]
        raise RuntimeError("source failed")

    for suffix in ["jsonl", "csv", "parquet"]:
        path = tmp_path / f"events.{suffix}"
        with pytest.raises(RuntimeError, match="source failed"):
            write_events(path, broken())
        assert list(tmp_path.iterdir()) == []


def test_file_format_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot tell the event file format"):
        write_events(tmp_path / "events.txt", FIXED)
    with pytest.raises(ConfigError, match="the suffix says csv but fmt='parquet'"):
        write_events(tmp_path / "events.csv", FIXED, fmt="parquet")
    with pytest.raises(ConfigError, match="unknown event file format 'xml'"):
        write_events(tmp_path / "events.xml", FIXED, fmt="xml")
    with pytest.raises(ConfigError, match="unknown event file format 'xml'"):
        list(read_events(tmp_path / "events.jsonl", fmt="xml"))
    with pytest.raises(ConfigError, match="row_group_rows must be >= 1"):
        write_events(tmp_path / "events.parquet", FIXED, row_group_rows=0)
    assert list(tmp_path.iterdir()) == []
