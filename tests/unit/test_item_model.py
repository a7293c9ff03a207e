"""The SLIST item model: known answers, the closed form against a plain dense recomputation,
top-K lists, cross-fitting, and the model as a candidate source and ranker feature."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from featrec.core.candidates.config import CandidateConfig
from featrec.core.candidates.generation import generate
from featrec.core.candidates.model import COVISIT, MODEL, Candidate
from featrec.core.candidates.signals import InMemorySignals
from featrec.core.features.catalog import ITEM_MODEL
from featrec.core.items import slist
from featrec.core.ranking.ranker import RANKING_FEATURES, ranking_matrix
from featrec.errors import ConfigError

pytestmark = pytest.mark.unit


def _clicks(sessions: list[list[str]], start: float = 1_000.0) -> slist.Clicks:
    s, i, t = [], [], []
    for n, items in enumerate(sessions):
        for p, item in enumerate(items):
            s.append(f"s{n:03d}")
            i.append(item)
            t.append(start + 100.0 * n + p)
    return slist.Clicks.from_rows(s, i, t)


def test_known_answer_chain() -> None:
    """Sessions always run A -> B -> C: after A comes B, after B comes C."""
    clicks = _clicks([["A", "B", "C"]] * 30 + [["D", "E"]] * 10)
    model = slist.fit(clicks, slist.SlistConfig(alpha=0.2, reg=1.0, top_k=3))
    config = model.config
    assert slist.recommend(["A"], model.lookup, config, 1) == ["B"]
    assert slist.recommend(["B", "A"], model.lookup, config, 1) == ["C"]
    assert slist.recommend(["D"], model.lookup, config, 1) == ["E"]
    # nothing of the other cluster is recommended
    assert not {"D", "E"} & set(slist.recommend(["A"], model.lookup, config, 5))


def _dense_oracle(
    sessions: list[list[str]], config: slist.SlistConfig
) -> tuple[list[str], np.ndarray]:
    """The closed form written out row by row, in float64, for small data."""
    items = sorted({i for s in sessions for i in s})
    col = {item: j for j, item in enumerate(items)}
    n = len(items)
    t_max = 1_000.0 + 100.0 * (len(sessions) - 1) + max(len(s) for s in sessions[-1:]) - 1
    x_rows, x0_rows, xw, z_rows, t_rows, zw = [], [], [], [], [], []
    for k, s in enumerate(sessions):
        last = 1_000.0 + 100.0 * k + len(s) - 1
        age = t_max - last
        w = (
            math.exp(-age / (config.session_weight_days * 86_400))
            if config.session_weight_days
            else 1.0
        )
        x0 = np.zeros(n)
        for item in s:
            x0[col[item]] = 1.0
        x0_rows.append(x0)
        x_rows.append(x0 / x0.sum())
        xw.append(w)
        for t in range(len(s) - 1):
            z = np.zeros(n)
            y = np.zeros(n)
            for d in range(config.window):
                decay = math.exp(-d / config.train_weight) if config.train_weight else 1.0
                if t - d >= 0:
                    z[col[s[t - d]]] += decay
                if t + 1 + d < len(s):
                    y[col[s[t + 1 + d]]] += decay
            z_rows.append(z / z.sum())
            t_rows.append(y)
            zw.append(w)
    x, x0, z, tt = map(np.array, (x_rows, x0_rows, z_rows, t_rows))
    w1, w2 = np.diag(xw), np.diag(zw)
    a = config.alpha
    g = a * x.T @ w1 @ x + (1 - a) * z.T @ w2 @ z
    r = a * x.T @ w1 @ x0 + (1 - a) * z.T @ w2 @ tt
    b = np.linalg.inv(g + config.reg * np.eye(n)) @ r
    return items, b


@pytest.mark.parametrize(
    "config",
    [
        slist.SlistConfig(),
        slist.SlistConfig(alpha=0.7, reg=3.0, session_weight_days=0.001, train_weight=2.0),
        slist.SlistConfig(alpha=0.0, train_weight=0.0, window=3),
        slist.SlistConfig(alpha=1.0, reg=30.0),
    ],
)
def test_closed_form_equals_dense_oracle(config: slist.SlistConfig) -> None:
    rng = np.random.default_rng(3)
    vocab = [f"i{j}" for j in range(12)]
    sessions = [
        [vocab[j] for j in rng.integers(0, 12, size=int(rng.integers(2, 9)))] for _ in range(60)
    ]
    items, expected = _dense_oracle(sessions, config)
    clicks = _clicks(sessions)
    assert clicks.items == tuple(items)
    g, r = slist.gram_parts(clicks, config)
    got = slist.solve(g, r, config.reg)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-5)


def test_top_k_best_first_positive_only() -> None:
    b = np.array([[0.5, -1.0, 0.5, 0.2], [0.0, -0.1, -0.2, -0.3]], dtype=np.float32)
    idx, w = slist.top_k(b, 3)
    assert idx[0].tolist() == [0, 2, 3]  # tie between 0 and 2 broken by index
    assert w[0].tolist() == pytest.approx([0.5, 0.5, 0.2])
    assert idx[1].tolist() == [-1, -1, -1]


def test_restrict_keeps_the_most_frequent_items() -> None:
    clicks = _clicks([["A", "B"], ["A", "C"], ["A", "B"], ["D", "A"]])
    kept, mask = slist.restrict(clicks, 2)
    assert kept.items == ("A", "B")
    assert mask.sum() == 6
    model = slist.fit(clicks, slist.SlistConfig(max_items=2))
    assert set(model.neighbours) == {"A", "B"}


def test_cross_fitted_models_never_saw_the_session() -> None:
    sessions = [[f"x{n % 5}", f"y{n % 7}", f"z{n % 3}"] for n in range(80)]
    clicks = _clicks(sessions)
    folds = slist.fit_folds(clicks, slist.SlistConfig())
    for f in (0, 1):
        own = clicks.fold(f)
        names = {clicks.session_ids[c] for c in np.unique(own.sessions)}
        assert names and all(slist.SessionFolds.fold(s) == f for s in names)
        # the model answering for a session of fold f is the one fitted on fold 1 - f
        one = next(iter(names))
        assert folds.for_session(one) is folds.models[1 - f]


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        slist.SlistConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="reg"):
        slist.SlistConfig(reg=0.0)
    with pytest.raises(ConfigError, match="window"):
        slist.SlistConfig(window=0)
    with pytest.raises(ConfigError, match="order"):
        CandidateConfig(order="random")


def test_model_rows_carry_the_lists() -> None:
    model = slist.ItemModel({"A": (("B", 0.5), ("C", 0.25)), "B": ()}, slist.SlistConfig())
    rows = slist.model_rows(model, "v1", 123.0, 456)
    assert [r.key for r in rows] == ["A", "B"]
    assert rows[0].view == ITEM_MODEL.name and rows[0].version == 456
    assert rows[0].values == {
        "model_ids": ["B", "C"],
        "model_weights": [0.5, 0.25],
        "model_version": "v1",
        "trained_at_s": 123.0,
    }
    assert set(rows[0].values) == set(ITEM_MODEL.feature_names)


FIXED = slist.ItemModel(
    {"A": (("M1", 2.0), ("X", 1.0)), "B": (("M2", 3.0), ("M1", 1.0))}, slist.SlistConfig()
)


def test_model_is_a_candidate_source() -> None:
    signals = InMemorySignals(model=FIXED, trending_refresh_s=0)
    config = CandidateConfig(model_predict_weight=1.0)
    got = {c.item_id: c for c in generate(["A", "B"], None, None, signals, config)}
    # A is the newest item (weight 1), B the one before (weight e^-1)
    e1 = math.exp(-1)
    assert got["M1"].score(MODEL) == pytest.approx(2.0 + e1 * 1.0)
    assert got["M2"].score(MODEL) == pytest.approx(3.0 * e1)
    assert got["X"].score(MODEL) == pytest.approx(1.0)
    assert MODEL in got["M1"].sources
    # ordered by the model: M1 (2.37) > M2 (1.10) > X (1.0)
    ordered = generate(["A", "B"], None, None, signals, replace(config, order="model"))
    assert [c.item_id for c in ordered[:3]] == ["M1", "M2", "X"]
    # no model source when it is capped to 0 and the order is co-visitation
    off = generate(["A", "B"], None, None, signals, replace(config, max_model=0))
    assert all(MODEL not in c.scores for c in off)


def test_model_scores_are_ranking_features() -> None:
    cands = [
        Candidate("a", (COVISIT, MODEL), {COVISIT: 1.0, MODEL: 4.0}),
        Candidate("b", (MODEL,), {MODEL: 2.0}),
        Candidate("c", (COVISIT,), {COVISIT: 0.5}),
    ]
    m = ranking_matrix(cands, None, None, {}, 0.0)
    score = m[:, RANKING_FEATURES.index("model_score")]
    share = m[:, RANKING_FEATURES.index("model_share")]
    src = m[:, RANKING_FEATURES.index(f"src_{MODEL}")]
    assert score.tolist() == [4.0, 2.0, 0.0]
    assert share.tolist() == [1.0, 0.5, 0.0]
    assert src.tolist() == [1.0, 1.0, 0.0]


def test_cross_fitted_lookup_needs_a_session() -> None:
    folds = slist.SessionFolds((FIXED, FIXED))
    signals = InMemorySignals(model=folds)
    with pytest.raises(ConfigError, match="session"):
        signals.model_neighbours(["A"])
    assert signals.model_neighbours(["A", "Q"], "s1") == {"A": FIXED.neighbours["A"]}
