"""Seeded random search over the documented knobs of the full policy, scored by replay.

The full policy's figures (HR@K / MRR@K through ``featrec evaluate``) depend on two kinds of
knob (the space is :data:`SPACE`, each knob with its range and where it is documented):

- **serving** knobs (``ServingConfig``, ``CandidateConfig``, ``ScorerConfig``, ``RerankConfig``:
  candidate pool sizes, the co-visitation scorer's weights, two-stage N, popularity damping)
  change only how a request is answered. They are scored on ONE prepared training phase.
- **ranker** knobs (``TrainingConfig``: trees, learning rate, leaves, regularisation, sampled
  negatives) change the trained model. The training points' features (the expensive replay of
  the training events, ~5 min on RSC15-100k) are computed once and cached; each ranker
  configuration is only a refit of the ranker on them, saved as a model version.

Every configuration is answered as a *variant* of the full policy
(:meth:`featrec.app.evaluation.replay.Policies.add_variant`) in a replay of the real sessions
dataflow: one replay answers a whole batch of configurations at every prediction point, the
defaults among them (``d0``) and the candidate order without a ranker (``c0``, the reference
for what the ranker adds). Each configuration's HR and MRR come with a standard error, and its
difference from the defaults on the same points with the standard error of that paired
difference; both are clustered by test session (points of one session are not independent).

The search: ``d0`` and ``c0``, then ``--serving`` configurations drawing every serving knob
uniformly from its values (ranker at its defaults), then ``--ranker`` configurations drawing
every ranker knob (serving at its defaults), seeded (``--seed``): the same arguments always
give the same plan. ``--set KNOB=V,KNOB=V`` adds a configuration of one's own (``x1``, ...).
A default is worth changing only when its paired gain is over ``--z`` (2) standard errors.

The heavy phases take the shared lock ``/tmp/featrec-heavy.lock`` themselves, one batch at a
time, so other work interleaves (do not wrap this script in ``flock``)::

    D=../shared/data/rsc15-100k
    .venv/bin/python benchmarks/tune_full.py --train $D/yoochoose-clicks-100k_train_tr.txt \\
        --test $D/yoochoose-clicks-100k_train_valid.txt --format session-rec \\
        --work /tmp/featrec-tune --seed 1 --serving 24 --ranker 3 --batch 8

It resumes: configurations already in ``--out`` (``docs/tuning/rsc15-full.json``) are not run
again; ``--max-batches`` bounds one invocation; ``--report`` only rewrites the JSON's figures
and the Markdown (``docs/tuning/rsc15-full.md``) from the work directory's per-point results.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import fcntl
import json
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from featrec.app.serving.config import ServingConfig
from featrec.app.training import EVENTS_CONFIG
from featrec.errors import ConfigError

SERVING = "serving"
RANKER = "ranker"
KINDS = (SERVING, RANKER)
LOCK = Path("/tmp/featrec-heavy.lock")
#: The replay subprocess reads its variants from this file (see :func:`flow`).
ENV_VARIANTS = "TUNE_FULL_VARIANTS"
DEFAULTS_ID = "d0"
#: A local draw moves each knob away from its default with this probability.
LOCAL_MOVE = 0.25
CANDIDATE_ORDER_ID = "c0"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass(frozen=True, slots=True)
class Knob:
    """One documented knob: where it lives, the values the search draws from, where it is
    documented. The default is read from the code (:func:`default_of`), never restated."""

    name: str
    kind: str
    #: Dotted path in the config object: ``candidates.scoring.recency_decay`` in
    #: ``ServingConfig``, ``learning_rate`` in ``TrainingConfig``.
    path: str
    values: tuple[Any, ...]
    doc: str
    #: False: never drawn by the search, only set by ``--set`` (a confirmation knob).
    search: bool = True


_SCORER = "ScorerConfig (core/items/session_scorer.py)"
_CANDS = "CandidateConfig (core/candidates/config.py)"
_TRAIN = "TrainingConfig (app/training.py)"

#: The search space. Ranges bracket each default by about 2-4x either way.
SPACE: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob(
            "rank_top",
            SERVING,
            "rank_top",
            (20, 30, 50, 75, 100),
            "ServingConfig.rank_top (app/serving/config.py); README Recommendations, "
            "step 5 Two-stage and 'Two-stage quality'",
        ),
        Knob(
            "max_total",
            SERVING,
            "candidates.max_total",
            (50, 75, 100, 150, 200),
            f"{_CANDS}; `featrec serve --candidates` (README Recommendations)",
        ),
        Knob(
            "max_covisit",
            SERVING,
            "candidates.max_covisit",
            (20, 30, 50, 75, 100, 150),
            f"{_CANDS}; README Recommendations step 4",
        ),
        Knob(
            "max_model",
            SERVING,
            "candidates.max_model",
            (0, 10, 25, 50, 75, 100),
            f"{_CANDS}; README Item model ('model source, up to 50 candidates')",
        ),
        Knob(
            "max_trending",
            SERVING,
            "candidates.max_trending",
            (0, 5, 10, 20, 40),
            f"{_CANDS}; README Recommendations step 4",
        ),
        Knob(
            "min_total",
            SERVING,
            "candidates.min_total",
            (0, 20, 50, 100),
            f"{_CANDS} (popular items top the pool up to it)",
        ),
        Knob(
            "model_predict_weight",
            SERVING,
            "candidates.model_predict_weight",
            (0.25, 0.5, 1.0, 2.0),
            f"{_CANDS}; README Item model ('predict weight 0.5')",
        ),
        Knob(
            "recency_decay",
            SERVING,
            "candidates.scoring.recency_decay",
            (0.5, 1.0, 1.5, 2.0, 3.0),
            f"{_SCORER}; README Item signals (the tuned scorer)",
        ),
        Knob(
            "reminder_weight",
            SERVING,
            "candidates.scoring.reminder_weight",
            (1.0, 2.0, 4.0, 8.0, 16.0),
            f"{_SCORER}; README Item signals ('plus a reminder')",
        ),
        Knob(
            "reminder_decay",
            SERVING,
            "candidates.scoring.reminder_decay",
            (1.0, 2.0, 3.0),
            _SCORER,
        ),
        Knob(
            "last_n",
            SERVING,
            "candidates.scoring.last_n",
            (3, 5, 10, 20),
            _SCORER,
        ),
        Knob(
            "popularity_damping",
            SERVING,
            "rerank.popularity_damping",
            (0.0, 0.1, 0.2, 0.4),
            "RerankConfig (core/ranking/rerank.py); README Recommendations step 6 "
            "('popularity damping, off by default')",
        ),
        Knob(
            "learning_rate",
            RANKER,
            "learning_rate",
            (0.03, 0.05, 0.1, 0.2),
            _TRAIN,
        ),
        Knob("max_iter", RANKER, "max_iter", (50, 100, 200, 300), _TRAIN),
        Knob("max_leaf_nodes", RANKER, "max_leaf_nodes", (15, 31, 63, 127), _TRAIN),
        Knob("min_samples_leaf", RANKER, "min_samples_leaf", (10, 20, 40, 100, 200), _TRAIN),
        Knob("l2_regularization", RANKER, "l2_regularization", (0.0, 0.1, 1.0, 10.0), _TRAIN),
        Knob(
            "negatives_per_point",
            RANKER,
            "negatives_per_point",
            (None, 5, 10, 20, 50),
            f"{_TRAIN}; README Training at scale (`featrec train --negatives`)",
        ),
        Knob(
            "random_state",
            RANKER,
            "random_state",
            (0, 1, 2),
            f"{_TRAIN}: the seed of the sampled negatives; not searched, only set by `--set` "
            "to check that a gain does not depend on one sample",
            search=False,
        ),
    )
}


# -- the space --------------------------------------------------------------------------------


def _base(kind: str) -> Any:
    """The defaults a knob of ``kind`` changes: the serving config a replay starts from, or
    the ranker training ``featrec evaluate`` uses."""
    if kind == SERVING:
        return ServingConfig()
    if kind == RANKER:
        return EVENTS_CONFIG
    raise ConfigError(f"knob kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj: Any, path: str, value: Any) -> Any:
    """``obj`` (a frozen dataclass) with ``path`` set to ``value``; the configs' own
    validation runs on the way back up (a bad value is their ConfigError)."""
    head, _, rest = path.partition(".")
    if not rest:
        return replace(obj, **{head: value})
    return replace(obj, **{head: _set(getattr(obj, head), rest, value)})


def default_of(knob: Knob) -> Any:
    return _get(_base(knob.kind), knob.path)


def check_names(names: Sequence[str], space: Mapping[str, Knob] = SPACE) -> None:
    """A clear error for a knob the space does not have (with the closest name)."""
    for name in names:
        if name not in space:
            close = difflib.get_close_matches(name, list(space), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown knob {name!r}{hint}: the knobs are {', '.join(sorted(space))}"
            )


def validate_space(space: Mapping[str, Knob] = SPACE) -> None:
    """Every knob: a known kind, a path that exists in its config, distinct values that each
    make a valid config, the code's default among them (so the defaults are in the space)."""
    for name, knob in space.items():
        if name != knob.name:
            raise ConfigError(f"knob {knob.name!r} is filed under {name!r}")
        base = _base(knob.kind)
        try:
            default = _get(base, knob.path)
        except AttributeError:
            raise ConfigError(
                f"knob {name!r}: no field {knob.path!r} in {type(base).__name__}"
            ) from None
        if not knob.values or len(set(knob.values)) != len(knob.values):
            raise ConfigError(f"knob {name!r}: values must be distinct and non-empty")
        if default not in knob.values:
            raise ConfigError(f"knob {name!r}: the default {default!r} is not among its values")
        for value in knob.values:
            try:
                _set(base, knob.path, value)
            except (ConfigError, TypeError, ValueError) as e:
                raise ConfigError(f"knob {name!r}: value {value!r} is invalid ({e})") from None


def build(knobs: Mapping[str, Any], space: Mapping[str, Knob] = SPACE) -> tuple[Any, Any]:
    """The (ServingConfig, TrainingConfig) of a configuration (unnamed knobs at defaults)."""
    check_names(list(knobs), space)
    configs = {kind: _base(kind) for kind in KINDS}
    for name, value in knobs.items():
        knob = space[name]
        if value not in knob.values:
            raise ConfigError(f"knob {name!r}: {value!r} is not one of {list(knob.values)}")
        configs[knob.kind] = _set(configs[knob.kind], knob.path, value)
    return configs[SERVING], configs[RANKER]


@dataclass(frozen=True, slots=True)
class Config:
    """One configuration of the search: its id, which sub-search drew it, and the knobs it
    sets away from their defaults."""

    id: str
    kind: str
    knobs: dict[str, Any]

    @property
    def needs_model(self) -> bool:
        """A ranker of its own (its knobs change the training)."""
        return any(SPACE[n].kind == RANKER for n in self.knobs)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "knobs": self.knobs}


def draw(
    space: Mapping[str, Knob], kind: str, rng: random.Random, move: float = 1.0
) -> dict[str, Any]:
    """One random configuration of ``kind``'s knobs; only the knobs away from their defaults
    are kept. ``move`` 1: every knob uniform over its values (global); below 1: each knob
    moves with that probability, to one of its other values (local, around the defaults)."""
    out = {}
    for name in sorted(space):
        knob = space[name]
        if knob.kind != kind or not knob.search:
            continue
        default = default_of(knob)
        if move >= 1.0:
            value = rng.choice(knob.values)
        elif rng.random() < move:
            value = rng.choice([v for v in knob.values if v != default])
        else:
            value = default
        if value != default:
            out[name] = value
    return out


def plan(
    seed: int,
    n_serving: int,
    n_ranker: int,
    extra: Sequence[Mapping[str, Any]] = (),
    space: Mapping[str, Knob] = SPACE,
    local_move: float = LOCAL_MOVE,
) -> list[Config]:
    """The search's configurations, the same for the same arguments: the defaults, the
    candidate order, then per kind (serving, ranker) its distinct random draws: the first
    half global (ids ``s01``/``r01``...), the rest local around the defaults (``l01``/``m01``...,
    each knob moved with probability ``local_move``), one generator per kind so that adding
    ranker draws does not change the serving ones; then ``extra`` (``x1``...)."""
    validate_space(space)
    configs = [Config(DEFAULTS_ID, "defaults", {}), Config(CANDIDATE_ORDER_ID, "no ranker", {})]
    for kind, n, prefixes in ((SERVING, n_serving, "sl"), (RANKER, n_ranker, "rm")):
        rng = random.Random(f"{seed}:{kind}")
        seen: set[str] = {json.dumps({}, sort_keys=True)}
        n_global = n - n // 2
        for i in range(n):
            is_global = i < n_global
            for _ in range(1000):
                knobs = draw(space, kind, rng, 1.0 if is_global else local_move)
                key = json.dumps(knobs, sort_keys=True)
                if key not in seen:
                    break
            else:
                raise ConfigError(f"the {kind} space has fewer than {n} distinct configurations")
            seen.add(key)
            prefix = prefixes[0] if is_global else prefixes[1]
            index = i + 1 if is_global else i + 1 - n_global
            configs.append(
                Config(
                    f"{prefix}{index:02d}", f"{kind} {'global' if is_global else 'local'}", knobs
                )
            )
    for n, knobs in enumerate(extra, start=1):
        build(knobs, space)
        configs.append(Config(f"x{n}", "set", dict(knobs)))
    return configs


def run_order(configs: Sequence[Config]) -> list[Config]:
    """The order configurations are run in: the defaults and the candidate order first, then
    one of each group in turn (serving global, serving local, ranker global, ranker local,
    set), so a search stopped by its budget has sampled every group."""
    first = [c for c in configs if c.id in (DEFAULTS_ID, CANDIDATE_ORDER_ID)]
    groups: dict[str, list[Config]] = {}
    for c in configs:
        if c not in first:
            groups.setdefault(c.id[0], []).append(c)
    rest: list[Config] = []
    while any(groups.values()):
        for queue in groups.values():
            if queue:
                rest.append(queue.pop(0))
    return first + rest


def _same(value: Any, raw: str) -> bool:
    """``raw`` (command-line text) names ``value``: ``10`` names 10.0, ``None`` names None."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return str(value) == raw
    try:
        return float(raw) == value
    except ValueError:
        return False


def parse_set(text: str, space: Mapping[str, Knob] = SPACE) -> dict[str, Any]:
    """``"max_total=200,rank_top=100"`` -> knobs (values parsed as the knob's values are)."""
    knobs: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, raw = part.partition("=")
        if not eq:
            raise ConfigError(f"--set wants KNOB=VALUE, got {part!r}")
        check_names([name.strip()], space)
        knob = space[name.strip()]
        matches = [v for v in knob.values if _same(v, raw.strip())]
        if not matches:
            raise ConfigError(f"knob {knob.name!r}: {raw!r} is not one of {list(knob.values)}")
        knobs[knob.name] = matches[0]
    return knobs


# -- figures and their noise ------------------------------------------------------------------


def point_figures(
    lists: Sequence[Sequence[str]], targets: Sequence[str], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per point: hit (1/0) and reciprocal rank (0 outside the top ``k``)."""
    hit = np.zeros(len(targets))
    rr = np.zeros(len(targets))
    for i, (items, target) in enumerate(zip(lists, targets, strict=True)):
        top = list(items[:k])
        if target in top:
            hit[i] = 1.0
            rr[i] = 1.0 / (top.index(target) + 1)
    return hit, rr


def clustered_se(values: np.ndarray, clusters: Sequence[str]) -> float:
    """Standard error of ``values.mean()`` when points of one cluster (session) are
    correlated: the sandwich estimator over cluster sums, with the small-sample factor
    ``G / (G - 1)``. Equal to the plain SE when every cluster has one point."""
    n = len(values)
    if n < 2:
        return float("nan")
    centred = values - values.mean()
    sums: dict[str, float] = {}
    for c, v in zip(clusters, centred, strict=True):
        sums[c] = sums.get(c, 0.0) + float(v)
    g = len(sums)
    if g < 2:
        return float("nan")
    total = math.fsum(s * s for s in sums.values())
    return math.sqrt(total * g / (g - 1)) / n


def paired(a: np.ndarray, b: np.ndarray, clusters: Sequence[str]) -> tuple[float, float]:
    """Mean of ``a - b`` on the same points and its clustered standard error."""
    if a.shape != b.shape:
        raise ValueError(f"paired figures need the same points ({a.shape} vs {b.shape})")
    d = a - b
    return float(d.mean()), clustered_se(d, clusters)


# -- heavy phases -----------------------------------------------------------------------------


@contextmanager
def heavy_lock(what: str, ledger: list[dict[str, Any]]) -> Iterator[None]:
    """Hold the shared heavy lock for one phase; the locked seconds go to ``ledger``."""
    t0 = time.perf_counter()
    with LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.perf_counter() - t0
        t1 = time.perf_counter()
        load0 = os.getloadavg()[0]
        print(
            f"[{time.strftime('%H:%M:%S')}] lock taken for {what} after {waited:.0f} s "
            f"(load {load0:.2f})",
            flush=True,
        )
        try:
            yield
        finally:
            held = time.perf_counter() - t1
            ledger.append(
                {
                    "phase": what,
                    "locked_s": round(held, 1),
                    "waited_s": round(waited, 1),
                    "load_start": round(load0, 2),
                    "load_end": round(os.getloadavg()[0], 2),
                }
            )
            print(f"[{time.strftime('%H:%M:%S')}] lock released after {held:.0f} s", flush=True)


def prepare_phase(args: argparse.Namespace, work: Path) -> None:
    """The training phase with the item model but no ranker (the ranker is fitted by
    :func:`features_phase` from features it keeps)."""
    from featrec.jobs.evaluation import EvalSpec, WorkDir, prepare
    from featrec.jobs.project_init import feature_repo_template

    wd = WorkDir(work / "prepared")
    if wd.root.exists():
        shutil.rmtree(wd.root)
    spec = EvalSpec(
        train=str(Path(args.train).resolve()),
        test=str(Path(args.test).resolve()),
        fmt=args.format,
        k=args.k,
        policies=("item-model",),
        seed=0,
    )
    prepare(wd, spec, feature_repo_template())


def features_phase(work: Path) -> dict[str, Any]:
    """The ranker's training features exactly as ``featrec evaluate`` computes them
    (:func:`featrec.app.training.fit_on_events` with the cross-fitted item model), kept in
    ``features.pkl``; then the default ranker, saved as the defaults' model version."""
    from featrec.app.training import points_from_events, replay_features
    from featrec.core.items.slist import SlistConfig, fit_folds
    from featrec.jobs.evaluation import EvalSpec, WorkDir, eval_settings, read_valid
    from featrec.jobs.item_model import read_clicks

    wd = WorkDir(work / "prepared")
    spec = EvalSpec.from_json(wd.spec.read_text())
    settings = eval_settings(wd, spec)
    train_events, _ = read_valid(Path(spec.train), spec.fmt)
    folds = fit_folds(read_clicks(settings), SlistConfig())
    config = replace(EVENTS_CONFIG, session_policy=settings.session_policy)
    # fit_on_events' own steps, with the features kept.
    since = train_events[math.floor(len(train_events) * 0.1)].ts
    points = points_from_events(
        train_events,
        collapse_repeats=False,
        since=since,
        max_points=spec.train_points,
        seed=spec.seed,
    )
    t0 = time.perf_counter()
    features = replay_features(
        train_events,
        points,
        candidates=config.candidates,
        session_policy=config.session_policy,
        learn_after_session=config.learn_after_session,
        item_model=folds,
    )
    seconds = time.perf_counter() - t0
    with (work / "features.pkl").open("wb") as f:
        pickle.dump(features, f, protocol=pickle.HIGHEST_PROTOCOL)
    print(
        f"training features: {len(features.points):,} points, {len(features.y):,} rows "
        f"in {seconds:.0f} s",
        flush=True,
    )
    return {"points": len(features.points), "rows": len(features.y), "seconds": seconds}


def load_features(work: Path) -> Any:
    with (work / "features.pkl").open("rb") as f:
        return pickle.load(f)  # our own file, written by features_phase


def fit_phase(work: Path, config: Config, features: Any) -> dict[str, Any]:
    """Fit the ranker of ``config`` on the kept features; save it as a model version."""
    from featrec.adapters.files.model_store import models_dir, save_model
    from featrec.app.training import fit_ranker
    from featrec.jobs.evaluation import EvalSpec, WorkDir, eval_settings

    wd = WorkDir(work / "prepared")
    settings = eval_settings(wd, EvalSpec.from_json(wd.spec.read_text()))
    _, training = build(config.knobs)
    training = replace(training, session_policy=settings.session_policy)
    t0 = time.perf_counter()
    result = fit_ranker(features, training)
    seconds = time.perf_counter() - t0
    manifest = save_model(
        result.ranker,
        models_dir(settings.home),
        metrics=result.metrics,
        training={"trainer": "events", "source": f"benchmarks/tune_full.py {config.id}"},
    )
    print(f"  {config.id}: ranker fitted in {seconds:.0f} s -> {manifest.version}", flush=True)
    return {
        "version": manifest.version,
        "fit_s": round(seconds, 1),
        "candidate_recall": result.metrics.get("candidate_recall"),
        "train_rows": result.metrics.get("train_rows"),
    }


def serving_knobs(config: Config) -> dict[str, Any]:
    return {n: v for n, v in config.knobs.items() if SPACE[n].kind == SERVING}


def replay_phase(
    work: Path, variants: list[dict[str, Any]], k: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], float]:
    """One replay of the prepared phase answering every variant at every point (a fresh
    copy of the work directory, the real dataflow in its own process). Returns each
    variant's per-point (hit, rr), the points' sessions and the replay's seconds."""
    from featrec.jobs.evaluation import EvalSpec, WorkDir, read_answers

    prepared = WorkDir(work / "prepared")
    run = WorkDir(work / "run")
    if run.root.exists():
        shutil.rmtree(run.root)
    shutil.copytree(prepared.root, run.root)
    spec = EvalSpec.from_json(run.spec.read_text())
    # No policy of its own: every configuration, the defaults included, is a variant.
    run.spec.write_text(dataclasses.replace(spec, policies=()).to_json())
    plan_file = run.root / "variants.json"
    plan_file.write_text(json.dumps(variants))
    env = {
        **os.environ,
        "FEATREC_EVAL_DIR": str(run.root),
        ENV_VARIANTS: str(plan_file),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "tune_full:flow()"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or not run.replay.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-20:]
        raise ConfigError(f"the replay failed (exit {done.returncode}):\n" + "\n".join(tail))
    answers = read_answers(run)
    targets = [a["point"]["target"] for a in answers]
    sessions = [a["point"]["session_id"] for a in answers]
    out = {}
    for v in variants:
        out[v["name"]] = point_figures([a["lists"][v["name"]] for a in answers], targets, k)
    shutil.rmtree(run.root)
    return out, sessions, seconds


def flow() -> Any:
    """The replay dataflow of ``FEATREC_EVAL_DIR`` with the variants of ``TUNE_FULL_VARIANTS``
    (run by :func:`replay_phase` as ``python -m bytewax.run "tune_full:flow()"``)."""
    from dataflows.evaluation import replay_flow
    from featrec.jobs.evaluation import open_replay
    from featrec.jobs.serving import load_model

    variants = json.loads(Path(os.environ[ENV_VARIANTS]).read_text())
    replay = open_replay(Path(os.environ["FEATREC_EVAL_DIR"]))
    models: dict[str, Any] = {}
    for v in variants:
        version = v["model"]
        if version is not None and version not in models:
            models[version] = load_model(replay.settings, version)
        serving, _ = build(v["serving"])
        model = models[version] if version is not None else None
        replay.gate.policies.add_variant(v["name"], model, serving)
    return replay_flow(replay.gate, replay.settings, replay.dead_letters, replay.work.test_log_dir)


# -- the record -------------------------------------------------------------------------------


def load_record(path: Path) -> dict[str, Any]:
    if path.is_file():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {"results": {}, "compute": []}


def save_points(work: Path, cid: str, hit: np.ndarray, rr: np.ndarray) -> None:
    (work / "points").mkdir(exist_ok=True)
    np.savez(work / "points" / f"{cid}.npz", hit=hit, rr=rr)


def halves(sessions: Sequence[str], seed: int = 0) -> np.ndarray:
    """A seeded split of the test sessions in two halves: True for the points of half A."""
    unique = sorted(set(sessions))
    random.Random(seed).shuffle(unique)
    first = set(unique[: len(unique) // 2])
    return np.array([s in first for s in sessions])


def figures(work: Path, record: dict[str, Any], z: float) -> None:
    """Each result's figures, SEs and paired difference from the defaults (from the work
    directory's per-point results), the same on two halves of the test sessions, and the
    decision."""
    sessions = json.loads((work / "points" / "sessions.json").read_text())
    half_a = halves(sessions)
    base = np.load(work / "points" / f"{DEFAULTS_ID}.npz")
    for cid, res in record["results"].items():
        pts = np.load(work / "points" / f"{cid}.npz")
        for m in ("hit", "rr"):
            name = "hr" if m == "hit" else "mrr"
            res[name] = round(float(pts[m].mean()), 4)
            res[f"se_{name}"] = round(clustered_se(pts[m], sessions), 4)
            d, se = paired(pts[m], base[m], sessions)
            res[f"d_{name}"] = round(d, 4)
            res[f"se_d_{name}"] = round(se, 4)
            res[f"z_{name}"] = round(d / se, 2) if se > 0 else 0.0
            for half, mask in (("a", half_a), ("b", ~half_a)):
                picked = [s for s, keep in zip(sessions, mask, strict=True) if keep]
                d, se = paired(pts[m][mask], base[m][mask], picked)
                res[f"z_{name}_{half}"] = round(d / se, 2) if se > 0 else 0.0
    record["points"] = len(sessions)
    record["sessions"] = len(set(sessions))
    tried = [r for c, r in record["results"].items() if c not in (DEFAULTS_ID, CANDIDATE_ORDER_ID)]
    best = max(tried, key=lambda r: (r["mrr"], r["hr"]), default=None)

    def wins(r: dict[str, Any], suffix: str = "") -> bool:
        hr, mrr = r[f"z_hr{suffix}"], r[f"z_mrr{suffix}"]
        return (hr > z and mrr > -1) or (mrr > z and hr > -1)

    winners = [r for r in tried if wins(r)]
    # Selected on half A of the sessions alone, then looked at on half B (which the
    # selection never saw): a gain found by searching many configurations on the same
    # points is partly luck; a real one shows on the other half too.
    holding = [
        r
        for r in winners
        if min(r["z_hr_a"], r["z_hr_b"]) > 0 and min(r["z_mrr_a"], r["z_mrr_b"]) > -1
    ]

    def reseeded(r: dict[str, Any]) -> list[dict[str, Any]]:
        """The same knobs with another ranker seed (another sample of negatives)."""
        knobs = {n: v for n, v in r["knobs"].items() if n != "random_state"}
        return [
            o
            for o in tried
            if o is not r
            and {n: v for n, v in o["knobs"].items() if n != "random_state"} == knobs
            and o["knobs"].get("random_state", 0) != r["knobs"].get("random_state", 0)
        ]

    # A ranker's gain must not hang on one sample: with its knobs refitted under another
    # seed it must still beat the noise (a ranker winner never refitted stays unconfirmed).
    confirmed = [
        r
        for r in holding
        if not any(SPACE[n].kind == RANKER for n in r["knobs"])
        or (reseeded(r) and all(wins(o) for o in reseeded(r)))
    ]
    on_a = max(tried, key=lambda r: r["z_hr_a"] + r["z_mrr_a"], default=None)
    record["decision"] = {
        "rule": f"change a default only if its paired gain over the defaults is > {z:g} SE "
        "on HR@K or MRR@K with no loss beyond 1 SE on the other, it holds on both halves "
        "of the test sessions, and (ranker knobs) it still beats the noise refitted with "
        "another seed",
        "best_by_mrr": best["id"] if best else None,
        "beats_noise": sorted(r["id"] for r in winners),
        "holds_on_both_halves": sorted(r["id"] for r in holding),
        "selected_on_half_a": on_a["id"] if on_a else None,
        "seed_checks": {
            r["id"]: {o["id"]: [o["z_hr"], o["z_mrr"]] for o in reseeded(r)} for r in holding
        },
        "confirmed": sorted(r["id"] for r in confirmed),
        "chosen": max(confirmed, key=lambda r: r["z_hr"] + r["z_mrr"])["id"]
        if confirmed
        else DEFAULTS_ID,
    }


def _fmt(value: Any) -> str:
    return "all" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _knobs_text(knobs: Mapping[str, Any]) -> str:
    return ", ".join(f"{n} {_fmt(v)}" for n, v in sorted(knobs.items())) or "(defaults)"


def space_record(space: Mapping[str, Knob] = SPACE) -> list[dict[str, Any]]:
    return [
        {
            "name": k.name,
            "kind": k.kind,
            "default": default_of(k),
            "values": list(k.values),
            "where": k.path,
            "documented": k.doc,
            "searched": k.search,
        }
        for k in space.values()
    ]


def markdown(record: dict[str, Any]) -> str:
    """The readable summary of the record (docs/tuning/rsc15-full.md)."""
    res = record["results"]
    k = record["k"]
    d0 = res.get(DEFAULTS_ID)
    lines = [
        "# Tuning the full policy on RSC15-100k (train_tr -> train_valid)",
        "",
        "Generated by `benchmarks/tune_full.py` from `rsc15-full.json` (every configuration "
        "tried, its figures and the compute used). Seeded random search over the documented "
        "knobs of the full policy, as session-rec tunes its baselines: on the validation "
        "split only (`yoochoose-clicks-100k_train_tr.txt` -> `..._train_valid.txt`, "
        f"{record.get('points', 0):,} prediction points in {record.get('sessions', 0):,} "
        f"sessions, HR@{k} / MRR@{k}).",
        "",
        "```bash",
        record["command"],
        "```",
        "",
        "## Search space",
        "",
        "Serving knobs are scored on one prepared training phase (the defaults' ranker); ranker "
        "knobs refit the ranker on the same cached training features (serving at its defaults). "
        "Every configuration is a variant of the full policy in a replay of the real sessions "
        "dataflow, several per replay, the defaults (`d0`) and the candidate order without a "
        "ranker (`c0`) among them.",
        "",
        "| knob | kind | default | values | where | documented |",
        "|---|---|---|---|---|---|",
    ]
    for s in record["space"]:
        values = ", ".join(_fmt(v) for v in s["values"])
        lines.append(
            f"| `{s['name']}` | {s['kind']}{'' if s.get('searched', True) else ' (not searched)'} "
            f"| {_fmt(s['default'])} | {values} | "
            f"`{s['where']}` | {s['documented']} |"
        )
    n_plan = len(record["plan"])
    lines += [
        "",
        f"Plan: {n_plan} configurations (seed {record['seed']}); **{len(res)} scored**"
        + (f", {n_plan - len(res)} not run (compute budget)." if len(res) < n_plan else "."),
        "",
        "## Results, best MRR first",
        "",
        "± is one standard error clustered by test session; Δ is the paired difference from "
        f"the defaults (`{DEFAULTS_ID}`) on the same points, z = Δ / its SE.",
        "",
        f"| id | kind | knobs away from the defaults | HR@{k} | MRR@{k} | ΔHR (z) | ΔMRR (z) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(res.values(), key=lambda r: (-r.get("mrr", 0), -r.get("hr", 0))):
        if "mrr" not in r:
            continue
        lines.append(
            f"| {r['id']} | {r['kind']} | {_knobs_text(r['knobs'])} | "
            f"{r['hr']:.4f} ± {r['se_hr']:.4f} | {r['mrr']:.4f} ± {r['se_mrr']:.4f} | "
            f"{r['d_hr']:+.4f} ({r['z_hr']:+.1f}) | {r['d_mrr']:+.4f} ({r['z_mrr']:+.1f}) |"
        )
    decision = record.get("decision", {})
    lines += ["", "## Decision", "", f"Rule: {decision.get('rule', '')}.", ""]
    if d0 is not None and "mrr" in d0:
        best = res.get(decision.get("best_by_mrr") or "", None)
        lines.append(
            f"Defaults: HR@{k} {d0['hr']:.4f} ± {d0['se_hr']:.4f}, MRR@{k} {d0['mrr']:.4f} ± "
            f"{d0['se_mrr']:.4f}."
        )
        if best is not None:
            lines.append(
                f"Best by MRR: `{best['id']}` ({_knobs_text(best['knobs'])}): HR@{k} "
                f"{best['hr']:.4f}, MRR@{k} {best['mrr']:.4f}; paired ΔHR {best['d_hr']:+.4f} ± "
                f"{best['se_d_hr']:.4f}, ΔMRR {best['d_mrr']:+.4f} ± {best['se_d_mrr']:.4f}."
            )
    for cid in decision.get("beats_noise", []):
        r = res[cid]
        lines.append(
            f"\n`{cid}` beats the noise on all points (ΔHR z {r['z_hr']:+.1f}, ΔMRR z "
            f"{r['z_mrr']:+.1f}); on the two halves of the test sessions: ΔHR z "
            f"{r['z_hr_a']:+.1f} / {r['z_hr_b']:+.1f}, ΔMRR z {r['z_mrr_a']:+.1f} / "
            f"{r['z_mrr_b']:+.1f}."
        )
    for cid, others in decision.get("seed_checks", {}).items():
        for oid, (zh, zm) in others.items():
            lines.append(
                f"\nThe knobs of `{cid}` refitted with another seed (`{oid}`, another sample of "
                f"negatives): ΔHR z {zh:+.1f}, ΔMRR z {zm:+.1f}"
                + (" (still over the noise)." if max(zh, zm) > 2 else " (not over the noise).")
            )
    a = res.get(decision.get("selected_on_half_a") or "")
    if a is not None:
        lines.append(
            f"\nSelected on half A of the sessions alone: `{a['id']}` (z on A: ΔHR "
            f"{a['z_hr_a']:+.1f}, ΔMRR {a['z_mrr_a']:+.1f}); on half B, which that choice never "
            f"saw: ΔHR {a['z_hr_b']:+.1f}, ΔMRR {a['z_mrr_b']:+.1f}."
        )
    chosen = decision.get("chosen")
    if chosen == DEFAULTS_ID:
        lines.append("\n**Defaults kept**: no configuration's gain passes the rule.")
    elif chosen:
        lines.append(f"\n**Chosen: `{chosen}`** ({_knobs_text(res[chosen]['knobs'])}).")
    notes = record.get("notes", [])
    lines += ["", *notes] if notes else []
    lines += ["", "## Compute", "", "| phase | locked s | waited s | load start / end |"]
    lines.append("|---|---|---|---|")
    for c in record["compute"]:
        lines.append(
            f"| {c['phase']} | {c['locked_s']:.0f} | {c['waited_s']:.0f} | "
            f"{c['load_start']:.2f} / {c['load_end']:.2f} |"
        )
    total = sum(c["locked_s"] for c in record["compute"])
    lines += ["", f"Total locked compute: {total / 60:.1f} min.", ""]
    return "\n".join(lines)


def write_record(record: dict[str, Any], out: Path, md: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    md.write_text(markdown(record))


def command_line(args: argparse.Namespace) -> str:
    parts = [
        ".venv/bin/python benchmarks/tune_full.py",
        "--train ../shared/data/rsc15-100k/yoochoose-clicks-100k_train_tr.txt",
        "--test ../shared/data/rsc15-100k/yoochoose-clicks-100k_train_valid.txt",
        f"--format {args.format}" if args.format else "",
        f"--seed {args.seed} --serving {args.serving} --ranker {args.ranker}",
        *(f"--set {s}" for s in args.set),
        f"--batch {args.batch}",
    ]
    return " \\\n    ".join(p for p in parts if p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--format", default=None)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("/tmp/featrec-tune"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serving", type=int, default=24, help="serving configurations")
    parser.add_argument("--ranker", type=int, default=4, help="ranker configurations")
    parser.add_argument("--set", action="append", default=[], help="KNOB=V,KNOB=V (repeat)")
    parser.add_argument("--batch", type=int, default=7, help="configurations per replay")
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--only", default=None, help="comma-separated ids to run (in order)")
    parser.add_argument("--budget-min", type=float, default=40.0, help="locked minutes, total")
    parser.add_argument("--z", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=REPO / "docs/tuning/rsc15-full.json")
    parser.add_argument("--md", type=Path, default=REPO / "docs/tuning/rsc15-full.md")
    parser.add_argument("--report", action="store_true", help="only rewrite the figures")
    parser.add_argument("--note", action="append", default=None, help="paragraph for the .md")
    args = parser.parse_args()

    configs = plan(args.seed, args.serving, args.ranker, [parse_set(s) for s in args.set])
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    record = load_record(args.out)
    record.update(
        {
            "split": {"train": Path(args.train).name, "test": Path(args.test).name},
            "k": args.k,
            "seed": args.seed,
            "command": command_line(args),
            "space": space_record(),
            "plan": [c.to_dict() for c in configs],
        }
    )
    if args.note is not None:
        record["notes"] = args.note
    if args.report:
        figures(work, record, args.z)
        write_record(record, args.out, args.md)
        return
    ledger: list[dict[str, Any]] = record["compute"]

    def used_min() -> float:
        return sum(c["locked_s"] for c in ledger) / 60

    if not (work / "prepared.ok").is_file():
        with heavy_lock("training phase (signals, batch features, item model)", ledger):
            prepare_phase(args, work)
        (work / "prepared.ok").write_text("")
        write_record(record, args.out, args.md)
    if not (work / "features.pkl").is_file():
        with heavy_lock("ranker training features (replay of the training events)", ledger):
            features_phase(work)
        write_record(record, args.out, args.md)

    pending = [c for c in run_order(configs) if c.id not in record["results"]]
    if args.only:
        wanted = args.only.split(",")
        pending = [c for c in pending if c.id in wanted]
    if DEFAULTS_ID not in record["results"] and all(c.id != DEFAULTS_ID for c in pending[:1]):
        raise ConfigError("the defaults (d0) must be scored first: they are the pairing base")
    models: dict[str, Any] = (
        json.loads((work / "models.json").read_text()) if (work / "models.json").is_file() else {}
    )
    batches = [pending[i : i + args.batch] for i in range(0, len(pending), args.batch)]
    for n, batch in enumerate(batches[: args.max_batches]):
        if used_min() >= args.budget_min:
            print(f"compute budget used ({used_min():.1f} min): stopping", flush=True)
            break
        ids = [c.id for c in batch]
        with heavy_lock(f"replay {','.join(ids)}", ledger):
            need_fit = [c for c in batch if c.needs_model and c.id not in models]
            need_fit += [d for d in configs if d.id == DEFAULTS_ID and d.id not in models]
            if need_fit:
                features = load_features(work)
                for c in {c.id: c for c in need_fit}.values():
                    models[c.id] = fit_phase(work, c, features)
                    (work / "models.json").write_text(json.dumps(models, indent=1))
                del features
            variants = [
                {
                    "name": c.id,
                    "model": None
                    if c.id == CANDIDATE_ORDER_ID
                    else models[c.id if c.needs_model else DEFAULTS_ID]["version"],
                    "serving": serving_knobs(c),
                }
                for c in batch
            ]
            got, sessions, seconds = replay_phase(work, variants, args.k)
        ledger[-1]["replay_s"] = round(seconds, 1)
        known = work / "points" / "sessions.json"
        if known.is_file() and json.loads(known.read_text()) != sessions:
            raise ConfigError("the replay's points differ from the first replay's")
        for c in batch:
            hit, rr = got[c.id]
            save_points(work, c.id, hit, rr)
            fit = (
                models.get(c.id if c.needs_model else DEFAULTS_ID, {})
                if c.id != CANDIDATE_ORDER_ID
                else {}
            )
            record["results"][c.id] = {
                **c.to_dict(),
                "model": fit.get("version"),
                "fit_s": fit.get("fit_s") if c.needs_model or c.id == DEFAULTS_ID else None,
                "candidate_recall_train": fit.get("candidate_recall"),
                "replay": len(record["compute"]),
            }
        known.write_text(json.dumps(sessions))
        figures(work, record, args.z)
        write_record(record, args.out, args.md)
        print(
            f"batch {n + 1}: {len(batch)} configurations in a {seconds:.0f} s replay; "
            f"locked compute so far {used_min():.1f} min",
            flush=True,
        )
        for c in batch:
            r = record["results"][c.id]
            print(
                f"  {c.id:>4} HR {r['hr']:.4f} MRR {r['mrr']:.4f}  dHR {r['d_hr']:+.4f} "
                f"(z {r['z_hr']:+.1f})  dMRR {r['d_mrr']:+.4f} (z {r['z_mrr']:+.1f})  "
                f"{_knobs_text(c.knobs)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
