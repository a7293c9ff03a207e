"""The request-log record: one served request, typed, and its stored JSON form.

:class:`ServedRequest` is what the recommender logs for a request and what ``explain`` and the
A/B analysis read: the request (session, user, ``k``, ``shown``), the time it was scored for,
why it was degraded, the scorer and model version, the candidates with their sources and
scores, every feature row used with its timestamp, the raw scores, every post-processing
decision and the experiment arm. Its parts are the core's own value objects
(:class:`~featrec.core.candidates.model.Candidate`,
:class:`~featrec.core.ranking.rerank.Decision`, :class:`~featrec.core.ranking.rerank.RerankConfig`,
:class:`~featrec.core.ports.serving.LoggedRow`) plus :class:`ArmAssignment`.

The request log stores a :class:`~featrec.core.ports.serving.RequestRecord` whose ``body`` is
opaque JSON to it; :meth:`ServedRequest.to_record` and :meth:`ServedRequest.from_record` are the
one place that knows the body's keys. Schema :data:`LOG_SCHEMA` (2) stores the candidates and
the decisions as columns (one list per field, sources as a bit mask over
:data:`~featrec.core.candidates.model.SOURCES`, a source's or detail's score null where the
candidate has none) instead of one object per candidate: at 200 candidates the body is built,
encoded and stored in about half the bytes and without 400 small dicts. Schema 1 (one object per
candidate and per decision, as written before) still reads back as it was; a record logged
before experiments has no ``experiment`` key and reads as ``experiment=None``. A record whose
candidates list their sources out of :data:`SOURCES` order (generation never does) is written
in schema 1, which keeps any order. Floats are kept as
they were computed (JSON round-trips them bit for bit): ``explain`` compares raw scores by their
bits. An entry of another schema, or one with a missing or mistyped field, raises
:class:`~featrec.errors.ConfigError` naming the request, the field and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Final, NoReturn

from featrec.core.candidates.model import SOURCES, Candidate
from featrec.core.ports.serving import LoggedRow, RequestRecord
from featrec.core.ranking.rerank import Decision, RerankConfig
from featrec.errors import ConfigError

#: Version of the request-log body schema written by recommend (explain and the A/B analysis read
#: every schema in :data:`READ_SCHEMAS`).
LOG_SCHEMA: Final = 2
#: The schemas read back: 1 (one object per candidate and decision) and 2 (columns).
READ_SCHEMAS: Final = (1, 2)
#: A candidate's sources as a bit mask (bit i: ``SOURCES[i]``): the sources of each mask.
_SOURCES_OF: Final = tuple(
    tuple(s for i, s in enumerate(SOURCES) if mask & (1 << i)) for mask in range(1 << len(SOURCES))
)
#: The bit mask of each sources tuple listed in :data:`SOURCES` order (others have none).
_MASK_OF: Final = {sources: mask for mask, sources in enumerate(_SOURCES_OF)}
#: How the note saying that the request ignored a stale user row begins.
USER_ROW_IGNORED: Final = "user features ignored"


@dataclass(frozen=True, slots=True)
class ArmAssignment:
    """The A/B experiment arm a request was bucketed into, and the unit it was bucketed by
    (``unit`` is ``"user"`` or ``"session"``, ``unit_id`` that user's or session's id)."""

    experiment: str
    arm: str
    control: str
    unit: str
    unit_id: str


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """One request as it was answered, with everything needed to re-score it (see the module
    docstring). ``rows`` is empty when the record was listed without its feature rows."""

    request_id: str
    #: Wall-clock time the record was written (unix seconds).
    created_at_s: float
    session_id: str
    user_id: str | None
    k: int
    #: The list the caller said was on screen (None: not sent).
    shown: tuple[str, ...] | None
    #: The list stability compared with: ``shown``, else the one answered before the session's
    #: newest event (None: neither).
    shown_before: tuple[str, ...] | None
    #: The event time the request was scored for (unix seconds).
    now_s: float
    degraded_reason: str | None
    degraded_code: str | None
    #: Things the request noted (a user row ignored as stale, ...).
    notes: tuple[str, ...]
    scorer: str
    model_version: str | None
    session_version: int | None
    #: Whether the session row was used (a degraded request ignores it).
    session_used: bool
    rerank: RerankConfig
    candidates: tuple[Candidate, ...]
    #: The scorer's scores, aligned with ``candidates``.
    raw_scores: tuple[float, ...]
    decisions: tuple[Decision, ...]
    experiment: ArmAssignment | None
    rows: tuple[LoggedRow, ...] = ()
    #: Two-stage ranking: the model scored the first ``rank_top`` candidates (None: all of
    #: them, as before two-stage ranking; the key is then left out of the stored body).
    rank_top: int | None = None

    @property
    def degraded(self) -> bool:
        return self.degraded_reason is not None

    @property
    def recommended(self) -> tuple[str, ...]:
        """The items answered, in the order of the answer."""
        return tuple(d.item_id for d in self.decisions if d.kept and d.rank is not None)

    @property
    def ignored_user_row(self) -> bool:
        """The user row was read but ignored as too old (it is still logged)."""
        return any(note.startswith(USER_ROW_IGNORED) for note in self.notes)

    def to_record(self) -> RequestRecord:
        """The form the request log stores (the body is JSON-ready)."""
        return RequestRecord(self.request_id, self.created_at_s, self._body(), list(self.rows))

    def _body(self) -> dict[str, Any]:
        columns = _candidate_columns(self.candidates)
        if columns is None:  # sources out of SOURCES order: only schema 1 keeps that
            return self.body_v1()
        body = self._common(LOG_SCHEMA)
        body["candidates"] = columns
        body["raw_scores"] = list(self.raw_scores)
        body["decisions"] = _decision_columns(self.decisions)
        return body

    def _common(self, schema: int) -> dict[str, Any]:
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

    def body_v1(self) -> dict[str, Any]:
        """The body in schema 1 (one object per candidate and per decision)."""
        body = self._common(1)
        body["candidates"] = [c.to_dict() for c in self.candidates]
        body["raw_scores"] = list(self.raw_scores)
        body["decisions"] = [d.to_dict() for d in self.decisions]
        return body

    @classmethod
    def from_record(cls, record: RequestRecord) -> ServedRequest:
        """The record read back from the log. Raises :class:`ConfigError` for another schema
        or a malformed body (the message names the field)."""
        body = _Fields(record.body, f"request {record.request_id!r}")
        schema = record.body.get("schema") if isinstance(record.body, Mapping) else None
        if schema not in READ_SCHEMAS or isinstance(schema, bool):
            raise ConfigError(
                f"request {record.request_id!r} was logged with schema {schema!r}; "
                f"this featrec reads schemas {', '.join(map(str, READ_SCHEMAS))}"
            )
        columns = schema == 2
        return cls(
            request_id=record.request_id,
            created_at_s=record.created_at_s,
            session_id=body.string("session_id"),
            user_id=body.optional_string("user_id"),
            k=body.integer("k"),
            shown=body.optional_strings("shown"),
            shown_before=body.optional_strings("shown_before"),
            now_s=body.number("now_s"),
            degraded_reason=body.optional_string("degraded_reason"),
            degraded_code=body.optional_string("degraded_code"),
            notes=body.strings("notes"),
            scorer=body.string("scorer"),
            model_version=body.optional_string("model_version"),
            session_version=body.optional_integer("session_version"),
            session_used=body.boolean("session_used"),
            rerank=body.rerank("rerank"),
            candidates=body.candidate_columns("candidates")
            if columns
            else body.candidates("candidates"),
            raw_scores=body.numbers("raw_scores"),
            decisions=body.decision_columns("decisions")
            if columns
            else body.decisions("decisions"),
            experiment=body.arm("experiment"),
            rows=tuple(record.rows),
            rank_top=body.optional_integer("rank_top") if "rank_top" in record.body else None,
        )


def _candidate_columns(candidates: tuple[Candidate, ...]) -> dict[str, Any] | None:
    """Schema 2's candidates: one list per field (None when a candidate lists its sources out
    of :data:`SOURCES` order or names an unknown one: schema 1 then)."""
    n = len(candidates)
    ids: list[str] = []
    masks: list[int] = []
    scores: dict[str, list[float | None]] = {}
    details: dict[str, list[float | None]] = {}
    mask_of = _MASK_OF
    for i, c in enumerate(candidates):
        ids.append(c.item_id)
        try:
            mask = mask_of.get(c.sources)
        except TypeError:  # not a tuple (a list): schema 1 keeps it as it is
            return None
        if mask is None:
            return None
        masks.append(mask)
        for name, value in c.scores.items():
            found = scores.get(name)
            if found is None:
                found = scores[name] = [None] * n
            found[i] = value
        for name, value in c.details.items():
            found = details.get(name)
            if found is None:
                found = details[name] = [None] * n
            found[i] = value
    return {"item_ids": ids, "sources": masks, "scores": scores, "details": details}


def _decision_columns(decisions: tuple[Decision, ...]) -> dict[str, Any]:
    """Schema 2's decisions: one list per field."""
    return {
        "item_ids": [d.item_id for d in decisions],
        "scores": [d.score for d in decisions],
        "ranks": [d.rank for d in decisions],
        "kept": [d.kept for d in decisions],
        "reasons": [list(d.reasons) for d in decisions],
        "raw_scores": [d.raw_score for d in decisions],
    }


class _Fields:
    """Typed reads of a JSON object's fields; a wrong one raises a :class:`ConfigError`
    naming ``where``, the field's path and what was expected."""

    def __init__(self, data: object, where: str, path: str = "") -> None:
        if not isinstance(data, Mapping):
            what = path.rstrip(".") or "the body"
            raise ConfigError(f"{where}: malformed request-log entry: {what} is not an object")
        self._data: Mapping[str, object] = data
        self._where = where
        self._path = path

    def _fail(self, key: str, expected: str, value: object) -> NoReturn:
        raise ConfigError(
            f"{self._where}: malformed request-log entry: {self._path}{key} should be "
            f"{expected}, got {value!r:.80}"
        )

    def _get(self, key: str, expected: str) -> object:
        if key not in self._data:
            self._fail(key, expected, _MISSING)
        return self._data[key]

    def string(self, key: str) -> str:
        value = self._get(key, "a string")
        if not isinstance(value, str):
            self._fail(key, "a string", value)
        return value

    def optional_string(self, key: str) -> str | None:
        value = self._get(key, "a string or null")
        if value is not None and not isinstance(value, str):
            self._fail(key, "a string or null", value)
        return value

    def integer(self, key: str) -> int:
        value = self._get(key, "an integer")
        if not _is_int(value):
            self._fail(key, "an integer", value)
        assert isinstance(value, int)
        return value

    def optional_integer(self, key: str) -> int | None:
        value = self._get(key, "an integer or null")
        if value is not None and not _is_int(value):
            self._fail(key, "an integer or null", value)
        assert value is None or isinstance(value, int)
        return value

    def number(self, key: str) -> float:
        value = self._get(key, "a number")
        if not _is_number(value):
            self._fail(key, "a number", value)
        assert isinstance(value, int | float)
        return value

    def boolean(self, key: str) -> bool:
        value = self._get(key, "true or false")
        if not isinstance(value, bool):
            self._fail(key, "true or false", value)
        return value

    def _list(self, key: str, expected: str) -> list[object]:
        value = self._get(key, expected)
        if not isinstance(value, list | tuple):
            self._fail(key, expected, value)
        return list(value)

    def strings(self, key: str) -> tuple[str, ...]:
        values = self._list(key, "a list of strings")
        if not all(isinstance(v, str) for v in values):
            self._fail(key, "a list of strings", values)
        return tuple(str(v) for v in values)

    def optional_strings(self, key: str) -> tuple[str, ...] | None:
        return None if self._get(key, "a list of strings or null") is None else self.strings(key)

    def numbers(self, key: str) -> tuple[float, ...]:
        values = self._list(key, "a list of numbers")
        if not all(_is_number(v) for v in values):
            self._fail(key, "a list of numbers", values)
        return tuple(values)  # type: ignore[arg-type]

    def rerank(self, key: str) -> RerankConfig:
        r = _Fields(self._get(key, "an object"), self._where, f"{key}.")
        unknown = sorted(set(r._data) - {f.name for f in fields(RerankConfig)})
        if unknown:
            self._fail(key, "post-processing settings", f"unknown setting(s) {unknown}")
        drop_purchased = r.boolean("drop_purchased")
        max_per_category = r.optional_integer("max_per_category")
        popularity_damping = r.number("popularity_damping")
        stability_window = r.integer("stability_window")
        stability_margin = r.number("stability_margin")
        try:
            return RerankConfig(
                drop_purchased=drop_purchased,
                max_per_category=max_per_category,
                popularity_damping=popularity_damping,
                stability_window=stability_window,
                stability_margin=stability_margin,
            )
        except ConfigError as e:
            self._fail(key, f"valid post-processing settings ({e})", r._data)

    def candidates(self, key: str) -> tuple[Candidate, ...]:
        out = []
        for n, value in enumerate(self._list(key, "a list of candidates")):
            try:
                out.append(Candidate.from_dict(_Fields(value, self._where, f"{key}[{n}].")._data))
            except ValueError as e:
                self._fail(f"{key}[{n}]", f"a candidate ({e})", value)
        return tuple(out)

    def _column(self, key: str, n: int | None, expected: str, ok: Any) -> list[Any]:
        """A list field of ``n`` values (any length if None), each passing ``ok``."""
        values = self._list(key, f"a list of {expected}")
        if n is not None and len(values) != n:
            self._fail(key, f"{n} values", f"{len(values)} values")
        for i, value in enumerate(values):
            if not ok(value):
                self._fail(f"{key}[{i}]", expected, value)
        return values

    def candidate_columns(self, key: str) -> tuple[Candidate, ...]:
        c = _Fields(self._get(key, "an object of columns"), self._where, f"{key}.")
        ids = c._column("item_ids", None, "non-empty strings", lambda v: isinstance(v, str) and v)
        n = len(ids)
        masks = c._column(
            "sources", n, "source bit masks", lambda v: _is_int(v) and 0 <= v < len(_SOURCES_OF)
        )
        per_item: list[tuple[dict[str, float], dict[str, float]]] = [({}, {}) for _ in ids]
        for part, names in (("scores", SOURCES), ("details", None)):
            columns = _Fields(c._get(part, "an object of columns"), self._where, f"{key}.{part}.")
            for name in columns._data:
                if names is not None and name not in names:
                    c._fail(part, f"columns named by sources {SOURCES}", name)
                column = columns._column(
                    name, n, "numbers or null", lambda v: v is None or _is_number(v)
                )
                slot = 0 if part == "scores" else 1
                for i, value in enumerate(column):
                    if value is not None:
                        per_item[i][slot][name] = float(value)
        return tuple(
            Candidate(item, _SOURCES_OF[mask], scores, details)
            for item, mask, (scores, details) in zip(ids, masks, per_item, strict=True)
        )

    def decision_columns(self, key: str) -> tuple[Decision, ...]:
        d = _Fields(self._get(key, "an object of columns"), self._where, f"{key}.")
        ids = d._column("item_ids", None, "strings", lambda v: isinstance(v, str))
        n = len(ids)
        scores = d._column("scores", n, "numbers", _is_number)
        ranks = d._column("ranks", n, "integers or null", lambda v: v is None or _is_int(v))
        kept = d._column("kept", n, "true or false", lambda v: isinstance(v, bool))
        reasons = d._column(
            "reasons",
            n,
            "lists of strings",
            lambda v: isinstance(v, list | tuple) and all(isinstance(r, str) for r in v),
        )
        raw = d._column("raw_scores", n, "numbers", _is_number)
        return tuple(
            Decision(item, score, rank, keep, tuple(why), raw_score)
            for item, score, rank, keep, why, raw_score in zip(
                ids, scores, ranks, kept, reasons, raw, strict=True
            )
        )

    def decisions(self, key: str) -> tuple[Decision, ...]:
        out = []
        for n, value in enumerate(self._list(key, "a list of decisions")):
            d = _Fields(value, self._where, f"{key}[{n}].")
            out.append(
                Decision(
                    item_id=d.string("item_id"),
                    score=d.number("score"),
                    rank=d.optional_integer("rank"),
                    kept=d.boolean("kept"),
                    reasons=d.strings("reasons"),
                    raw_score=d.number("raw_score"),
                )
            )
        return tuple(out)

    def arm(self, key: str) -> ArmAssignment | None:
        value = self._data.get(key)  # absent from records logged before experiments
        if value is None:
            return None
        a = _Fields(value, self._where, f"{key}.")
        return ArmAssignment(
            experiment=a.string("name"),
            arm=a.string("arm"),
            control=a.string("control"),
            unit=a.string("unit"),
            unit_id=a.string("unit_id"),
        )


class _Missing:
    def __repr__(self) -> str:
        return "nothing (the field is missing)"


_MISSING: Final = _Missing()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
