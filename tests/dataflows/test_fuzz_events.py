"""Hostile input, fuzzed with hypothesis (strategies in tests/_hostile_events.py).

- The pure decoder, on all three formats: never raises; every hostile record becomes dead
  letters only, whose reason names the field it failed on; strange but valid events (emoji,
  right-to-left scripts, 128-character ids) decode unchanged.
- The real sessions dataflow (``bytewax.testing.run_main``, the file dead-letter sink) over
  valid events interleaved with hostile records, some of them in the same sessions: it
  finishes, the dead-letter file holds exactly the hostile records (each with its reason), and
  the session rows and the event log equal those of a run over the valid events alone.

Example counts are bounded so the module runs in seconds; ``benchmarks/fuzz_events.py`` runs
the same strategies over 100k inputs. The number of inputs tried is printed at the end.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dataflows.sessions import build_flow
from dataflows.sinks import DeadLetterSink
from featrec.core.events.formats import MAX_DEAD_LETTER_PAYLOAD, DeadLetter, RawRecord, decode
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event, event_from_mapping
from featrec.core.features.catalog import SESSION_FEATURES
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.settings import Settings
from featrec.testing.hostile import (
    Hostile,
    expected_ids,
    hostile_records,
    odd_valid_events,
)

NOW = time.time()
#: Valid events of the flow runs: generated sessions, plus strange but valid ones.
VALID = list(generate(GeneratorConfig(n_events=400, seed=11, concurrent_sessions=20)))
SESSIONS = sorted({e.session_id for e in VALID})
ODD_VALID = [
    {"event_id": "😀-1", "session_id": "😀", "item_id": "👍🏽", "type": "view", "ts": NOW - 60},
    {"event_id": "ar-1", "session_id": "مرحبا", "item_id": "שלום", "type": "cart", "ts": NOW},
    {
        "event_id": "x" * 128,
        "session_id": "y" * 128,
        "item_id": "数据",
        "type": "orders",
        "ts": 1.7e9,
    },
]

TRIED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_inputs_tried(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None and TRIED:
        counts = ", ".join(f"{n} {what}" for what, n in sorted(TRIED.items()))
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\ninputs tried: {counts}")


def assert_refused(hostile: Hostile, out: list[Event | DeadLetter]) -> None:
    """Only dead letters, at least one, each naming the expected field with a reason."""
    assert out, hostile
    for item in out:
        assert isinstance(item, DeadLetter), (hostile.kind, hostile.field, item)
        field, sep, reason = item.reason.partition(": ")
        assert (field, sep) == (hostile.field, ": ") and reason.strip(), (hostile, item.reason)
        assert item.origin == hostile.record.origin
        assert len(item.payload) <= MAX_DEAD_LETTER_PAYLOAD + 40


# -- the decoder -------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile=hostile_records(SESSIONS, NOW))
def test_every_hostile_record_is_a_dead_letter_naming_its_field(hostile: Hostile) -> None:
    TRIED["hostile records (decoder)"] += 1
    out = decode(hostile.record)
    assert_refused(hostile, out)
    assert len(out) == 1  # one record, one letter: nothing dropped, nothing doubled


@settings(max_examples=300, deadline=None)
@given(raw=odd_valid_events(NOW), as_text=st.booleans(), ascii_only=st.booleans())
def test_strange_but_valid_events_decode_unchanged(
    raw: dict[str, Any], as_text: bool, ascii_only: bool
) -> None:
    TRIED["odd valid events"] += 1
    payload = json.dumps(raw, ensure_ascii=ascii_only) if as_text else raw
    [event] = decode(RawRecord("featrec", "odd:1", payload, NOW))
    assert isinstance(event, Event), event
    ids = expected_ids(raw)
    assert (event.event_id, event.session_id, event.item_id, event.user_id) == (
        ids["event_id"],
        ids["session_id"],
        ids["item_id"],
        ids["user_id"],
    )
    assert event.category == (raw.get("category") or None)
    assert event_from_mapping(event.to_dict()) == event  # what we write reads back the same


#: Any text at all, lone surrogates and control characters included.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)


@settings(max_examples=300, deadline=None)
@given(fmt=st.sampled_from(["featrec", "otto", "session-rec", "unknown"]), text=any_text)
def test_any_text_in_any_format_never_raises(fmt: str, text: str) -> None:
    TRIED["arbitrary texts"] += 1
    for item in decode(RawRecord(fmt, "t:1", text, NOW)):
        if isinstance(item, DeadLetter):
            field, sep, reason = item.reason.partition(": ")
            assert field and sep and reason, item.reason
        else:
            assert event_from_mapping(item.to_dict()) == item


# -- the sessions dataflow ---------------------------------------------------------------------


def valid_records() -> list[RawRecord]:
    out = [
        RawRecord("featrec", f"valid:{i}", json.dumps(e.to_dict()), NOW)
        for i, e in enumerate(VALID)
    ]
    odd = [RawRecord("featrec", f"valid:odd{i}", raw, NOW) for i, raw in enumerate(ODD_VALID)]
    return out + odd


def run_sessions_flow(
    records: list[RawRecord], home: Path
) -> tuple[dict[str, FeatureRow], list[dict[str, str]], list[str]]:
    """Final session rows, the dead-letter file's records, and the event log's event ids."""
    store = InMemoryFeatureStore()
    logged: list[list[Event]] = []
    letters_file = home / "deadletters.jsonl"
    flow = build_flow(
        TestingSource(records, batch_size=64),
        Settings(home=home, batch_max_rows=32),
        writer_factory=lambda: store,
        dead_letter_sink=DeadLetterSink(file=letters_file),
        event_log_sink=TestingSink(logged),
    )
    run_main(flow)  # type: ignore[no-untyped-call]
    rows = {}
    for key in store.keys(SESSION_FEATURES.name):
        row = store.row(SESSION_FEATURES.name, key)
        assert row is not None
        rows[key] = row
    lines = letters_file.read_text("utf-8").splitlines() if letters_file.exists() else []
    return rows, [json.loads(line) for line in lines], [e.event_id for b in logged for e in b]


@cache
def valid_only_run() -> tuple[dict[str, tuple[object, int]], list[str], list[str]]:
    with tempfile.TemporaryDirectory() as home:
        rows, letters, logged = run_sessions_flow(valid_records(), Path(home))
    return (
        {k: (r.values, r.version) for k, r in rows.items()},
        [d["origin"] for d in letters],
        logged,
    )


@settings(
    max_examples=12,
    deadline=None,
    # no shrinking: each example is a whole dataflow run (seconds), and a failure's records
    # are few enough to read as they are
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    hostile=st.lists(hostile_records(SESSIONS, NOW), min_size=40, max_size=120),
    rng=st.randoms(use_true_random=False),
)
def test_the_sessions_flow_dead_letters_hostile_records_and_keeps_valid_features(
    hostile: list[Hostile], rng: random.Random
) -> None:
    TRIED["hostile records (dataflow)"] += len(hostile)
    expected_rows, baseline_letters, baseline_logged = valid_only_run()
    assert len(expected_rows) == len(SESSIONS) + len(ODD_VALID)
    hostile = [
        h._replace(record=replace(h.record, origin=f"hostile:{i}")) for i, h in enumerate(hostile)
    ]
    mixed: list[RawRecord] = valid_records()
    for h in hostile:
        mixed.insert(rng.randrange(len(mixed) + 1), h.record)
    with tempfile.TemporaryDirectory() as home:
        rows, letters, logged = run_sessions_flow(mixed, Path(home))

    assert {k: (r.values, r.version) for k, r in rows.items()} == expected_rows
    assert sorted(logged) == sorted(baseline_logged)
    hostile_letters = [d for d in letters if d["origin"].startswith("hostile:")]
    others = [d["origin"] for d in letters if not d["origin"].startswith("hostile:")]
    assert sorted(others) == sorted(baseline_letters)  # valid events: the same letters (late)
    by_origin = {d["origin"]: d for d in hostile_letters}
    assert len(by_origin) == len(hostile_letters) == len(hostile)  # one letter per record
    for h in hostile:
        letter = by_origin[h.record.origin]
        assert letter["reason"].startswith(f"{h.field}: "), (h.kind, letter["reason"])
        [alone] = decode(h.record)  # the bounded copy of the record the decoder keeps
        assert isinstance(alone, DeadLetter) and letter["payload"] == alone.payload
        assert letter["at"]
