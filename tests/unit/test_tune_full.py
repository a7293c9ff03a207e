"""The tuning search's own logic (``benchmarks/tune_full.py``): a seeded, reproducible plan
over a validated space, clear errors for bad knobs, and the noise figures by hand."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from featrec.app.serving.config import ServingConfig
from featrec.app.training import EVENTS_CONFIG
from featrec.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tune_full.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tune_full", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tune_full"] = module
    spec.loader.exec_module(module)
    return module


tf = _load()


def test_the_space_is_valid_and_holds_the_code_defaults() -> None:
    tf.validate_space()
    serving, training = tf.build({})
    assert serving == ServingConfig() and training == EVENTS_CONFIG
    for knob in tf.SPACE.values():
        assert tf.default_of(knob) in knob.values
    assert {k.kind for k in tf.SPACE.values()} == set(tf.KINDS)


def test_the_plan_is_seeded_and_reproducible() -> None:
    a = tf.plan(1, 10, 4)
    assert a == tf.plan(1, 10, 4)
    assert a != tf.plan(2, 10, 4)
    ids = [c.id for c in a]
    assert ids[:2] == [tf.DEFAULTS_ID, tf.CANDIDATE_ORDER_ID] and len(set(ids)) == len(ids)
    assert len(a) == 2 + 10 + 4
    # One generator per kind: more ranker draws leave the serving draws as they were.
    serving = [c for c in a if c.kind.startswith(tf.SERVING)]
    assert serving == [c for c in tf.plan(1, 10, 9) if c.kind.startswith(tf.SERVING)]
    # Distinct, valid, and each only moves knobs of its own kind, away from the defaults.
    keys = set()
    for c in a[2:]:
        kind = c.kind.split()[0]
        assert c.knobs and all(tf.SPACE[n].kind == kind for n in c.knobs)
        assert all(v != tf.default_of(tf.SPACE[n]) for n, v in c.knobs.items())
        assert c.needs_model == (kind == tf.RANKER)
        tf.build(c.knobs)
        keys.add(tuple(sorted(c.knobs.items(), key=str)))
    assert len(keys) == len(a) - 2
    # Local draws stay near the defaults; global ones move most knobs.
    local = [len(c.knobs) for c in a if c.kind.endswith("local")]
    broad = [len(c.knobs) for c in a if c.kind == "serving global"]
    assert max(local) < min(broad)


def test_a_knob_that_is_not_searched_is_never_drawn_but_can_be_set() -> None:
    assert not tf.SPACE["random_state"].search
    assert all("random_state" not in c.knobs for c in tf.plan(3, 20, 20))
    assert tf.parse_set("random_state=1") == {"random_state": 1}
    assert tf.build({"random_state": 1})[1].random_state == 1


def test_the_split_halves_are_whole_sessions_and_seeded() -> None:
    sessions = [f"s{i // 3}" for i in range(300)]
    a = tf.halves(sessions)
    assert a.sum() == 150 and (a == tf.halves(sessions)).all()
    for i in range(0, 300, 3):
        assert a[i] == a[i + 1] == a[i + 2]


def test_the_run_order_samples_every_group_first() -> None:
    order = [c.id for c in tf.run_order(tf.plan(1, 6, 4, [{"max_total": 200}]))]
    assert order[:7] == ["d0", "c0", "s01", "l01", "r01", "m01", "x1"]
    assert sorted(order) == sorted(c.id for c in tf.plan(1, 6, 4, [{"max_total": 200}]))


def test_a_bad_knob_name_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown knob 'max_totl' \(did you mean 'max_total'"):
        tf.build({"max_totl": 200})
    with pytest.raises(ConfigError, match=r"unknown knob 'colour'.*the knobs are"):
        tf.parse_set("colour=3")
    with pytest.raises(ConfigError, match="is not one of"):
        tf.parse_set("max_total=7")
    with pytest.raises(ConfigError, match="KNOB=VALUE"):
        tf.parse_set("max_total")
    assert tf.parse_set("max_total=200, negatives_per_point=None, learning_rate=0.05") == {
        "max_total": 200,
        "negatives_per_point": None,
        "learning_rate": 0.05,
    }
    assert tf.parse_set("l2_regularization=10,max_iter=300.0") == {
        "l2_regularization": 10.0,
        "max_iter": 300,
    }
    with pytest.raises(ConfigError, match="is not one of"):
        tf.parse_set("negatives_per_point=none")
    with pytest.raises(ConfigError, match="is not one of"):
        tf.build({"rank_top": 7})


def test_the_space_is_validated() -> None:
    good = tf.SPACE["rank_top"]
    cases = {
        "not among its values": tf.Knob("rank_top", tf.SERVING, "rank_top", (20, 30), ""),
        "distinct": tf.Knob("rank_top", tf.SERVING, "rank_top", (50, 50), ""),
        "no field": tf.Knob("rank_top", tf.SERVING, "candidates.rank_top", (50,), ""),
        "is invalid": tf.Knob("max_total", tf.SERVING, "candidates.max_total", (100, 0), ""),
        "filed under": good,
        "kind must be": tf.Knob("rank_top", "cooking", "rank_top", (50,), ""),
    }
    for message, knob in cases.items():
        name = "other" if message == "filed under" else knob.name
        with pytest.raises(ConfigError, match=message):
            tf.validate_space({name: knob})
    tf.validate_space({"rank_top": good})


def test_serving_knobs_reach_the_serving_config_and_ranker_knobs_the_training() -> None:
    serving, training = tf.build(
        {"max_total": 200, "recency_decay": 1.0, "popularity_damping": 0.2, "max_iter": 300}
    )
    assert serving.candidates.max_total == 200
    assert serving.candidates.scoring.recency_decay == 1.0
    assert serving.rerank.popularity_damping == 0.2
    assert training.max_iter == 300 and training.learn_after_session
    assert training.learning_rate == EVENTS_CONFIG.learning_rate
    config = tf.Config("x1", "set", {"max_total": 200, "max_iter": 300})
    assert tf.serving_knobs(config) == {"max_total": 200} and config.needs_model


def test_point_figures_by_hand() -> None:
    hit, rr = tf.point_figures([["a", "b", "c"], ["a", "b"], ["x"]], ["b", "z", "x"], 2)
    assert hit.tolist() == [1.0, 0.0, 1.0]
    assert rr.tolist() == [0.5, 0.0, 1.0]
    hit, _ = tf.point_figures([["a", "b", "c"]], ["c"], 2)
    assert hit.tolist() == [0.0]  # outside the top k


def test_clustered_standard_errors() -> None:
    rng = np.random.default_rng(0)
    values = rng.random(50)
    # One point per session: the plain standard error of the mean.
    singles = [f"s{i}" for i in range(50)]
    assert tf.clustered_se(values, singles) == pytest.approx(np.std(values, ddof=1) / math.sqrt(50))
    # Every point twice in its session: no more information, the same standard error.
    twice = np.repeat(values, 2)
    assert tf.clustered_se(twice, np.repeat(singles, 2).tolist()) == pytest.approx(
        tf.clustered_se(values, singles)
    )
    # Treated as independent, the duplicated points would look 1/sqrt(2) as noisy.
    naive = tf.clustered_se(twice, [f"p{i}" for i in range(100)])
    assert naive < 0.75 * tf.clustered_se(values, singles)
    assert math.isnan(tf.clustered_se(values[:5], ["one"] * 5))


def test_paired_difference() -> None:
    a = np.array([1.0, 0.0, 1.0, 1.0])
    sessions = ["s1", "s1", "s2", "s3"]
    assert tf.paired(a, a, sessions) == (0.0, 0.0)
    b = np.array([0.0, 0.0, 1.0, 1.0])
    d, se = tf.paired(a, b, sessions)
    assert d == 0.25
    # Differences 1, 0 | 0 | 0 -> centred cluster sums 0.5, -0.25, -0.25.
    assert se == pytest.approx(math.sqrt((0.25 + 0.0625 + 0.0625) * 3 / 2) / 4)
    with pytest.raises(ValueError, match="same points"):
        tf.paired(a, b[:3], sessions)
