"""The training path as it was before it streamed over the event log (kept verbatim below,
progress callbacks aside): every event and every point in memory. The oracle of
``tests/contract/test_training_stream.py``, which checks that the chunked path gives the same
training examples, the same replayed rows and the same model."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from featrec.adapters.files.event_log import read_event_log
from featrec.app.training import FeatureSet, LabelledPoint, Row
from featrec.core.candidates.config import DEFAULT_CONFIG, CandidateConfig
from featrec.core.candidates.model import Candidate
from featrec.core.candidates.point_generators import (
    CandidateGenerator,
    EventObserver,
    PredictionContext,
    SignalCandidates,
)
from featrec.core.candidates.signals import InMemorySignals
from featrec.core.events.model import Event
from featrec.core.features.rows import micros
from featrec.core.features.snapshot_days import midnight
from featrec.core.items.slist import ItemModel, SessionFolds
from featrec.core.items.trending import trending_row
from featrec.core.ranking.examples import Example
from featrec.core.ranking.ranker import RANKING_FEATURES, item_row, ranking_matrix
from featrec.core.sessions.fold import SessionPolicy, SessionState, fold, session_row
from featrec.errors import ConfigError
from featrec.jobs.training_sets import EXAMPLE_COLUMNS


def next_item_targets(events: Sequence[Event], collapse_repeats: bool = True) -> list[str | None]:
    """Per event (``events`` in time order): the next item of its session if the event is a
    prediction point, else None."""
    targets: list[str | None] = [None] * len(events)
    following: dict[str, str] = {}
    for i in range(len(events) - 1, -1, -1):
        event = events[i]
        after = following.get(event.session_id)
        if after is not None and not (collapse_repeats and after == event.item_id):
            targets[i] = after
        following[event.session_id] = event.item_id
    return targets


def build_examples(
    events: Sequence[Event],
    targets: Sequence[str | None],
    generator: CandidateGenerator,
) -> Iterator[Example]:
    """Walk ``events`` in time order and yield the examples of every point whose target is
    not None (``targets`` aligned with ``events``; see :func:`next_item_targets`).

    ``generator`` observes each event (if it is an :class:`EventObserver`) before the point
    at that event asks for candidates.
    """
    if len(targets) != len(events):
        raise ValueError(f"{len(targets)} targets for {len(events)} events")
    observer = generator if isinstance(generator, EventObserver) else None
    remaining = Counter(e.session_id for e in events)
    sessions: dict[str, tuple[list[str], list[str], list[str | None]]] = {}
    previous: datetime | None = None
    point = 0
    for event, target in zip(events, targets, strict=True):
        if previous is not None and event.ts < previous:
            raise ValueError(
                f"events out of time order: {event.event_id} at {event.ts.isoformat()} "
                f"after {previous.isoformat()}"
            )
        previous = event.ts
        if observer is not None:
            observer.observe(event)
        items, types, user = sessions.setdefault(event.session_id, ([], [], [None]))
        items.append(event.item_id)
        types.append(event.type)
        if event.user_id is not None:
            user[0] = event.user_id
        if target is not None:
            context = PredictionContext(
                event.session_id, user[0], event.ts, tuple(items), tuple(types)
            )
            for rank, candidate in enumerate(generator.candidates(context)):
                yield Example(
                    point,
                    event.session_id,
                    user[0],
                    event.ts,
                    len(items),
                    event.item_id,
                    candidate,
                    rank,
                    int(candidate == target),
                )
            point += 1
        remaining[event.session_id] -= 1
        if not remaining[event.session_id]:
            del remaining[event.session_id], sessions[event.session_id]


def choose_points(
    events: Sequence[Event],
    targets: Sequence[str | None],
    *,
    since: date | None = None,
    until: date | None = None,
    max_points: int | None = None,
    seed: int = 0,
) -> list[str | None]:
    """``targets`` with the points outside ``[since, until]`` (UTC days) set to None, and a
    seeded uniform sample of at most ``max_points`` of the rest."""
    start = midnight(since) if since is not None else None
    end = midnight(until) + timedelta(days=1) if until is not None else None
    kept = [
        i
        for i, target in enumerate(targets)
        if target is not None
        and (start is None or events[i].ts >= start)
        and (end is None or events[i].ts < end)
    ]
    if max_points is not None:
        if max_points < 1:
            raise ConfigError(f"max points must be >= 1, got {max_points}")
        if len(kept) > max_points:
            kept = sorted(random.Random(seed).sample(kept, max_points))
    chosen: list[str | None] = [None] * len(targets)
    for i in kept:
        chosen[i] = targets[i]
    return chosen


def log_events(log_dir: Path) -> list[Event]:
    """Every logged event (deduplicated), in time order."""
    table = read_event_log(log_dir)
    columns = [
        table.column(name).to_pylist()
        for name in (
            "event_id",
            "session_id",
            "item_id",
            "type",
            "ts",
            "user_id",
            "price",
            "category",
            "quantity",
        )
    ]
    return [Event(*values) for values in zip(*columns, strict=True)]


def examples_table(
    events: list[Event],
    targets: list[str | None],
    generator: CandidateGenerator,
    on_point: Callable[[], None] | None = None,
) -> tuple[pa.Table, int]:
    """The examples as a table (:data:`EXAMPLE_COLUMNS`) and how many points had their
    target among the candidates."""
    columns: dict[str, list[Any]] = {name: [] for name in EXAMPLE_COLUMNS}
    hits = 0
    last_point = -1
    for ex in build_examples(events, targets, generator):
        if ex.point != last_point:
            last_point = ex.point
            if on_point is not None:
                on_point()
        hits += ex.label
        columns["point_id"].append(ex.point)
        columns["session_id"].append(ex.session_id)
        columns["user_id"].append(ex.user_id)
        columns["event_timestamp"].append(ex.at)
        columns["position"].append(ex.position)
        columns["current_item_id"].append(ex.current_item)
        columns["item_id"].append(ex.candidate)
        columns["candidate_rank"].append(ex.rank)
        columns["label"].append(ex.label)
    schema = pa.schema(
        [
            ("point_id", pa.int64()),
            ("session_id", pa.string()),
            ("user_id", pa.string()),
            ("event_timestamp", pa.timestamp("us", tz="UTC")),
            ("position", pa.int64()),
            ("current_item_id", pa.string()),
            ("item_id", pa.string()),
            ("candidate_rank", pa.int64()),
            ("label", pa.int64()),
        ]
    )
    return pa.Table.from_pydict(columns, schema=schema), hits


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
    """
    policy = session_policy or SessionPolicy()
    wanted: dict[tuple[str, int], LabelledPoint] = {}
    for p in points:
        key = (p.session_id, p.position)
        if key in wanted:
            raise ConfigError(f"two points at event {p.position} of session {p.session_id!r}")
        wanted[key] = p
    generator = SignalCandidates(candidates, InMemorySignals(model=item_model))
    board = generator.signals.board
    remaining = Counter(e.session_id for e in events) if learn_after_session else Counter()
    pending: dict[str, list[Event]] = {}
    trending_rows: dict[str, tuple[int, Row]] = {}
    sessions: dict[str, tuple[SessionState, list[str], list[str]]] = {}
    blocks: list[npt.NDArray[np.float64]] = []
    labels: list[int] = []
    groups: list[int] = []
    item_ids: list[str] = []
    done: list[LabelledPoint] = []
    covered = total = 0
    previous: datetime | None = None
    for event in events:
        if previous is not None and event.ts < previous:
            raise ConfigError(f"events out of time order at {event.event_id}")
        previous = event.ts
        if (learn_until is None or event.ts < learn_until) and (learns is None or learns(event)):
            if learn_after_session:
                pending.setdefault(event.session_id, []).append(event)
            else:
                generator.observe(event)
        if learn_after_session:
            remaining[event.session_id] -= 1
            if not remaining[event.session_id]:
                for past in pending.pop(event.session_id, ()):
                    generator.observe(past)
        state, items, types = sessions.setdefault(
            event.session_id, (SessionState(event.session_id), [], [])
        )
        fold(state, event, policy)
        items.append(event.item_id)
        types.append(event.type)
        point = wanted.pop((event.session_id, len(items)), None)
        if point is None:
            continue
        session = session_row(state).values
        context = PredictionContext(
            event.session_id, point.user_id, event.ts, tuple(items), tuple(types)
        )
        proposed = {c.item_id: c for c in generator.generate(context)}
        if point.items is None:
            pool = list(proposed.values())
        else:
            pool = [proposed.get(item) or Candidate(item, (), {}) for item in point.items]
            covered += sum(item in proposed for item in point.items)
        total += len(pool)
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
        blocks.append(ranking_matrix(pool, session, point.user_row, rows, now_s))
        labels.extend(int(c.item_id == point.target) for c in pool)
        groups.extend([len(done)] * len(pool))
        item_ids.extend(c.item_id for c in pool)
        done.append(point)
        if on_point is not None:
            on_point()
    if wanted:
        session_id, position = next(iter(wanted))
        raise ConfigError(
            f"{len(wanted)} point(s) have no event in the log, e.g. event {position} of "
            f"session {session_id!r}: train on the log the training set was built from"
        )
    width = len(RANKING_FEATURES)
    return FeatureSet(
        X=np.vstack(blocks) if blocks else np.empty((0, width), dtype=np.float64),
        y=np.asarray(labels, dtype=np.int64),
        group=np.asarray(groups, dtype=np.int64),
        item_ids=item_ids,
        points=done,
        candidate_coverage=covered / total if total and any(p.items for p in done) else 1.0,
    )
