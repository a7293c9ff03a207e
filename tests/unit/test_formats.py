"""Decoding raw records: featrec JSON, OTTO lines, session-rec TSV, and dead letters.

OTTO and session-rec cases use the real files in ../shared/data, checked against an
independent parse written here.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from _lanes import examples
from conftest import shared_file
from hypothesis import given, settings
from hypothesis import strategies as st

from featrec.core.events.formats import MAX_DEAD_LETTER_PAYLOAD, DeadLetter, RawRecord, decode
from featrec.core.events.model import Event

RSC15_TRAIN = shared_file("rsc15-100k", "yoochoose-clicks-100k_train_tr.txt")

FEATREC_LINE = json.dumps(
    {
        "event_id": "e1",
        "session_id": "s1",
        "user_id": "u1",
        "item_id": "i9",
        "type": "orders",
        "ts": "2024-05-01T10:00:00Z",
        "price": 12.5,
        "category": "hats",
        "quantity": 2,
    }
)


def one(fmt: str, payload: str | dict[str, Any], origin: str = "test:1") -> Event | DeadLetter:
    out = decode(RawRecord(fmt, origin, payload))
    assert len(out) == 1
    return out[0]


def dead(fmt: str, payload: str | dict[str, Any], origin: str = "test:1") -> DeadLetter:
    out = one(fmt, payload, origin)
    assert isinstance(out, DeadLetter), out
    assert out.origin == origin
    return out


# -- featrec ----------------------------------------------------------------------------------


def test_featrec_json_line() -> None:
    assert one("featrec", FEATREC_LINE) == Event(
        event_id="e1",
        session_id="s1",
        user_id="u1",
        item_id="i9",
        type="purchase",
        ts=datetime(2024, 5, 1, 10, tzinfo=UTC),
        price=12.5,
        category="hats",
        quantity=2,
    )


def test_featrec_mapping_payload_equals_the_line() -> None:
    assert one("featrec", json.loads(FEATREC_LINE)) == one("featrec", FEATREC_LINE)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ('{"event_id": "e1", ', "json: invalid JSON"),
        ("not json at all", "json: invalid JSON"),
        ("", "json: invalid JSON"),
        ("[1, 2]", "event: expected a JSON object, got list"),
        ("null", "event: expected a JSON object, got NoneType"),
        ('"text"', "event: expected a JSON object, got str"),
        ('{"event_id": "e1"}', "session_id: missing"),
        (FEATREC_LINE.replace("12.5", "NaN"), "price: nan is not a finite price"),
        (FEATREC_LINE.replace("12.5", "-1"), "price: -1.0 is not a finite price"),
        (FEATREC_LINE.replace('"quantity": 2', '"quantity": 0'), "quantity: 0 is not in [1, "),
        (FEATREC_LINE.replace("2024-05-01T10:00:00Z", "1999-01-01"), "ts: 1999-01-01T00:00"),
        (FEATREC_LINE.replace('"hats"', '"hats\\u0000"'), "category: contains control"),
        (FEATREC_LINE.replace('"user_id"', '"userid"'), "userid: unknown field"),
        (FEATREC_LINE.replace("12.5", "1" * 5000), "json: invalid JSON"),  # int digit limit
        ("[" * 10_000, "payload: nested too deeply"),
        ("[" * 100_000, "json: a line of 100000 characters (an event has at most 16384)"),
    ],
)
def test_featrec_dead_letters_name_the_problem(payload: str, reason: str) -> None:
    letter = dead("featrec", payload, origin="events.jsonl:17")
    assert letter.reason.startswith(reason), letter.reason
    assert letter.payload == payload[:MAX_DEAD_LETTER_PAYLOAD] + (
        f"...[truncated, {len(payload)} chars]" if len(payload) > MAX_DEAD_LETTER_PAYLOAD else ""
    )


def test_unknown_format_is_a_dead_letter() -> None:
    letter = dead("xml", "<event/>")
    assert letter.reason == "format: unknown format 'xml'"
    assert letter.to_dict() == {"origin": "test:1", "reason": letter.reason, "payload": "<event/>"}


# -- events from the future --------------------------------------------------------------------

INGESTED_AT = datetime(2024, 5, 1, 10, 0, tzinfo=UTC).timestamp()  # FEATREC_LINE's ts


@pytest.mark.parametrize("fmt", ["featrec", "session-rec", "otto"])
@pytest.mark.parametrize(
    "ahead_s, refused", [(-86_400.0, False), (0.0, False), (300.0, False), (300.001, True)]
)
def test_events_ahead_of_their_ingestion_by_more_than_the_skew_are_refused(
    fmt: str, ahead_s: float, refused: bool
) -> None:
    ts = INGESTED_AT + ahead_s
    otto_event = {"aid": 1, "ts": ts * 1000, "type": "clicks"}
    payload = {
        "featrec": json.dumps({**json.loads(FEATREC_LINE), "ts": ts}),
        "session-rec": f"3\t214716935\t{ts}",
        "otto": json.dumps({"session": 5, "events": [otto_event]}),
    }[fmt]
    [out] = decode(RawRecord(fmt, "f:1", payload, INGESTED_AT))
    if not refused:
        assert isinstance(out, Event) and out.ts.timestamp() == pytest.approx(ts)
        return
    assert isinstance(out, DeadLetter) and out.origin == "f:1"
    assert out.reason.startswith("ts: 2024-05-01T10:05:00.001") and out.reason.endswith(
        "is 300 s ahead of its ingestion time (2024-05-01T10:00:00+00:00); "
        "at most 300 s of clock skew is allowed"
    ), out.reason


def test_the_skew_is_checked_only_against_a_wall_clock_ingestion_time() -> None:
    """Records built without an ingestion time (0, or a placeholder before 2000) skip it."""
    far = json.dumps({**json.loads(FEATREC_LINE), "ts": "2099-01-01T00:00:00Z"})
    for unset in (0.0, 1.0, datetime(1999, 12, 31, tzinfo=UTC).timestamp()):
        assert isinstance(one_at(far, unset), Event)
    assert isinstance(one_at(far, datetime(2000, 1, 1, tzinfo=UTC).timestamp()), DeadLetter)


def test_the_skew_refuses_one_event_of_an_otto_session_and_keeps_the_others() -> None:
    line = json.dumps(
        {
            "session": 5,
            "events": [
                {"aid": 1, "ts": INGESTED_AT * 1000, "type": "clicks"},
                {"aid": 2, "ts": (INGESTED_AT + 3600) * 1000, "type": "clicks"},
                {"aid": 3, "ts": (INGESTED_AT + 60) * 1000, "type": "carts"},
            ],
        }
    )
    out = decode(RawRecord("otto", "o:1", line, INGESTED_AT))
    assert [type(o).__name__ for o in out] == ["Event", "DeadLetter", "Event"]
    assert isinstance(out[1], DeadLetter) and "3600 s ahead" in out[1].reason


def one_at(payload: str, ingested_at: float) -> Event | DeadLetter:
    [out] = decode(RawRecord("featrec", "f:1", payload, ingested_at))
    return out


# -- dead letter payloads ---------------------------------------------------------------------


def test_payload_up_to_the_limit_is_kept_whole() -> None:
    payload = "x" * MAX_DEAD_LETTER_PAYLOAD
    assert dead("featrec", payload).payload == payload


def test_longer_payload_is_truncated_and_says_so() -> None:
    payload = '{"event_id": "' + "x" * 10_000
    letter = dead("featrec", payload)
    assert letter.payload.startswith(payload[:MAX_DEAD_LETTER_PAYLOAD])
    assert letter.payload.endswith(f"...[truncated, {len(payload)} chars]")
    assert len(letter.payload) < MAX_DEAD_LETTER_PAYLOAD + 40


def test_mapping_payload_is_kept_as_json() -> None:
    letter = dead("featrec", {"event_id": "e1", "price": float("nan"), "ts": datetime(2024, 1, 1)})
    assert letter.reason == "session_id: missing"
    assert json.loads(letter.payload.replace("NaN", "null")) == {
        "event_id": "e1",
        "price": None,
        "ts": "2024-01-01 00:00:00",
    }


# -- OTTO -------------------------------------------------------------------------------------


def test_otto_sample_decodes_completely(otto_sample: Path) -> None:
    lines = otto_sample.read_text().splitlines()
    decoded = [
        out
        for n, line in enumerate(lines, 1)
        for out in decode(RawRecord("otto", f"{otto_sample.name}:{n}", line))
    ]
    assert all(isinstance(e, Event) for e in decoded)
    events = [e for e in decoded if isinstance(e, Event)]
    # The oracle: the same file parsed with nothing but json.
    raw = [
        (str(s["session"]), str(e["aid"]), e["type"], e["ts"])
        for s in map(json.loads, lines)
        for e in s["events"]
    ]
    assert len(events) == len(raw) == 862
    assert len({e.item_id for e in events}) == 510
    names = {"clicks": "click", "carts": "cart", "orders": "purchase"}
    for event, (session, aid, type_, ts_ms) in zip(events, raw, strict=True):
        assert (event.session_id, event.item_id, event.type) == (session, aid, names[type_])
        assert round(event.ts.timestamp() * 1000) == ts_ms
        assert event.ts.tzinfo is UTC
        assert event.user_id is event.price is event.category is event.quantity is None
    assert Counter(e.type for e in events) == Counter(names[r[2]] for r in raw)
    assert len({e.event_id for e in events}) == 862
    assert events[0] == Event(
        event_id="otto-0-0",
        session_id="0",
        item_id="1517085",
        type="click",
        ts=datetime(2022, 7, 31, 22, 0, 0, 25000, tzinfo=UTC),
    )


def test_otto_bad_event_is_a_dead_letter_and_the_others_survive() -> None:
    line = json.dumps(
        {
            "session": 5,
            "events": [
                {"aid": 1, "ts": 1659304800025, "type": "clicks"},
                {"aid": 2, "ts": "yesterday", "type": "clicks"},
                {"aid": 3, "ts": 1659304800999, "type": "no such type!"},
                "not an event",
                {"ts": 1659304801000, "type": "carts"},
                {"aid": 4, "ts": 1659304802000, "type": "orders"},
            ],
        }
    )
    out = decode(RawRecord("otto", "otto.jsonl:3", line))
    assert [type(o).__name__ for o in out] == [
        "Event",
        "DeadLetter",
        "DeadLetter",
        "DeadLetter",
        "DeadLetter",
        "Event",
    ]
    reasons = [o.reason for o in out if isinstance(o, DeadLetter)]
    assert reasons == [
        "ts: [1] must be unix milliseconds (event 1 of session 5)",
        "type: 'no such type!' is not a lower-case identifier (event 2 of session 5)",
        "events: [3] is not an object (event 3 of session 5)",
        "item_id: missing (event 4 of session 5)",
    ]
    assert all(
        o.origin == "otto.jsonl:3" and o.payload == line for o in out if isinstance(o, DeadLetter)
    )
    assert [o.item_id for o in out if isinstance(o, Event)] == ["1", "4"]
    assert [o.event_id for o in out if isinstance(o, Event)] == ["otto-5-0", "otto-5-5"]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ('{"session": 1, "events": [', "json: invalid JSON"),
        ("[]", "session: expected a JSON object"),
        ('{"events": []}', "session: missing or not an integer"),
        ('{"session": true, "events": []}', "session: missing or not an integer"),
        ('{"session": "", "events": []}', "session: missing or not an integer"),
        ('{"session": 1}', "events: missing or not a list"),
        ('{"session": 1, "events": {"aid": 1}}', "events: missing or not a list"),
    ],
)
def test_otto_malformed_lines(payload: str, reason: str) -> None:
    assert dead("otto", payload).reason.startswith(reason)


@pytest.mark.parametrize(
    ("ts", "reason"),
    [
        ("NaN", "ts: [0] must be finite"),
        ("true", "ts: [0] must be unix milliseconds"),
        ("1659304800", "ts: 1970-01-20"),  # seconds given where milliseconds are expected
        ("9" * 400, "ts: [0] must be finite"),  # beyond float range
    ],
)
def test_otto_bad_timestamps(ts: str, reason: str) -> None:
    line = '{"session": 7, "events": [{"aid": 1, "ts": TS, "type": "clicks"}]}'.replace("TS", ts)
    letter = dead("otto", line)
    assert letter.reason.startswith(reason), letter.reason
    assert letter.reason.endswith("(event 0 of session 7)")


def test_otto_empty_session_decodes_to_nothing() -> None:
    assert decode(RawRecord("otto", "o:1", '{"session": 1, "events": []}')) == []


# -- session-rec -------------------------------------------------------------------------------


def rsc15_head(n: int) -> list[str]:
    with RSC15_TRAIN.open() as f:
        return [next(f).rstrip("\n") for _ in range(n + 1)]


def test_session_rec_real_lines() -> None:
    header, *lines = rsc15_head(200)
    assert header.split("\t") == ["SessionId", "ItemId", "Time"]
    first = one("session-rec", lines[0], origin=f"{RSC15_TRAIN.name}:2")
    assert first == Event(
        event_id="rsc-3-2",
        session_id="3",
        item_id="214716935",
        type="click",
        ts=datetime(2014, 4, 2, 11, 17, 46, 940000, tzinfo=UTC),
    )
    for n, line in enumerate(lines, 2):
        event = one("session-rec", line, origin=f"{RSC15_TRAIN.name}:{n}")
        assert isinstance(event, Event)
        session, item, time = line.split("\t")
        assert (event.session_id, event.item_id, event.type) == (session, item, "click")
        assert event.ts == datetime.fromtimestamp(float(time), UTC)
        assert event.event_id == f"rsc-{session}-{n}"


def test_session_rec_mapping_payload() -> None:
    payload = {"SessionId": 3, "ItemId": 214716935, "Time": 1396437466.94}
    assert one("session-rec", payload, origin="x:2") == one(
        "session-rec", "3\t214716935\t1396437466.94", origin="x:2"
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("3\t214716935", "row: expected 3 tab-separated columns, got 2"),
        ("3\t214716935\t1396437466.94\textra", "row: expected 3 tab-separated columns, got 4"),
        ("3,214716935,1396437466.94", "row: expected 3 tab-separated columns, got 1"),
        ("SessionId\tItemId\tTime", "Time: 'Time' is not unix seconds"),
        ("3\t214716935\tsoon", "Time: 'soon' is not unix seconds"),
        ("3\t214716935\tnan", "ts: must be finite"),
        ("3\t214716935\t1396437466940", "ts: cannot parse"),  # milliseconds
        ("3\t214716935\t86400", "ts: 1970-01-02T00:00:00+00:00 is outside 2000..2100"),
        ("\t214716935\t1396437466.94", "SessionId: missing"),
        ("3\t \t1396437466.94", "ItemId: missing"),
        ("3\tab\x00c\t1396437466.94", "ItemId: not a printable id"),
    ],
)
def test_session_rec_dead_letters(line: str, reason: str) -> None:
    letter = dead("session-rec", line, origin="clicks.txt:9")
    assert letter.reason.startswith(reason), letter.reason
    assert letter.payload == line


# -- never raises -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["event_id", "session_id", "item_id", "type", "ts", "price", "quantity"]
            )
            | st.sampled_from(["session", "events", "aid", "user_id", "category"])
            # Not empty: a field named "" is refused as ": unknown field" (reported).
            | st.text(min_size=1, max_size=5),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


def check_outputs(out: list[Event | DeadLetter], origin: str) -> None:
    for o in out:
        assert isinstance(o, Event | DeadLetter)
        if isinstance(o, DeadLetter):
            assert o.origin == origin
            field, _, reason = o.reason.partition(": ")
            assert field and reason, o.reason
            assert len(o.payload) <= MAX_DEAD_LETTER_PAYLOAD + 40


@settings(max_examples=examples(300), deadline=None)
@given(fmt=st.sampled_from(["featrec", "otto", "session-rec"]), value=json_values)
def test_decode_never_raises_on_any_json(fmt: str, value: object) -> None:
    check_outputs(decode(RawRecord(fmt, "h:1", json.dumps(value))), "h:1")
    if isinstance(value, dict):
        check_outputs(decode(RawRecord(fmt, "h:1", value)), "h:1")


@settings(max_examples=examples(300), deadline=None)
@given(fmt=st.sampled_from(["featrec", "otto", "session-rec"]), text=st.text(max_size=60))
def test_decode_never_raises_on_any_text(fmt: str, text: str) -> None:
    check_outputs(decode(RawRecord(fmt, "h:2", text)), "h:2")


@settings(max_examples=examples(200), deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "session": st.integers() | st.text(max_size=3) | st.booleans(),
            "events": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "aid": st.integers() | st.text(max_size=3),
                        "ts": st.integers() | st.floats() | st.text(max_size=3),
                        "type": st.sampled_from(["clicks", "carts", "orders", "X", ""]),
                    },
                ),
                max_size=4,
            ),
        },
    )
)
def test_otto_decode_never_raises_and_accounts_for_every_event(value: dict[str, Any]) -> None:
    out = decode(RawRecord("otto", "o:1", json.dumps(value)))
    check_outputs(out, "o:1")
    events = value.get("events")
    session_ok = "session" in value and not isinstance(value["session"], bool)
    if session_ok and value["session"] != "" and isinstance(events, list):
        assert len(out) == len(events)  # one output per event: nothing silently dropped
