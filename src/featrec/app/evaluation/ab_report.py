"""A/B analysis: per-arm outcome rates from the request log and the events that followed.

Every request of an experiment logged its arm, its unit (the user, or the session when the user
was unknown), the time it was scored for (``now_s``) and the items it recommended (see
:class:`featrec.app.serving.record.ServedRequest`). Its **outcomes** come from the session's
later events: within ``horizon_s`` after the request, and only until the session ended (a pause
longer than the session gap), did the session

- ``hit``: view or click one of the recommended items (CTR-like),
- ``cart``: add one of them to the cart,
- ``purchase``: buy one of them.

Requests whose horizon reaches past the newest event are *censored* (their outcome is not known
yet) and left out. Degraded requests stay in their arm (the arms are compared as assigned).

**Statistics, per unit.** Requests of one unit are correlated (a shopper who clicks, clicks
again), and a few heavy shoppers make many of the requests, so a binomial interval over requests
is far too narrow. The analysis is done on **per-unit mean outcomes**: each unit's share of its
requests with the outcome, one number per unit; units are independent (they were randomised).

- The **rate** of an arm is the mean of its units' shares (each shopper counts once; the pooled
  share of requests is reported too, as ``request_rate``).
- Its 95% interval is the **Wilson score interval at the effective sample size**
  ``n_eff = p (1 - p) / V``, with ``V = s^2 / G`` the variance of the mean of the ``G`` unit
  shares (kept in [1, requests]; when ``V`` is 0, e.g. no unit had the outcome, ``n_eff = G``).
- The **difference** from the control is ``p_arm - p_control`` with the normal (Welch)
  interval ``+- z * sqrt(V_arm + V_control)``; an arm whose ``V`` is 0 contributes the variance
  its Wilson interval implies instead (no overconfident zero-width interval).

Exact formulas, no resampling: the same log gives the same report. Checked by simulation
(tests/test_ab.py): on correlated A/A traffic with heavy-tailed units, these intervals of the
difference cover 0 about 95% of the time; a request-level interval covers it far less often.
(A request-weighted ratio with a cluster-robust delta-method variance was tried first: with a
hundred units of very unequal size it covered only 85-90%.)
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from featrec.app.serving.record import ServedRequest
from featrec.core.events.model import CART, CLICK, PURCHASE, VIEW, Event
from featrec.core.ports.serving import RequestRecord
from featrec.errors import ConfigError, NotFound

#: z for a two-sided 95% interval.
Z95: Final = 1.959963984540054
#: The outcomes, and the event types that count for each.
OUTCOMES: Final[Mapping[str, frozenset[str]]] = {
    "hit": frozenset({VIEW, CLICK}),
    "cart": frozenset({CART}),
    "purchase": frozenset({PURCHASE}),
}
DEFAULT_HORIZON_S: Final = 1800.0
METHOD: Final = (
    "per unit: rate = mean over units of each unit's share of requests; Wilson score "
    "interval at the effective n of that mean; difference vs control: Welch (normal) interval "
    "on the unit means"
)


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """What the analysis needs of one logged request of an experiment."""

    request_id: str
    at_s: float
    session_id: str
    experiment: str
    arm: str
    control: str
    #: ``"user:<id>"`` or ``"session:<id>"``: the unit it was bucketed by.
    unit: str
    items: frozenset[str]
    degraded: bool


def logged_request(record: RequestRecord) -> LoggedRequest | None:
    """The request as the analysis sees it; None when it was not part of an experiment.
    Raises :class:`ConfigError` for an entry that is not a readable
    :class:`~featrec.app.serving.record.ServedRequest`."""
    served = ServedRequest.from_record(record)
    arm = served.experiment
    if arm is None:
        return None
    return LoggedRequest(
        request_id=served.request_id,
        at_s=float(served.now_s),
        session_id=served.session_id,
        experiment=arm.experiment,
        arm=arm.arm,
        control=arm.control,
        unit=f"{arm.unit}:{arm.unit_id}",
        items=frozenset(served.recommended),
        degraded=served.degraded,
    )


# -- intervals ----------------------------------------------------------------------------------


def wilson_interval(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed over ``n`` (possibly effective,
    non-integer) trials."""
    if not n > 0:
        return (0.0, 1.0)
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True, slots=True)
class Rate:
    """One arm's rate of one outcome (the mean of per-unit shares), with its 95% interval."""

    #: Requests with the outcome, requests, units.
    successes: int
    n: int
    units: int
    rate: float
    low: float
    high: float
    #: Variance of ``rate`` (of the mean of the unit shares); NaN with fewer than two units.
    variance: float
    #: Effective sample size of the Wilson interval.
    n_effective: float

    @property
    def request_rate(self) -> float:
        """The pooled share of requests with the outcome (heavy units weigh more)."""
        return self.successes / self.n if self.n else math.nan


def unit_rate(per_unit: Sequence[tuple[int, int]], z: float = Z95) -> Rate:
    """The mean of the units' shares, given as ``(successes, requests)`` per unit, with the
    Wilson interval at the effective sample size (see the module docstring)."""
    n = sum(m for _, m in per_unit)
    y = sum(s for s, _ in per_unit)
    g = len(per_unit)
    if n == 0:
        return Rate(0, 0, 0, math.nan, 0.0, 1.0, math.nan, 0.0)
    shares = [s / m for s, m in per_unit]
    p = math.fsum(shares) / g
    variance = math.fsum((x - p) ** 2 for x in shares) / (g - 1) / g if g > 1 else math.nan
    if g < 2:
        n_eff = 1.0
    elif variance > 0 and 0 < p < 1:
        n_eff = min(max(p * (1 - p) / variance, 1.0), float(n))
    else:
        n_eff = float(g)
    low, high = wilson_interval(p, n_eff, z)
    return Rate(y, n, g, p, low, high, variance, n_eff)


def welch_difference(a: Rate, b: Rate, z: float = Z95) -> tuple[float, float]:
    """The interval of ``a.rate - b.rate`` (normal, unequal variances); a rate whose variance
    is 0 or unknown contributes the variance its Wilson interval implies."""
    d = a.rate - b.rate
    half = z * math.sqrt(_variance(a, z) + _variance(b, z))
    return (d - half, d + half)


def _variance(rate: Rate, z: float) -> float:
    if rate.variance > 0:
        return rate.variance
    return ((rate.high - rate.low) / (2 * z)) ** 2


# -- outcomes -----------------------------------------------------------------------------------


class SessionEvents:
    """The later events of the sessions that had requests, per session in time order."""

    def __init__(self, events: Iterable[Event], sessions: set[str] | None = None) -> None:
        by_session: dict[str, list[tuple[float, str, str]]] = defaultdict(list)
        self.n_events = 0
        self.newest_s = -math.inf
        for e in events:
            ts = e.ts.timestamp()
            self.newest_s = max(self.newest_s, ts)
            if sessions is not None and e.session_id not in sessions:
                continue
            self.n_events += 1
            by_session[e.session_id].append((ts, e.type, e.item_id))
        self._events = {s: sorted(v) for s, v in by_session.items()}
        self._times = {s: [t for t, _, _ in v] for s, v in self._events.items()}

    def outcomes(
        self, request: LoggedRequest, horizon_s: float, session_gap_s: float
    ) -> dict[str, bool]:
        """Which outcomes followed ``request`` (see the module docstring)."""
        out = dict.fromkeys(OUTCOMES, False)
        events = self._events.get(request.session_id)
        if not events:
            return out
        start = bisect.bisect_right(self._times[request.session_id], request.at_s)
        previous = request.at_s
        end = request.at_s + horizon_s
        for ts, type_, item in itertools.islice(events, start, None):
            if ts > end or ts - previous > session_gap_s:
                break
            previous = ts
            if item in request.items:
                for name, types in OUTCOMES.items():
                    if type_ in types:
                        out[name] = True
        return out


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArmReport:
    arm: str
    n_requests: int
    n_units: int
    n_degraded: int
    rates: Mapping[str, Rate]


@dataclass(frozen=True, slots=True)
class Difference:
    """``arm`` minus the control, for one outcome, with its 95% interval."""

    outcome: str
    arm: str
    control: str
    difference: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0


@dataclass(frozen=True, slots=True)
class ABReport:
    experiment: str
    control: str
    horizon_s: float
    session_gap_s: float
    n_requests: int
    #: Requests left out: horizon past the newest event; of other experiments.
    n_censored: int
    n_other: int
    n_events: int
    arms: tuple[ArmReport, ...]
    differences: tuple[Difference, ...]
    method: str = METHOD
    outcomes: tuple[str, ...] = field(default=tuple(OUTCOMES))

    def arm(self, name: str) -> ArmReport:
        for arm in self.arms:
            if arm.arm == name:
                return arm
        raise KeyError(name)

    def difference(self, outcome: str, arm: str) -> Difference:
        for d in self.differences:
            if d.outcome == outcome and d.arm == arm:
                return d
        raise KeyError((outcome, arm))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for arm in out["arms"]:
            for name, rate in arm["rates"].items():
                rate["request_rate"] = self.arm(arm["arm"]).rates[name].request_rate
        for d in out["differences"]:
            d["significant"] = self.difference(d["outcome"], d["arm"]).significant
        finite: dict[str, Any] = _finite(out)
        return finite


def _finite(value: Any) -> Any:
    """NaN as None, so the report is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def logged_requests(records: Iterable[RequestRecord]) -> list[LoggedRequest]:
    """The requests of experiments among ``records`` (read one at a time: only the small
    :class:`LoggedRequest` of each is kept)."""
    return [r for r in map(logged_request, records) if r is not None]


def ab_report(
    requests: Sequence[LoggedRequest],
    events: Iterable[Event],
    *,
    experiment: str | None = None,
    horizon_s: float = DEFAULT_HORIZON_S,
    session_gap_s: float = 1800.0,
    observed_until_s: float | None = None,
) -> ABReport:
    """Per-arm outcome rates of ``experiment`` (default: the only one in ``requests``, see
    :func:`logged_requests`).

    ``events`` may be only those of the sessions with requests; ``observed_until_s`` is the
    time up to which events are known (default: the newest of ``events``): requests whose
    horizon reaches past it are left out as too recent.

    Raises :class:`NotFound` when no logged request belongs to an experiment, and
    :class:`ConfigError` when several do and none is named, or for a bad horizon.
    """
    if not (math.isfinite(horizon_s) and horizon_s > 0):
        raise ConfigError(f"the horizon must be > 0 seconds, got {horizon_s}")
    names = sorted({r.experiment for r in requests})
    if not names:
        raise NotFound("no request in the request log was part of an experiment")
    if experiment is None:
        if len(names) > 1:
            raise ConfigError(f"the log holds several experiments: name one of {', '.join(names)}")
        experiment = names[0]
    if experiment not in names:
        raise NotFound(f"no logged request of experiment {experiment!r} (found {', '.join(names)})")
    mine = [r for r in requests if r.experiment == experiment]
    later = SessionEvents(events, {r.session_id for r in mine})
    until = later.newest_s if observed_until_s is None else observed_until_s
    settled = [r for r in mine if r.at_s + horizon_s <= until]
    control = mine[-1].control
    by_arm: dict[str, list[tuple[LoggedRequest, dict[str, bool]]]] = defaultdict(list)
    for r in settled:
        by_arm[r.arm].append((r, later.outcomes(r, horizon_s, session_gap_s)))
    arm_names = [control, *sorted(set(by_arm) - {control})]
    arms = tuple(_arm_report(name, by_arm.get(name, [])) for name in arm_names)
    base = arms[0]
    differences = tuple(_difference(outcome, arm, base) for arm in arms[1:] for outcome in OUTCOMES)
    return ABReport(
        experiment=experiment,
        control=control,
        horizon_s=horizon_s,
        session_gap_s=session_gap_s,
        n_requests=len(settled),
        n_censored=len(mine) - len(settled),
        n_other=len(requests) - len(mine),
        n_events=later.n_events,
        arms=arms,
        differences=differences,
    )


def _arm_report(arm: str, rows: Sequence[tuple[LoggedRequest, dict[str, bool]]]) -> ArmReport:
    units: dict[str, dict[str, list[int]]] = defaultdict(
        lambda: {name: [0, 0] for name in OUTCOMES}
    )
    for request, outcome in rows:
        counts = units[request.unit]
        for name, happened in outcome.items():
            counts[name][0] += happened
            counts[name][1] += 1
    rates = {
        name: unit_rate([(c[name][0], c[name][1]) for c in units.values()]) for name in OUTCOMES
    }
    return ArmReport(
        arm=arm,
        n_requests=len(rows),
        n_units=len(units),
        n_degraded=sum(r.degraded for r, _ in rows),
        rates=rates,
    )


def _difference(outcome: str, arm: ArmReport, control: ArmReport) -> Difference:
    a, c = arm.rates[outcome], control.rates[outcome]
    if a.n == 0 or c.n == 0:
        return Difference(outcome, arm.arm, control.arm, math.nan, math.nan, math.nan)
    low, high = welch_difference(a, c)
    return Difference(outcome, arm.arm, control.arm, a.rate - c.rate, low, high)


# -- text ---------------------------------------------------------------------------------------

_DESCRIBE: Final = {
    "hit": "viewed or clicked a recommended item",
    "cart": "added a recommended item to the cart",
    "purchase": "bought a recommended item",
}


def format_report(report: ABReport) -> list[str]:
    """The report as a text table, one block per outcome."""
    horizon = f"{report.horizon_s / 60:g} min"
    lines = [
        f"experiment {report.experiment}  control {report.control}  horizon {horizon} "
        f"(until the session ends)",
        f"{report.n_requests} requests analysed ({report.n_censored} too recent, "
        f"{report.n_other} of other experiments), {report.n_events} events of their sessions",
        f"95% intervals: {report.method}",
    ]
    for outcome in OUTCOMES:
        lines.append("")
        lines.append(f"{outcome}: the session {_DESCRIBE[outcome]} within {horizon}")
        lines.append(
            f"  {'arm':<16} {'requests':>8} {'units':>6} {'rate':>7}  {'95% CI':<16} "
            f"{'diff':>8}  {'95% CI':<19}"
        )
        for arm in report.arms:
            rate = arm.rates[outcome]
            line = (
                f"  {arm.arm:<16} {arm.n_requests:>8} {arm.n_units:>6} {_num(rate.rate):>7}  "
                f"[{_num(rate.low)}, {_num(rate.high)}]"
            )
            if arm.arm != report.control:
                d = report.difference(outcome, arm.arm)
                line += (
                    f" {_num(d.difference, signed=True):>8}  "
                    f"[{_num(d.low, signed=True)}, {_num(d.high, signed=True)}]"
                    + ("  *" if d.significant else "")
                )
            lines.append(line)
    lines.append("")
    lines.append("* the interval of the difference excludes 0")
    return [line.rstrip() for line in lines]


def _num(value: float, *, signed: bool = False) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"
