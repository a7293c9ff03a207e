"""Replay evaluation, the parts that touch files, Feast and the model store.

A work directory (``featrec evaluate --out DIR``) holds everything one evaluation used, so a
result can be inspected and reproduced::

    DIR/spec.json            what was asked (inputs, policies, k, settings)
    DIR/home/                FEATREC_HOME: online store, models/, training event log
    DIR/repo/                the Feast repo (a copy of feature_repo/) with its batch data
    DIR/test_events.jsonl    the test events in replay (time) order
    DIR/answers.jsonl        one line per prediction point: every policy's list and latency
    DIR/replay.json          replay counters and the freshness of every event
    DIR/results.json         the figures; report.md and report.html the report

:func:`prepare` is the **training phase**: from the training events alone it writes the item
signals (co-visitation neighbours, trending) and the batch features (DuckDB snapshots,
materialized) into the online store, frozen at the training cutoff, and trains the ranker the
way production does (``featrec dataset build --keep-repeats`` then ``featrec train``).
:func:`open_replay` builds the replay gate in the dataflow's process (``dataflows.evaluation``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from featrec.app.evaluation.answer_pool import AnswerPool
from featrec.app.evaluation.replay import (
    NEEDS_ITEM_MODEL,
    NEEDS_MODEL,
    PointAnswer,
    Policies,
    ReplayGate,
    ReplayStats,
    most_popular,
)
from featrec.core.evaluation.protocol import prediction_points, time_ordered
from featrec.core.events.formats import DeadLetter
from featrec.core.events.model import Event
from featrec.core.items.slist import SessionFolds, SlistConfig
from featrec.errors import ConfigError
from featrec.settings import Settings

SPEC = "spec.json"
ANSWERS = "answers.jsonl"
REPLAY = "replay.json"
#: Session state is never dropped for wall-clock idleness during a replay.
REPLAY_STATE_TTL_S = 7 * 86_400.0
TRAINERS = ("events", "dataset")


@dataclass(frozen=True, slots=True)
class WorkDir:
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def test_events(self) -> Path:
        return self.root / "test_events.jsonl"

    @property
    def test_log_dir(self) -> Path:
        return self.root / "test_log"

    @property
    def answers(self) -> Path:
        return self.root / ANSWERS

    @property
    def replay(self) -> Path:
        return self.root / REPLAY

    @property
    def spec(self) -> Path:
        return self.root / SPEC


@dataclass(frozen=True, slots=True)
class EvalSpec:
    """What one evaluation is asked to do. Validated by :func:`prepare`."""

    #: Training and test files; with ``test_share`` set, ``train`` is the one event file that
    #: is split by time (whole sessions) and ``test`` is empty.
    train: str
    test: str
    fmt: str | None
    k: int = 20
    policies: tuple[str, ...] = ()
    #: Training points sampled for the ranker (None: every point after the warm-up).
    train_points: int | None = None
    #: How the ranker is trained: "events" (next-item points of the training events, signals
    #: as they were at each point, no batch features) or "dataset" (production's
    #: ``featrec dataset build --keep-repeats`` + ``featrec train``, point-in-time batch features).
    trainer: str = "events"
    seed: int = 0
    #: Session gap of the replay's sessions flow (seconds).
    session_gap_s: float = 1800.0
    settings_env: dict[str, str] = field(default_factory=dict)
    test_share: float | None = None
    #: Sessions replayed at once, each in lock-step (the figures do not depend on it).
    concurrency: int = 1
    #: Processes answering the points, each owning whole sessions (1: the replay process
    #: answers itself; the figures do not depend on it).
    workers: int = 1

    def __post_init__(self) -> None:
        if self.trainer not in TRAINERS:
            raise ConfigError(f"trainer must be one of {', '.join(TRAINERS)}, got {self.trainer!r}")

    def to_json(self) -> str:
        data = asdict(self)
        data["policies"] = list(self.policies)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EvalSpec:
        data = json.loads(text)
        data["policies"] = tuple(data["policies"])
        return cls(**data)


@dataclass(slots=True)
class Prepared:
    """The training phase's result (what the report says about it)."""

    train_events: int
    test_events: int
    dead_letters: int
    cutoff: datetime
    catalogue: int
    model_version: str | None
    seconds: dict[str, float]
    model_metrics: dict[str, float] = field(default_factory=dict)
    item_model_version: str | None = None


def read_valid(path: Path, fmt: str | None) -> tuple[list[Event], list[DeadLetter]]:
    """The events of ``path`` in time order, and its refused records."""
    from featrec.adapters.files.event_files import read_events

    if not path.is_file():
        raise ConfigError(f"no such event file: {path}")
    events: list[Event] = []
    refused: list[DeadLetter] = []
    for item in read_events(path, fmt):
        if isinstance(item, Event):
            events.append(item)
        else:
            refused.append(item)
    return time_ordered(events), refused


def eval_settings(work: WorkDir, spec: EvalSpec) -> Settings:
    """The replay's settings: its own home and repo, one-row micro-batches. Secrets (a Redis
    URL) come from the environment, never from the spec file."""
    import os

    return Settings.from_env(
        {**os.environ, **spec.settings_env},
        home=work.home,
        repo=work.repo,
        batch_max_rows=1,
        session_gap_s=spec.session_gap_s,
        state_ttl_s=REPLAY_STATE_TTL_S,
    )


def prepare(
    work: WorkDir,
    spec: EvalSpec,
    feature_repo: Path,
    *,
    log: Any = print,
) -> Prepared:
    """The training phase (see the module doc). ``log`` prints progress lines."""
    from featrec.adapters.feast.repo import apply_repo
    from featrec.adapters.files.event_files import write_events
    from featrec.adapters.files.event_log import EventLogWriter

    if not (feature_repo / "feature_store.yaml").is_file():
        raise ConfigError(
            f"no Feast repo at {feature_repo}: run from the project directory or set FEATREC_REPO"
        )
    if work.root.exists() and any(work.root.iterdir()):
        raise ConfigError(f"{work.root} is not empty: give a new --out directory")
    work.root.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if spec.test_share is not None:
        from featrec.core.evaluation.protocol import split_by_session_start

        every, bad_train = read_valid(Path(spec.train), spec.fmt)
        train, test, cut = split_by_session_start(every, spec.test_share)
        bad_test: list[DeadLetter] = []
        log(f"time split at {cut.isoformat()}: sessions starting from then on are the test")
    else:
        train, bad_train = read_valid(Path(spec.train), spec.fmt)
        test, bad_test = read_valid(Path(spec.test), spec.fmt)
    if not train:
        raise ConfigError(f"no valid events in the training file {spec.train}")
    if not test:
        raise ConfigError(f"no valid events in the test file {spec.test}")
    cutoff = train[-1].ts
    known = {e.item_id for e in train}
    seconds["read"] = time.perf_counter() - t0
    log(
        f"train {len(train):,} events up to {cutoff.isoformat()}, test {len(test):,} events "
        f"({len(bad_train) + len(bad_test)} refused), catalogue {len(known):,} items"
    )

    work.repo.mkdir()
    for pattern in ("*.py", "*.yaml"):
        for path in feature_repo.glob(pattern):
            shutil.copy(path, work.repo / path.name)
    settings = eval_settings(work, spec)
    work.spec.write_text(spec.to_json())
    write_events(work.test_events, test)

    t0 = time.perf_counter()
    apply_repo(settings)
    EventLogWriter(settings.event_log_dir).write(train)
    seconds["apply + log"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_signal_rows = _write_item_signals(settings, train)
    seconds["item signals"] = time.perf_counter() - t0
    log(f"item signals at the cutoff: {n_signal_rows:,} rows")

    t0 = time.perf_counter()
    materialized = _batch_and_materialize(settings)
    seconds["batch + materialize"] = time.perf_counter() - t0
    log(f"batch features at the cutoff: {materialized:,} rows materialized")

    folds = None
    item_model_version: str | None = None
    if NEEDS_ITEM_MODEL.intersection(spec.policies):
        t0 = time.perf_counter()
        item_model_version, folds = _train_item_model(settings, log)
        seconds["item model"] = time.perf_counter() - t0
        log(f"item model {item_model_version} trained in {seconds['item model']:.1f} s")

    version: str | None = None
    metrics: dict[str, float] = {}
    if NEEDS_MODEL.intersection(spec.policies):
        t0 = time.perf_counter()
        version, metrics = _train_model(settings, train, spec, folds)
        seconds["train"] = time.perf_counter() - t0
        log(f"model {version} trained in {seconds['train']:.1f} s")
    return Prepared(
        train_events=len(train),
        test_events=len(test),
        dead_letters=len(bad_train) + len(bad_test),
        cutoff=cutoff,
        catalogue=len(known),
        model_version=version,
        seconds=seconds,
        model_metrics=metrics,
        item_model_version=item_model_version,
    )


def _train_item_model(settings: Settings, log: Any) -> tuple[str, SessionFolds | None]:
    """The item model on the training events (the event log), written to the online store,
    and its two cross-fitted twins for training the ranker (None if a fold has no events)."""
    from featrec.core.items.slist import fit_folds
    from featrec.jobs.item_model import read_clicks, train_item_model

    _, report = train_item_model(settings, log=log, source="featrec evaluate")
    clicks = read_clicks(settings)
    try:
        folds = fit_folds(clicks, SlistConfig())
    except ConfigError:
        folds = None
    return report.version, folds


def _write_item_signals(settings: Settings, train: Sequence[Event]) -> int:
    from featrec.jobs.item_signals import bootstrap_items

    return bootstrap_items(settings, train, "the training events").written


def _batch_and_materialize(settings: Settings) -> int:
    from featrec.adapters.duckdb.features import EventLogDB
    from featrec.adapters.feast.repo import open_store
    from featrec.core.events.model import MIN_TS
    from featrec.core.features import catalog
    from featrec.jobs.batch import plan_batch, run_batch
    from featrec.jobs.materialize import materialize

    with EventLogDB(settings.event_log_dir, temp_dir=settings.home / "duckdb") as db:
        span = db.time_range()
        assert span is not None
        first = datetime.fromtimestamp(span[0] / 1e6, tz=UTC).date()
        plan = plan_batch(db, None, first, datetime.now(UTC))
        written = run_batch(db, settings.repo / "data", plan.days)
    end = max(w.as_of for w in written)
    store = open_store(settings)
    runs = materialize(store, list(catalog.BATCH_VIEWS), end=end, start=MIN_TS, fast=True)
    return sum(r.written or 0 for r in runs)


def _train_model(
    settings: Settings,
    train: Sequence[Event],
    spec: EvalSpec,
    folds: SessionFolds | None = None,
) -> tuple[str, dict[str, float]]:
    """The ranker from the training events alone, saved as a model version (see
    :attr:`EvalSpec.trainer`)."""
    from dataclasses import replace

    from featrec.adapters.files.model_store import models_dir, save_model
    from featrec.app.training import EVENTS_CONFIG, fit_on_events

    if spec.trainer == "dataset":
        return _train_on_dataset(settings, train, spec, folds)
    config = replace(EVENTS_CONFIG, session_policy=settings.session_policy)
    result = fit_on_events(
        train, config=config, max_points=spec.train_points, seed=spec.seed, item_model=folds
    )
    manifest = save_model(
        result.ranker,
        models_dir(settings.home),
        metrics=result.metrics,
        training={"events": len(train), "trainer": "events", "source": "featrec evaluate"},
    )
    return manifest.version, dict(result.metrics)


def _train_on_dataset(
    settings: Settings,
    train: Sequence[Event],
    spec: EvalSpec,
    folds: SessionFolds | None = None,
) -> tuple[str, dict[str, float]]:
    """Production's training path on the training events: a training set built with the
    serving candidates and point-in-time batch features, then the ranker, saved as a model."""
    from featrec.adapters.feast.repo import open_store
    from featrec.app.training import TrainingConfig
    from featrec.core.candidates.point_generators import SignalCandidates
    from featrec.jobs.training import fit_and_save, load_points
    from featrec.jobs.training_sets import build_training_set

    # The first third of the training days only warms the signals up: a point there would
    # see nearly empty co-visitation lists, which serving never does.
    since = train[len(train) // 3].ts.date()
    out = settings.home / "datasets" / "training.parquet"
    built = build_training_set(
        open_store(settings),
        settings.event_log_dir,
        out,
        generator=SignalCandidates(),
        collapse_repeats=False,
        since=since,
        max_points=spec.train_points,
        seed=spec.seed,
    )
    points, _ = load_points(built.path)
    config = TrainingConfig(holdout=0.0, session_policy=settings.session_policy)
    report = fit_and_save(
        settings,
        train,
        points,
        config,
        item_model=folds,
        training={
            "events": len(train),
            "points": len(points),
            "trainer": "dataset",
            "source": "featrec evaluate",
        },
    )
    return report.version, dict(report.metrics)


@dataclass(slots=True)
class Replay:
    """What the dataflow process needs: the gate, its settings, where refused events go."""

    work: WorkDir
    spec: EvalSpec
    settings: Settings
    gate: ReplayGate
    dead_letters: list[DeadLetter]


def open_replay(root: Path) -> Replay:
    """The replay of a prepared work directory (called in the dataflow's process)."""
    from featrec.jobs.serving import load_model, open_rows

    work = WorkDir(root)
    if not work.spec.is_file():
        raise ConfigError(f"{root} holds no {SPEC}: run `featrec evaluate` to prepare it")
    spec = EvalSpec.from_json(work.spec.read_text())
    settings = eval_settings(work, spec)
    test, _ = read_valid(work.test_events, "featrec")
    train_log = _training_items(settings)
    rows = open_rows(settings)
    model = load_model(settings, "latest") if NEEDS_MODEL.intersection(spec.policies) else None
    policies = Policies(spec.policies, rows, model, most_popular(train_log, spec.k), spec.k)
    policies.frozen.prefetch(_item_rows(train_log))
    dead: list[DeadLetter] = []
    pool: AnswerPool | None = None
    answers: IO[str] | None = None
    if spec.workers > 1:
        # Forked now, before the dataflow starts its threads (see answer_pool).
        pool = AnswerPool(
            policies,
            lambda index: _AnswerLines(_answer_part(work, index).open("w")),
            spec.workers,
            reopen=lambda: open_rows(settings),
        ).start()
    else:
        answers = work.answers.open("w")

    def out(answer: PointAnswer) -> None:
        assert answers is not None
        answers.write(json.dumps(answer.to_dict(), separators=(",", ":")) + "\n")

    def finish(stats: ReplayStats) -> None:
        if answers is not None:
            answers.close()
        else:
            _merge_parts(work, spec.workers)
        data = asdict(stats)
        data["dead_letter_reasons"] = sorted({d.reason for d in dead})[:20]
        work.replay.write_text(json.dumps(data))

    gate = ReplayGate(
        test,
        prediction_points(test),
        rows,
        policies,
        out,
        on_finish=finish,
        concurrency=spec.concurrency,
        answering=pool,
    )
    return Replay(work, spec, settings, gate, dead)


def _item_rows(train: Sequence[Event]) -> dict[str, list[str]]:
    """The rows of the training catalogue the policies read (item rows, neighbour and model
    lists, the trending lists), to read once before answering starts."""
    from featrec.app.item_signals import trending_key
    from featrec.core.features import catalog

    items = sorted({e.item_id for e in train})
    categories = sorted({e.category for e in train if e.category is not None})
    lists = [*items, trending_key(None), *(trending_key(c) for c in categories)]
    return {
        catalog.ITEM_FEATURES.name: items,
        catalog.ITEM_TRENDING.name: items,
        catalog.ITEM_NEIGHBOURS.name: lists,
        catalog.ITEM_MODEL.name: items,
    }


class _AnswerLines:
    """An answering worker's output: its answers as JSON lines (merged at the end)."""

    def __init__(self, f: IO[str]) -> None:
        self.f = f

    def write(self, answer: PointAnswer) -> None:
        self.f.write(json.dumps(answer.to_dict(), separators=(",", ":")) + "\n")

    def close(self) -> None:
        self.f.close()


def _answer_part(work: WorkDir, index: int) -> Path:
    return work.root / f"{ANSWERS}.worker-{index}"


def _merge_parts(work: WorkDir, workers: int) -> None:
    """The workers' answer files, one after the other, as ``answers.jsonl`` (its readers
    order the points themselves: :func:`read_answers`)."""
    with work.answers.open("w") as out:
        for index in range(workers):
            part = _answer_part(work, index)
            with part.open() as f:
                shutil.copyfileobj(f, out)
            part.unlink()


def _training_items(settings: Settings) -> list[Event]:
    from featrec.jobs.training_sets import log_events

    return list(log_events(settings.event_log_dir))


def run_replay(work: WorkDir, *, timeout_s: float | None = None) -> float:
    """Replay the test events through the sessions dataflow in its own process
    (``python -m bytewax.run "dataflows.evaluation:flow()"``); returns its wall time."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "FEATREC_EVAL_DIR": str(work.root), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.evaluation:flow()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or not work.replay.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise ConfigError(
            f"the replay dataflow failed (exit {done.returncode}):\n" + "\n".join(tail)
        )
    return seconds


def read_answers(work: WorkDir) -> list[dict[str, Any]]:
    """Every point's answers, in the points' (time) order, whatever the replay's concurrency."""
    with work.answers.open() as f:
        answers = [json.loads(line) for line in f if line.strip()]
    return sorted(answers, key=lambda a: int(a["point"]["event_index"]))


def read_external(path: Path) -> dict[tuple[str, int], list[str]]:
    """An external list file (JSON lines; see ``parse_external_list`` in the core)."""
    from featrec.core.evaluation.protocol import parse_external_list

    if not path.is_file():
        raise ConfigError(f"no such list file: {path}")
    lists: dict[tuple[str, int], list[str]] = {}
    with path.open() as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path} line {n}: not JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{path} line {n}: expected a JSON object")
            key, items = parse_external_list(record, n)
            lists[key] = items
    return lists


def score(
    work: WorkDir,
    prepared: Prepared | None,
    replay_seconds: float,
    *,
    external: dict[str, dict[tuple[str, int], list[str]]] | None = None,
) -> dict[str, Any]:
    """Score the answers of a finished replay; writes results.json and the report."""
    from featrec.app.evaluation.replay import training_popularity
    from featrec.app.evaluation.report import render
    from featrec.core.evaluation.protocol import (
        PredictionPoint,
        align_external,
        percentiles,
        score_policy,
    )

    spec = EvalSpec.from_json(work.spec.read_text())
    settings = eval_settings(work, spec)
    answers = read_answers(work)
    replay = json.loads(work.replay.read_text())
    if not answers:
        raise ConfigError(
            "the replay answered no prediction point (are all test sessions 1 event?)"
        )
    popularity = training_popularity(_training_items(settings))
    targets = [a["point"]["target"] for a in answers]
    rows = []
    latencies: dict[str, list[float]] = {}
    for policy in spec.policies:
        lists = [a["lists"][policy] for a in answers]
        lat = [a["latency_ms"][policy] for a in answers]
        latencies[policy] = lat
        degraded = sum(1 for a in answers if a["degraded"][policy])
        rows.append(
            score_policy(
                policy, lists, targets, popularity, spec.k, latencies_ms=lat, degraded=degraded
            ).to_dict()
        )
    points = [PredictionPoint(**a["point"]) for a in answers]
    for name, lists_by_key in (external or {}).items():
        aligned, missing = align_external(points, lists_by_key)
        row = score_policy(f"external:{name}", aligned, targets, popularity, spec.k).to_dict()
        row["missing_lists"] = missing
        rows.append(row)
    freshness = replay["freshness_ms"]
    results: dict[str, Any] = {
        "train": spec.train,
        "test": spec.test
        or f"the sessions starting in the last {spec.test_share:.0%} of its events (time split)",
        "format": spec.fmt or "auto",
        "k": spec.k,
        "points": len(answers),
        "catalogue": len(popularity),
        "policies": rows,
        "replay": {
            "events": replay["released"],
            "seconds": replay_seconds,
            "events_per_s": replay["released"] / replay_seconds if replay_seconds else 0.0,
            "freshness_ms": percentiles(freshness),
            "dead_letters": replay["dead_letters"],
            "unreadable": replay["unreadable"],
        },
        "training": {
            "seconds": prepared.seconds if prepared is not None else {},
            "model_version": prepared.model_version if prepared is not None else None,
            "cutoff": prepared.cutoff.isoformat() if prepared is not None else None,
            "train_events": prepared.train_events if prepared is not None else None,
        },
    }
    (work.root / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    for name, text in render(results, latencies, freshness).items():
        (work.root / name).write_text(text)
    return results


def write_points(work: WorkDir, path: Path) -> int:
    """The prediction points of the test events, for other systems to answer (JSON lines:
    ``session_id``, ``position``, the session's items so far, ``at_s``; no target)."""
    from featrec.core.evaluation.protocol import prediction_points as points_of

    test, _ = read_valid(work.test_events, "featrec")
    so_far: dict[str, list[str]] = {}
    n = 0
    with path.open("w") as f:
        for event, point in zip(test, points_of(test), strict=True):
            so_far.setdefault(event.session_id, []).append(event.item_id)
            if point is None:
                continue
            record = {
                "session_id": point.session_id,
                "position": point.position,
                "at_s": point.at_s,
                "items": so_far[event.session_id],
            }
            f.write(json.dumps(record) + "\n")
            n += 1
    return n
