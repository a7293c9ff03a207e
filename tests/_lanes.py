"""How many examples a property test draws, by lane.

``make test-fast`` runs ``tests/unit`` under the Hypothesis profile ``fast`` (registered in
``conftest.py``): every property test draws a fifth of its examples, at least 20, so the lane
answers in about a minute on two cores. The full run (``make test``, CI) draws them all.
"""

from __future__ import annotations

from hypothesis import settings

#: The profile ``make test-fast`` loads (``--hypothesis-profile=fast``).
FAST_PROFILE = "fast"
#: Examples a test without its own count draws in the fast lane (Hypothesis' default: 100).
FAST_EXAMPLES = 20


def examples(n: int) -> int:
    """``n`` in the full lanes; a fifth of it, at least :data:`FAST_EXAMPLES`, in the fast one."""
    if settings.default.max_examples > FAST_EXAMPLES:
        return n
    return max(FAST_EXAMPLES, n // 5)
