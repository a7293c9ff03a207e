"""The replay evaluation's flow: the production sessions dataflow, fed one event at a time.

``featrec evaluate`` prepares a work directory (online store with the training cutoff's item
signals and batch features, a trained model, the test events) and runs this module as its own
process::

    python -m bytewax.run "dataflows.evaluation:flow()"     # FEATREC_EVAL_DIR=<work dir>

:func:`flow` builds :func:`dataflows.sessions.build_flow` unchanged, with three wrappers:

- the source is a :class:`GatedSource`: it asks the
:class:`~featrec.app.evaluation.replay.ReplayGate`
  for the events it may send: an event only once its own session's previous event has
  settled, up to ``--concurrency`` sessions in flight at once;
- the writer is the configured online-store writer wrapped so that, after each successful
  write, the gate reads the session row back and asks every policy for the point;
- the dead-letter sink tells the gate that a refused event will produce no row.

Micro-batches flush at one row (``batch_max_rows=1``): a batch of one is what production does
at low traffic, and it is what lets each event be answered on its own.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflows.sessions import build_flow, open_online_writer
from dataflows.sinks import EventLogSink
from dataflows.sources import SourceItem
from featrec.app.evaluation.replay import ReplayGate
from featrec.core.events.formats import DeadLetter, RawRecord
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import FeatureWriter
from featrec.errors import ConfigError
from featrec.settings import FlowSettings, Settings

ENV_DIR = FlowSettings.variable("eval_dir")
#: How long the source sleeps between polls while an event is in flight.
POLL = timedelta(microseconds=200)


class GatedSource(DynamicSource[SourceItem]):
    """One worker's events, released by the gate one at a time."""

    def __init__(self, gate: ReplayGate) -> None:
        self.gate = gate

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _GatedPartition:
        if worker_count != 1:
            raise ConfigError("the replay evaluation runs on exactly one worker")
        return _GatedPartition(self.gate)


class _GatedPartition(StatelessSourcePartition[SourceItem]):
    def __init__(self, gate: ReplayGate) -> None:
        self.gate = gate
        self._waiting = False

    def next_batch(self) -> list[SourceItem]:
        events = self.gate.release_batch()
        if events is None:
            raise StopIteration
        if not events:
            self._waiting = True
            return []
        self._waiting = False
        now = time.time()
        return [RawRecord("featrec", "replay", event.to_dict(), now) for event in events]

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + POLL if self._waiting else None


class GatedWriter:
    """The online-store writer, reporting each successful write to the gate."""

    def __init__(self, inner: FeatureWriter, gate: ReplayGate) -> None:
        self.inner = inner
        self.gate = gate

    def write(self, rows: Sequence[FeatureRow]) -> int:
        n = self.inner.write(rows)
        self.gate.rows_written(rows)
        return n

    def close(self) -> None:
        self.inner.close()


class GateDeadLetters(DynamicSink[DeadLetter]):
    """Keeps the dead letters (a list the caller reads) and releases the gate."""

    def __init__(self, gate: ReplayGate, kept: list[DeadLetter]) -> None:
        self.gate = gate
        self.kept = kept

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _GateDeadLetterPartition:
        return _GateDeadLetterPartition(self)


class _GateDeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, sink: GateDeadLetters) -> None:
        self.sink = sink

    def write_batch(self, items: list[DeadLetter]) -> None:
        self.sink.kept.extend(items)
        self.sink.gate.dead_lettered(len(items), [_session_of(d) for d in items])


def _session_of(letter: DeadLetter) -> str | None:
    """The session id in a refused replay event's payload (the gate's own JSON)."""
    try:
        payload = json.loads(letter.payload)
    except (TypeError, ValueError):
        return None
    session = payload.get("session_id") if isinstance(payload, dict) else None
    return session if isinstance(session, str) else None


def replay_flow(
    gate: ReplayGate, settings: Settings, dead_letters: list[DeadLetter], event_log: Path
) -> Dataflow:
    """The sessions flow of ``settings`` around ``gate`` (see the module doc)."""

    def writer() -> FeatureWriter:
        return GatedWriter(open_online_writer(settings), gate)

    return build_flow(
        GatedSource(gate),
        settings,
        writer_factory=writer,
        dead_letter_sink=GateDeadLetters(gate, dead_letters),
        event_log_sink=EventLogSink(event_log),
        shards=1,
    )


def flow() -> Dataflow:
    """Factory for ``python -m bytewax.run``: the replay of the work dir in ``FEATREC_EVAL_DIR``.

    Feast is imported without typeguard's instrumentation
    (:func:`~featrec.adapters.feast.repo.import_feast_unchecked`): the replay's start-up counts
    in its events/s."""
    from featrec.adapters.feast.repo import import_feast_unchecked
    from featrec.jobs.evaluation import open_replay

    import_feast_unchecked()
    work_dir = FlowSettings.from_env(os.environ).eval_dir
    if work_dir is None:
        raise ConfigError(f"set {ENV_DIR} to the work directory `featrec evaluate` prepared")
    replay = open_replay(work_dir)
    return replay_flow(replay.gate, replay.settings, replay.dead_letters, replay.work.test_log_dir)


__all__ = ["GateDeadLetters", "GatedSource", "GatedWriter", "flow", "replay_flow"]
