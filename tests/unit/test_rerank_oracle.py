"""The linear slot loop of :func:`featrec.core.ranking.rerank.rerank` decides exactly as the
quadratic one it replaced (``rerank_reference``): same list, same decisions, same reasons in
the same order, on many random requests (a logged request explains bit for bit either way)."""

from __future__ import annotations

import rerank_reference as reference
from _lanes import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from featrec.core.ranking.rerank import RerankConfig, rerank


@st.composite
def requests(draw: st.DrawFn) -> tuple[object, ...]:
    n = draw(st.integers(1, 60))
    items = [f"i{j}" for j in range(n)]
    scores = draw(
        st.lists(
            st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.9]) | st.floats(0, 1), min_size=n, max_size=n
        )
    )
    cats = draw(st.lists(st.sampled_from(["A", "B", "C", None]), min_size=n, max_size=n))
    categories = {i: c for i, c in zip(items, cats, strict=True) if draw(st.booleans()) or c}
    popularity = {i: draw(st.floats(0, 10)) for i in items if draw(st.booleans())}
    purchased = frozenset(i for i in items if draw(st.integers(0, 9)) == 0)
    shown = draw(st.none() | st.lists(st.sampled_from([*items, "gone"]), max_size=25, unique=True))
    k = draw(st.integers(1, 25))
    config = RerankConfig(
        drop_purchased=draw(st.booleans()),
        max_per_category=draw(st.none() | st.integers(1, 4)),
        popularity_damping=draw(st.sampled_from([0.0, 0.3])),
        stability_window=draw(st.integers(0, 3)),
        stability_margin=draw(st.sampled_from([0.0, 0.05, 0.5])),
    )
    return items, scores, categories, popularity, purchased, shown, k, config


@settings(max_examples=examples(400), deadline=None)
@given(request=requests())
def test_the_linear_loop_decides_as_the_reference(request: tuple[object, ...]) -> None:
    items, scores, categories, popularity, purchased, shown, k, config = request
    old_config = reference.RerankConfig(**{f: getattr(config, f) for f in config.__slots__})  # type: ignore[attr-defined]
    got = rerank(items, scores, categories, popularity, purchased, shown, k, config)  # type: ignore[arg-type]
    expected = reference.rerank(
        items, scores, categories, popularity, purchased, shown, k, old_config
    )  # type: ignore[arg-type]
    assert [d.to_dict() for d in got] == [d.to_dict() for d in expected]
