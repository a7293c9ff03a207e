"""A batch-trained item model: SLIST, the closed-form linear item-item model (pure numpy/scipy).

SLIST (Choi et al., "Session-aware Linear Item-Item Models for Session-based Recommendation",
WWW 2021) learns one item-to-item weight matrix ``B`` in closed form from two views of the
training sessions:

- **SLIS** (item similarity): each session is one row of the session-item matrix ``X``
  (binary, L1-normalised); reconstructing ``X`` from ``X B`` learns which items go together
  in a session, in any order;
- **SLIT** (item transitions): each position ``t`` of a session is one row whose input ``Z``
  holds the items up to ``t`` (the newest weighted most) and whose target ``T`` holds the
  items after ``t`` (the nearest weighted most); fitting ``T`` from ``Z B`` learns what comes
  next.

Both are weighted least squares with an L2 penalty; SLIST adds them with a weight ``alpha``::

    G = alpha X'WX + (1 - alpha) Z'WZ        R = alpha X'WX0 + (1 - alpha) Z'WT
    B = (G + reg I)^-1 R

where ``W`` weighs every row by the recency of its session (``exp(-age / session_weight)``)
and ``X0`` is ``X`` before normalisation. A session is scored by
``sum_p exp(-(p - 1) / predict_weight) * B[a_p]`` over its items ``a_p`` (``p = 1``: newest).

**Size.** ``B`` is dense, ``n x n`` for ``n`` items: only the ``max_items`` most frequent
items of the training events are modelled (the rest are neither inputs nor targets), so
10,000 items cost about 0.4 GB per ``n x n`` float32 array (three are alive at the peak) and a
Cholesky solve of a few minutes. Only each item's ``top_k`` heaviest entries leave the fit
(:class:`ItemModel`): that is what the online store holds and what serving scores with.

Transition rows reach back and forward at most ``window`` positions: with the positional
decay ``exp(-d / train_weight)``, positions further away weigh nothing that matters, and the
matrices stay linear in the number of events (long sessions would be quadratic).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from featrec.core.features.catalog import ITEM_MODEL
from featrec.core.features.rows import FeatureRow
from featrec.core.items.order import best_first
from featrec.errors import ConfigError

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: Neighbours of one anchor in the model: ``[(item, weight), ...]``, heaviest first.
ModelLookup = Callable[[str], Sequence[tuple[str, float]]]


@dataclass(frozen=True, slots=True)
class SlistConfig:
    """SLIST's hyperparameters. Defaults chosen by random search on RSC15-100k
    train_tr -> train_valid (``benchmarks/rsc15_slist.py``); validated."""

    #: Weight of SLIS (session similarity) against SLIT (transitions), in [0, 1].
    alpha: float = 0.9
    #: L2 penalty (the ridge added to the Gram matrix's diagonal).
    reg: float = 30.0
    #: Recency weight of training sessions: ``exp(-age_days / session_weight_days)`` (0: off).
    session_weight_days: float = 2.0
    #: Positional decay inside transition rows: ``exp(-distance / train_weight)`` (0: off).
    train_weight: float = 8.0
    #: Positional decay of the session's items when scoring (0: every item weighs 1).
    predict_weight: float = 0.5
    #: Positions a transition row reaches back (inputs) and forward (targets).
    window: int = 10
    #: Only the most frequent items are modelled (memory is quadratic in this).
    max_items: int = 10_000
    #: Entries kept per item (the materialized list).
    top_k: int = 100
    #: Newest session items used when scoring.
    last_n: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"item model alpha must be in [0, 1], got {self.alpha}")
        for name in ("reg", "session_weight_days", "train_weight", "predict_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"item model {name} must be a finite number >= 0, got {value}")
        if self.reg <= 0:
            raise ConfigError(f"item model reg must be > 0, got {self.reg}")
        for name in ("window", "max_items", "top_k", "last_n"):
            if getattr(self, name) < 1:
                raise ConfigError(f"item model {name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class Clicks:
    """Training events as arrays, sorted by (session, time): integer session codes, item
    codes into ``items``, and event times in seconds."""

    sessions: IntArray
    item_codes: IntArray
    times: npt.NDArray[np.float64]
    items: tuple[str, ...]
    #: Session ids by session code (empty when not kept).
    session_ids: tuple[str, ...] = ()

    @classmethod
    def from_rows(
        cls, sessions: Sequence[str], items: Sequence[str], times: Sequence[float]
    ) -> Clicks:
        """From aligned plain sequences (any order; ties in time keep their given order)."""
        s_codes, s_names = _codes(sessions)
        i_codes, names = _codes(items)
        t = np.asarray(times, dtype=np.float64)
        order = np.lexsort((t, s_codes))
        return cls(s_codes[order], i_codes[order], t[order], names, s_names)

    def __len__(self) -> int:
        return int(self.sessions.shape[0])

    def select(self, mask: npt.NDArray[np.bool_]) -> Clicks:
        """The clicks where ``mask`` holds (same item codes)."""
        return Clicks(
            self.sessions[mask],
            self.item_codes[mask],
            self.times[mask],
            self.items,
            self.session_ids,
        )

    def fold(self, f: int) -> Clicks:
        """The clicks of the sessions in fold ``f`` (:meth:`SessionFolds.fold`)."""
        folds = np.fromiter(
            (SessionFolds.fold(s) for s in self.session_ids),
            dtype=np.int64,
            count=len(self.session_ids),
        )
        return self.select(folds[self.sessions] == f)


def _codes(values: Sequence[str]) -> tuple[IntArray, tuple[str, ...]]:
    names, codes = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    return codes.astype(np.int64), tuple(str(n) for n in names)


@dataclass(frozen=True, slots=True)
class ItemModel:
    """A fitted model's top-K lists: ``neighbours[item] = [(item, weight), ...]`` best first."""

    neighbours: Mapping[str, tuple[tuple[str, float], ...]]
    config: SlistConfig

    def lookup(self, item: str) -> Sequence[tuple[str, float]]:
        return self.neighbours.get(item, ())


def _scipy_sparse() -> object:
    import scipy.sparse

    return scipy.sparse


def restrict(clicks: Clicks, max_items: int) -> tuple[Clicks, npt.NDArray[np.bool_]]:
    """The clicks of the ``max_items`` most frequent items (ties: smaller code), re-coded."""
    counts = np.bincount(clicks.item_codes, minlength=len(clicks.items))
    if len(clicks.items) <= max_items:
        return clicks, np.ones(len(clicks), dtype=bool)
    keep_items = np.sort(np.argsort(-counts, kind="stable")[:max_items])
    recode = np.full(len(clicks.items), -1, dtype=np.int64)
    recode[keep_items] = np.arange(keep_items.shape[0])
    mask = recode[clicks.item_codes] >= 0
    names = tuple(clicks.items[i] for i in keep_items)
    out = Clicks(
        clicks.sessions[mask],
        recode[clicks.item_codes[mask]],
        clicks.times[mask],
        names,
        clicks.session_ids,
    )
    return out, mask


def _row_weights(ages_s: npt.NDArray[np.float64], days: float) -> npt.NDArray[np.float64]:
    if days <= 0:
        return np.ones_like(ages_s)
    return np.exp(-ages_s / (days * 86_400.0))


def _l1_rows(m: object) -> object:
    """Rows scaled to sum 1 (empty rows stay empty)."""
    sp = _scipy_sparse()
    sums = np.asarray(m.sum(axis=1)).ravel()  # type: ignore[attr-defined]
    inv = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.diags(inv) @ m  # type: ignore[attr-defined]


def gram_parts(clicks: Clicks, config: SlistConfig) -> tuple[FloatArray, FloatArray]:
    """``G`` and ``R`` of the module docstring, dense ``n x n`` float32 arrays."""
    sp = _scipy_sparse()
    n = len(clicks.items)
    s, it, t = clicks.sessions, clicks.item_codes, clicks.times
    if len(clicks) == 0:
        raise ConfigError("the item model needs training events")
    t_max = float(t.max())
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    lengths = np.diff(np.r_[starts, s.shape[0]])
    session_of = np.repeat(np.arange(starts.shape[0]), lengths)
    pos = np.arange(s.shape[0]) - np.repeat(starts, lengths)
    length = np.repeat(lengths, lengths)
    last_time = np.maximum.reduceat(t, starts)
    ages = t_max - last_time

    # SLIS: one row per session, binary, L1-normalised.
    x0 = sp.csr_matrix(  # type: ignore[attr-defined]
        (np.ones(s.shape[0], dtype=np.float32), (session_of, it)), shape=(starts.shape[0], n)
    )
    x0.data[:] = 1.0  # repeats within a session count once (duplicates were summed)
    x = _l1_rows(x0)
    w1 = sp.diags(_row_weights(ages, config.session_weight_days))  # type: ignore[attr-defined]

    # SLIT: one row per position that has a next event, inputs back, targets forward.
    rows_of = np.flatnonzero(pos < length - 1)
    row_id = np.full(s.shape[0], -1, dtype=np.int64)
    row_id[rows_of] = np.arange(rows_of.shape[0])
    zr, zc, zv, tr, tc, tv = [], [], [], [], [], []
    for d in range(config.window):
        decay = math.exp(-d / config.train_weight) if config.train_weight > 0 else 1.0
        back = rows_of[pos[rows_of] >= d]
        zr.append(row_id[back])
        zc.append(it[back - d])
        zv.append(np.full(back.shape[0], decay))
        fwd = rows_of[pos[rows_of] + 1 + d <= length[rows_of] - 1]
        tr.append(row_id[fwd])
        tc.append(it[fwd + 1 + d])
        tv.append(np.full(fwd.shape[0], decay))
    shape = (rows_of.shape[0], n)
    z = sp.csr_matrix(  # type: ignore[attr-defined]
        (np.concatenate(zv), (np.concatenate(zr), np.concatenate(zc))), shape=shape
    )
    target = sp.csr_matrix(  # type: ignore[attr-defined]
        (np.concatenate(tv), (np.concatenate(tr), np.concatenate(tc))), shape=shape
    )
    z = _l1_rows(z)
    w2 = sp.diags(_row_weights(ages[session_of[rows_of]], config.session_weight_days))  # type: ignore[attr-defined]

    a = config.alpha
    xw = (x.T @ w1).tocsr()  # type: ignore[attr-defined]
    zw = (z.T @ w2).tocsr()  # type: ignore[attr-defined]
    g = (a * (xw @ x) + (1 - a) * (zw @ z)).toarray().astype(np.float32)
    r = (a * (xw @ x0) + (1 - a) * (zw @ target)).toarray().astype(np.float32)
    return g, r


def solve(g: FloatArray, r: FloatArray, reg: float) -> FloatArray:
    """``B = (G + reg I)^-1 R`` by a Cholesky solve (G is symmetric positive semi-definite);
    overwrites ``g`` and ``r``."""
    import scipy.linalg

    g[np.diag_indices_from(g)] += np.float32(reg)
    b = scipy.linalg.solve(g, r, assume_a="pos", overwrite_a=True, overwrite_b=True)
    return np.asarray(b, dtype=np.float32)


def top_k(b: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
    """Per row, the indices and weights of the ``k`` largest positive entries, best first
    (ties: smaller index). Missing entries (fewer than ``k`` positive) have index -1."""
    n = b.shape[1]
    k = min(k, n)
    part = (
        np.argpartition(-b, k - 1, axis=1)[:, :k]
        if k < n
        else np.tile(np.arange(n), (b.shape[0], 1))
    )
    vals = np.take_along_axis(b, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
    w = np.take_along_axis(vals, order, axis=1)
    idx[w <= 0] = -1
    return idx, np.where(w > 0, w, 0).astype(np.float32)


def fit(
    clicks: Clicks, config: SlistConfig, progress: Callable[[str], None] | None = None
) -> ItemModel:
    """Fit SLIST on ``clicks`` and keep each item's top ``config.top_k`` (see the module doc)."""
    say = progress or (lambda _msg: None)
    kept, _ = restrict(clicks, config.max_items)
    say(f"item model: {len(kept):,} events, {len(kept.items):,} items")
    g, r = gram_parts(kept, config)
    say("item model: Gram matrices built; solving")
    b = solve(g, r, config.reg)
    del g, r
    idx, w = top_k(b, config.top_k)
    del b
    names = kept.items
    neighbours: dict[str, tuple[tuple[str, float], ...]] = {}
    for row, item in enumerate(names):
        neighbours[item] = tuple(
            (names[j], float(v)) for j, v in zip(idx[row], w[row], strict=True) if j >= 0
        )
    return ItemModel(neighbours, config)


def score_session(
    items: Sequence[str], lookup: ModelLookup, predict_weight: float, last_n: int
) -> dict[str, float]:
    """Scores of a session whose items are ``items``, newest first:
    ``sum_p exp(-(p - 1) / predict_weight) * B[a_p, c]`` over the model's top-K entries of
    the newest ``last_n`` items (``predict_weight`` 0: every item weighs 1)."""
    out: dict[str, float] = {}
    for p, anchor in enumerate(items[:last_n]):
        row = lookup(anchor)
        if not row:
            continue
        weight = math.exp(-p / predict_weight) if predict_weight > 0 else 1.0
        for item, w in row:
            out[item] = out.get(item, 0.0) + weight * w
    return out


def recommend(items: Sequence[str], lookup: ModelLookup, config: SlistConfig, k: int) -> list[str]:
    """The ``k`` best items for a session (newest first), ties by item id."""
    scores = score_session(items, lookup, config.predict_weight, config.last_n)
    ranked = sorted(((i, s) for i, s in scores.items() if s > 0), key=best_first)
    return [item for item, _ in ranked[:k]]


class SessionFolds:
    """Two models, each fitted without one half of the sessions (cross-fitting): a session's
    lookup is the model that never saw it. Training the ranker on scores of a model fitted on
    the very sessions it is trained on would teach it to trust the model far more than it
    deserves on new sessions."""

    def __init__(self, models: tuple[ItemModel, ItemModel]) -> None:
        self.models = models

    @staticmethod
    def fold(session_id: str) -> int:
        import zlib

        return zlib.crc32(session_id.encode()) & 1

    def for_session(self, session_id: str) -> ItemModel:
        return self.models[1 - self.fold(session_id)]


def fit_folds(clicks: Clicks, config: SlistConfig) -> SessionFolds:
    """The two cross-fitted models: model ``f`` is fitted on the sessions of fold ``f`` alone
    (:meth:`SessionFolds.fold`), so it answers for the sessions of the other fold."""
    if not clicks.session_ids:
        raise ConfigError("cross-fitting needs the clicks' session ids")
    return SessionFolds((fit(clicks.fold(0), config), fit(clicks.fold(1), config)))


def model_rows(
    model: ItemModel, version: str, trained_at_s: float, row_version_us: int
) -> list[FeatureRow]:
    """One ``item_model`` row per modelled item, in item order (``row_version_us`` is the
    Feast event timestamp: it must grow with every retraining so the writers replace the
    previous model's rows)."""
    view = ITEM_MODEL.name
    return [
        FeatureRow(
            view,
            item,
            {
                "model_ids": [j for j, _ in row],
                "model_weights": [w for _, w in row],
                "model_version": version,
                "trained_at_s": trained_at_s,
            },
            row_version_us,
        )
        for item, row in sorted(model.neighbours.items())
    ]
