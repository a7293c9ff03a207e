"""Training the ranker: replay the event log, compute each prediction point's ranking
features as serving would, fit, and measure against the candidate order on a time split.

Input is a list of :class:`LabelledPoint`: from a ``featrec dataset build`` table
(:func:`points_from_table`: its candidates, labels and Feast point-in-time user and item
features), or straight from events (:func:`points_from_events`: candidates generated here,
no long-term features). :func:`replay_features` walks the events in time order and, at each
point, after folding the point's own event, has what the online store would hold then:

- the ``session_features`` row (:func:`featrec.core.sessions.fold.fold`),
- the co-visitation lists, trending lists, ``item_trending`` rows and purchase histories
  (:class:`~featrec.core.candidates.point_generators.SignalCandidates` observing every event),

and computes :func:`~featrec.core.ranking.ranker.ranking_matrix` for the point's candidates. The
sources and source scores of a candidate are those
:func:`~featrec.core.candidates.generation.generate`
gives it there; a dataset built with another generator still trains, but its candidates that
serving would not propose carry no sources (``candidate_coverage`` says how many).

:func:`fit_ranker` splits the points by time (the newest ``holdout`` share is held out),
fits on the rest and reports HR@K / MRR@K of the model's order against the candidate order
on the held-out points (a point whose next item is not a candidate is a miss for both).

:func:`fit_on_events` is the one-call path from events alone (no batch features), with
defaults tuned on RSC15-100k: what ``featrec evaluate`` and ``benchmarks/ranker_quality.py
--rsc15`` train with.
"""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from featrec.core.candidates.config import DEFAULT_CONFIG, CandidateConfig
from featrec.core.candidates.model import Candidate
from featrec.core.candidates.point_generators import PredictionContext, SignalCandidates
from featrec.core.candidates.signals import InMemorySignals
from featrec.core.evaluation.metrics import hit_rate_at_k, mrr_at_k
from featrec.core.events.model import Event
from featrec.core.features.catalog import ITEM_FEATURES, USER_FEATURES
from featrec.core.features.declared.ranking import METADATA_KEY, column_value
from featrec.core.features.rows import micros
from featrec.core.items.slist import ItemModel, SessionFolds
from featrec.core.items.trending import TrendingBoard, trending_row
from featrec.core.ranking.examples import last_flags, next_item_targets
from featrec.core.ranking.ranker import RANKING_FEATURES, Ranker, item_row, ranking_matrix
from featrec.core.sessions.fold import SessionPolicy, SessionState, fold, session_row
from featrec.errors import ConfigError

Row = Mapping[str, object]

#: Columns a training-set table must have (``featrec dataset build`` writes them).
DATASET_COLUMNS = (
    "point_id",
    "session_id",
    "user_id",
    "event_timestamp",
    "position",
    "item_id",
    "candidate_rank",
    "label",
)
USER_PREFIX = f"{USER_FEATURES.name}__"
ITEM_PREFIX = f"{ITEM_FEATURES.name}__"


@dataclass(frozen=True, slots=True)
class LabelledPoint:
    """One prediction point: the ``position``-th event of ``session_id`` (1-based), at
    ``at``. ``items`` are its candidates in candidate order (``None``: generate them) and
    ``target`` the item that came next. ``user_row`` / ``item_rows`` are the long-term
    (``user_features`` / ``item_features``) rows as of ``at``."""

    point_id: int
    session_id: str
    position: int
    at: datetime
    user_id: str | None
    target: str | None
    items: tuple[str, ...] | None = None
    user_row: Row | None = None
    item_rows: Mapping[str, Row | None] = field(default_factory=dict)
    #: The training set's declared-feature values (see
    #: :mod:`featrec.core.features.declared.ranking`), per candidate, in ``declared`` order.
    declared: tuple[str, ...] = ()
    declared_values: Mapping[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(slots=True)
class FeatureSet:
    """Ranking features of every (point, candidate): row ``i`` belongs to point
    ``group[i]`` (an index into ``points``); ``y`` is 1 for the next item."""

    X: npt.NDArray[np.float64]
    y: npt.NDArray[np.int64]
    group: npt.NDArray[np.int64]
    #: The candidate of each row.
    item_ids: list[str]
    points: list[LabelledPoint]
    #: Rows whose candidate the serving generator also proposes, out of all rows.
    candidate_coverage: float
    #: The columns of ``X``: the built-in ones, then the declared features of the points.
    feature_names: tuple[str, ...] = RANKING_FEATURES

    def point_slices(self) -> list[slice]:
        """The rows of each point (rows of a point are contiguous, in candidate order)."""
        bounds = np.flatnonzero(np.diff(self.group)) + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(self.group)]
        return [slice(a, b) for a, b in zip(starts, ends, strict=True)]


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Ranker parameters, the time split and the candidates generated at each point."""

    holdout: float = 0.2
    k: int = 20
    #: Negatives kept per training point (seeded sample; all positives are kept); ``None``
    #: keeps them all. Sampling fits faster and holds fewer rows; on RSC15 20 per point
    #: scored as well as all of them (see :data:`EVENTS_CONFIG`).
    negatives_per_point: int | None = None
    learning_rate: float = 0.1
    max_iter: int = 100
    max_leaf_nodes: int = 63
    min_samples_leaf: int = 40
    l2_regularization: float = 1.0
    random_state: int = 0
    candidates: CandidateConfig = DEFAULT_CONFIG
    session_policy: SessionPolicy = field(default_factory=SessionPolicy)
    #: The replayed signals learn a session's events only once the session has ended (its
    #: last event in the log), so a point never sees co-visitation pairs of its own session,
    #: as with signals frozen before the session (``featrec evaluate``). On RSC15 this raised
    #: the model's MRR@20 by ~0.003. Off by default: a training set built by
    #: ``featrec dataset build`` has candidates from live signals, which this would not match.
    learn_after_session: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.negatives_per_point is not None and self.negatives_per_point < 1:
            raise ConfigError(
                f"negatives_per_point must be >= 1 or None, got {self.negatives_per_point}"
            )

    def ranker(self, feature_names: Sequence[str] = RANKING_FEATURES) -> Ranker:
        return Ranker(
            feature_names=tuple(feature_names),
            learning_rate=self.learning_rate,
            max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=self.min_samples_leaf,
            l2_regularization=self.l2_regularization,
            random_state=self.random_state,
        )


@dataclass(frozen=True, slots=True)
class TrainingResult:
    ranker: Ranker
    metrics: dict[str, float]


# -- points -----------------------------------------------------------------------------------


def points_from_events(
    events: Sequence[Event],
    *,
    collapse_repeats: bool = True,
    max_points: int | None = None,
    since: datetime | None = None,
    seed: int = 0,
) -> list[LabelledPoint]:
    """Prediction points of ``events`` (time order) whose candidates the replay generates;
    a seeded uniform sample of at most ``max_points`` of those at or after ``since``."""
    targets = next_item_targets(events, collapse_repeats)
    seen: dict[str, int] = {}
    user: dict[str, str | None] = {}
    chosen: list[tuple[int, str, int, datetime, str | None, str]] = []
    for i, (event, target) in enumerate(zip(events, targets, strict=True)):
        seen[event.session_id] = seen.get(event.session_id, 0) + 1
        if event.user_id is not None:
            user[event.session_id] = event.user_id
        if target is not None and (since is None or event.ts >= since):
            chosen.append(
                (
                    i,
                    event.session_id,
                    seen[event.session_id],
                    event.ts,
                    user.get(event.session_id),
                    target,
                )
            )
    if max_points is not None:
        if max_points < 1:
            raise ConfigError(f"max points must be >= 1, got {max_points}")
        if len(chosen) > max_points:
            chosen = sorted(random.Random(seed).sample(chosen, max_points))
    return [
        LabelledPoint(n, session, position, at, user_id, target)
        for n, (_, session, position, at, user_id, target) in enumerate(chosen)
    ]


def points_from_table(table: Any) -> list[LabelledPoint]:
    """The points of a ``featrec dataset build`` table (a ``pyarrow.Table``), with their
    candidates, labels and long-term rows (columns ``user_features__*``, ``item_features__*``)."""
    missing = [c for c in DATASET_COLUMNS if c not in table.column_names]
    if missing:
        raise ConfigError(
            f"the training set lacks column(s) {', '.join(missing)}: build it with "
            "`featrec dataset build`"
        )
    if table.num_rows == 0:
        raise ConfigError("the training set is empty: build it with `featrec dataset build`")
    cols = {name: table.column(name).to_pylist() for name in DATASET_COLUMNS}
    user_cols = _prefixed(table, USER_PREFIX)
    item_cols = _prefixed(table, ITEM_PREFIX)
    declared = declared_names(table.schema.metadata, table.column_names)
    declared_cols = [table.column(name).to_pylist() for name in declared]
    order = sorted(
        range(table.num_rows), key=lambda i: (cols["point_id"][i], cols["candidate_rank"][i])
    )
    points: list[LabelledPoint] = []
    i = 0
    while i < len(order):
        first = order[i]
        pid = cols["point_id"][first]
        j = i
        while j < len(order) and cols["point_id"][order[j]] == pid:
            j += 1
        rows = order[i:j]
        items = tuple(cols["item_id"][r] for r in rows)
        if len(set(items)) != len(items):
            raise ConfigError(f"training set point {pid} lists a candidate twice")
        positives = [cols["item_id"][r] for r in rows if cols["label"][r] == 1]
        if len(positives) > 1:
            raise ConfigError(f"training set point {pid} has {len(positives)} positive labels")
        points.append(
            LabelledPoint(
                point_id=pid,
                session_id=cols["session_id"][first],
                position=cols["position"][first],
                at=cols["event_timestamp"][first],
                user_id=cols["user_id"][first],
                target=positives[0] if positives else None,
                items=items,
                user_row=_row(user_cols, first),
                item_rows={cols["item_id"][r]: _row(item_cols, r) for r in rows},
                declared=declared,
                declared_values={
                    cols["item_id"][r]: tuple(column_value(c[r]) for c in declared_cols)
                    for r in rows
                },
            )
        )
        i = j
    return points


def stream_points(
    batches: Iterable[Any], declared: tuple[str, ...] = ()
) -> Iterator[LabelledPoint]:
    """:func:`points_from_table` over record batches (``pyarrow``) whose rows are ordered so
    that each point's rows are consecutive, in candidate order (``DatasetStream.batches``):
    one point at a time, in the batches' order. ``declared``: the training set's declared
    columns (:func:`declared_names` of its file's schema)."""
    group: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    checked = False
    any_rows = False
    for batch in batches:
        if not checked:
            _check_columns(batch.column_names)
            missing = [n for n in declared if n not in batch.column_names]
            if missing:
                raise ConfigError(
                    f"the training set lacks its declared column(s) {', '.join(missing)}"
                )
            checked = True
        if batch.num_rows == 0:
            continue
        any_rows = True
        cols = {name: batch.column(name).to_pylist() for name in (*DATASET_COLUMNS, *declared)}
        user_cols = _prefixed(batch, USER_PREFIX)
        item_cols = _prefixed(batch, ITEM_PREFIX)
        for i in range(batch.num_rows):
            if group and group[0][0]["point_id"] != cols["point_id"][i]:
                yield _grouped_point(group, declared)
                group = []
            group.append(
                (
                    {name: column[i] for name, column in cols.items()},
                    {name: column[i] for name, column in user_cols.items()},
                    {name: column[i] for name, column in item_cols.items()},
                )
            )
    if not any_rows:
        raise ConfigError("the training set is empty: build it with `featrec dataset build`")
    if group:
        yield _grouped_point(group, declared)


def _check_columns(names: Sequence[str]) -> None:
    missing = [c for c in DATASET_COLUMNS if c not in names]
    if missing:
        raise ConfigError(
            f"the training set lacks column(s) {', '.join(missing)}: build it with "
            "`featrec dataset build`"
        )


def _grouped_point(
    group: Sequence[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]],
    declared: tuple[str, ...] = (),
) -> LabelledPoint:
    """One point from its rows (candidate order): base columns, user and item features."""
    first, user, _ = group[0]
    pid = first["point_id"]
    items = tuple(base["item_id"] for base, _, _ in group)
    if len(set(items)) != len(items):
        raise ConfigError(f"training set point {pid} lists a candidate twice")
    positives = [base["item_id"] for base, _, _ in group if base["label"] == 1]
    if len(positives) > 1:
        raise ConfigError(f"training set point {pid} has {len(positives)} positive labels")
    return LabelledPoint(
        point_id=pid,
        session_id=first["session_id"],
        position=first["position"],
        at=first["event_timestamp"],
        user_id=first["user_id"],
        target=positives[0] if positives else None,
        items=items,
        user_row=user if any(v is not None for v in user.values()) else None,
        item_rows={
            base["item_id"]: item if any(v is not None for v in item.values()) else None
            for base, _, item in group
        },
        declared=declared,
        declared_values={
            base["item_id"]: tuple(column_value(base[name]) for name in declared)
            for base, _, _ in group
        },
    )


def declared_names(
    metadata: Mapping[bytes, bytes] | None, columns: Sequence[str]
) -> tuple[str, ...]:
    """The declared-feature columns ``featrec dataset build`` joined, as its Parquet schema's
    metadata lists them (the order ``featrec train`` appends them in)."""
    raw = (metadata or {}).get(METADATA_KEY)
    names = tuple(n for n in raw.decode().split(",") if n) if raw else ()
    missing = [n for n in names if n not in columns]
    if missing:
        raise ConfigError(f"the training set lacks its declared column(s) {', '.join(missing)}")
    return names


def _prefixed(table: Any, prefix: str) -> dict[str, list[Any]]:
    return {
        name[len(prefix) :]: table.column(name).to_pylist()
        for name in table.column_names
        if name.startswith(prefix)
    }


def _row(columns: Mapping[str, list[Any]], i: int) -> dict[str, object] | None:
    """One entity's features at row ``i``, ``None`` when every value is null (no snapshot)."""
    values = {name: column[i] for name, column in columns.items()}
    return values if any(v is not None for v in values.values()) else None


# -- replay -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PointRows:
    """One replayed point: its candidates (``items``, in candidate order), their ranking
    matrix ``X`` and labels ``y``, and how many of them serving also proposes."""

    point: LabelledPoint
    items: list[str]
    X: npt.NDArray[np.float64]
    y: npt.NDArray[np.int64]
    covered: int


def replay_points(
    rows: Iterable[tuple[Event, bool]],
    points: Iterable[LabelledPoint],
    *,
    candidates: CandidateConfig = DEFAULT_CONFIG,
    session_policy: SessionPolicy | None = None,
    learn_until: datetime | None = None,
    learns: Callable[[Event], bool] | None = None,
    learn_after_session: bool = False,
    item_model: ItemModel | SessionFolds | None = None,
    sessions_with_points: Container[str] | None = None,
) -> Iterator[PointRows]:
    """:func:`replay_features` as a stream: ``rows`` are ``(event, last)`` in time order,
    ``last`` marking a session's last event (the session is forgotten after it); ``points``
    come in time order (by ``at``) and are read only as far as the replay has got. Yields
    each point's rows as its event is reached, so memory holds the open sessions, the
    signals and the points at the current time, never the log. ``sessions_with_points``
    (when known) spares folding the sessions that have none.
    """
    policy = session_policy or SessionPolicy()
    upcoming = iter(points)
    ahead: LabelledPoint | None = next(upcoming, None)
    wanted: dict[tuple[str, int], LabelledPoint] = {}
    generator = SignalCandidates(candidates, InMemorySignals(model=item_model))
    board = generator.signals.board
    pending: dict[str, list[Event]] = {}
    trending_rows: dict[str, tuple[int, Row]] = {}
    sessions: dict[str, tuple[SessionState, list[str], list[str]]] = {}
    previous: datetime | None = None
    for event, last in rows:
        if previous is not None and event.ts < previous:
            raise ConfigError(f"events out of time order at {event.event_id}")
        previous = event.ts
        while ahead is not None and ahead.at <= event.ts:
            key = (ahead.session_id, ahead.position)
            if key in wanted:
                raise ConfigError(
                    f"two points at event {ahead.position} of session {ahead.session_id!r}"
                )
            wanted[key] = ahead
            ahead = next(upcoming, None)
        if (learn_until is None or event.ts < learn_until) and (learns is None or learns(event)):
            if learn_after_session:
                pending.setdefault(event.session_id, []).append(event)
            else:
                generator.observe(event)
        if learn_after_session and last:
            for past in pending.pop(event.session_id, ()):
                generator.observe(past)
        if sessions_with_points is not None and event.session_id not in sessions_with_points:
            if last:
                generator.end_session(event.session_id)
            continue
        state, items, types = sessions.setdefault(
            event.session_id, (SessionState(event.session_id), [], [])
        )
        fold(state, event, policy)
        items.append(event.item_id)
        types.append(event.type)
        point = wanted.pop((event.session_id, len(items)), None) if wanted else None
        if point is not None:
            yield _point_rows(event, point, state, items, types, generator, board, trending_rows)
        if last:
            del sessions[event.session_id]
            generator.end_session(event.session_id)
    missing = len(wanted)
    example = next(iter(wanted), None)
    if ahead is not None:
        example = example or (ahead.session_id, ahead.position)
        missing += 1 + sum(1 for _ in upcoming)
    if example is not None:
        session_id, position = example
        raise ConfigError(
            f"{missing} point(s) have no event in the log, e.g. event {position} of "
            f"session {session_id!r}: train on the log the training set was built from"
        )


def _point_rows(
    event: Event,
    point: LabelledPoint,
    state: SessionState,
    items: list[str],
    types: list[str],
    generator: SignalCandidates,
    board: TrendingBoard,
    trending_rows: dict[str, tuple[int, Row]],
) -> PointRows:
    """The ranking rows of ``point``, reached at ``event`` (folded into ``state``)."""
    session = session_row(state).values
    context = PredictionContext(
        event.session_id, point.user_id, event.ts, tuple(items), tuple(types)
    )
    proposed = {c.item_id: c for c in generator.generate(context)}
    covered = 0
    if point.items is None:
        pool = list(proposed.values())
    else:
        pool = [proposed.get(item) or Candidate(item, (), {}) for item in point.items]
        covered = sum(item in proposed for item in point.items)
    rows: dict[str, Row | None] = {}
    for c in pool:
        trend = board.items.get(c.item_id)
        trending: Row | None = None
        if trend is not None:
            cached = trending_rows.get(c.item_id)
            if cached is None or cached[0] != trend.version:
                values = trending_row(c.item_id, trend, board.config).values
                cached = trending_rows[c.item_id] = (trend.version, values)
            trending = cached[1]
        rows[c.item_id] = item_row(point.item_rows.get(c.item_id), trending)
    now_s = micros(event.ts) / 1_000_000
    names = [c.item_id for c in pool]
    block = ranking_matrix(pool, session, point.user_row, rows, now_s)
    if point.declared:
        no_values = (math.nan,) * len(point.declared)
        extra = [point.declared_values.get(c.item_id, no_values) for c in pool]
        more = np.asarray(extra, dtype=np.float64).reshape(len(pool), len(point.declared))
        block = np.hstack([block, more])
    return PointRows(
        point,
        names,
        block,
        np.asarray([int(name == point.target) for name in names], dtype=np.int64),
        covered,
    )


def replay_features(
    events: Sequence[Event],
    points: Sequence[LabelledPoint],
    *,
    candidates: CandidateConfig = DEFAULT_CONFIG,
    session_policy: SessionPolicy | None = None,
    learn_until: datetime | None = None,
    learns: Callable[[Event], bool] | None = None,
    learn_after_session: bool = False,
    on_point: Callable[[], None] | None = None,
    item_model: ItemModel | SessionFolds | None = None,
) -> FeatureSet:
    """Ranking features of every point's candidates, computed by replaying ``events``.

    ``events`` must be in time order and contain every point's event. With ``learn_until``,
    the signals (co-visitation, trending, histories) stop learning at that time while
    sessions keep folding; with ``learns``, they learn only from the events it accepts (the
    protocols of frozen-index benchmarks). With ``learn_after_session``, they learn a
    session's events only at its last event in ``events`` (never at the session's own
    points; see :attr:`TrainingConfig.learn_after_session`). ``item_model`` is the
    batch-trained item model the candidates' ``model`` source reads (cross-fitted
    :class:`~featrec.core.items.slist.SessionFolds` when the points are its own training data).
    Every row in memory: :func:`replay_points` is the streaming form.
    """
    declared = points[0].declared if points else ()
    if any(p.declared != declared for p in points):
        raise ConfigError("the points name different declared features")
    seen: set[tuple[str, int]] = set()
    for p in points:
        key = (p.session_id, p.position)
        if key in seen:
            raise ConfigError(f"two points at event {p.position} of session {p.session_id!r}")
        seen.add(key)
    blocks: list[npt.NDArray[np.float64]] = []
    labels: list[npt.NDArray[np.int64]] = []
    groups: list[int] = []
    item_ids: list[str] = []
    done: list[LabelledPoint] = []
    covered = total = 0
    for replayed in replay_points(
        zip(events, last_flags(events), strict=True),
        sorted(points, key=lambda p: p.at),
        candidates=candidates,
        session_policy=session_policy,
        learn_until=learn_until,
        learns=learns,
        learn_after_session=learn_after_session,
        item_model=item_model,
    ):
        blocks.append(replayed.X)
        labels.append(replayed.y)
        groups.extend([len(done)] * len(replayed.items))
        item_ids.extend(replayed.items)
        covered += replayed.covered
        total += len(replayed.items)
        done.append(replayed.point)
        if on_point is not None:
            on_point()
    names = (*RANKING_FEATURES, *declared)
    width = len(names)
    return FeatureSet(
        X=np.vstack(blocks) if blocks else np.empty((0, width), dtype=np.float64),
        y=np.concatenate(labels) if labels else np.empty(0, dtype=np.int64),
        group=np.asarray(groups, dtype=np.int64),
        item_ids=item_ids,
        points=done,
        candidate_coverage=covered / total if total and any(p.items for p in done) else 1.0,
        feature_names=names,
    )


# -- fit and evaluate -------------------------------------------------------------------------


def split_by_time(features: FeatureSet, holdout: float) -> tuple[list[int], list[int]]:
    """Point indexes before and after the time split (the newest ``holdout`` share held
    out; points at the same time stay on one side)."""
    order = sorted(range(len(features.points)), key=lambda i: (features.points[i].at, i))
    n_test = math.floor(len(order) * holdout)
    if n_test == 0:
        return order, []
    cut = len(order) - n_test
    boundary = features.points[order[cut]].at
    while cut > 0 and features.points[order[cut - 1]].at == boundary:
        cut -= 1
    return order[:cut], order[cut:]


def _rows_of(features: FeatureSet, point_indexes: Sequence[int]) -> npt.NDArray[np.bool_]:
    chosen = np.zeros(len(features.points), dtype=bool)
    chosen[list(point_indexes)] = True
    mask: npt.NDArray[np.bool_] = chosen[features.group]
    return mask


def sample_negatives(
    features: FeatureSet, rows: npt.NDArray[np.bool_], per_point: int | None, seed: int
) -> npt.NDArray[np.bool_]:
    """``rows`` keeping every positive and at most ``per_point`` negatives per point."""
    if per_point is None:
        return rows
    rng = np.random.default_rng(seed)
    keep: npt.NDArray[np.bool_] = rows & (features.y == 1)
    for part in features.point_slices():
        negatives = np.flatnonzero(rows[part] & (features.y[part] == 0)) + part.start
        if len(negatives) > per_point:
            negatives = rng.choice(negatives, per_point, replace=False)
        keep[negatives] = True
    return keep


def ranked_lists(
    features: FeatureSet, point_indexes: Sequence[int], scores: npt.NDArray[np.float64] | None
) -> Iterator[tuple[list[str], str]]:
    """Per point: its candidates best first (by ``scores``, ties in candidate order; ``None``:
    candidate order) and its target (``""`` when unknown)."""
    slices = features.point_slices()
    for i in point_indexes:
        rows = slices[i]
        names = features.item_ids[rows]
        if scores is None:
            ranked = names
        else:
            part = scores[rows]
            order = sorted(range(len(names)), key=lambda j: (-part[j], j))
            ranked = [names[j] for j in order]
        yield ranked, features.points[i].target or ""


def evaluate(
    features: FeatureSet,
    point_indexes: Sequence[int],
    scores: npt.NDArray[np.float64] | None,
    k: int,
) -> dict[str, float]:
    """HR@k and MRR@k over the points (a target outside the candidates is a miss)."""
    lists, targets = [], []
    for ranked, target in ranked_lists(features, point_indexes, scores):
        lists.append(ranked)
        targets.append(target)
    if not targets:
        return {}
    return {f"hr@{k}": hit_rate_at_k(lists, targets, k), f"mrr@{k}": mrr_at_k(lists, targets, k)}


def fit_ranker(
    features: FeatureSet,
    config: TrainingConfig,
    split: tuple[Sequence[int], Sequence[int]] | None = None,
) -> TrainingResult:
    """Fit on the points before the time split; measure on the held-out ones. ``split``
    gives the (train, held-out) point indexes instead (e.g. a benchmark's own protocol)."""
    train_idx, test_idx = split if split is not None else split_by_time(features, config.holdout)
    train_rows = sample_negatives(
        features, _rows_of(features, train_idx), config.negatives_per_point, config.random_state
    )
    y_train = features.y[train_rows]
    if y_train.sum() == 0 or y_train.sum() == len(y_train):
        raise ConfigError(
            "the training points need both positive and negative examples: with no next "
            "item among the candidates there is nothing to learn"
        )
    ranker = config.ranker(features.feature_names).fit(features.X[train_rows], y_train)
    metrics: dict[str, float] = {
        "points": float(len(features.points)),
        "train_points": float(len(train_idx)),
        "holdout_points": float(len(test_idx)),
        "rows": float(len(features.y)),
        "train_rows": float(train_rows.sum()),
        "positive_rate": float(features.y.mean()) if len(features.y) else 0.0,
        "candidate_recall": _recall(features),
        "candidate_coverage": features.candidate_coverage,
    }
    if test_idx:
        # Bulk scoring may use every core; the stored model keeps its one-thread default.
        threads = ranker.prediction_threads
        ranker.set_params(prediction_threads=None)
        scores = ranker.score_candidates(features.X)
        ranker.set_params(prediction_threads=threads)
        k = config.k
        for name, value in evaluate(features, test_idx, None, k).items():
            metrics[f"holdout_candidate_order_{name}"] = value
        for name, value in evaluate(features, test_idx, scores, k).items():
            metrics[f"holdout_model_{name}"] = value
    return TrainingResult(ranker, metrics)


def _recall(features: FeatureSet) -> float:
    if not features.points:
        return 0.0
    hits = np.zeros(len(features.points), dtype=bool)
    hits[features.group[features.y == 1]] = True
    return float(hits.mean())


def holdout_start(times: Sequence[datetime], holdout: float) -> datetime | None:
    """The time from which points are held out: :func:`split_by_time`'s split from the
    points' times alone (None: nothing held out)."""
    n_test = math.floor(len(times) * holdout)
    if n_test == 0:
        return None
    ordered = sorted(times)
    return ordered[len(ordered) - n_test]


class RowSpool:
    """Rows of float64 features appended to a file in ``directory`` instead of held in
    memory: one ``tofile`` per block, read back in one allocation (:meth:`read`) or in
    chunks (:meth:`chunks`). The width is set by the first block."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / f"{name}.f64"
        self.width: int | None = None
        self.rows = 0
        self._file: BinaryIO | None = None

    def append(self, block: npt.NDArray[np.float64]) -> None:
        if self.width is None:
            self.width = block.shape[1]
        elif block.shape[1] != self.width:
            raise ValueError(f"a block of width {block.shape[1]} in a spool of {self.width}")
        if self._file is None:
            self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()/read()
        np.ascontiguousarray(block, dtype=np.float64).tofile(self._file)
        self.rows += block.shape[0]

    def _flushed(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, width: int) -> npt.NDArray[np.float64]:
        """Every row, as one C-contiguous array (``width`` columns when empty)."""
        self._flushed()
        if self.rows == 0:
            return np.empty((0, self.width or width), dtype=np.float64)
        return np.fromfile(self.path, dtype=np.float64).reshape(self.rows, -1)

    def chunks(self, rows: int) -> Iterator[npt.NDArray[np.float64]]:
        """The rows in order, at most ``rows`` at a time."""
        self._flushed()
        if self.rows == 0 or self.width is None:
            return
        with open(self.path, "rb") as f:
            for start in range(0, self.rows, rows):
                n = min(rows, self.rows - start)
                yield np.fromfile(f, dtype=np.float64, count=n * self.width).reshape(n, -1)

    def close(self) -> None:
        self._flushed()
        self.path.unlink(missing_ok=True)


@dataclass
class CollectedRows:
    """What :func:`collect_rows` keeps of a replay for the fit: the training rows and labels,
    the held-out points' rows (spooled to disk), their candidates and targets, and counts."""

    train: RowSpool
    held: RowSpool
    train_y: list[npt.NDArray[np.int8]] = field(default_factory=list)
    held_items: list[tuple[str, ...]] = field(default_factory=list)
    held_targets: list[str] = field(default_factory=list)
    declared: tuple[str, ...] | None = None
    points: int = 0
    train_points: int = 0
    rows: int = 0
    positives: int = 0
    hits: int = 0
    covered: int = 0
    any_items: bool = False

    def close(self) -> None:
        self.train.close()
        self.held.close()


#: Held-out rows scored at a time after the fit (~64 MB of features).
HELD_CHUNK_ROWS = 131_072


def collect_rows(
    replayed: Iterable[PointRows],
    config: TrainingConfig,
    *,
    holdout_from: datetime | None,
    directory: Path,
) -> CollectedRows:
    """The first half of :func:`fit_stream`: read the replay, spooling to ``directory`` the
    training points' positives and seeded sample of negatives and every row of the held-out
    points. Memory keeps only labels, the held-out points' candidate ids and targets."""
    rng = np.random.default_rng(config.random_state)
    per_point = config.negatives_per_point
    out = CollectedRows(RowSpool(directory, "train"), RowSpool(directory, "held"))
    names: dict[str, str] = {}
    for rows in replayed:
        if out.declared is None:
            out.declared = rows.point.declared
        elif rows.point.declared != out.declared:
            raise ConfigError("the points name different declared features")
        out.points += 1
        out.rows += len(rows.y)
        found = int(rows.y.sum())
        out.positives += found
        out.hits += found > 0
        out.covered += rows.covered
        out.any_items = out.any_items or bool(rows.point.items)
        if holdout_from is not None and rows.point.at >= holdout_from:
            out.held.append(rows.X)
            out.held_items.append(tuple(names.setdefault(i, i) for i in rows.items))
            out.held_targets.append(rows.point.target or "")
            continue
        out.train_points += 1
        if per_point is None:
            out.train.append(rows.X)
            out.train_y.append(rows.y.astype(np.int8))
            continue
        keep = rows.y == 1
        negatives = np.flatnonzero(rows.y == 0)
        if len(negatives) > per_point:
            negatives = rng.choice(negatives, per_point, replace=False)
        keep[negatives] = True
        out.train.append(rows.X[keep])
        out.train_y.append(rows.y[keep].astype(np.int8))
    return out


def fit_collected(
    collected: CollectedRows,
    config: TrainingConfig,
    *,
    on_fit: Callable[[int], None] | None = None,
) -> TrainingResult:
    """The second half of :func:`fit_stream`: fit on the collected training rows, then score
    the held-out rows chunk by chunk for HR@K / MRR@K."""
    c = collected
    if c.points == 0:
        raise ConfigError("no prediction points to train on")
    names = (*RANKING_FEATURES, *(c.declared or ()))
    y = np.concatenate(c.train_y).astype(np.int64) if c.train_y else np.empty(0, np.int64)
    c.train_y.clear()
    if y.sum() == 0 or y.sum() == len(y):
        raise ConfigError(
            "the training points need both positive and negative examples: with no next "
            "item among the candidates there is nothing to learn"
        )
    X = c.train.read(len(names))
    # What Ranker.fit does to an all-NaN column, done here in place: the Ranker would copy
    # the whole matrix to do it.
    for column in range(X.shape[1]):
        if np.isnan(X[:, column]).all():
            X[:, column] = 0.0
    if on_fit is not None:
        on_fit(len(y))
    ranker = config.ranker(names).fit(X, y)
    del X
    metrics: dict[str, float] = {
        "points": float(c.points),
        "train_points": float(c.train_points),
        "holdout_points": float(len(c.held_targets)),
        "rows": float(c.rows),
        "train_rows": float(len(y)),
        "positive_rate": c.positives / c.rows if c.rows else 0.0,
        "candidate_recall": c.hits / c.points,
        "candidate_coverage": c.covered / c.rows if c.rows and c.any_items else 1.0,
    }
    if c.held_targets:
        threads = ranker.prediction_threads
        ranker.set_params(prediction_threads=None)
        scores = np.concatenate(
            [ranker.score_candidates(chunk) for chunk in c.held.chunks(HELD_CHUNK_ROWS)]
        )
        ranker.set_params(prediction_threads=threads)
        k = config.k
        by_model: list[list[str]] = []
        start = 0
        for items in c.held_items:
            part = scores[start : start + len(items)]
            start += len(items)
            order = sorted(range(len(items)), key=lambda j: (-part[j], j))
            by_model.append([items[j] for j in order])
        by_candidates = [list(items) for items in c.held_items]
        for name, lists in (("candidate_order", by_candidates), ("model", by_model)):
            metrics[f"holdout_{name}_hr@{k}"] = hit_rate_at_k(lists, c.held_targets, k)
            metrics[f"holdout_{name}_mrr@{k}"] = mrr_at_k(lists, c.held_targets, k)
    return TrainingResult(ranker, metrics)


def fit_stream(
    replayed: Iterable[PointRows],
    config: TrainingConfig,
    *,
    holdout_from: datetime | None,
    on_fit: Callable[[int], None] | None = None,
) -> TrainingResult:
    """:func:`fit_ranker` over a stream of replayed points (:func:`replay_points`), keeping
    only what the fit needs: the training points' positives and their seeded sample of
    negatives, and every row of the held-out points (those at or after ``holdout_from``,
    see :func:`holdout_start`), both spooled to files in a temporary directory rather than
    held in memory. The same rows, model and metrics as :func:`fit_ranker`
    on the whole :class:`FeatureSet` (the same seeded sample, drawn in the same order).
    ``on_fit(rows)`` is called before fitting on ``rows`` rows. :func:`collect_rows` and
    :func:`fit_collected` are its two halves, for a caller that frees memory in between."""
    with tempfile.TemporaryDirectory(prefix="featrec-") as directory:
        collected = collect_rows(
            replayed, config, holdout_from=holdout_from, directory=Path(directory)
        )
        try:
            return fit_collected(collected, config, on_fit=on_fit)
        finally:
            collected.close()


def train(
    events: Sequence[Event],
    points: Sequence[LabelledPoint],
    config: TrainingConfig = TrainingConfig(),
    on_point: Callable[[], None] | None = None,
    item_model: ItemModel | SessionFolds | None = None,
) -> TrainingResult:
    """Replay ``events`` for ``points``' features and fit, as a stream
    (:func:`replay_points` into :func:`fit_stream`): the model and metrics of
    :func:`replay_features` + :func:`fit_ranker`, without every row in memory."""
    if not points:
        raise ConfigError("no prediction points to train on")
    replayed = replay_points(
        zip(events, last_flags(events), strict=True),
        sorted(points, key=lambda p: p.at),
        candidates=config.candidates,
        session_policy=config.session_policy,
        learn_after_session=config.learn_after_session,
        item_model=item_model,
    )

    def counted() -> Iterator[PointRows]:
        for rows in replayed:
            yield rows
            if on_point is not None:
                on_point()

    holdout_from = holdout_start([p.at for p in points], config.holdout)
    return fit_stream(counted(), config, holdout_from=holdout_from)


#: :func:`fit_on_events`'s defaults (tuned on RSC15-100k): fit on every point, signals that
#: learn a session once it has ended, 20 sampled negatives per point. In the RSC15 search
#: (docs/tuning/rsc15-full.md) every fit with sampled negatives had HR@20 +0.0009 to +0.0025
#: and MRR@20 within 0.0006 of every negative, and fitted 4-23x faster; the rows held for
#: the fit shrink from the whole candidate pool to 21 per point.
EVENTS_CONFIG = TrainingConfig(holdout=0.0, learn_after_session=True, negatives_per_point=20)


def fit_on_events(
    train_events: Sequence[Event],
    *,
    config: TrainingConfig = EVENTS_CONFIG,
    max_points: int | None = None,
    since_fraction: float = 0.1,
    seed: int = 0,
    on_point: Callable[[], None] | None = None,
    item_model: ItemModel | SessionFolds | None = None,
) -> TrainingResult:
    """A ranker trained from ``train_events`` (time order) alone, with no batch features.

    Every next-item point of the events (repeats kept, as in session-based evaluation) after
    the first ``since_fraction`` of them (the signals are still warming up there), or a
    seeded sample of ``max_points`` of those, replayed and fitted as a stream with
    :func:`train`. ``config``'s defaults are tuned on RSC15-100k (train_tr ->
    train_valid); with ``holdout`` 0 the model fits on every point and the metrics carry no
    held-out figures.
    """
    if not train_events:
        raise ConfigError("no training events")
    if not 0 <= since_fraction < 1:
        raise ConfigError(f"since_fraction must be in [0, 1), got {since_fraction}")
    since = train_events[math.floor(len(train_events) * since_fraction)].ts
    points = points_from_events(
        train_events, collapse_repeats=False, since=since, max_points=max_points, seed=seed
    )
    return train(train_events, points, config, on_point, item_model)
