"""Two-stage ranking: the learned ranker scores only the head of the candidate order.

The first stage is the candidate order itself (:func:`featrec.core.candidates.generation.generate`
orders candidates by the tuned co-visitation scorer, then by their best other source): free,
already computed, and the ranker's strongest single signal. The second stage, the learned
ranker, scores the first ``keep`` candidates only. The others keep their order below every
scored one: each gets ``min(head) / 2 * (n - i) / (n - keep + 1)``, positive, strictly below the
head and decreasing, so the rerank step still sees every candidate (to fill a list the
diversity cap thinned) and the raw scores stay a deterministic function of the logged
request (``explain`` reproduces them bit for bit).

The ranking matrix of the head is computed with the request-relative columns (shares of the
request's best candidate) over *all* candidates
(:func:`featrec.core.ranking.ranker.ranking_matrix` with ``rows``), so the head's rows equal
those of the full matrix the ranker was trained on. ``keep`` was set from the RSC15 curve
(README, "Recommendations").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.float64]

#: Candidates the learned ranker scores per request by default (see the module docstring).
DEFAULT_KEEP: Final = 50


def head_size(n: int, keep: int | None) -> int:
    """How many of ``n`` candidates the ranker scores (``None``: all)."""
    return n if keep is None else min(n, keep)


def with_tail(head: Scores, n: int) -> Scores:
    """``head`` scores followed by the tail's (see the module docstring), ``n`` in all."""
    m = head.shape[0]
    if m >= n:
        return head
    floor = float(head.min()) if m else 1.0
    tail = (floor / 2.0) * np.arange(n - m, 0, -1, dtype=np.float64) / float(n - m + 1)
    return np.concatenate([np.asarray(head, dtype=np.float64), tail])


def two_stage_scores(score_head: Callable[[int], Scores], n: int, keep: int | None) -> Scores:
    """Scores of ``n`` candidates: ``score_head(m)`` for the first ``m`` (see :func:`head_size`),
    the tail below them."""
    m = head_size(n, keep)
    return with_tail(score_head(m), n)


def check_keep(keep: int | None) -> None:
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"the ranker's head must be a positive number of candidates, got {keep!r}")
