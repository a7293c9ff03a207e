"""decode_records (native batch decode) against decode() per record: same events, same dead
letters with the same reasons, in the same order, whatever the mix of good and bad records."""

from __future__ import annotations

import json
from typing import Any

from _lanes import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featrec.core.events.batch_decode import Arrival, decode_records
from featrec.core.events.formats import DeadLetter, RawRecord, decode
from featrec.core.events.generator import GeneratorConfig, generate
from featrec.core.events.model import Event
from featrec.testing.hostile import hostile_records, odd_valid_events, valid_mappings

NOW = 1_700_000_000.0
SESSIONS = ["s1", "s2", "s3"]


BASE: dict[str, Any] = {
    "event_id": "e",
    "session_id": "s",
    "item_id": "i",
    "type": "view",
    "ts": NOW,
}


def per_record(records: list[RawRecord]) -> list[Arrival | DeadLetter]:
    out: list[Arrival | DeadLetter] = []
    for r in records:
        for item in decode(r):
            out.append(Arrival(item, r.ingested_at, r.origin) if isinstance(item, Event) else item)
    return out


def line(raw: dict[str, Any], i: int, at: float = NOW) -> RawRecord:
    return RawRecord("featrec", f"f:{i}", json.dumps(raw), at)


def valid_lines(n: int) -> list[RawRecord]:
    events = generate(GeneratorConfig(n_events=n, seed=2, concurrent_sessions=20))
    return [line(e.to_dict(), i, e.ts.timestamp()) for i, e in enumerate(events)]


def test_one_bad_record_inside_a_batch_of_valid_ones_loses_only_itself() -> None:
    records = valid_lines(999)
    bad = line({**json.loads(str(records[0].payload)), "price": -3.0}, 10_000)
    broken = RawRecord("featrec", "f:broken", '{"event_id": "x", ', NOW)
    records[500:500] = [bad]
    records[700:700] = [broken]
    out = decode_records(records)
    letters = [x for x in out if isinstance(x, DeadLetter)]
    assert [d.origin for d in letters] == ["f:10000", "f:broken"]
    assert letters[0].reason.startswith("price: -3.0 is not a finite price")
    assert letters[1].reason.startswith("json: invalid JSON")
    assert sum(isinstance(x, Arrival) for x in out) == 999
    assert out == per_record(records)


def test_every_format_and_shape_decodes_as_per_record() -> None:
    records = valid_lines(50)
    records += [
        RawRecord("otto", "o:1", json.dumps({"session": 7, "events": [
            {"aid": 1, "ts": NOW * 1000, "type": "clicks"}, {"aid": 2, "ts": "x", "type": "carts"}
        ]}), NOW),
        RawRecord("session-rec", "r:1", "5\t9\t1700000000", NOW),
        RawRecord("featrec", "m:1", {"event_id": "e", "session_id": "s", "item_id": 1,
                                      "type": "VIEW", "ts": NOW}, NOW),
        line({**BASE, "event_id": 5, "type": "orders", "ts": "2024-01-01 00:00"}, 1),
        line({**BASE, "session_id": " s"}, 2),
        line({**BASE, "ts": NOW + 1e6}, 3),
        RawRecord("featrec", "nl:1", json.dumps(BASE, indent=1), NOW),
        RawRecord("featrec", "two:1", '{"a": 1}\n{"b": 2}', NOW),
        RawRecord("featrec", "empty:1", "", NOW),
    ]  # fmt: skip
    records += valid_lines(50)
    assert decode_records(records) == per_record(records)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.lists(
        st.one_of(
            hostile_records(SESSIONS, NOW).map(lambda h: h.record),
            valid_mappings(SESSIONS, NOW).map(
                lambda m: RawRecord("featrec", "v", json.dumps(m), NOW)
            ),
            odd_valid_events(NOW).map(lambda m: RawRecord("featrec", "o", json.dumps(m), NOW)),
        ),
        max_size=30,
    )
)
def test_any_mix_decodes_as_per_record(batch: list[RawRecord]) -> None:
    assert decode_records(batch) == per_record(batch)
