"""The order of scored item lists: ``best_n`` against the full sort it stands for."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from featrec.core.items.order import SORT_FACTOR, best_first, best_n


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.text("abcdefgh", min_size=1, max_size=3),
        # few distinct scores: ties everywhere, broken by item id
        st.sampled_from([0.0, -0.0, 1.0, 2.5, -3.0, 1e-300]),
        max_size=120,
    ),
    st.integers(1, 30),
)
def test_best_n_is_the_sorted_prefix_on_both_paths(scores: dict[str, float], n: int) -> None:
    """Up to 120 pairs and n from 1 to 30: both the sort (n >= len/16) and the heap."""
    pairs = list(scores.items())
    expected = sorted(pairs, key=best_first)[:n]
    assert best_n(pairs, n) == expected
    assert best_n(scores.items(), n) == expected


def test_best_n_takes_the_heap_for_long_lists() -> None:
    pairs = [(f"i{i:04d}", float(i % 7)) for i in range(1000)]
    assert best_n(pairs, 5) == sorted(pairs, key=best_first)[:5]
    assert len(pairs) > SORT_FACTOR * 5  # the heapq path
