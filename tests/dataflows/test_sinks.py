"""Sinks: the feature sink rides out a real Redis outage, status files, dead-letter files."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from dataflows.metrics import FlowStats, observe_many
from dataflows.sinks import DeadLetterSink, FeatureSink
from featrec.adapters.feast.writers import RedisLayoutWriter
from featrec.adapters.files.flow_status import read_status
from featrec.core.events.formats import DeadLetter
from featrec.core.events.model import event_from_mapping
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.sessions.fold import SessionPolicy, fold, new_state, session_row
from featrec.testing.redis_server import RedisServer


def rows(n: int, t0: float = 1_700_000_000.0) -> list[FeatureRow]:
    out = []
    for i in range(n):
        state = new_state(f"s{i}")
        event = event_from_mapping(
            {"event_id": f"e{i}", "session_id": f"s{i}", "item_id": "x", "type": "view",
             "ts": t0 + i}
        )  # fmt: skip
        fold(state, event, SessionPolicy())
        out.append(session_row(state, ingested_at=time.time()))
    return out


def test_feature_sink_retries_through_an_outage_and_loses_nothing(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        sink = FeatureSink(
            lambda: RedisLayoutWriter(
                redis.Redis.from_url(server.url), "featrec", owns_client=True
            ),
            max_backoff_s=0.1,
        )
        part = sink.build("write", 0, 1)
        batch = rows(30)
        part.write_batch([batch[:10]])
        before = REGISTRY.get_sample_value("featrec_store_retries_total") or 0.0
        server.stop()
        restart = threading.Timer(0.6, server.start)
        restart.start()
        part.write_batch([batch[10:20], batch[20:]])  # blocks, retrying, until Redis is back
        restart.join()
        retries = (REGISTRY.get_sample_value("featrec_store_retries_total") or 0.0) - before
        assert retries >= 1
        # Redis runs without persistence: only rows written after the restart are there,
        # and all of them are.
        assert server.client().dbsize() == 20
        part.close()
    finally:
        server.stop()


def test_feature_sink_coalesces_and_writes_status(tmp_path: Path) -> None:
    store = InMemoryFeatureStore()
    stats = FlowStats(events_in=7, dead_letters=2)
    sink = FeatureSink(lambda: store, stats=stats, status_home=tmp_path, flow_name="sessions")
    part1 = sink.build("write", 1, 2)
    part0 = sink.build("write", 0, 2)
    older, newer = rows(1), rows(1, t0=1_700_000_100.0)
    part1.write_batch([[older[0]], [newer[0]]])
    assert store.row("session_features", "s0") == newer[0]
    assert stats.rows_written == 1  # two rows for one key: only the newest is written
    part0.write_batch([rows(3)])
    part0.close()
    part1.close()
    # Only the process's lowest worker writes the (process-wide) status, so files add up.
    [status] = read_status(tmp_path)
    assert status["file"] == "sessions-w0.json"
    assert (status["events_in"], status["dead_letters"], status["rows_written"]) == (7, 2, 3)


def test_dead_letter_file_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dead.jsonl"
    sink = DeadLetterSink(file=path)
    a, b = sink.build("dl", 0, 2), sink.build("dl", 1, 2)
    a.write_batch([DeadLetter("f:1", "ts: missing", '{"x": 1}')])
    b.write_batch([DeadLetter("f:2", "json: invalid JSON", "{\udcff")])
    lines = [json.loads(line) for line in path.read_text(errors="surrogateescape").splitlines()]
    assert [(d["origin"], d["reason"]) for d in lines] == [
        ("f:1", "ts: missing"),
        ("f:2", "json: invalid JSON"),
    ]
    assert set(lines[0]) == {"origin", "reason", "payload", "at"}


def test_observe_many_counts_as_observe_does() -> None:
    """The sink's batched freshness samples land in the same buckets, count and sum as one
    ``observe`` per sample (bounds included: ``le`` is inclusive; NaN only in the sum)."""
    bounds = (0.005, 0.01, 0.05, 1.0)
    amounts = [0.0, 0.005, 0.0050001, 0.01, 0.2, 1.0, 3.5, 120.0, float("nan"), 0.003]
    per_value, batched = CollectorRegistry(), CollectorRegistry()
    one = Histogram("f_seconds", "x", buckets=bounds, registry=per_value)
    many = Histogram("f_seconds", "x", buckets=bounds, registry=batched)
    for amount in amounts:
        one.observe(amount)
    observe_many(many, amounts[:4])
    observe_many(many, [])
    observe_many(many, amounts[4:])

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for metric in registry.collect()
            for s in metric.samples
            if not s.name.endswith("_created")
        }

    got, want = samples(batched), samples(per_value)
    assert got.keys() == want.keys() and len(got) == len(bounds) + 1 + 2
    for k, v in want.items():
        assert (got[k] == v) or (math.isnan(got[k]) and math.isnan(v)), k
