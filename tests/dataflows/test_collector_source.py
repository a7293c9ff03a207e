"""The collector log as a bytewax source: complete lines only, the receive time as
``ingested_at``, and resumption at the snapshot's byte offset (what recovery restores)."""

from __future__ import annotations

import json
from pathlib import Path

from bytewax.testing import TestingSink, run_main

from dataflows.sources import CollectorLogSource
from featrec.adapters.files.collector_log import CollectorLog
from featrec.core.events.formats import RawRecord


def _event(n: int) -> str:
    return json.dumps(
        {"event_id": f"e{n}", "session_id": "s", "item_id": "i", "type": "view", "ts": 1.7e9 + n}
    )


def test_lines_come_with_their_receive_time_and_resume_at_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    source = CollectorLogSource(path, batch_size=2)
    part = source.build_part("input", str(path), None)
    assert part.next_batch() == []  # no log yet: nothing, and a wake-up later
    assert part.next_awake() is not None
    log = CollectorLog(path)
    log.append(1700000001.5, [_event(0), _event(1), _event(2)])
    first = part.next_batch()
    assert [(r.payload, r.ingested_at) for r in first] == [
        (_event(0), 1700000001.5),
        (_event(1), 1700000001.5),
    ]
    assert all(isinstance(r, RawRecord) and r.fmt == "featrec" for r in first)
    offset = part.snapshot()
    with open(path, "ab") as f:  # a writer caught mid-line: not emitted until complete
        f.write(b'1700000002.0\t{"event_id":')
    resumed = source.build_part("input", str(path), offset)
    assert [r.payload for r in resumed.next_batch()] == [_event(2)]
    assert resumed.next_batch() == []
    log.close()


def test_a_flow_reads_the_log_through_the_source(tmp_path: Path) -> None:
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow

    path = tmp_path / "events.jsonl"
    log = CollectorLog(path)
    log.append(1700000001.0, [_event(n) for n in range(5)])
    log.close()

    class Finite(CollectorLogSource):
        """Stops once the log is read (the real source tails forever)."""

        def build_part(self, step_id, for_part, resume_state):  # type: ignore[no-untyped-def]
            inner = super().build_part(step_id, for_part, resume_state)
            original = inner.next_batch

            def next_batch() -> list[object]:
                batch = original()
                if not batch:
                    raise StopIteration
                return batch

            inner.next_batch = next_batch  # type: ignore[method-assign]
            return inner

    out: list[object] = []
    flow = Dataflow("collector_log")
    records = op.input("input", flow, Finite(path, batch_size=2))
    op.output("out", op.map("payload", records, lambda r: r.payload), TestingSink(out))
    run_main(flow)
    assert out == [_event(n) for n in range(5)]
