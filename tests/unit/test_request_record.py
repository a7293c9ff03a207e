"""The request-log record (:mod:`featrec.app.serving.record`): it round-trips through the stored
JSON bit for bit, reads the entries featrec wrote before it existed (and those still explain),
and refuses an unknown or malformed entry with a message naming the field.

``tests/data/request_log_6fb2625.json`` holds entries as featrec wrote them at commit 6fb2625,
before the typed record: the SQLite log's ``requests.entry`` and ``feature_rows.row`` JSON of
five requests on :mod:`featrec.testing.shop` (candidate order, degraded fallback, an explicit
``shown``, :func:`~featrec.testing.shop.toy_model`, an experiment arm), answered at ``NOW_S``.
(tests/contract/test_request_log.py reads the same entries from a SQLite file.)
"""

from __future__ import annotations

import copy
import json
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from featrec.app.evaluation.ab_report import logged_request
from featrec.app.serving.recommender import Recommender
from featrec.app.serving.record import LOG_SCHEMA, READ_SCHEMAS, ArmAssignment, ServedRequest
from featrec.core.candidates.model import DETAILS, SOURCES, Candidate
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import (
    InMemoryRequestLog,
    InMemoryRows,
    LoggedRow,
    RequestRecord,
    StampedRow,
)
from featrec.core.ranking.rerank import Decision, RerankConfig
from featrec.errors import ConfigError
from featrec.testing.shop import NOW_S, toy_model, world_rows

OLD_LOG = Path(__file__).parents[1] / "data" / "request_log_6fb2625.json"

# -- round trip ---------------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=8)
finite = st.floats(allow_nan=False, allow_infinity=False)
numbers = st.one_of(finite, st.integers(-(2**53), 2**53))
candidates = st.builds(
    Candidate,
    item_id=ids,
    sources=st.lists(st.sampled_from(SOURCES), max_size=3, unique=True).map(tuple),
    scores=st.dictionaries(st.sampled_from(SOURCES), finite, max_size=3),
    details=st.dictionaries(st.sampled_from(DETAILS), finite, max_size=3),
)
decisions = st.builds(
    Decision,
    item_id=ids,
    score=finite,
    rank=st.none() | st.integers(1, 100),
    kept=st.booleans(),
    reasons=st.lists(st.text(max_size=20), max_size=2).map(tuple),
    raw_score=finite,
)
stamped = st.builds(
    StampedRow,
    values=st.dictionaries(
        st.text(max_size=8), st.none() | finite | st.text(max_size=8) | st.lists(ids, max_size=3)
    ),
    ts_us=st.integers(0, 2**62),
)
served = st.builds(
    ServedRequest,
    request_id=ids,
    created_at_s=finite,
    session_id=ids,
    user_id=st.none() | ids,
    k=st.integers(1, 100),
    shown=st.none() | st.lists(ids, max_size=3).map(tuple),
    shown_before=st.none() | st.lists(ids, max_size=3).map(tuple),
    now_s=numbers,
    degraded_reason=st.none() | st.text(max_size=20),
    degraded_code=st.none() | st.text(max_size=20),
    notes=st.lists(st.text(max_size=20), max_size=2).map(tuple),
    scorer=st.sampled_from(["model", "candidate-order", "fallback"]),
    model_version=st.none() | ids,
    session_version=st.none() | st.integers(0, 2**62),
    session_used=st.booleans(),
    rerank=st.builds(
        RerankConfig,
        drop_purchased=st.booleans(),
        max_per_category=st.none() | st.integers(1, 10),
        popularity_damping=st.floats(0, 0.99),
        stability_window=st.integers(0, 5),
        stability_margin=st.floats(0, 10),
    ),
    candidates=st.lists(candidates, max_size=4).map(tuple),
    raw_scores=st.lists(finite, max_size=4).map(tuple),
    decisions=st.lists(decisions, max_size=4).map(tuple),
    experiment=st.none() | st.builds(ArmAssignment, ids, ids, ids, ids, ids),
    rows=st.lists(st.builds(LoggedRow, ids, ids, st.none() | stamped), max_size=3).map(tuple),
)


def stored(record: RequestRecord) -> RequestRecord:
    """The record as a request log reads it back: its body through JSON (as the adapters
    store it)."""
    body = orjson.loads(orjson.dumps(record.body))
    return RequestRecord(record.request_id, record.created_at_s, body, record.rows)


def bits(values: tuple[float, ...]) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]


@given(served)
def test_a_record_round_trips_through_the_stored_json(record: ServedRequest) -> None:
    back = ServedRequest.from_record(stored(record.to_record()))
    assert back == record
    assert bits(back.raw_scores) == bits(record.raw_scores)  # -0.0 and all: bit for bit
    assert [bits((d.score, d.raw_score)) for d in back.decisions] == [
        bits((d.score, d.raw_score)) for d in record.decisions
    ]


def test_the_recommender_logs_a_record_that_reads_back_equal() -> None:
    store = InMemoryFeatureStore()
    store.write(world_rows())
    log = InMemoryRequestLog()
    recommender = Recommender(InMemoryRows(store), log, model=toy_model(), clock=lambda: NOW_S)
    answer = recommender.recommend("s1", "u1", k=5)
    logged = log.get(answer.request_id)
    assert logged is not None
    record = ServedRequest.from_record(stored(logged))
    assert record.recommended == tuple(item.item_id for item in answer.items)
    assert (record.scorer, record.model_version) == ("model", "m-test")
    assert ServedRequest.from_record(stored(record.to_record())) == record
    # each logged row says what its key names (forgetting deletes the user's rows by it)
    entities = {(row.view, row.entity) for row in logged.rows}
    assert entities == {
        ("session_features", "session"),
        ("user_features", "user"),
        ("item_features", "item"),
        ("item_trending", "item"),
    }


# -- entries written before the typed record ----------------------------------------------------


def old_log() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(OLD_LOG.read_text())
    return data


def old_log_records() -> InMemoryRequestLog:
    """The captured entries with their feature rows, as a request log returns them."""
    data = old_log()
    log = InMemoryRequestLog()
    for entry in data["entries"]:
        rows = []
        for view, key, ref in entry["rows"]:
            row = None if ref is None else data["feature_rows"][ref]
            stamped = None if row is None else StampedRow(row["values"], row["ts_us"])
            rows.append(LoggedRow(view, key, stamped))
        log.append(RequestRecord(entry["request_id"], entry["created_at_s"], entry["body"], rows))
    return log


def test_old_entries_read_back_and_write_the_same_json() -> None:
    for entry in old_log()["entries"]:
        old = RequestRecord(entry["request_id"], entry["created_at_s"], entry["body"], [])
        record = ServedRequest.from_record(old)
        assert record.body_v1() == entry["body"]  # schema 1's shape, key for key


def test_schema_2_columns_read_back_as_the_same_record() -> None:
    for entry in old_log()["entries"]:
        old = RequestRecord(entry["request_id"], entry["created_at_s"], entry["body"], [])
        record = ServedRequest.from_record(old)
        stored = orjson.loads(orjson.dumps(record.to_record().body))
        assert stored["schema"] == LOG_SCHEMA == 2
        assert isinstance(stored["candidates"], dict) and isinstance(stored["decisions"], dict)
        back = ServedRequest.from_record(RequestRecord(record.request_id, 1.0, stored, []))
        assert back == replace(record, created_at_s=1.0)
        assert [c.sources for c in back.candidates] == [c.sources for c in record.candidates]
        assert back.body_v1() == entry["body"]


def test_sources_out_of_order_are_written_in_schema_1() -> None:
    entry = old_log()["entries"][0]
    record = ServedRequest.from_record(RequestRecord("r", 1.0, entry["body"], []))
    first = record.candidates[0]
    odd = Candidate(first.item_id, ("popular", "covisit"), {"popular": 1.0, "covisit": 2.0})
    record = replace(record, candidates=(odd, *record.candidates[1:]))
    body = record.to_record().body
    assert body["schema"] == 1
    assert ServedRequest.from_record(RequestRecord("r", 1.0, body, [])).candidates[0] == odd


@pytest.mark.parametrize("sources", [["covisit", "popular"], ("covisit", "nowhere")])
def test_sources_not_a_known_tuple_are_written_in_schema_1(sources: Any) -> None:
    entry = old_log()["entries"][0]
    record = ServedRequest.from_record(RequestRecord("r", 1.0, entry["body"], []))
    odd = Candidate(record.candidates[0].item_id, sources, {"covisit": 2.0})
    record = replace(record, candidates=(odd, *record.candidates[1:]))
    body = record.to_record().body
    assert body["schema"] == 1
    assert body["candidates"][0]["sources"] == list(sources)


def test_malformed_schema_2_columns_are_refused_naming_the_field() -> None:
    entry = old_log()["entries"][0]
    record = ServedRequest.from_record(RequestRecord("r", 1.0, entry["body"], []))
    for change, message in [
        (lambda b: b["decisions"]["ranks"].pop(), r"decisions.ranks should be \d+ values"),
        (lambda b: b["candidates"]["sources"].__setitem__(0, 999), r"sources\[0\] should be"),
        (lambda b: b["candidates"]["scores"].__setitem__("psychic", []), "scores should be"),
        (lambda b: b["decisions"]["kept"].__setitem__(1, 1), r"decisions.kept\[1\] should be"),
    ]:
        body = orjson.loads(orjson.dumps(record.to_record().body))
        change(body)
        with pytest.raises(ConfigError, match=message):
            ServedRequest.from_record(RequestRecord("r1", 1.0, body, []))


@pytest.mark.parametrize("name", ["order", "fallback", "shown", "model", "experiment"])
def test_an_old_entry_still_explains_bit_for_bit(name: str) -> None:
    log = old_log_records()
    store = InMemoryFeatureStore()
    store.write(world_rows())
    recommender = Recommender(InMemoryRows(store), log, model=toy_model(), clock=lambda: NOW_S)
    request_id = old_log()["requests"][name]
    explanation = recommender.explain(request_id)
    assert explanation.reproduced, explanation.mismatches
    assert explanation.kept and all(i.reasons for i in explanation.items)
    if name == "model":
        assert explanation.model_version == "m-test"
    if name == "experiment":
        assert (explanation.experiment, explanation.arm) == ("order-vs-popularity", "control")


def test_an_old_experiment_entry_reads_in_the_ab_analysis() -> None:
    records = old_log_records()._records.values()
    requests = [r for r in map(logged_request, records) if r is not None]
    assert [r.request_id for r in requests] == [old_log()["requests"]["experiment"]]
    [request] = requests
    assert (request.experiment, request.arm, request.control) == (
        "order-vs-popularity",
        "control",
        "control",
    )
    assert request.unit.startswith("user:") and len(request.items) == 5 and not request.degraded


def test_an_entry_logged_before_experiments_has_no_arm() -> None:
    entry = old_log()["entries"][0]
    body = {k: v for k, v in entry["body"].items() if k != "experiment"}
    record = ServedRequest.from_record(RequestRecord("r", 1.0, body, []))
    assert record.experiment is None and record.k == 5
    assert logged_request(RequestRecord("r", 1.0, body, [])) is None


# -- unknown and malformed entries --------------------------------------------------------------


def old_body() -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(old_log()["entries"][0]["body"])
    return body


def broken(change: str) -> dict[str, Any]:
    body = old_body()
    if change == "schema 3":
        body["schema"] = 3
    elif change == "no schema":
        del body["schema"]
    elif change == "no k":
        del body["k"]
    elif change == "k text":
        body["k"] = "5"
    elif change == "score text":
        body["raw_scores"][1] = "0.5"
    elif change == "bad source":
        body["candidates"][1]["sources"] = ["psychic"]
    elif change == "rank text":
        body["decisions"][0]["rank"] = "1"
    elif change == "unknown setting":
        body["rerank"]["shuffle"] = True
    elif change == "bad setting":
        body["rerank"]["popularity_damping"] = 2.0
    elif change == "arm without unit":
        body["experiment"] = {"name": "e", "arm": "a", "control": "a", "unit": "user"}
    elif change == "candidates not a list":
        body["candidates"] = {"a1": 1}
    return body


@pytest.mark.parametrize(
    "change, message",
    [
        ("schema 3", "request 'r1' was logged with schema 3; this featrec reads schemas 1, 2"),
        ("no schema", "request 'r1' was logged with schema None; this featrec reads schemas 1"),
        (
            "no k",
            r"request 'r1': malformed request-log entry: k should be an integer, got "
            r"nothing \(the field is missing\)",
        ),
        ("k text", "k should be an integer, got '5'"),
        ("score text", "raw_scores should be a list of numbers"),
        ("bad source", r"candidates\[1\] should be a candidate \(candidate 'a2': sources must"),
        ("rank text", r"decisions\[0\].rank should be an integer or null, got '1'"),
        ("unknown setting", r"rerank should be post-processing settings, got \"unknown setting"),
        ("bad setting", "rerank should be valid post-processing settings .*popularity_damping"),
        ("arm without unit", "experiment.unit_id should be a string, got nothing"),
        ("candidates not a list", "candidates should be a list of candidates"),
    ],
)
def test_an_unknown_or_malformed_entry_is_refused_naming_the_field(
    change: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ServedRequest.from_record(RequestRecord("r1", 1.0, broken(change), []))


def test_explain_and_the_ab_analysis_refuse_a_malformed_entry() -> None:
    store = InMemoryFeatureStore()
    store.write(world_rows())
    log = InMemoryRequestLog()
    recommender = Recommender(InMemoryRows(store), log, clock=lambda: NOW_S)
    log.append(RequestRecord("r1", 1.0, broken("score text"), []))
    with pytest.raises(ConfigError, match=r"request 'r1': malformed .* raw_scores"):
        recommender.explain("r1")
    with pytest.raises(ConfigError, match="request 'r1' was logged with schema 3"):
        logged_request(RequestRecord("r1", 1.0, broken("schema 3"), []))
    # A new schema must keep reading the older ones (see the module docstring).
    assert LOG_SCHEMA == 2 and READ_SCHEMAS == (1, 2)


def test_the_stored_shape_is_a_plain_json_object() -> None:
    body = ServedRequest.from_record(RequestRecord("r1", 1.0, old_body(), [])).to_record().body
    assert json.loads(json.dumps(body)) == body
