"""The serving predictor: a fitted ranker's trees as flat arrays, walked by compiled code.

scikit-learn's ``HistGradientBoostingClassifier`` walks each tree in a separate call (200
trees, 200 Python-level calls per request) and may start an OpenMP team for it. Here every
tree of the model is flattened once into two arrays, and one numba-compiled function
(single-threaded, GIL released) walks all trees for all rows:

- ``nodes``: ``int32[n_nodes, 4]`` = ``(feature or -1 for a leaf, left, right,
  missing_go_to_left)``, child indices global across trees;
- ``values``: ``float64[n_nodes]`` = the split threshold of a split node, the leaf value of a
  leaf;
- ``roots``: ``int32[n_trees]``, and ``baseline``, the model's constant raw prediction.

The traversal is scikit-learn's rule (NaN follows ``missing_go_to_left``, else
``x <= threshold`` goes left) and the raw score is summed as scikit-learn sums it
(``baseline + tree_1 + tree_2 + ...`` in tree order, in float64), then passed through the same
``expit``: the scores equal scikit-learn's **bit for bit**, which the model store checks when
it loads a model and the tests check on many random models and inputs.

The arrays are data, not code: :meth:`TreeArrays.to_bytes` is an ``.npz`` read back with
``allow_pickle=False``. The compiled kernel belongs to featrec and is JIT-compiled once per
process when the first predictor is built (about a second), never on the request path.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Final

import numba
import numpy as np
import numpy.typing as npt
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier

#: Names the array layout and the traversal rule (recorded in model manifests).
PREDICTOR_KIND: Final = "featrec-trees-v1"

Floats = npt.NDArray[np.float64]


@numba.njit(nogil=True, cache=False)  # type: ignore[untyped-decorator]
def _raw_scores(
    X: Floats, roots: Any, nodes: Any, values: Floats, baseline: float
) -> Floats:  # pragma: no cover - compiled
    n = X.shape[0]
    out = np.empty(n)
    for i in range(n):
        acc = baseline
        for t in range(roots.shape[0]):
            node = roots[t]
            feature = nodes[node, 0]
            while feature >= 0:
                x = X[i, feature]
                if x <= values[node]:
                    node = nodes[node, 1]
                elif x > values[node]:
                    node = nodes[node, 2]
                elif nodes[node, 3]:  # NaN: neither comparison holds
                    node = nodes[node, 1]
                else:
                    node = nodes[node, 2]
                feature = nodes[node, 0]
            acc += values[node]
        out[i] = acc
    return out


@dataclass(frozen=True, slots=True, eq=False)
class TreeArrays:
    """A binary gradient-boosted tree ensemble as flat arrays (see the module docstring)."""

    nodes: npt.NDArray[np.int32]
    values: Floats
    roots: npt.NDArray[np.int32]
    baseline: float
    n_features: int

    def __post_init__(self) -> None:
        n = self.values.shape[0]
        if self.nodes.shape != (n, 4) or self.nodes.dtype != np.int32:
            raise ValueError("nodes must be int32 of shape (n_nodes, 4)")
        if self.values.dtype != np.float64 or self.roots.dtype != np.int32:
            raise ValueError("values must be float64 and roots int32")
        if n == 0 or self.roots.ndim != 1 or self.roots.shape[0] == 0:
            raise ValueError("a predictor needs at least one tree")
        # Every index must stay inside the arrays (the kernel does not bounds-check), and a
        # child must come after its parent, so that a walk always ends at a leaf.
        index = np.arange(n)
        split = self.nodes[:, 0] >= 0
        if (self.roots < 0).any() or (self.roots >= n).any():
            raise ValueError("a root index is out of range")
        if (self.nodes[split, 0] >= self.n_features).any():
            raise ValueError("a split names a feature the model does not have")
        for child in (self.nodes[split, 1], self.nodes[split, 2]):
            if (child <= index[split]).any() or (child >= n).any():
                raise ValueError("a child index is out of range or not after its parent")
        if not np.isfinite(self.baseline):
            raise ValueError("the baseline must be finite")

    @classmethod
    def from_model(cls, model: HistGradientBoostingClassifier) -> TreeArrays:
        """The arrays of a fitted binary ``HistGradientBoostingClassifier`` (numeric splits)."""
        predictors = model._predictors
        if any(len(per_iteration) != 1 for per_iteration in predictors):
            raise ValueError("only binary classifiers (one tree per iteration) are supported")
        nodes, values, roots = [], [], []
        offset = 0
        for [tree] in predictors:
            raw = tree.nodes
            if raw["is_categorical"].any():
                raise ValueError("categorical splits are not supported")
            leaf = raw["is_leaf"].astype(bool)
            block = np.zeros((len(raw), 4), dtype=np.int32)
            block[:, 0] = np.where(leaf, -1, raw["feature_idx"])
            block[:, 1] = np.where(leaf, 0, raw["left"].astype(np.int64) + offset)
            block[:, 2] = np.where(leaf, 0, raw["right"].astype(np.int64) + offset)
            block[:, 3] = np.where(leaf, 0, raw["missing_go_to_left"])
            nodes.append(block)
            values.append(np.where(leaf, raw["value"], raw["num_threshold"]).astype(np.float64))
            roots.append(offset)
            offset += len(raw)
        baseline = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
        if baseline.shape != (1,):
            raise ValueError("only binary classifiers (one baseline) are supported")
        return cls(
            nodes=np.ascontiguousarray(np.concatenate(nodes)),
            values=np.ascontiguousarray(np.concatenate(values)),
            roots=np.asarray(roots, dtype=np.int32),
            baseline=float(baseline[0]),
            n_features=int(model.n_features_in_),
        )

    def to_bytes(self) -> bytes:
        """The arrays as an uncompressed ``.npz`` (deterministic for the same model)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            nodes=self.nodes,
            values=self.values,
            roots=self.roots,
            scalars=np.asarray([self.baseline, float(self.n_features)], dtype=np.float64),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TreeArrays:
        """Arrays written by :meth:`to_bytes` (never unpickles; checks every index)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            scalars = npz["scalars"]
            return cls(
                nodes=np.ascontiguousarray(npz["nodes"]),
                values=np.ascontiguousarray(npz["values"]),
                roots=np.ascontiguousarray(npz["roots"]),
                baseline=float(scalars[0]),
                n_features=int(scalars[1]),
            )


class CompiledPredictor:
    """Scores rows with :class:`TreeArrays`: P(class 1), equal to the ranker's
    ``score_candidates`` bit for bit. Single-threaded; releases the GIL while it walks."""

    def __init__(self, trees: TreeArrays) -> None:
        self.trees = trees
        self.kind = PREDICTOR_KIND
        self.n_features_in_ = trees.n_features
        self.raw_scores(np.zeros((1, trees.n_features)))  # compile now, not on a request

    def raw_scores(self, X: Any) -> Floats:
        matrix = np.ascontiguousarray(X, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != self.trees.n_features:
            raise ValueError(
                f"X has shape {matrix.shape}, the predictor expects {self.trees.n_features} columns"
            )
        t = self.trees
        raw: Floats = _raw_scores(matrix, t.roots, t.nodes, t.values, t.baseline)
        return raw

    def score_candidates(self, X: Any) -> Floats:
        """P(next item) per row (the same contract as ``Ranker.score_candidates``)."""
        raw = self.raw_scores(X)
        if raw.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        scores: Floats = expit(raw)
        return scores


def compile_ranker(model: HistGradientBoostingClassifier) -> CompiledPredictor:
    """A :class:`CompiledPredictor` for a fitted binary classifier."""
    return CompiledPredictor(TreeArrays.from_model(model))


def probe_matrix(trees: TreeArrays, rows: int = 256, seed: int = 0) -> Floats:
    """Rows to compare two predictors on: per feature, the model's own thresholds, the next
    float above them, spread and huge values, and NaNs."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, trees.n_features)) * rng.choice([0.1, 1.0, 10.0, 1e3], (rows, 1))
    split = trees.nodes[:, 0] >= 0
    # A split of NaN against everything else has an infinite threshold: not a value to use.
    split &= np.isfinite(trees.values)
    features, thresholds = trees.nodes[split, 0], trees.values[split]
    for f in np.unique(features):
        at = thresholds[features == f]
        pick = rng.random(rows) < 0.6
        chosen = rng.choice(at, int(pick.sum()))
        up = rng.random(chosen.shape[0]) < 0.5
        X[pick, f] = np.where(up, np.nextafter(chosen, np.inf), chosen)
    X[~np.isfinite(X)] = 0.0
    X[rng.random(X.shape) < 0.15] = np.nan
    X[rng.random(X.shape) < 0.01] = 1e300
    X[rng.random(X.shape) < 0.01] = -1e300
    out: Floats = X
    return out
