"""A/B experiments: which arm a request belongs to, deterministically.

An :class:`Experiment` splits *units* (shoppers, or sessions) between named arms by weight.
:func:`assign` is a pure function of the experiment's salt and name and the unit id, so every
server process, every machine and every later analysis computes the same arm for the same unit
with no shared state:

    point = int.from_bytes(blake2b(f"{salt}\\0{name}\\0{unit_id}".encode(), digest_size=8), "big")
    u = point / 2**64                      # uniform in [0, 1)
    arm = first arm (in declaration order) whose cumulative weight exceeds u * total weight

(``hashlib.blake2b``, never Python's ``hash``, which is salted per process.) Changing the salt
reshuffles every unit; keeping it and changing the weights moves only the units near the
boundaries.

**The unit.** With ``unit="user"`` a request is bucketed by its user id when the user is known
and by its session id otherwise; with ``unit="session"`` always by session id. Bucketing by
session is simpler but leaks users across arms: a returning shopper sees both arms over their
sessions, which blurs the difference and correlates the arms. Bucketing by user keeps a
shopper in one arm; an anonymous session whose user becomes known later can switch arm at that
point (its requests are logged with the unit they were bucketed by).

**What an arm changes** is kept small and explicit (:class:`ArmConfig`): the scorer (the
ranker, the co-visitation candidate order, or the long-term + popularity score) and the model
version. An arm without a config serves exactly as without an experiment (an A/A test).
"""

from __future__ import annotations

import hashlib
import math
import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Final

from featrec.errors import ConfigError

#: Bucketing units.
UNIT_USER: Final = "user"
UNIT_SESSION: Final = "session"
UNITS: Final = (UNIT_USER, UNIT_SESSION)

#: Scorers an arm may ask for (the names :mod:`featrec.app.serving.steps` logs): the loaded
#: ranker, the candidates' own order (co-visitation first), long-term + popularity only.
ARM_SCORERS: Final = ("model", "candidate-order", "fallback")

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_SALT: Final = 256


@dataclass(frozen=True, slots=True)
class ArmConfig:
    """What one arm serves with. ``None`` fields keep the serving default.

    ``model_version``: a version under the model store (implies ``scorer="model"``).
    """

    scorer: str | None = None
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.scorer is not None and self.scorer not in ARM_SCORERS:
            raise ConfigError(
                f"arm scorer must be one of {', '.join(ARM_SCORERS)}, got {self.scorer!r}"
            )
        if self.model_version is not None:
            if not _NAME_RE.fullmatch(self.model_version):
                raise ConfigError(f"invalid model version {self.model_version!r} for an arm")
            if self.scorer not in (None, "model"):
                raise ConfigError(
                    f"an arm with model version {self.model_version!r} scores with the model, "
                    f"not {self.scorer!r}"
                )

    @property
    def effective_scorer(self) -> str | None:
        return "model" if self.model_version is not None else self.scorer


@dataclass(frozen=True)
class Experiment:
    """A named split of units between arms by weight. Validated.

    ``arms``: weight per arm name, in declaration order (the order :func:`assign` walks);
    weights are relative (``control=1, treatment=1`` is 50/50); a zero weight keeps an arm
    declared but empty. ``configs``: what arms change (missing: serve as usual). ``control``:
    the arm the others are compared with (default: the first).
    """

    name: str
    salt: str
    arms: Mapping[str, float]
    unit: str = UNIT_USER
    configs: Mapping[str, ArmConfig] = field(default_factory=dict)
    control: str | None = None
    #: Cumulative weights, in arm order (derived).
    _edges: tuple[float, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"experiment name must be 1-64 letters, digits, '_', '.' or '-', got {self.name!r}"
            )
        if not isinstance(self.salt, str) or len(self.salt) > _MAX_SALT:
            raise ConfigError(f"experiment salt must be a string of at most {_MAX_SALT} chars")
        if self.unit not in UNITS:
            raise ConfigError(
                f"experiment unit must be one of {', '.join(UNITS)}, got {self.unit!r}"
            )
        arms = dict(self.arms)
        if len(arms) < 2:
            raise ConfigError(f"an experiment needs at least two arms, got {list(arms)}")
        for arm, weight in arms.items():
            if not isinstance(arm, str) or not _NAME_RE.fullmatch(arm):
                raise ConfigError(
                    f"arm name must be 1-64 letters, digits, '_', '.' or '-': {arm!r}"
                )
            ok = isinstance(weight, int | float) and not isinstance(weight, bool)
            if not ok or not math.isfinite(weight) or weight < 0:
                raise ConfigError(
                    f"arm {arm!r}: weight must be a finite number >= 0, got {weight!r}"
                )
        if not sum(arms.values()) > 0:
            raise ConfigError("at least one arm needs a weight > 0")
        configs = dict(self.configs)
        unknown = sorted(set(configs) - set(arms))
        if unknown:
            raise ConfigError(f"configs for undeclared arms: {', '.join(unknown)}")
        control = self.control if self.control is not None else next(iter(arms))
        if control not in arms:
            raise ConfigError(f"control arm {control!r} is not one of {', '.join(arms)}")
        # Private copies: the experiment is frozen and shared between threads.
        object.__setattr__(self, "arms", {a: float(w) for a, w in arms.items()})
        object.__setattr__(self, "configs", configs)
        object.__setattr__(self, "control", control)
        object.__setattr__(self, "_edges", tuple(accumulate(self.arms.values())))

    @property
    def control_arm(self) -> str:
        assert self.control is not None
        return self.control

    def config_of(self, arm: str) -> ArmConfig:
        return self.configs.get(arm) or ArmConfig()

    def unit_of(self, session_id: str, user_id: str | None) -> tuple[str, str]:
        """``(unit kind, unit id)`` a request is bucketed by (see the module docstring)."""
        if self.unit == UNIT_USER and user_id:
            return UNIT_USER, user_id
        return UNIT_SESSION, session_id

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; :func:`experiment_from_dict` reads it back."""
        return {
            "name": self.name,
            "salt": self.salt,
            "unit": self.unit,
            "control": self.control,
            "arms": dict(self.arms),
            "configs": {
                arm: {"scorer": c.scorer, "model_version": c.model_version}
                for arm, c in self.configs.items()
            },
        }


def bucket_point(salt: str, name: str, unit_id: str) -> float:
    """The unit's uniform point in [0, 1) for this experiment (the documented formula)."""
    digest = hashlib.blake2b(f"{salt}\0{name}\0{unit_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign(experiment: Experiment, unit_id: str) -> str:
    """The arm of ``unit_id`` (stable across processes, machines and releases)."""
    edges = experiment._edges
    x = bucket_point(experiment.salt, experiment.name, unit_id) * edges[-1]
    i = bisect_right(edges, x)
    arms = list(experiment.arms)
    if i >= len(arms):  # x rounded up onto the last edge
        i = max(n for n, w in enumerate(experiment.arms.values()) if w > 0)
    return arms[i]


def parse_arms(text: str) -> tuple[dict[str, float], dict[str, ArmConfig]]:
    """Arms from the command line: ``name=weight[:scorer][@model_version]``, comma-separated.

    ``control=0.5,treatment=0.5`` (an A/A split), ``control=1:fallback,treatment=1:model``,
    ``old=1@v1,new=1@v2`` (two model versions).
    """
    weights: dict[str, float] = {}
    configs: dict[str, ArmConfig] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, rest = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"arm {part!r}: expected name=weight[:scorer][@model_version]")
        if name in weights:
            raise ConfigError(f"arm {name!r} is declared twice")
        rest, at, version = rest.partition("@")
        weight_text, colon, scorer = rest.partition(":")
        try:
            weights[name] = float(weight_text)
        except ValueError:
            raise ConfigError(
                f"arm {name!r}: weight {weight_text.strip()!r} is not a number"
            ) from None
        config = ArmConfig(
            scorer=scorer.strip() if colon else None,
            model_version=version.strip() if at else None,
        )
        if config != ArmConfig():
            configs[name] = config
    return weights, configs


def experiment_from_dict(data: Mapping[str, Any]) -> Experiment:
    """An experiment from :meth:`Experiment.to_dict` output (or a hand-written TOML/JSON table)."""
    known = {"name", "salt", "unit", "control", "arms", "configs"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown experiment keys: {', '.join(unknown)}")
    arms = data.get("arms")
    configs = data.get("configs") or {}
    if not isinstance(arms, Mapping) or not isinstance(configs, Mapping):
        raise ConfigError("experiment 'arms' (and 'configs') must be tables of arm name -> value")
    parsed: dict[str, ArmConfig] = {}
    for arm, config in configs.items():
        if not isinstance(config, Mapping) or set(config) - {"scorer", "model_version"}:
            raise ConfigError(f"arm {arm!r}: config keys are 'scorer' and 'model_version'")
        parsed[arm] = ArmConfig(config.get("scorer"), config.get("model_version"))
    return Experiment(
        name=data.get("name", ""),
        salt=data.get("salt", ""),
        arms=arms,
        unit=data.get("unit", UNIT_USER),
        configs=parsed,
        control=data.get("control"),
    )
