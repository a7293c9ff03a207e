"""Keeping a bytewax cluster running: restart the whole set from recovery when one dies.

Bytewax has no failover: when one process of a cluster dies, the others stop too ("Send
thread panic"), and the cluster can only resume as a whole, from its recovery store (state
exactly-once; output replayed from the last committed epoch, which featrec's writers absorb).
:class:`ClusterSupervisor` does that on one host: it starts the N processes, waits, and when
any exits with an error (or is killed) it stops the rest, waits a back-off (doubling, capped,
reset after a run that stayed healthy), and starts all N again. A clean end (every process
exits 0: a file replay or a Kafka source read to its end) ends it; so does Ctrl-C, passed on.

It says so in the logs (one WARNING line per restart with the process, its status and the
back-off), in Prometheus metrics (``featrec_cluster_restarts_total``,
``featrec_cluster_processes_running``, ``featrec_cluster_last_failure_timestamp_seconds``,
served by the launcher on ``--metrics-port``), and in ``<home>/status/cluster-<flow>.json``,
which ``featrec status`` prints.

Without a recovery store a restart would start from scratch, so the launcher never restarts
such a cluster (``max_restarts=0``); it fails as before.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from prometheus_client import Counter, Gauge

from featrec.adapters.files.flow_status import status_dir, write_status

log = logging.getLogger("featrec.cluster")

RESTARTS: Final = Counter(
    "featrec_cluster_restarts",
    "Restarts of a whole bytewax cluster from its recovery store after a process died.",
    ["flow"],
)
RUNNING: Final = Gauge(
    "featrec_cluster_processes_running", "Bytewax processes of the cluster running now.", ["flow"]
)
LAST_FAILURE: Final = Gauge(
    "featrec_cluster_last_failure_timestamp_seconds",
    "Unix time at which a process of the cluster last died.",
    ["flow"],
)

#: Seconds given to the surviving processes to exit after SIGTERM before SIGKILL.
STOP_GRACE_S: Final = 10.0
#: How often the supervisor looks at its processes.
POLL_S: Final = 0.1

Procs = list[subprocess.Popen[bytes]]


@dataclass(frozen=True)
class RestartPolicy:
    """When and how fast to restart. ``max_restarts``: restarts in a row (without a healthy
    run between them) before giving up; 0 never restarts. A run that lasted
    ``healthy_after_s`` resets the count and the back-off."""

    max_restarts: int = 10
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    healthy_after_s: float = 60.0

    def delay(self, failures: int) -> float:
        """Back-off before restart number ``failures`` (1-based) of a row."""
        return float(min(self.backoff_s * 2 ** (failures - 1), self.max_backoff_s))


@dataclass
class ClusterOutcome:
    """How a supervised run ended: the exit status and every restart made."""

    status: int
    restarts: list[str] = field(default_factory=list)


class ClusterSupervisor:
    """Runs ``start()``'s processes and restarts them all whenever one fails.

    ``start`` starts the whole set (the same command lines each time: the cluster resumes
    from its recovery store). ``home`` enables the status file.
    """

    def __init__(
        self,
        start: Callable[[], Procs],
        policy: RestartPolicy,
        *,
        flow: str,
        home: Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.start = start
        self.policy = policy
        self.flow = flow
        self.status_file = status_dir(home) / f"cluster-{flow}.json" if home else None
        self.sleep = sleep
        self.outcome = ClusterOutcome(0)

    def run(self) -> ClusterOutcome:
        failures = 0
        while True:
            procs = self.start()
            started = time.monotonic()
            RUNNING.labels(flow=self.flow).set(len(procs))
            self._write_status(len(procs), "running")
            try:
                failed = self._wait_for_failure(procs)
            except KeyboardInterrupt:
                self._stop(procs, signal.SIGINT)
                self.outcome.status = 130
                self._write_status(0, "stopped (Ctrl-C)")
                return self.outcome
            if failed is None:
                RUNNING.labels(flow=self.flow).set(0)
                self._write_status(0, "finished")
                return self.outcome
            index, code = failed
            self._stop(procs, signal.SIGTERM)
            RUNNING.labels(flow=self.flow).set(0)
            LAST_FAILURE.labels(flow=self.flow).set(time.time())
            lived = time.monotonic() - started
            failures = 1 if lived >= self.policy.healthy_after_s else failures + 1
            what = f"bytewax process {index} of {len(procs)} exited with {describe(code)}"
            if failures > self.policy.max_restarts:
                log.error(
                    "%s: %s; not restarted (%d restarts in a row)", self.flow, what, failures - 1
                )
                self.outcome.status = code if code > 0 else 1
                self._write_status(0, f"failed: {what}")
                return self.outcome
            delay = self.policy.delay(failures)
            log.warning(
                "%s: %s after %.1f s; restarting all %d processes from the recovery store in "
                "%.1f s (restart %d in a row)",
                self.flow,
                what,
                lived,
                len(procs),
                delay,
                failures,
            )
            RESTARTS.labels(flow=self.flow).inc()
            self.outcome.restarts.append(what)
            self._write_status(0, f"restarting in {delay:.1f} s: {what}")
            self.sleep(delay)

    def _wait_for_failure(self, procs: Procs) -> tuple[int, int] | None:
        """A failed process (index, status), or None once all exited with 0. Of several, one
        killed by a signal is named first: the others most likely only followed it (a
        process whose peer died panics and exits with a status)."""
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, code) for i, code in enumerate(codes) if code is not None and code != 0]
            if failed:
                return min(failed, key=lambda f: (f[1] >= 0, f[0]))
            if all(code == 0 for code in codes):
                return None
            RUNNING.labels(flow=self.flow).set(sum(code is None for code in codes))
            time.sleep(POLL_S)

    def _stop(self, procs: Procs, sig: signal.Signals) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _write_status(self, running: int, state: str) -> None:
        if self.status_file is None:
            return
        write_status(
            self.status_file,
            {
                "flow": self.flow,
                "kind": "cluster",
                "state": state,
                "processes_running": running,
                "restarts": len(self.outcome.restarts),
                "last_failure": self.outcome.restarts[-1] if self.outcome.restarts else None,
                "updated_at": time.time(),
            },
        )


def describe(code: int) -> str:
    """``status 3`` or ``signal SIGKILL`` for a ``Popen.returncode``."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def cluster_summary(statuses: Sequence[dict[str, object]]) -> list[str]:
    """Lines for ``featrec status`` from the cluster status files among ``statuses``."""
    return [
        f"cluster {s.get('flow')!s:<10} {s.get('state')}  processes running "
        f"{s.get('processes_running')}  restarts {s.get('restarts')}"
        for s in statuses
        if s.get("kind") == "cluster"
    ]
