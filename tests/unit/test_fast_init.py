"""The positional makers of frozen slotted dataclasses build the same objects as ``__init__``:
same class, equal, same hash and repr, still frozen; classes they cannot build are refused."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from featrec.core.candidates.model import COVISIT, SESSION, Candidate, new_candidate
from featrec.core.fast_init import positional_maker
from featrec.core.ranking.rerank import Decision, _new_decision


def test_made_objects_equal_initialised_ones() -> None:
    args = ("i1", (COVISIT, SESSION), {COVISIT: 1.5, SESSION: 4.0}, {"covisit_last": 0.5})
    made, built = new_candidate(*args), Candidate(*args)
    assert type(made) is Candidate
    assert made == built and hash(made.sources) == hash(built.sources)
    assert repr(made) == repr(built) and made.base_score == 5.5
    assert made.to_dict() == built.to_dict()
    decision = ("i1", 0.25, None, False, ("below the top 5",), 0.5)
    assert _new_decision(*decision) == Decision(*decision)
    assert hash(_new_decision(*decision)) == hash(Decision(*decision))


def test_made_objects_stay_frozen() -> None:
    made = _new_decision("i1", 0.25, 1, True, (), 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.score = 1.0  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        made.extra = 1  # type: ignore[attr-defined]


def test_every_field_is_required_positionally() -> None:
    with pytest.raises(TypeError):
        new_candidate("i1", (), {})  # type: ignore[call-arg]


@dataclass(frozen=True)
class NoSlots:
    a: int


@dataclass(slots=True)
class NotFrozen:
    a: int


@dataclass(frozen=True, slots=True)
class Checked:
    a: int

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError("negative")


@dataclass(frozen=True, slots=True)
class Derived:
    a: int
    b: int = field(init=False, default=0)


@pytest.mark.parametrize("cls", [NoSlots, NotFrozen, Checked, Derived, int])
def test_classes_it_cannot_build_are_refused(cls: type) -> None:
    with pytest.raises(TypeError):
        positional_maker(cls)
