"""One shard of the declared-features stream: every declaration's state for the keys it holds.

The bytewax flow keys its items by shard (a few keys, so a batch of events is one item per
shard, see ARCHITECTURE.md decision 10); this plain object holds the per-key states inside.

Memory stays bounded: a key's state is dropped once the shard's event time has moved past its
as-of time by more than the declaration's retention (its longest window; a day for session
windows), when every bucket it holds has left every window anyway.
"""

from __future__ import annotations

# Snapshots are this flow's own state, read back from its own recovery store.
import pickle  # nosec B403
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from featrec.core.events.model import Event
from featrec.core.features.declared.model import SESSION_MAX_WINDOW_US, Declaration
from featrec.core.features.declared.state import DeclaredState
from featrec.core.features.rows import FeatureRow

#: Entities whose keys are personal ids (forgetting drops their states).
_ID_KINDS = ("user", "session")
#: How many folds between two sweeps for states past their retention.
SWEEP_EVERY = 64


def retention_us(decl: Declaration) -> int:
    """How long a key's state outlives its newest event (event time)."""
    return max(a.window_us or SESSION_MAX_WINDOW_US for a in decl.aggregations)


class DeclaredShard:
    """States by ``(declaration index, key)``; :meth:`fold` a batch, get one row per touched
    key and declaration."""

    def __init__(self, declarations: Sequence[Declaration]) -> None:
        self.declarations = tuple(declarations)
        self.retention = tuple(retention_us(d) for d in self.declarations)
        self.states: dict[tuple[int, str], DeclaredState] = {}
        self.newest_us = -1
        self._folds = 0

    def fold(self, events: Iterable[Event], ingested_at: float | None = None) -> list[FeatureRow]:
        touched: dict[tuple[int, str], DeclaredState] = {}
        states = self.states
        for event in events:
            for i, decl in enumerate(self.declarations):
                key = decl.key_of(event)
                if key is None:
                    continue
                state = states.get((i, key))
                if state is None:
                    state = states[(i, key)] = DeclaredState(decl, key)
                state.update(event)
                touched[(i, key)] = state
                self.newest_us = max(self.newest_us, state.as_of_us)
        self._folds += 1
        if self._folds % SWEEP_EVERY == 0:
            self.sweep()
        return [state.row(ingested_at) for state in touched.values()]

    def forget(self, denied: Callable[[Any, str], bool]) -> int:
        """Drop the states of forgotten users and sessions, and every state that keeps one of
        their ids as a value (an item's ``last_5`` of ``user_id``, say: that key starts
        empty); ``denied(kind, id)`` with kind ``"user"`` or ``"session"``. Returns how many."""
        gone = []
        for k, state in self.states.items():
            decl = state.decl
            if decl.entity in _ID_KINDS and denied(decl.entity, state.key):
                gone.append(k)
                continue
            for kind in _ID_KINDS:
                column = f"{kind}_id"
                if any(a.column == column for a in decl.aggregations) and any(
                    isinstance(v, str) and denied(kind, v) for v in state.held(column)
                ):
                    gone.append(k)
                    break
        for k in gone:
            del self.states[k]
        return len(gone)

    def sweep(self) -> int:
        """Drop states past their retention; returns how many."""
        newest = self.newest_us
        gone = [k for k, s in self.states.items() if newest - s.as_of_us > self.retention[k[0]]]
        for k in gone:
            del self.states[k]
        return len(gone)

    def to_bytes(self) -> bytes:
        return pickle.dumps((self.newest_us, self.states), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, blob: bytes, declarations: Sequence[Declaration]) -> DeclaredShard:
        """A shard resumed from a snapshot. States of declarations that no longer exist (or
        changed) are dropped: a changed declaration starts empty, as a new one does."""
        shard = cls(declarations)
        newest, states = pickle.loads(blob)  # nosec B301
        shard.newest_us = newest
        index = {d: i for i, d in enumerate(shard.declarations)}
        for (_, key), state in states.items():
            i = index.get(state.decl)
            if i is not None:
                state.decl = shard.declarations[i]
                shard.states[(i, key)] = state
        return shard
