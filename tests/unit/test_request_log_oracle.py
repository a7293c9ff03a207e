"""The request log's writer writes the same bytes as before its fifth-pass changes: the body
(candidate and decision columns transposed in C, the rerank settings without ``asdict``) and
the stored entry (each row's ``[view, key, digest]`` encoded once per row object) against the
code they replaced, kept verbatim in ``tests/unit/request_log_reference.py``."""

from __future__ import annotations

from dataclasses import replace

import orjson
import request_log_reference as reference
from hypothesis import given, settings
from hypothesis import strategies as st
from test_request_record import candidates, decisions, served, stamped

from featrec.adapters.request_entries import RowDigests, entry_json
from featrec.app.serving.record import ServedRequest
from featrec.core.candidates.model import SOURCES, Candidate
from featrec.core.ports.serving import LoggedRow, RequestRecord, StampedRow
from featrec.core.ranking.rerank import RerankConfig

#: Candidates whose sources are in SOURCES order (schema 2) and, sometimes, not (schema 1).
ordered = candidates.map(lambda c: replace(c, sources=tuple(s for s in SOURCES if s in c.sources)))
many = served.flatmap(
    lambda r: st.tuples(
        st.lists(st.one_of(ordered, ordered, candidates), max_size=40).map(tuple),
        st.lists(decisions, max_size=40).map(tuple),
    ).map(lambda cd: replace(r, candidates=cd[0], decisions=cd[1]))
)


def dumps(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


@settings(max_examples=300)
@given(many)
def test_the_body_is_the_same_bytes_as_before(record: ServedRequest) -> None:
    body = record.to_record().body
    assert dumps(body) == dumps(reference.body(record))
    assert ServedRequest.from_record(replace(record.to_record(), body=orjson.loads(dumps(body))))


def test_column_order_is_the_order_names_first_appear() -> None:
    """Not SOURCES order: the first candidate's own order, then new names as they come."""
    record = ServedRequest.from_record(RequestRecord("r", 1.0, reference.body(_example()), []))
    body = record.to_record().body
    assert list(body["candidates"]["scores"]) == ["trending", "covisit", "session"]
    assert list(body["candidates"]["details"]) == ["covisit_anchors", "covisit_last"]
    assert dumps(body) == dumps(reference.body(record))


def _example() -> ServedRequest:
    return ServedRequest(
        request_id="r",
        created_at_s=1.0,
        session_id="s",
        user_id=None,
        k=2,
        shown=None,
        shown_before=None,
        now_s=2.0,
        degraded_reason=None,
        degraded_code=None,
        notes=(),
        scorer="model",
        model_version=None,
        session_version=None,
        session_used=True,
        rerank=RerankConfig(max_per_category=2),
        candidates=(
            Candidate("a", ("covisit", "trending"), {"trending": 1.0, "covisit": 2.0}),
            Candidate("b", ("session",), {"session": 0.5}, {"covisit_anchors": 1.0}),
            Candidate("c", ("covisit",), {"covisit": 0.25}, {"covisit_last": 0.1}),
        ),
        raw_scores=(0.1, 0.2, 0.3),
        decisions=(),
        experiment=None,
    )


@settings(max_examples=200)
@given(
    st.lists(
        st.builds(LoggedRow, st.sampled_from(["v", "w"]), st.text(max_size=4), st.none() | stamped),
        max_size=12,
    ),
    st.data(),
)
def test_the_entry_is_the_same_bytes_as_before(rows: list[LoggedRow], data: st.DataObject) -> None:
    """Also when a row object recurs, in the same entry and in the next one (memo hits), and
    when the same row object is logged under another name (the digest of the first name, as
    before; the entry names the row as logged)."""
    shared = [r for r in rows if r.row is not None]
    again = [
        LoggedRow(data.draw(st.sampled_from(["v", "w"])), data.draw(st.text(max_size=4)), r.row)
        for r in shared[:2]
    ]
    digests = RowDigests()
    old_memo: dict[int, str] = {}
    for request_id, logged in (("r1", [*rows, *rows]), ("r2", [*again, *rows])):
        record = RequestRecord(request_id, 1.5, {"schema": 2}, logged)
        new_rows: dict[str, bytes] = {}
        refs = []
        for r in logged:
            if r.row is None:
                refs.append(None)
                continue
            refs.append(old_memo.setdefault(id(r.row), reference.digest(r)))
        entry = entry_json(record, digests.rows_json(logged, new_rows))
        assert entry == reference.entry_json(record, refs)
        assert set(new_rows) == {ref for ref in refs if ref is not None} - set(digests.stored)
        digests.remember(new_rows, 0.0)


def test_a_row_already_stored_is_not_sent_again_until_stale() -> None:
    row = LoggedRow("v", "k", StampedRow({"x": 1.0}, 5))
    digests = RowDigests()
    new_rows: dict[str, bytes] = {}
    digests.rows_json([row], new_rows)
    assert len(new_rows) == 1
    digests.remember(new_rows, 10.0)
    again: dict[str, bytes] = {}
    digests.rows_json([row], again, stale_before=5.0)
    assert again == {}
    digests.rows_json([row], again, stale_before=20.0)
    assert again == new_rows
