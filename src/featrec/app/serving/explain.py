"""Explaining a logged request: re-score it from the request log alone.

:func:`explain_request` rebuilds the candidates, the feature rows (with the timestamps they
were read with) and the post-processing inputs from the log entry, runs the same scoring and
post-processing as the request did (:mod:`featrec.app.serving.steps`), and compares: the raw
scores must be bit-identical and every decision the same, else ``mismatches`` says what
differs. Each candidate comes back with its sources and the reasons it was kept or not.
A request of an A/B experiment logged the scorer and model version of its arm, so it is
re-scored with them like any other. The entry is read as a
:class:`~featrec.app.serving.record.ServedRequest`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from featrec.app.serving import steps
from featrec.app.serving.record import ServedRequest
from featrec.app.serving.steps import SCORER_MODEL, LoadedModel, Scores
from featrec.core.features.catalog import (
    ITEM_FEATURES,
    ITEM_TRENDING,
    SESSION_FEATURES,
    USER_FEATURES,
)
from featrec.core.ports.serving import LoggedRow, RequestLog, StampedRow
from featrec.core.ranking.item_table import ItemColumns
from featrec.core.ranking.ranker import item_row
from featrec.core.ranking.rerank import Decision
from featrec.errors import NotFound


@dataclass(frozen=True, slots=True)
class ExplainedItem:
    """One candidate of a logged request: where it came from and what happened to it."""

    item_id: str
    rank: int | None
    kept: bool
    score: float
    raw_score: float
    sources: tuple[str, ...]
    source_scores: Mapping[str, float]
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    """A logged request re-scored from the log. ``reproduced``: same raw scores bit for bit
    and the same decisions; otherwise ``mismatches`` says what differs."""

    request_id: str
    session_id: str
    user_id: str | None
    created_at_s: float
    now_s: float
    degraded_reason: str | None
    #: Things the request noted (a user row ignored as stale, ...).
    notes: tuple[str, ...]
    scorer: str
    model_version: str | None
    rows: tuple[LoggedRow, ...]
    items: tuple[ExplainedItem, ...]
    reproduced: bool
    mismatches: tuple[str, ...]
    #: The A/B experiment and arm the request was bucketed into (None: no experiment).
    experiment: str | None = None
    arm: str | None = None

    @property
    def kept(self) -> tuple[ExplainedItem, ...]:
        return tuple(item for item in self.items if item.kept)


def explain_request(
    log: RequestLog, model_for: Callable[[str | None], LoadedModel], request_id: str
) -> Explanation:
    """Re-score a logged request from the log alone and say why each item is there.

    Raises :class:`NotFound` for an unknown request id, :class:`~featrec.errors.ConfigError`
    when the entry is of another schema or malformed (see
    :mod:`featrec.app.serving.record`) or the model version it used cannot be loaded.
    """
    logged = log.get(request_id)
    if logged is None:
        raise NotFound(f"request {request_id!r} is not in the request log")
    record = ServedRequest.from_record(logged)
    rows: dict[tuple[str, str], StampedRow | None] = {(r.view, r.key): r.row for r in record.rows}
    candidates = record.candidates
    session = rows.get((SESSION_FEATURES.name, record.session_id)) if record.session_used else None
    user_id = record.user_id
    user = rows.get((USER_FEATURES.name, user_id)) if user_id is not None else None
    if record.ignored_user_row:
        user = None
    ids = [c.item_id for c in candidates]
    items = ItemColumns.of(
        ids,
        {
            item: item_row(
                steps.values_of(rows.get((ITEM_FEATURES.name, item))),
                steps.values_of(rows.get((ITEM_TRENDING.name, item))),
            )
            for item in ids
        },
    )
    scorer = record.scorer
    model = model_for(record.model_version) if scorer == SCORER_MODEL else None
    now_s = record.now_s
    session_values = steps.values_of(session)
    user_values = steps.values_of(user)
    keep = record.rank_top  # None (before two-stage ranking): the model scored every candidate
    declared = steps.declared_block(model, rows, record.session_id, user_id, candidates)
    raw = steps.score(
        scorer, model, candidates, session_values, user_values, items, now_s, keep, declared
    )
    purchased = steps.purchased_items(user_values)
    decisions = steps.post_process(
        candidates, raw, items, now_s, purchased, record.shown_before, record.k, record.rerank
    )
    mismatches = compare(record, raw, decisions)
    by_id = {c.item_id: c for c in candidates}
    explained = tuple(
        ExplainedItem(
            item_id=d.item_id,
            rank=d.rank,
            kept=d.kept,
            score=d.score,
            raw_score=d.raw_score,
            sources=by_id[d.item_id].sources,
            source_scores=dict(by_id[d.item_id].scores),
            reasons=by_id[d.item_id].reasons() + d.reasons,
        )
        for d in decisions
    )
    arm = record.experiment
    return Explanation(
        request_id=record.request_id,
        session_id=record.session_id,
        user_id=user_id,
        created_at_s=record.created_at_s,
        now_s=now_s,
        degraded_reason=record.degraded_reason,
        notes=record.notes,
        scorer=scorer,
        model_version=record.model_version,
        rows=record.rows,
        items=explained,
        reproduced=not mismatches,
        mismatches=tuple(mismatches),
        experiment=arm.experiment if arm is not None else None,
        arm=arm.arm if arm is not None else None,
    )


def compare(record: ServedRequest, raw: Scores, decisions: Sequence[Decision]) -> list[str]:
    """What differs between the logged outcome and the re-scored one."""
    out: list[str] = []
    logged_raw = np.asarray(record.raw_scores, dtype=np.float64)
    if logged_raw.shape != raw.shape:
        out.append(f"{raw.shape[0]} scores re-computed for {logged_raw.shape[0]} logged")
    elif logged_raw.tobytes() != raw.tobytes():
        diff = int(np.count_nonzero(logged_raw.view(np.int64) != raw.view(np.int64)))
        out.append(f"{diff} raw score(s) differ from the logged ones")
    logged = list(record.decisions)
    now = list(decisions)
    if logged != now:
        first = next(
            (i for i, (a, b) in enumerate(zip(logged, now, strict=False)) if a != b),
            min(len(logged), len(now)),
        )
        out.append(f"decisions differ from the logged ones from position {first + 1}")
    return out
