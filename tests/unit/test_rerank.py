"""Post-processing rules, each with a known answer, and invariants on random inputs."""

from __future__ import annotations

import pytest
from _lanes import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from featrec.core.ranking.rerank import Decision, RerankConfig, rerank
from featrec.errors import ConfigError

OFF = RerankConfig(drop_purchased=False)


def kept(decisions: list[Decision]) -> list[str]:
    return [d.item_id for d in decisions if d.kept]


def decision(decisions: list[Decision], item: str) -> Decision:
    return next(d for d in decisions if d.item_id == item)


def run(
    scores: dict[str, float],
    config: RerankConfig = OFF,
    *,
    categories: dict[str, str | None] | None = None,
    popularity: dict[str, float] | None = None,
    purchased: set[str] | None = None,
    shown: list[str] | None = None,
    k: int = 10,
) -> list[Decision]:
    return rerank(
        list(scores),
        list(scores.values()),
        categories or {},
        popularity or {},
        purchased or set(),
        shown,
        k,
        config,
    )


def test_score_order_with_ties_in_candidate_order_and_every_item_decided() -> None:
    got = run({"a": 0.1, "b": 0.3, "c": 0.3, "d": 0.2}, k=3)
    assert kept(got) == ["b", "c", "d"]
    assert [d.rank for d in got] == [1, 2, 3, None]
    assert decision(got, "a").reasons == ("below the top 3",) and not decision(got, "a").kept
    assert {d.item_id for d in got} == {"a", "b", "c", "d"}


def test_purchased_items_are_dropped_with_a_reason() -> None:
    got = run({"a": 0.9, "b": 0.5}, RerankConfig(), purchased={"a"})
    assert kept(got) == ["b"]
    assert decision(got, "a").reasons == ("dropped: already purchased",)
    assert kept(run({"a": 0.9, "b": 0.5}, OFF, purchased={"a"})) == ["a", "b"]


def test_popularity_damping_known_answer() -> None:
    scores = {"hit": 0.5, "niche": 0.45, "mid": 0.44}
    popularity = {"hit": 100.0, "mid": 50.0}
    got = run(
        scores, RerankConfig(drop_purchased=False, popularity_damping=0.2), popularity=popularity
    )
    # hit: 0.5 x (1 - 0.2) = 0.4; mid: 0.44 x (1 - 0.1) = 0.396; niche unchanged
    assert kept(got) == ["niche", "hit", "mid"]
    assert decision(got, "hit").score == pytest.approx(0.4)
    assert decision(got, "hit").raw_score == 0.5
    assert decision(got, "mid").score == pytest.approx(0.396)
    assert decision(got, "hit").reasons == ("popularity damping: score -20.0%",)
    undamped = run(scores, popularity=popularity)
    assert [d.score for d in undamped] == [0.5, 0.45, 0.44]  # 0 leaves scores bit-identical


def test_diversity_cap_known_answer() -> None:
    scores = {"a1": 0.9, "a2": 0.8, "a3": 0.7, "b1": 0.6, "a4": 0.5}
    categories: dict[str, str | None] = {
        "a1": "a",
        "a2": "a",
        "a3": "a",
        "a4": "a",
        "b1": "b",
    }
    config = RerankConfig(drop_purchased=False, max_per_category=2)
    got = run(scores, config, categories=categories, k=4)
    # a3 waits behind b1; with nothing else left, the cap gives way.
    assert kept(got) == ["a1", "a2", "b1", "a3"]
    assert decision(got, "a3").reasons == (
        "diversity: category a already has 2 item(s)",
        "diversity cap relaxed: no other candidates left",
    )
    assert kept(run(scores, config, categories=categories, k=3)) == ["a1", "a2", "b1"]
    # Items without a category are never capped.
    assert kept(run(scores, config, k=4)) == ["a1", "a2", "a3", "b1"]


SHOWN = ["A", "B", "C", "D"]
STABLE = RerankConfig(drop_purchased=False, stability_window=1, stability_margin=0.1)


def test_stability_keeps_a_shown_item_from_jumping_up_unless_clearly_better() -> None:
    close = {"D": 0.50, "A": 0.48, "B": 0.47, "C": 0.46}
    assert kept(run(close, OFF)) == ["D", "A", "B", "C"]  # what score alone would show
    got = run(close, STABLE, shown=SHOWN)
    assert kept(got) == ["A", "B", "D", "C"]  # D moves from 4 to 3: within +-1
    assert "stability: shown at 4, not raised above 3" in decision(got, "D").reasons
    clear = {**close, "D": 0.9}
    got = run(clear, STABLE, shown=SHOWN)
    assert kept(got) == ["D", "A", "B", "C"]
    assert decision(got, "D").reasons == ("stability: shown at 4, rose above A by 0.42 > 0.1",)


def test_stability_holds_a_shown_item_unless_clearly_outscored() -> None:
    shown = ["A", "B"]
    close = {"C": 0.9, "D": 0.8, "A": 0.75, "E": 0.7}
    got = run(close, STABLE, shown=shown)
    assert kept(got) == ["C", "A", "D", "E"]  # A shown at 1 stays at 2 (D leads by 0.05)
    assert decision(got, "A").reasons == ("stability: shown at 1, kept within +-1",)
    far = {**close, "A": 0.1}
    got = run(far, STABLE, shown=shown)
    assert kept(got) == ["C", "D", "E", "A"]
    assert decision(got, "A").reasons == ("stability: shown at 1, outscored by D by 0.7 > 0.1",)


def test_stability_off_by_default_and_new_items_compete_freely() -> None:
    scores = {"N": 0.99, "A": 0.1, "B": 0.2}
    assert kept(run(scores, OFF, shown=["A", "B"])) == ["N", "B", "A"]
    got = run(scores, RerankConfig(drop_purchased=False, stability_window=1), shown=["A", "B"])
    assert kept(got)[0] == "N"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((["a", "a"], [0.1, 0.2]), "appears twice"),
        ((["a"], [0.1, 0.2]), "2 scores for 1 items"),
        ((["a"], [float("nan")]), "must be finite"),
    ],
)
def test_bad_input_is_refused(args: tuple[list[str], list[float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rerank(args[0], args[1], {}, {}, set(), None, 5)
    with pytest.raises(ValueError, match="k must be"):
        rerank(["a"], [0.1], {}, {}, set(), None, 0)


@pytest.mark.parametrize(
    "change",
    [
        {"max_per_category": 0},
        {"popularity_damping": 1.0},
        {"stability_window": -1},
        {"stability_margin": float("inf")},
    ],
)
def test_config_is_validated(change: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RerankConfig(**change)  # type: ignore[arg-type]


ITEMS = [f"i{i}" for i in range(12)]


@settings(max_examples=examples(200), deadline=None)
@given(
    scores=st.lists(st.floats(0, 1), min_size=12, max_size=12),
    cats=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=12, max_size=12),
    shown=st.permutations(ITEMS).map(lambda p: p[:6]),
    k=st.integers(1, 12),
    window=st.integers(0, 3),
    cap=st.one_of(st.none(), st.integers(1, 4)),
    margin=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_invariants_on_random_requests(
    scores: list[float],
    cats: list[str | None],
    shown: list[str],
    k: int,
    window: int,
    cap: int | None,
    margin: float,
) -> None:
    categories = dict(zip(ITEMS, cats, strict=True))
    config = RerankConfig(
        drop_purchased=True, max_per_category=cap, stability_window=window, stability_margin=margin
    )
    purchased = {"i0"}
    args = (ITEMS, scores, categories, {}, purchased, shown, k, config)
    got = rerank(*args)
    assert got == rerank(*args)  # deterministic
    assert sorted(d.item_id for d in got) == sorted(ITEMS)
    placed = [d for d in got if d.kept]
    assert [d.rank for d in placed] == list(range(1, len(placed) + 1))
    assert len(placed) == min(k, len(ITEMS) - 1) and "i0" not in kept(got)
    if window == 0 and cap is None:
        order = sorted(ITEMS[1:], key=lambda i: (-scores[ITEMS.index(i)], ITEMS.index(i)))
        assert kept(got) == order[:k]  # no rule: score order, ties in candidate order
    if cap is not None:
        counts: dict[str, int] = {}
        for d in placed:
            category = categories[d.item_id]
            if category is not None:
                counts[category] = counts.get(category, 0) + 1
                if counts[category] > cap:
                    assert any("relaxed" in r for r in d.reasons)
    if window > 0 and cap is None:
        ranks = {d.item_id: d.rank for d in placed}
        for q, item in enumerate(shown, start=1):
            if item == "i0":
                continue
            why = " ".join(decision(got, item).reasons)
            rank = ranks.get(item)
            if rank is not None and "rose above" not in why and "nothing else" not in why:
                assert rank >= q - window, (item, q, rank, why)
            # Held items due at one slot queue up, the one shown higher first.
            latest = q + window + sum(1 for other in shown[: q - 1] if other != "i0")
            if "outscored" not in why and latest <= len(placed):
                assert rank is not None and rank <= latest, (item, q, rank, why)
