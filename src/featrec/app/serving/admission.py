"""Admission under load: every request has a deadline, and the queue is bounded by it.

One serving worker computes one recommendation at a time; the others wait their turn. A
request that cannot be answered within its deadline is not queued for a minute: it is shed,
either at once when it arrives (the work already waiting, at the recent cost per request,
would take it past the deadline) or when its turn comes (it has waited so long that computing
it would end past the deadline). A shed request gets the session's cached answer, flagged
degraded (``overload``), or a 503 with ``Retry-After`` (see :mod:`featrec.server.fast_route`).

The cost per request is an exponentially weighted mean of the measured CPU time of a
computation, so the bound follows the real speed of the machine (a busy core, a cold cache)
without tuning, and does not depend on how many computations share the core at once (the
work ahead of a request is the CPU time of every request ahead of it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from featrec.errors import ConfigError

#: Degraded code of an answer served from the cache because the worker was overloaded.
OVERLOAD: Final = "overload"
#: Default deadline of a request, from its arrival at the worker to its answer.
DEFAULT_DEADLINE_S: Final = 0.050


@dataclass(slots=True)
class Admission:
    """Deadline-bounded admission for one worker (one event loop: no lock needed).

    ``arrive()`` counts a request in and says whether to try it; ``start(arrived)`` says
    whether it may still be computed; ``done(seconds)`` counts it out and learns the cost.
    ``leave()`` counts out a request that was shed or failed before computing.
    """

    deadline_s: float = DEFAULT_DEADLINE_S
    #: Initial guess of the compute time per request, replaced by measurements.
    service_s: float = 0.001
    #: Weight of the newest measurement in the running mean.
    smoothing: float = 0.1
    clock: Callable[[], float] = time.perf_counter
    waiting: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.deadline_s) and self.deadline_s > 0):
            raise ConfigError(f"the request deadline must be > 0 s, got {self.deadline_s}")

    def arrive(self) -> bool:
        """Count a request in; False when the work ahead of it already overruns its deadline
        (it should be shed now; call :meth:`leave`). A request with nothing ahead of it is
        always tried: shedding it would not make anything faster."""
        self.waiting += 1
        return self.waiting == 1 or self.waiting * self.service_s <= self.deadline_s

    def start(self, arrived: float) -> bool:
        """True when a request that arrived at ``arrived`` can still be answered in time, or
        when it is alone in the worker: as in :meth:`arrive`, shedding the only request makes
        nothing faster (its wait was the hop to the worker thread, not a queue), and a busy
        machine must not turn a quiet server's answers into 503s."""
        if self.waiting <= 1:
            return True
        waited = self.clock() - arrived
        return waited + self.service_s <= self.deadline_s

    def done(self, seconds: float) -> None:
        self.waiting -= 1
        self.service_s += self.smoothing * (seconds - self.service_s)

    def leave(self) -> None:
        self.waiting -= 1

    def retry_after_s(self) -> int:
        """Whole seconds a shed caller should wait (at least 1)."""
        return max(1, math.ceil(self.waiting * self.service_s))
