"""Answering a replay's points in worker processes, each owning whole sessions.

The replay gate (:class:`~featrec.app.evaluation.replay.ReplayGate`) settles an event when its
session row has been written and read back; every policy must then answer the point with that
row and the session's earlier rows. Answering is most of a replay's CPU, and sessions are
independent: an answer depends on the point, its own session's rows, and the rows frozen at the
training cutoff (item signals, batch features, models), never on another session. So
:class:`AnswerPool` forks ``workers`` processes from the gate's process (each inherits the
loaded policies: no start-up of its own) and gives each session to one of them, the first time
the session settles (round-robin). A worker receives its sessions' settled events in the order
the gate settled them, records each row in its session history and answers each point exactly
as :class:`~featrec.app.evaluation.replay.SerialAnswers` would, then writes the answer through
its own output (``open_out(worker_index)``). The lists do not depend on the number of workers
(``tests/unit/test_replay_concurrency.py`` compares them).

The gate does not wait for the answers: a session's next event may be released while its last
point is still being answered, since the answer reads the session row the gate read back (sent
with the point), not the store. Each session stays in lock-step in the flow, and each point is
still answered only after its own event's row was readable.

Workers are forked (``fork`` start method), so the pool must be started before the process
starts threads (before the dataflow runs). A worker opens its own store reader (``reopen``):
a store connection is not shared across ``fork``.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Protocol

from featrec.app.evaluation.replay import PointAnswer, Policies, SerialAnswers
from featrec.core.evaluation.protocol import PredictionPoint
from featrec.core.ports.serving import RowReader, StampedRow
from featrec.errors import ConfigError, FeatrecError

#: What a worker's pipe holds before the gate waits for it (1 MiB, Linux's default maximum
#: for an unprivileged process: ~1,500 settled events).
PIPE_BYTES = 1 << 20
#: One settled event, as sent to its session's worker.
Settled = tuple[str, float, StampedRow | None, PredictionPoint | None, float]


class AnswerSink(Protocol):
    """Where one worker writes its answers (opened in the worker)."""

    def write(self, answer: PointAnswer) -> None: ...

    def close(self) -> None: ...


class AnswerPool:
    """:class:`~featrec.app.evaluation.replay.Answering` in ``workers`` forked processes (module
    doc). :meth:`start` forks them; :meth:`close` waits until each has answered every point it
    was sent and closed its output, and raises if one failed."""

    def __init__(
        self,
        policies: Policies,
        open_out: Callable[[int], AnswerSink],
        workers: int,
        *,
        reopen: Callable[[], RowReader] | None = None,
    ) -> None:
        if workers < 1:
            raise ConfigError(f"answering workers must be >= 1, got {workers}")
        self.policies = policies
        self.open_out = open_out
        self.workers = workers
        self.reopen = reopen
        #: Per worker: the pipe its settled events go down, and the one its count comes back.
        self._conns: list[Connection] = []
        self._results: list[Connection] = []
        self._procs: list[BaseProcess] = []
        self._owner: dict[str, int] = {}
        self._batches: list[list[Settled]] = [[] for _ in range(workers)]
        self._sent = [0] * workers
        self._closed = False

    def start(self) -> AnswerPool:
        context = multiprocessing.get_context("fork")
        for index in range(self.workers):
            inbox, send = context.Pipe(duplex=False)
            receive, outbox = context.Pipe(duplex=False)
            _widen(send)
            proc = context.Process(
                target=_work,
                args=(self.policies, inbox, outbox, self.open_out, index, self.reopen),
                name=f"featrec-answers-{index}",
                daemon=True,
            )
            proc.start()
            inbox.close()
            outbox.close()
            self._conns.append(send)
            self._results.append(receive)
            self._procs.append(proc)
        return self

    def settled(
        self,
        session_id: str,
        at_s: float,
        row: StampedRow | None,
        point: PredictionPoint | None,
        freshness_ms: float,
    ) -> None:
        owner = self._owner.get(session_id)
        if owner is None:
            owner = self._owner[session_id] = len(self._owner) % self.workers
        self._batches[owner].append((session_id, at_s, row, point, freshness_ms))
        if point is not None:
            self._sent[owner] += 1

    def flush(self) -> None:
        if not self._procs:
            raise FeatrecError("the answer pool was not started")
        for index, batch in enumerate(self._batches):
            if batch:
                self._send(index, batch)
                self._batches[index] = []

    def _send(self, index: int, message: list[Settled] | None) -> None:
        try:
            self._conns[index].send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise FeatrecError(self._failed(index)) from None

    def close(self) -> None:
        """Send what is held, stop every worker and check it answered every point sent."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        for index in range(self.workers):
            self._send(index, None)
        problems = []
        for index, proc in enumerate(self._procs):
            try:
                answered = self._results[index].recv()
            except (EOFError, ConnectionResetError):
                answered = None
            proc.join()
            self._conns[index].close()
            self._results[index].close()
            if answered != self._sent[index] or proc.exitcode != 0:
                problems.append(self._failed(index, answered))
        if problems:
            raise FeatrecError("; ".join(problems))

    def terminate(self) -> None:
        """Stop the workers without waiting for their answers (after a failed replay)."""
        self._closed = True
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()

    def _failed(self, index: int, answered: object = None) -> str:
        proc = self._procs[index]
        return (
            f"answering worker {index} (pid {proc.pid}) failed: exit code {proc.exitcode}, "
            f"{answered if isinstance(answered, int) else 'no'} of {self._sent[index]} points "
            "answered (its traceback is on stderr)"
        )


def _widen(conn: Connection) -> None:
    """Let the pipe hold ``PIPE_BYTES`` (Linux; elsewhere the default): the gate then runs
    ahead of a busy worker instead of waiting on its pipe while another worker idles."""
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _work(
    policies: Policies,
    conn: Connection,
    results: Connection,
    open_out: Callable[[int], AnswerSink],
    index: int,
    reopen: Callable[[], RowReader] | None,
) -> None:
    """A worker's loop: settled events in, answers out, until ``None``; then the count."""
    try:
        if reopen is not None:
            policies.use_rows(reopen())
        out = open_out(index)
        answered = 0

        def write(answer: PointAnswer) -> None:
            nonlocal answered
            out.write(answer)
            answered += 1

        serial = SerialAnswers(policies, write)  # the same answers as in the gate's process
        try:
            while (batch := conn.recv()) is not None:
                for settled in batch:
                    serial.settled(*settled)
        finally:
            out.close()
        results.send(answered)
    finally:
        # An exception ends the process with exit code 1 and its traceback on stderr.
        conn.close()
        results.close()


__all__ = ["AnswerPool", "AnswerSink", "Settled"]
