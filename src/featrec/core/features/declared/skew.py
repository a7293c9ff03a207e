"""Training/serving skew of declared features: online values against the batch recomputation.

Pure comparison and report; :mod:`featrec.jobs.declared` samples online rows and recomputes
them with the batch engine as of each row's own as-of time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Relative tolerance for floats (the engines add in different orders).
TOLERANCE = 1e-6


def distance(online: Any, batch: Any, rel: float = TOLERANCE) -> float:
    """0 when the values agree; else how far apart (numbers: absolute difference; anything
    else, such as a list or a string, or a null on one side only: infinity)."""
    if online is None or batch is None:
        return 0.0 if online is None and batch is None else math.inf
    if isinstance(online, int | float) and isinstance(batch, int | float):
        a, b = float(online), float(batch)
        return 0.0 if math.isclose(a, b, rel_tol=rel, abs_tol=rel) else abs(a - b)
    if isinstance(online, Sequence) and isinstance(batch, Sequence) and not isinstance(online, str):
        if len(online) != len(batch):
            return math.inf
        return max((distance(x, y, rel) for x, y in zip(online, batch, strict=True)), default=0.0)
    return 0.0 if online == batch else math.inf


@dataclass(frozen=True, slots=True)
class Example:
    key: str
    as_of_us: int
    online: Any
    batch: Any
    distance: float


@dataclass
class FeatureSkew:
    """Mismatches of one feature over the checked rows, with the worst examples."""

    view: str
    feature: str
    checked: int = 0
    mismatches: int = 0
    worst: list[Example] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.mismatches / self.checked if self.checked else 0.0

    def add(self, example: Example, keep: int) -> None:
        self.checked += 1
        if example.distance > 0:
            self.mismatches += 1
            self.worst.append(example)
            self.worst.sort(key=lambda e: e.distance, reverse=True)
            del self.worst[keep:]


@dataclass
class SkewReport:
    """Per-feature mismatch rates over the sampled rows; ``missing``: sampled keys without an
    online row (the flow never saw them, or the store lost them)."""

    features: dict[tuple[str, str], FeatureSkew] = field(default_factory=dict)
    rows: int = 0
    missing: int = 0

    def compare(
        self,
        view: str,
        key: str,
        as_of_us: int,
        online: Mapping[str, Any],
        batch: Mapping[str, Any],
        names: Sequence[str],
        keep: int = 3,
    ) -> None:
        self.rows += 1
        for name in names:
            skew = self.features.setdefault((view, name), FeatureSkew(view, name))
            d = distance(online.get(name), batch.get(name))
            skew.add(Example(key, as_of_us, online.get(name), batch.get(name), d), keep)

    @property
    def mismatches(self) -> int:
        return sum(f.mismatches for f in self.features.values())

    def lines(self) -> list[str]:
        out = [f"checked {self.rows} online rows ({self.missing} sampled keys had none)"]
        for skew in self.features.values():
            out.append(
                f"{skew.view}:{skew.feature}  {skew.mismatches}/{skew.checked} mismatched "
                f"({skew.rate:.1%})"
            )
            for e in skew.worst:
                out.append(
                    f"    key {e.key!r} as of {e.as_of_us}: online {e.online!r}, batch {e.batch!r}"
                )
        return out
