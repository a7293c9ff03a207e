"""Co-visitation core: known answers, the streaming == batch oracle, bounded top-K vs exact."""

from __future__ import annotations

import heapq
import math
import pickle
from collections import defaultdict
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featrec.core.events.model import Event
from featrec.core.features.catalog import ITEM_NEIGHBOURS
from featrec.core.items.covisit import (
    CovisitConfig,
    CovisitIndex,
    NeighbourSketch,
    PairUpdate,
    RecentItems,
    bootstrap,
    neighbour_row,
    observe,
)
from featrec.core.items.session_scorer import ScorerConfig, recommend, score_session
from featrec.errors import ConfigError

T0 = 1_700_000_000.0
US = 1_000_000
DAY = 86_400.0


def ev(session: str, item: str, t: float, type_: str = "view", n: int = 0) -> Event:
    return Event(
        event_id=f"e{n}",
        session_id=session,
        item_id=item,
        type=type_,
        ts=datetime.fromtimestamp(T0 + t, tz=UTC),
    )


def us(t: float) -> int:
    return int((T0 + t) * US)


# -- pair updates ---------------------------------------------------------------------------


def test_pairs_known_answer() -> None:
    config = CovisitConfig(window_n=2, forward_weight=1.0, backward_weight=0.5, distance_decay=1)
    recent = RecentItems()
    observe(recent, ev("s", "A", 0, "view"), config)
    observe(recent, ev("s", "B", 10, "cart"), config)
    updates = observe(recent, ev("s", "C", 20, "purchase"), config)
    t = us(20)
    # neighbour's type weight x 1/distance x direction weight
    assert updates == [
        PairUpdate("B", "C", 6.0, t),
        PairUpdate("C", "B", 3.0 * 0.5, t),
        PairUpdate("A", "C", 6.0 / 2, t),
        PairUpdate("C", "A", 1.0 / 2 * 0.5, t),
    ]


def test_window_n_and_window_s_limit_the_pairs() -> None:
    config = CovisitConfig(window_n=2, window_s=60, backward_weight=0)
    recent = RecentItems()
    for i, (item, t) in enumerate([("A", 0), ("B", 100), ("C", 110), ("D", 120)]):
        updates = observe(recent, ev("s", item, t, n=i), config)
    # D pairs with C (d=1) and B (d=2); A is 3 back and 120 s old.
    assert [(anchor, neighbour) for anchor, neighbour, _, _ in updates] == [("C", "D"), ("B", "D")]
    assert [e[1] for e in recent.entries] == ["C", "D"]
    late = observe(recent, ev("s", "E", 1000), config)
    assert late == [], "items older than window_s do not pair"
    assert [e[1] for e in recent.entries] == ["E"], "the buffer forgets what can never pair"


def test_out_of_order_event_pairs_by_event_time() -> None:
    config = CovisitConfig(window_n=5, backward_weight=0.5)
    recent = RecentItems()
    observe(recent, ev("s", "B", 10), config)
    updates = observe(recent, ev("s", "A", 5), config)  # A happened before B
    assert updates == [PairUpdate("A", "B", 1.0, us(10)), PairUpdate("B", "A", 0.5, us(10))]


def _reference_pairs(
    previous: list[tuple[int, str, str]], ts: int, item: str, type_: str, config: CovisitConfig
) -> list[PairUpdate]:
    """The module docstring's pair rule, written plainly (newest previous event first)."""
    out = []
    for d, (p_ts, p_item, p_type) in enumerate(reversed(previous[-config.window_n :]), start=1):
        if abs(ts - p_ts) > config.window_s * US:
            continue
        before = p_ts <= ts  # the previous event happened first (ties: arrival order)
        first, second = (p_item, item) if before else (item, p_item)
        first_w = config.type_weight(p_type if before else type_)
        second_w = config.type_weight(type_ if before else p_type)
        w_dist = d**-config.distance_decay
        at = max(ts, p_ts)
        if first == second:
            if config.self_pairs and second_w * w_dist * config.forward_weight > 0:
                out.append(PairUpdate(first, second, second_w * w_dist * config.forward_weight, at))
            continue
        if (w := second_w * w_dist * config.forward_weight) > 0:
            out.append(PairUpdate(first, second, w, at))
        if (w := first_w * w_dist * config.backward_weight) > 0:
            out.append(PairUpdate(second, first, w, at))
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("ABCD"),
            st.integers(-400, 400),
            st.sampled_from(["view", "click", "cart", "purchase", "wishlist"]),
        ),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 6),
    st.booleans(),
    st.sampled_from([0.0, 0.5, 1.0]),
)
def test_pairs_equal_the_plain_rule_in_any_order(
    events: list[tuple[str, int, str]], window_n: int, self_pairs: bool, default_w: float
) -> None:
    config = CovisitConfig(
        window_n=window_n,
        window_s=300.0,
        self_pairs=self_pairs,
        default_type_weight=default_w,
        type_weights={"view": 1.0, "click": 0.0, "cart": 3.0, "purchase": 6.0},
    )
    recent = RecentItems()
    for n, (item, t, type_) in enumerate(events):
        previous = list(recent.entries)
        got = observe(recent, ev("s", item, t, type_, n), config)
        assert got == _reference_pairs(previous, us(t), item, type_, config)


def test_self_pairs_and_zero_weights() -> None:
    recent = RecentItems()
    on = CovisitConfig(self_pairs=True)
    assert not CovisitConfig().self_pairs
    observe(recent, ev("s", "A", 0), on)
    assert observe(recent.copy(), ev("s", "A", 1), on) == [PairUpdate("A", "A", 1.0, us(1))]
    assert observe(recent.copy(), ev("s", "A", 1), CovisitConfig(self_pairs=False)) == []
    forward_only = CovisitConfig(backward_weight=0.0)
    assert observe(recent.copy(), ev("s", "B", 1), forward_only) == [
        PairUpdate("A", "B", 1.0, us(1))
    ]
    silent = CovisitConfig(type_weights={"search": 0.0})
    assert observe(recent.copy(), ev("s", "B", 1, "search"), silent) == [
        PairUpdate("B", "A", 0.5, us(1))
    ], "a zero-weight type is never a neighbour, but its item is still an anchor"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_n": 0},
        {"window_s": 0},
        {"window_s": math.nan},
        {"type_weights": {"cart": -1.0}},
        {"forward_weight": math.inf},
        {"distance_decay": -1},
        {"half_life_s": 0},
        {"capacity": 0},
    ],
)
def test_bad_config_is_refused_with_a_clear_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs)).split("_")[0]):
        CovisitConfig(**kwargs)  # type: ignore[arg-type]


def test_config_copies_the_weights() -> None:
    weights = {"view": 1.0}
    config = CovisitConfig(type_weights=weights)
    weights["view"] = 99.0
    assert config.type_weight("view") == 1.0
    assert config.type_weight("wishlist") == config.default_type_weight


# -- sketch ---------------------------------------------------------------------------------


def test_tiny_catalogue_has_the_obvious_neighbours() -> None:
    """Phones are followed by cases, then chargers; TVs by cables. No decay, no pruning."""
    config = CovisitConfig(half_life_s=None, backward_weight=0.5, distance_decay=1.0)
    events: list[Event] = []
    for s in range(20):
        base = s * 1000.0
        events += [ev(f"p{s}", "phone", base), ev(f"p{s}", "case", base + 10)]
        if s % 2 == 0:
            events.append(ev(f"p{s}", "charger", base + 20, "cart"))
        events += [ev(f"t{s}", "tv", base + 1), ev(f"t{s}", "hdmi", base + 11)]
    index = bootstrap(events, config)
    assert [i for i, _ in index.top("phone", 5)] == ["case", "charger"]
    # charger: 10 sessions x cart 3 x 1/2; case: 20 x view 1 x 1
    assert index.top("phone", 5) == [("case", 20.0), ("charger", 15.0)]
    assert index.top("tv", 5) == [("hdmi", 20.0)]
    assert index.top("case", 5) == [("charger", 30.0), ("phone", 10.0)]
    assert index.top("hdmi", 1) == [("tv", 10.0)]
    assert index.top("unknown", 5) == []


def test_time_decay_halves_weights_per_half_life() -> None:
    config = CovisitConfig(half_life_s=DAY)
    sketch = NeighbourSketch()
    sketch.add("B", 4.0, us(0), config)
    sketch.add("C", 4.0, us(DAY), config)
    # At t = 1 day, B has decayed once; C is fresh.
    assert sketch.top(2, config) == [("C", 4.0), ("B", 2.0)]
    assert sketch.top(2, config, now_us=us(3 * DAY)) == [("C", 1.0), ("B", 0.5)]
    assert sketch.weight("B", config, now_us=us(2 * DAY)) == 1.0
    assert sketch.total_weight(config) == 6.0


def test_ties_are_broken_by_item_id() -> None:
    config = CovisitConfig(half_life_s=None)
    sketch = NeighbourSketch()
    for item in ["c", "a", "b"]:
        sketch.add(item, 1.0, us(0), config)
    assert sketch.top(3, config) == [("a", 1.0), ("b", 1.0), ("c", 1.0)]


def test_space_saving_eviction_known_answer() -> None:
    config = CovisitConfig(half_life_s=None, capacity=2)
    sketch = NeighbourSketch()
    sketch.add("a", 5.0, us(0), config)
    sketch.add("b", 1.0, us(0), config)
    sketch.add("c", 2.0, us(0), config)  # evicts b (smallest), starts at 1 + 2
    assert sketch.top(5, config) == [("a", 5.0), ("c", 3.0)]
    assert sketch.error_bound(config) == 3.0
    sketch.add("a", 1.0, us(0), config)
    sketch.add("d", 0.5, us(0), config)  # evicts c (3 < 6)
    assert sketch.top(5, config) == [("a", 6.0), ("d", 3.5)]


def test_forward_decay_survives_renormalisation_and_late_events() -> None:
    """Far apart event times force rescaling; the result must equal the closed form."""
    config = CovisitConfig(half_life_s=3600.0)
    sketch = NeighbourSketch()
    times = [0.0, 50 * 3600, 130 * 3600, 129 * 3600, 200 * 3600, 5.0]  # two late events
    for i, t in enumerate(times):
        sketch.add("x" if i % 2 else "y", 1.0, us(t), config)
    now = max(times)
    exact = {
        item: sum(2.0 ** -((now - t) / 3600) for i, t in enumerate(times) if (i % 2 == 1) == odd)
        for item, odd in (("x", True), ("y", False))
    }
    got = dict(sketch.top(2, config))
    assert got == pytest.approx(exact, rel=1e-12)
    assert sketch.ref_us > us(0), "the reference time moved forward"


def _reference_add(
    sketch: NeighbourSketch, neighbour: str, weight: float, ts_us: int, config: CovisitConfig
) -> None:
    """One update, field by field: the sketch's fold before it took runs of updates."""
    if sketch.version == 0:
        sketch.ref_us = ts_us
    if config.half_life_us is not None:
        exponent = (ts_us - sketch.ref_us) / config.half_life_us
        if exponent > 60.0:
            sketch._rescale(2.0**-exponent, ts_us)  # unchanged by the run fold
            exponent = 0.0
        weight *= 2.0**exponent
    sketch.version = max(sketch.version + 1, ts_us)
    sketch.last_us = max(sketch.last_us, ts_us)
    sketch.total += weight
    counts = sketch.counts
    if neighbour in counts:
        counts[neighbour] += weight
    elif len(counts) < config.capacity:
        counts[neighbour] = weight
        if len(counts) == config.capacity:
            sketch.heap = [(c, i) for i, c in counts.items()]
            heapq.heapify(sketch.heap)
    else:
        while counts[sketch.heap[0][1]] != sketch.heap[0][0]:  # refresh lagging entries
            heapq.heapreplace(sketch.heap, (counts[sketch.heap[0][1]], sketch.heap[0][1]))
        floor, smallest = sketch.heap[0]
        del counts[smallest]
        counts[neighbour] = floor + weight
        heapq.heapreplace(sketch.heap, (floor + weight, neighbour))


#: Runs of pair updates over a few neighbours, a place to cut them, a capacity and a
#: half-life (a 1 s half-life over 400 s crosses 2**60 several times).
runs_of_updates = given(
    st.lists(
        st.tuples(st.sampled_from("abcdefg"), st.floats(0.01, 10.0), st.integers(0, 400)),
        max_size=60,
    ),
    st.integers(0, 60),
    st.integers(1, 8),
    st.sampled_from([None, 1.0, 3600.0]),
)


@settings(max_examples=200, deadline=None)
@runs_of_updates
def test_a_run_of_pairs_folds_like_one_add_each(
    updates: list[tuple[str, float, int]], cut: int, capacity: int, half_life: float | None
) -> None:
    """add_pairs (the flow's neighbour step), in runs cut anywhere, equals the one-update
    fold it replaced, through evictions and renormalisations (a 1 s half-life over 400 s
    crosses 2**60 several times)."""
    config = CovisitConfig(capacity=capacity, half_life_s=half_life)
    pairs = [("anchor", item, weight, us(t)) for item, weight, t in updates]
    one_by_one, runs = NeighbourSketch(), NeighbourSketch()
    for _, item, weight, ts_us in pairs:
        _reference_add(one_by_one, item, weight, ts_us, config)
    runs.add_pairs(pairs[:cut], config)
    runs.add_pairs(pairs[cut:], config)
    assert runs == one_by_one


def test_snapshot_copy_is_independent_and_picklable() -> None:
    config = CovisitConfig(capacity=2)
    sketch = NeighbourSketch()
    sketch.add("a", 1.0, us(0), config)
    sketch.add("b", 2.0, us(1), config)
    snap = sketch.copy()
    sketch.add("c", 3.0, us(2), config)
    assert [i for i, _ in snap.top(5, config)] == ["b", "a"]
    restored = pickle.loads(pickle.dumps(sketch))
    assert restored == sketch
    assert restored.top(5, config) == sketch.top(5, config)


def test_versions_strictly_increase_and_rows_match_the_catalog() -> None:
    config = CovisitConfig()
    sketch = NeighbourSketch()
    versions = []
    for _ in range(5):
        sketch.add("b", 1.0, us(0), config)  # same event time every time
        versions.append(neighbour_row("a", sketch, config, k=10).version)
    assert versions == sorted(set(versions)) and versions[0] == us(0)
    row = neighbour_row("a", sketch, config, k=10)
    assert row.view == ITEM_NEIGHBOURS.name and row.key == "a"
    assert tuple(row.values) == ITEM_NEIGHBOURS.feature_names
    assert row.values["neighbour_ids"] == ["b"]
    assert row.values["neighbour_weights"] == [5.0]
    assert row.values["as_of_s"] == T0


# -- streaming == batch -----------------------------------------------------------------------


def synthetic_events(rng: np.random.Generator, n_sessions: int, n_items: int) -> list[Event]:
    """Sessions that walk through item clusters, Zipf popularity, mixed types, interleaved."""
    cluster = rng.integers(0, 20, size=n_items)
    zipf = 1.0 / np.arange(1, n_items + 1) ** 1.1
    members = [np.flatnonzero(cluster == c) for c in range(20)]
    types = np.array(["view", "click", "cart", "purchase"])
    events: list[Event] = []
    for s in range(n_sessions):
        start = float(rng.uniform(0, 30 * DAY))
        c = int(rng.integers(0, 20))
        length = int(rng.integers(2, 12))
        for j in range(length):
            if rng.random() < 0.2:
                c = int(rng.integers(0, 20))
            pool = members[c] if len(members[c]) else np.arange(n_items)
            p = zipf[pool] / zipf[pool].sum()
            item = int(rng.choice(pool, p=p))
            t = start + j * float(rng.exponential(60))
            type_ = str(rng.choice(types, p=[0.6, 0.3, 0.08, 0.02]))
            events.append(ev(f"s{s}", f"i{item}", t, type_, n=len(events)))
    # A stream in time order, with a little disorder (late arrivals within sessions).
    order = np.argsort([e.ts.timestamp() + rng.normal(0, 20) for e in events], kind="stable")
    return [events[i] for i in order]


def test_streaming_fold_equals_batch_bootstrap_at_every_checkpoint() -> None:
    """The dataflow's two keyed stages, with snapshots (pickle round trips) between epochs,
    produce exactly the batch lists over every prefix."""
    rng = np.random.default_rng(7)
    events = synthetic_events(rng, n_sessions=150, n_items=120)
    config = CovisitConfig(capacity=8, half_life_s=2 * DAY, window_n=4)
    sessions: dict[str, RecentItems] = {}
    sketches: dict[str, NeighbourSketch] = {}
    for n, event in enumerate(events, start=1):
        recent = sessions.setdefault(event.session_id, RecentItems())
        for anchor, neighbour, weight, ts_us in observe(recent, event, config):  # by session
            sketches.setdefault(anchor, NeighbourSketch()).add(  # item-keyed stage
                neighbour, weight, ts_us, config
            )
        if n % 97 == 0:  # an epoch ends: snapshot every state, resume from the snapshots
            sessions = pickle.loads(pickle.dumps({k: v.copy() for k, v in sessions.items()}))
            sketches = pickle.loads(pickle.dumps({k: v.copy() for k, v in sketches.items()}))
        if n % 101 == 0 or n == len(events):
            batch = bootstrap(events[:n], config)
            assert set(batch.sketches) == set(sketches)
            for anchor, sketch in sketches.items():
                assert sketch.top(50, config) == batch.top(anchor, 50), (n, anchor)
    assert any(len(s.counts) == config.capacity for s in sketches.values()), "evictions ran"


def test_bootstrap_forgets_idle_sessions_only_when_asked() -> None:
    config = CovisitConfig(window_s=10 * DAY)
    events = [ev("s", "A", 0), ev("t", "X", 2 * DAY), ev("s", "B", 3 * DAY)]
    assert bootstrap(events, config).top("A", 5) == [("B", 1.0)]
    forgetful = bootstrap(events, config, session_idle_s=DAY)
    assert forgetful.top("A", 5) == [], "s was idle for 2 days when B arrived"


# -- bounded memory vs exact counts ------------------------------------------------------------


def exact_weights(
    events: list[Event], config: CovisitConfig, now_us: int
) -> dict[str, dict[str, float]]:
    """Unbounded recomputation: every pair update, decayed by its own age."""
    half_life = config.half_life_us
    exact: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    sessions: dict[str, RecentItems] = defaultdict(RecentItems)
    for event in events:
        for anchor, neighbour, weight, ts_us in observe(sessions[event.session_id], event, config):
            decay = 1.0 if half_life is None else 2.0 ** -((now_us - ts_us) / half_life)
            exact[anchor][neighbour] += weight * decay
    return exact


def test_bounded_top_k_recalls_the_exact_top_20_and_respects_the_error_bound() -> None:
    rng = np.random.default_rng(11)
    events = synthetic_events(rng, n_sessions=3000, n_items=400)
    # Space-saving needs a few times more counters than the k it reports when the tail is
    # heavy (here the 20th neighbour weighs ~5% of the first): 100 counters for a top-20.
    config = CovisitConfig(capacity=100, half_life_s=7 * DAY)
    index = bootstrap(events, config)
    now = max(s.last_us for s in index.sketches.values())
    exact = exact_weights(events, config, now)

    busiest = sorted(exact, key=lambda a: (-len(exact[a]), a))[:40]
    assert min(len(exact[a]) for a in busiest) > config.capacity, "pruning must matter"
    recalls = []
    for anchor in busiest:
        true = exact[anchor]
        top_true = [i for i, _ in sorted(true.items(), key=lambda e: (-e[1], e[0]))[:20]]
        sketch = index.sketches[anchor]
        got = [i for i, _ in sketch.top(20, config, now_us=now)]
        recalls.append(len(set(got) & set(top_true)) / 20)

        bound = sketch.error_bound(config, now_us=now)
        total = sum(true.values())
        assert 0 < bound <= total / config.capacity * (1 + 1e-9)
        for item, w in true.items():
            estimate = sketch.weight(item, config, now_us=now)
            if item in sketch.counts:
                assert w * (1 - 1e-9) <= estimate <= w + bound * (1 + 1e-9)
            else:
                assert w <= bound * (1 + 1e-9), "a heavier neighbour than m was dropped"
    assert np.mean(recalls) >= 0.95, recalls


def test_memory_stays_bounded_as_distinct_pairs_grow() -> None:
    rng = np.random.default_rng(3)
    config = CovisitConfig(capacity=20, half_life_s=None)
    index = CovisitIndex(config)
    sessions: dict[str, RecentItems] = defaultdict(RecentItems)
    stored = []
    distinct: set[tuple[str, str]] = set()
    for step in range(4):
        for n in range(3000):
            s = f"s{step}-{n // 5}"
            item = f"i{int(rng.integers(0, 100))}"  # uniform: distinct pairs keep growing
            for u in observe(sessions[s], ev(s, item, step * DAY + n), config):
                index.add(u)
                distinct.add(u[:2])
        stored.append(index.n_pairs)
    assert len(distinct) > 4 * index.n_anchors * config.capacity / 2
    assert index.n_anchors == 100
    assert stored[-1] <= index.n_anchors * config.capacity
    assert stored[1] == stored[-1], "once full, the sketch does not grow"


def test_prune_drops_anchors_whose_weight_decayed_away() -> None:
    config = CovisitConfig(half_life_s=3600.0)
    index = CovisitIndex(config)
    index.add(PairUpdate("old", "x", 1.0, us(0)))
    index.add(PairUpdate("new", "x", 1.0, us(10 * 3600)))
    assert index.prune(now_us=us(10 * 3600), epsilon=0.01) == 1
    assert list(index.sketches) == ["new"]


# -- candidates ----------------------------------------------------------------------------


def test_candidates_known_answer() -> None:
    table = {"A": [("X", 4.0), ("Y", 2.0)], "B": [("Y", 10.0), ("Z", 5.0)]}

    def lookup(anchor: str) -> list[tuple[str, float]]:
        return table.get(anchor, [])

    config = ScorerConfig(recency_decay=1.0, reminder_weight=0.0, normalise="max")
    # newest first: B (p=1, weight 1), A (p=2, weight 1/2); weights divided by each max
    assert score_session(["B", "A"], lookup, config) == {
        "Y": 1.0 + 0.5 * 0.5,
        "Z": 0.5,
        "X": 0.5,
    }
    assert recommend(["B", "A"], lookup, 3, config) == ["Y", "X", "Z"]  # tie X/Z by id
    reminded = ScorerConfig(recency_decay=1.0, reminder_weight=2.0, reminder_decay=1.0)
    assert score_session(["B", "A"], lookup, reminded)["B"] == 2.0
    assert score_session(["B", "A"], lookup, reminded)["A"] == 1.0
    typed = score_session(["B", "A"], lookup, config, types=["view", "purchase"])
    assert typed["X"] == 6.0 * 0.5
    assert recommend(["Q"], lookup, 2, config, fallback=["P", "R", "S"]) == ["P", "R"]
    with pytest.raises(ValueError, match="types"):
        score_session(["B"], lookup, config, types=[])
    with pytest.raises(ConfigError, match="normalise"):
        ScorerConfig(normalise="l2")


def _without_heap(sketch: NeighbourSketch) -> tuple[object, ...]:
    return (sketch.counts, bool(sketch.heap), sketch.total, sketch.ref_us, sketch.last_us,
            sketch.version)  # fmt: skip


@settings(max_examples=200, deadline=None)
@runs_of_updates
def test_a_sketch_restored_without_its_heap_folds_on_like_the_original(
    updates: list[tuple[str, float, int]], cut: int, capacity: int, half_life: float | None
) -> None:
    """Snapshots keep a sketch's counters, not its lazy heap: one restored at any point
    (``NeighbourSketch.restored``, the heap built afresh) evicts the same neighbours and ends
    with the same counters as the sketch that was never interrupted."""
    config = CovisitConfig(capacity=capacity, half_life_s=half_life)
    pairs = [("anchor", item, weight, us(t)) for item, weight, t in updates]
    original = NeighbourSketch()
    original.add_pairs(pairs[:cut], config)
    restored = NeighbourSketch.restored(
        dict(original.counts), bool(original.heap), original.total, original.ref_us,
        original.last_us, original.version,
    )  # fmt: skip
    assert _without_heap(restored) == _without_heap(original)
    for sketch in (original, restored):
        sketch.add_pairs(pairs[cut:], config)
    assert _without_heap(restored) == _without_heap(original)
    assert restored.top(8, config) == original.top(8, config)
