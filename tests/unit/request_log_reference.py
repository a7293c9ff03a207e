"""The request-log entry as it was written before the writer thread's fifth-pass changes
(``ServedRequest._body``'s per-candidate columns loop, ``asdict`` of the rerank settings, and
``RowDigests.refs`` + ``entry_json`` building one ``[view, key, digest]`` list per row): kept
verbatim below as the oracle of ``tests/unit/test_request_log_oracle.py``, which requires the
new code to write the same bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Final

import orjson

from featrec.app.serving.record import ServedRequest
from featrec.core.candidates.model import SOURCES, Candidate
from featrec.core.ports.serving import LoggedRow, RequestRecord
from featrec.core.ranking.rerank import Decision

_BIT: Final = {source: 1 << i for i, source in enumerate(SOURCES)}
_SOURCES_OF: Final = tuple(
    tuple(s for i, s in enumerate(SOURCES) if mask & (1 << i)) for mask in range(1 << len(SOURCES))
)
_JSON_OPTIONS: Final = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def body(self: ServedRequest) -> dict[str, Any]:
    columns = _candidate_columns(self.candidates)
    if columns is None:
        return self.body_v1()
    out = _common(self, 2)
    out["candidates"] = columns
    out["raw_scores"] = list(self.raw_scores)
    out["decisions"] = _decision_columns(self.decisions)
    return out


def _common(self: ServedRequest, schema: int) -> dict[str, Any]:
    arm = self.experiment
    return {
        "schema": schema,
        "session_id": self.session_id,
        "user_id": self.user_id,
        "k": self.k,
        "shown": None if self.shown is None else list(self.shown),
        "shown_before": None if self.shown_before is None else list(self.shown_before),
        "now_s": self.now_s,
        "degraded_reason": self.degraded_reason,
        "degraded_code": self.degraded_code,
        "notes": list(self.notes),
        "scorer": self.scorer,
        "model_version": self.model_version,
        "session_version": self.session_version,
        "session_used": self.session_used,
        **({} if self.rank_top is None else {"rank_top": self.rank_top}),
        "rerank": asdict(self.rerank),
        "experiment": None
        if arm is None
        else {
            "name": arm.experiment,
            "arm": arm.arm,
            "control": arm.control,
            "unit": arm.unit,
            "unit_id": arm.unit_id,
        },
    }


def _candidate_columns(candidates: tuple[Candidate, ...]) -> dict[str, Any] | None:
    n = len(candidates)
    ids: list[str] = []
    masks: list[int] = []
    scores: dict[str, list[float | None]] = {}
    details: dict[str, list[float | None]] = {}
    for i, c in enumerate(candidates):
        ids.append(c.item_id)
        mask = 0
        for source in c.sources:
            bit = _BIT.get(source)
            if bit is None:
                return None
            mask |= bit
        if _SOURCES_OF[mask] != c.sources:
            return None
        masks.append(mask)
        for column, values in ((scores, c.scores), (details, c.details)):
            for name, value in values.items():
                found = column.get(name)
                if found is None:
                    found = column[name] = [None] * n
                found[i] = value
    return {"item_ids": ids, "sources": masks, "scores": scores, "details": details}


def _decision_columns(decisions: tuple[Decision, ...]) -> dict[str, Any]:
    return {
        "item_ids": [d.item_id for d in decisions],
        "scores": [d.score for d in decisions],
        "ranks": [d.rank for d in decisions],
        "kept": [d.kept for d in decisions],
        "reasons": [list(d.reasons) for d in decisions],
        "raw_scores": [d.raw_score for d in decisions],
    }


def _dumps(value: object) -> bytes:
    return orjson.dumps(value, option=_JSON_OPTIONS)


def digest(logged: LoggedRow) -> str:
    row = logged.row
    assert row is not None
    data = _dumps({"ts_us": row.ts_us, "values": row.values})
    return hashlib.blake2b(
        logged.view.encode() + b"\0" + logged.key.encode() + b"\0" + data, digest_size=16
    ).hexdigest()


def entry_json(record: RequestRecord, refs: Sequence[str | None]) -> bytes:
    return _dumps(
        {
            "request_id": record.request_id,
            "created_at_s": record.created_at_s,
            "body": record.body,
            "rows": [
                [logged.view, logged.key, ref]
                for logged, ref in zip(record.rows, refs, strict=True)
            ],
        }
    )
