"""A/B bucketing (:mod:`featrec.core.evaluation.experiments`): deterministic, balanced, weighted,
salted."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter

import pytest

from featrec.app.serving.steps import SCORER_FALLBACK, SCORER_MODEL, SCORER_ORDER
from featrec.core.evaluation.experiments import (
    ARM_SCORERS,
    ArmConfig,
    Experiment,
    assign,
    experiment_from_dict,
    parse_arms,
)
from featrec.errors import ConfigError

AB = Experiment("rank-test", "s1", {"control": 1, "treatment": 1})
IDS = [f"u{n}" for n in range(100_000)]


def by_the_documented_formula(salt: str, name: str, unit_id: str, arms: dict[str, float]) -> str:
    """The module docstring's formula, written out independently of the implementation."""
    h = hashlib.blake2b((salt + "\x00" + name + "\x00" + unit_id).encode("utf-8"), digest_size=8)
    u = int(h.hexdigest(), 16) / 2**64
    total = sum(arms.values())
    cumulative = 0.0
    for arm, weight in arms.items():
        cumulative += weight
        if u * total < cumulative:
            return arm
    raise AssertionError("unreachable")


def test_assignment_follows_the_documented_formula() -> None:
    weights = {"a": 0.2, "b": 0.3, "c": 0.5}
    experiment = Experiment("three", "pepper", weights)
    for unit_id in ["u1", "u2", "session-77", "ü-ñ", *IDS[:2000]]:
        assert assign(experiment, unit_id) == by_the_documented_formula(
            "pepper", "three", unit_id, weights
        )


def test_assignment_is_pinned_across_releases() -> None:
    """Golden values: a change of formula would move running experiments' users."""
    units = ["u1", "u2", "u3", "u4", "u5", "u6"]
    got = [assign(AB, unit_id) for unit_id in units]
    assert got == [by_the_documented_formula("s1", "rank-test", u, dict(AB.arms)) for u in units]
    assert got == ["treatment", "control", "control", "treatment", "treatment", "control"]


def test_assignment_is_the_same_in_another_process() -> None:
    code = (
        "from featrec.core.evaluation.experiments import Experiment, assign\n"
        "e = Experiment('rank-test', 's1', {'control': 1, 'treatment': 1})\n"
        "print(''.join(assign(e, f'u{n}')[0] for n in range(500)))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "".join(assign(AB, f"u{n}")[0] for n in range(500))


def chi_square(counts: Counter[str], weights: dict[str, float], n: int) -> float:
    total = sum(weights.values())
    return sum((counts[a] - n * w / total) ** 2 / (n * w / total) for a, w in weights.items())


def test_two_arms_are_balanced_on_100k_ids() -> None:
    counts = Counter(assign(AB, unit_id) for unit_id in IDS)
    # 1 degree of freedom: 10.83 is the 0.1% critical value
    assert chi_square(counts, {"control": 1, "treatment": 1}, len(IDS)) < 10.83


def test_weights_are_respected() -> None:
    weights = {"a": 0.2, "b": 0.3, "c": 0.5}
    counts = Counter(assign(Experiment("w", "x", weights), u) for u in IDS)
    assert chi_square(counts, weights, len(IDS)) < 13.82  # 2 df, 0.1%
    assert abs(counts["a"] / len(IDS) - 0.2) < 0.01
    # an arm with weight 0 is declared but never assigned
    ramp = Experiment("w", "x", {"control": 1, "new": 0})
    assert {assign(ramp, u) for u in IDS[:5000]} == {"control"}


def test_the_salt_reshuffles_and_weights_move_only_boundary_units() -> None:
    resalted = Experiment("rank-test", "s2", {"control": 1, "treatment": 1})
    moved = sum(assign(AB, u) != assign(resalted, u) for u in IDS) / len(IDS)
    assert 0.48 < moved < 0.52  # independent: half the units change arm
    renamed = Experiment("other-test", "s1", {"control": 1, "treatment": 1})
    assert 0.48 < sum(assign(AB, u) != assign(renamed, u) for u in IDS) / len(IDS) < 0.52
    ramped = Experiment("rank-test", "s1", {"control": 0.6, "treatment": 0.4})
    moves = [(assign(AB, u), assign(ramped, u)) for u in IDS]
    assert all(after == "control" for before, after in moves if before == "control")
    assert 0.09 < sum(b != a for b, a in moves) / len(IDS) < 0.11


def test_the_unit_is_the_user_when_known() -> None:
    assert AB.unit_of("s1", "u1") == ("user", "u1")
    assert AB.unit_of("s1", None) == ("session", "s1")
    by_session = Experiment("x", "", {"a": 1, "b": 1}, unit="session")
    assert by_session.unit_of("s1", "u1") == ("session", "s1")


def test_arm_scorers_are_the_scorers_serving_logs() -> None:
    assert set(ARM_SCORERS) == {SCORER_MODEL, SCORER_ORDER, SCORER_FALLBACK}


def test_arms_from_the_command_line_and_back_from_json() -> None:
    weights, configs = parse_arms("control=1:fallback, treatment=1, v2=0.5@m-2")
    assert weights == {"control": 1.0, "treatment": 1.0, "v2": 0.5}
    assert configs == {
        "control": ArmConfig(scorer="fallback"),
        "v2": ArmConfig(model_version="m-2"),
    }
    experiment = Experiment("e", "salt", weights, configs=configs)
    assert experiment.control == "control" and experiment.config_of("treatment") == ArmConfig()
    again = experiment_from_dict(experiment.to_dict())
    assert again == experiment
    assert [assign(again, u) for u in IDS[:300]] == [assign(experiment, u) for u in IDS[:300]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": ""}, "experiment name"),
        ({"name": "a b"}, "experiment name"),
        ({"arms": {"only": 1}}, "at least two arms"),
        ({"arms": {"a": 1, "b": -1}}, "weight must be a finite number >= 0"),
        ({"arms": {"a": 1, "b": float("nan")}}, "finite"),
        ({"arms": {"a": 0, "b": 0}}, "weight > 0"),
        ({"arms": {"a": 1, "b c": 1}}, "arm name"),
        ({"unit": "device"}, "unit must be one of user, session"),
        ({"control": "z"}, "control arm 'z'"),
        ({"configs": {"z": ArmConfig()}}, "undeclared arms: z"),
    ],
)
def test_bad_experiments_are_refused_with_the_reason(
    kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"name": "e", "salt": "", "arms": {"a": 1, "b": 1}, **kwargs}
    with pytest.raises(ConfigError, match=message):
        Experiment(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, message",
    [
        ("control", "expected name=weight"),
        ("a=x,b=1", "weight 'x' is not a number"),
        ("a=1,a=2", "declared twice"),
        ("a=1:magic,b=1", "arm scorer must be one of"),
        ("a=1:fallback@v1,b=1", "scores with the model"),
        ("a=1@../etc,b=1", "invalid model version"),
    ],
)
def test_bad_arm_specs_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_arms(text)
