"""The collector's check: the sessions flow's decoder decides, forgotten users are refused,
a request is all or nothing, and the bus sees only whole accepted requests."""

from __future__ import annotations

import json
from collections.abc import Sequence

from featrec.app.collector import FORGOTTEN_REASON, Collector, check_events, field_of
from featrec.core.events.batch_decode import Arrival, decode_records
from featrec.core.events.formats import RawRecord
from featrec.core.events.mapping import parse_mapping
from featrec.core.privacy import DenyList, DenySet, new_salt

NOW = 1_800_000_000.0


def text(n: int, **over: object) -> str:
    event = {"event_id": f"e{n}", "session_id": "s", "item_id": "i", "type": "view", "ts": NOW}
    event.update(over)
    return json.dumps({k: v for k, v in event.items() if v is not None})


class ListBus:
    name = "list"

    def __init__(self) -> None:
        self.appended: list[tuple[float, list[str]]] = []

    def append(self, received_at: float, events: Sequence[str]) -> None:
        self.appended.append((received_at, list(events)))


def test_field_of_reads_the_field_a_reason_names() -> None:
    assert field_of("price: -3.0 is not a finite price") == "price"
    assert field_of("user_id: must be printable") == "user_id"
    assert field_of("nothing to point at") == "event"
    assert field_of("a b: c") == "event"


def test_the_check_refuses_what_the_flow_would_dead_letter() -> None:
    texts = [text(0), text(1, price=-1.0), text(2, ts=NOW + 3600), "[1, 2]", text(4, type=None)]
    checked = check_events(texts, NOW)
    assert checked.accepted == ()
    assert [r.index for r in checked.refused] == [1, 2, 3, 4]
    flow = decode_records([RawRecord("featrec", str(i), t, NOW) for i, t in enumerate(texts)])
    refused_by_flow = [int(d.origin) for d in flow if not isinstance(d, Arrival)]
    assert refused_by_flow == [r.index for r in checked.refused]
    assert [r.field for r in checked.refused] == ["price", "ts", "event", "type"]


def test_forgotten_users_and_sessions_are_refused() -> None:
    deny = DenySet((DenyList(new_salt()).add("gone", ["gone-session"]),))
    checked = check_events([text(0, user_id="gone"), text(1, session_id="gone-session")], NOW, deny)
    assert [(r.index, r.field, r.reason) for r in checked.refused] == [
        (0, "user_id", FORGOTTEN_REASON),
        (1, "session_id", FORGOTTEN_REASON),
    ]
    assert checked.forgotten == 2


def test_only_whole_accepted_requests_reach_the_bus() -> None:
    bus = ListBus()
    collector = Collector(bus)
    assert collector.collect([text(0), text(1)], NOW).refused == ()
    assert collector.collect([text(2), text(3, price="free")], NOW).accepted == ()
    assert bus.appended == [(NOW, [text(0), text(1)])]


TRACKER = parse_mapping(
    {
        "fields": {"session_id": "ctx.sid", "item_id": "sku", "type": "name", "user_id": "uid"},
        "ts": {"column": "at", "unit": "ms"},
        "types": {"addToCart": "cart"},
    }
)


def tracker(n: int, **over: object) -> str:
    row = {"ctx": {"sid": "s"}, "sku": f"p{n}", "name": "addToCart", "at": NOW * 1000 + n}
    row.update(over)
    return json.dumps(row)


def test_a_mapping_turns_the_shops_schema_into_featrec_events() -> None:
    checked = check_events([tracker(0), tracker(1, name="pageView")], NOW, mapping=TRACKER)
    assert checked.refused == ()
    events = [json.loads(t) for t in checked.accepted]
    assert [(e["session_id"], e["item_id"], e["type"]) for e in events] == [
        ("s", "p0", "cart"),
        ("s", "p1", "pageview"),
    ]
    # What is appended is what the flows read: featrec's own schema, decoded unchanged.
    flow = decode_records(
        [RawRecord("featrec", str(i), t, NOW) for i, t in enumerate(checked.accepted)]
    )
    assert all(isinstance(d, Arrival) for d in flow)
    assert events[0]["ts"] == "2027-01-15T08:00:00+00:00"


def test_records_that_do_not_map_are_refused_with_the_field() -> None:
    texts = [tracker(0), tracker(1, at="yesterday"), json.dumps({"sku": "p"}), "[1]"]
    checked = check_events(texts, NOW, mapping=TRACKER)
    assert checked.accepted == ()
    assert [(r.index, r.field) for r in checked.refused] == [
        (1, "ts"),
        (2, "session_id"),
        (3, "record"),
    ]
    assert "ctx.sid" in checked.refused[1].reason


def test_a_mapped_event_of_a_forgotten_user_is_refused() -> None:
    deny = DenySet((DenyList(new_salt()).add("gone", []),))
    checked = check_events([tracker(0, uid="gone")], NOW, deny, TRACKER)
    assert [(r.field, r.reason) for r in checked.refused] == [("user_id", FORGOTTEN_REASON)]
