"""The recommender on the in-memory reference store: known answers, fallback, the version cache,
the request log and explain (bit for bit)."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from featrec.app.serving.recommender import (
    LoadedModel,
    Recommender,
    ServingConfig,
)
from featrec.app.serving.record import ServedRequest
from featrec.core.evaluation.experiments import ArmConfig, Experiment, assign
from featrec.core.events.model import event_from_mapping
from featrec.core.features.catalog import LAST_ITEMS_N
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import (
    InMemoryRequestLog,
    InMemoryRows,
    LoggedRow,
    RequestRecord,
    StampedRow,
)
from featrec.core.ranking.predictor import compile_ranker
from featrec.core.ranking.ranker import Ranker
from featrec.core.ranking.rerank import RerankConfig
from featrec.core.sessions.fold import SessionPolicy, fold, new_state
from featrec.core.sessions.fold import session_row as fold_row
from featrec.errors import ConfigError, NotFound
from featrec.testing.shop import NOW_S, T0, session_row, toy_model, user_row, world_rows


def make(
    store: InMemoryFeatureStore | None = None,
    *,
    now: float = NOW_S,
    model: LoadedModel | None = None,
    config: ServingConfig | None = None,
) -> tuple[Recommender, InMemoryFeatureStore, InMemoryRequestLog]:
    if store is None:
        store = InMemoryFeatureStore()
        store.write(world_rows())
    log = InMemoryRequestLog()
    recommender = Recommender(
        InMemoryRows(store), log, model=model, config=config, clock=lambda: now
    )
    return recommender, store, log


def ids(answer: object) -> list[str]:
    return [item.item_id for item in answer.items]  # type: ignore[attr-defined]


def test_known_answer_without_a_model() -> None:
    recommender, _, log = make()
    answer = recommender.recommend("s1", "u1", k=5)
    assert ids(answer) == ["a1", "a2", "b1", "b2", "b3"]
    assert [item.rank for item in answer.items] == [1, 2, 3, 4, 5]
    assert not answer.degraded and answer.degraded_reason is None
    assert answer.scorer == "candidate-order" and answer.model_version is None
    assert answer.session_version == T0 and answer.logged and not answer.cached
    assert answer.items[0].reasons == ("already in this session",)
    assert "often viewed with the items in this session" in answer.items[1].reasons
    record = log.get(answer.request_id)
    assert record is not None
    decisions = ServedRequest.from_record(record).decisions
    dropped = next(d for d in decisions if d.item_id == "a3")
    assert dropped.kept is False and "dropped: already purchased" in dropped.reasons


def test_the_user_comes_from_the_session_when_not_given() -> None:
    recommender, _, _ = make()
    answer = recommender.recommend("s1", k=5)
    assert answer.user_id == "u1"
    assert "a3" not in ids(answer)  # the user's purchase is dropped: their row was read


def test_no_session_features_falls_back_to_long_term_and_popularity() -> None:
    recommender, _, _ = make()
    answer = recommender.recommend("s-unknown", "u1", k=5)
    assert answer.degraded and answer.scorer == "fallback"
    assert answer.degraded_reason == "no session features for session 's-unknown'"
    assert ids(answer) == ["a5", "a6", "b2", "b3", "b4"]  # the user's category A first
    anonymous = recommender.recommend("s-unknown", k=5)
    assert ids(anonymous) == ["b2", "b3", "a5", "b4", "a6"]  # popularity alone


def test_a_stale_session_falls_back_and_says_how_old() -> None:
    fresh, _, _ = make(now=T0 / 1e6 + 600)
    assert not fresh.recommend("s1", "u1", k=5).degraded
    recommender, _, _ = make(now=T0 / 1e6 + 601.4)
    answer = recommender.recommend("s1", "u1", k=5)
    assert answer.degraded
    assert answer.degraded_reason == (
        "session features are 601 s old (limit 600 s): the session stream may be down"
    )
    assert ids(answer) == ["a5", "a6", "b2", "b3", "b4"]


def test_an_old_user_row_is_ignored_and_noted() -> None:
    store = InMemoryFeatureStore()
    store.write(world_rows())
    store.write([user_row(version=T0 + 1)])  # fresh user row first, then check an old one
    config = ServingConfig(max_user_age_s=60.0)
    recommender, _, log = make(store, config=config, now=T0 / 1e6 + 30)
    assert "a3" not in ids(recommender.recommend("s1", "u1", k=10))
    recommender, _, log = make(store, config=config, now=T0 / 1e6 + 61)
    answer = recommender.recommend("s1", "u1", k=10)
    assert "a3" in ids(answer)  # the stale purchase list no longer drops it
    record = log.get(answer.request_id)
    assert record is not None and record.body["notes"] == ["user features ignored: 0.0 days old"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"session_id": ""}, "session_id must be a non-empty string"),
        ({"session_id": "x" * 257}, "at most 256"),
        ({"user_id": ""}, "user_id must be"),
        ({"k": 0}, r"k must be an integer in \[1, 100\]"),
        ({"k": 101}, r"k must be an integer in \[1, 100\]"),
        ({"k": True}, "k must be an integer"),
        ({"shown": "abc"}, "shown must be a list"),
        ({"shown": ["a"] * 201}, "at most 200"),
        ({"shown": ["a", ""]}, "non-empty item ids"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(kwargs: dict[str, object], message: str) -> None:
    recommender, _, _ = make()
    args: dict[str, object] = {"session_id": "s1", **kwargs}
    with pytest.raises(ConfigError, match=message):
        recommender.recommend(**args)  # type: ignore[arg-type]


# -- model, request log, explain ----------------------------------------------------------------


def test_the_model_scores_and_explain_reproduces_bit_for_bit() -> None:
    model = toy_model()
    recommender, _, log = make(model=model)
    answer = recommender.recommend("s1", "u1", k=5)
    assert answer.scorer == "model" and answer.model_version == "m-test"
    explanation = recommender.explain(answer.request_id)
    assert explanation.reproduced and explanation.mismatches == ()
    assert [i.item_id for i in explanation.kept] == ids(answer)
    assert [i.score for i in explanation.kept] == [i.score for i in answer.items]
    record = log.get(answer.request_id)
    assert record is not None
    logged = np.asarray(record.body["raw_scores"], dtype=np.float64)
    again = np.asarray([i.raw_score for i in explanation.items], dtype=np.float64)
    order = [c.item_id for c in ServedRequest.from_record(record).candidates]
    by_item = {i.item_id: i.raw_score for i in explanation.items}
    assert np.asarray([by_item[i] for i in order]).tobytes() == logged.tobytes()
    assert len(again) == len(order)
    # every logged row kept its timestamp
    stamps = {(r.view, r.key): r.row.ts_us for r in record.rows if r.row is not None}
    assert stamps[("session_features", "s1")] == T0


def test_the_compiled_predictor_serves_and_explain_reproduces_its_scores() -> None:
    """Serving with the compiled predictor: the log holds what it returned, explain re-scores
    with it bit for bit, and the scores are the scikit-learn ranker's."""
    ranker = toy_model().ranker
    assert isinstance(ranker, Ranker)
    compiled = LoadedModel("m-compiled", compile_ranker(ranker.model_))
    recommender, _, log = make(model=compiled)
    answer = recommender.recommend("s1", "u1", k=5)
    assert answer.scorer == "model" and answer.model_version == "m-compiled"
    explanation = recommender.explain(answer.request_id)
    assert explanation.reproduced and explanation.mismatches == ()
    record = log.get(answer.request_id)
    assert record is not None
    reference, _, _ = make(model=LoadedModel("m-compiled", ranker))
    same = reference.recommend("s1", "u1", k=5)
    assert [(i.item_id, i.score) for i in same.items] == [
        (i.item_id, i.score) for i in answer.items
    ]


def test_explain_notices_a_tampered_log() -> None:
    """The check can fail: change one logged feature value and explain reports a difference."""
    recommender, _, log = make(model=toy_model())
    answer = recommender.recommend("s1", "u1", k=5)
    record = log.get(answer.request_id)
    assert record is not None
    rows = list(record.rows)
    i = next(n for n, r in enumerate(rows) if r.view == "session_features")
    old = rows[i].row
    assert old is not None and old.values["last_category"] == "A"
    tampered = StampedRow({**old.values, "last_category": "B"}, old.ts_us)
    rows[i] = LoggedRow(rows[i].view, rows[i].key, tampered)
    log.append(RequestRecord(record.request_id, record.created_at_s, record.body, rows))
    explanation = recommender.explain(answer.request_id)
    assert not explanation.reproduced
    assert any("raw score(s) differ" in m for m in explanation.mismatches)


@pytest.mark.parametrize("session_id", ["s1", "s-unknown"])
def test_explain_reproduces_order_and_fallback_scorers(session_id: str) -> None:
    recommender, _, _ = make()
    answer = recommender.recommend(session_id, "u1", k=5)
    explanation = recommender.explain(answer.request_id)
    assert explanation.reproduced
    assert explanation.degraded_reason == answer.degraded_reason
    assert [i.item_id for i in explanation.kept] == ids(answer)
    assert all(i.reasons for i in explanation.items)


def test_explain_errors_name_the_problem() -> None:
    recommender, _, _ = make(model=toy_model("m1"))
    answer = recommender.recommend("s1", "u1", k=5)
    with pytest.raises(NotFound, match="'nope' is not in the request log"):
        recommender.explain("nope")
    other, _, _ = make(model=toy_model("m2"))
    other.log = recommender.log
    with pytest.raises(ConfigError, match="model 'm1', which is not loaded"):
        other.explain(answer.request_id)
    loader_calls: list[str] = []

    def load(version: str) -> LoadedModel:
        loader_calls.append(version)
        return recommender.model  # type: ignore[return-value]

    third = Recommender(
        recommender.rows, recommender.log, model=toy_model("m2"), models=load, clock=lambda: 0.0
    )
    assert third.explain(answer.request_id).reproduced and loader_calls == ["m1"]


# -- the version cache --------------------------------------------------------------------------


def test_identical_requests_for_one_version_come_from_the_cache() -> None:
    recommender, store, log = make()
    first = recommender.recommend("s1", "u1", k=5)
    second = recommender.recommend("s1", "u1", k=5)
    assert second.cached and not first.cached
    assert second.request_id == first.request_id and second.items == first.items
    assert len(log._records) == 1
    assert recommender.recommend("s1", "u1", k=4).request_id != first.request_id  # other k
    store.write([session_row(last_items=["a2", "a1"], version=T0 + 1)])  # the next event
    third = recommender.recommend("s1", "u1", k=5)
    assert not third.cached and third.session_version == T0 + 1
    assert third.request_id != first.request_id


def test_the_cache_never_serves_a_stale_version() -> None:
    """Real session folds, written one event at a time; requests repeated between events.
    Every answer must be for the version stored at that moment and equal to what a recommender
    without any cache answers for that state."""
    store = InMemoryFeatureStore()
    store.write(world_rows())
    config = ServingConfig(rerank=RerankConfig(max_per_category=5))  # no stability: pure answers
    now = [NOW_S]
    log = InMemoryRequestLog()
    cached = Recommender(InMemoryRows(store), log, config=config, clock=lambda: now[0])
    rng = random.Random(5)
    state = new_state("s2")
    policy = SessionPolicy(gap_s=1800, allowed_lateness_s=300)
    start = datetime.fromtimestamp(NOW_S, tz=UTC)
    items = ["a1", "a2", "a3", "a4", "b1", "b2", "b3"]
    hits = 0
    for n in range(30):
        ts = start + timedelta(seconds=n * 7)
        event = event_from_mapping(
            {
                "event_id": f"e{n}",
                "ts": ts.isoformat(),
                "session_id": "s2",
                "user_id": "u1",
                "item_id": rng.choice(items),
                "type": "view",
            }
        )
        fold(state, event, policy)
        row = fold_row(state)
        store.write([row])
        now[0] = ts.timestamp() + 1
        for _ in range(rng.randint(1, 3)):
            answer = cached.recommend("s2", "u1", k=5)
            hits += answer.cached
            assert answer.session_version == row.version
            fresh = Recommender(
                InMemoryRows(store), InMemoryRequestLog(), config=config, clock=lambda: now[0]
            )
            assert ids(answer) == ids(fresh.recommend("s2", "u1", k=5))
            logged = log.get(answer.request_id)
            assert logged is not None and logged.body["session_version"] == row.version
    assert hits > 0
    assert len(state.recent) == min(LAST_ITEMS_N, 30)


def test_stability_compares_with_the_list_shown_before_the_newest_event() -> None:
    recommender, store, log = make()
    first = recommender.recommend("s1", "u1", k=5)
    store.write([session_row(last_items=["a2", "a1"], version=T0 + 1)])
    second = recommender.recommend("s1", "u1", k=5)
    record = log.get(second.request_id)
    assert record is not None and record.body["shown_before"] == ids(first)
    again = recommender.recommend("s1", "u1", k=5)
    assert again.cached and again.request_id == second.request_id
    explicit = recommender.recommend("s1", "u1", k=5, shown=["b3", "b2"])
    record = log.get(explicit.request_id)
    assert record is not None and record.body["shown_before"] == ["b3", "b2"]


# -- A/B experiments ----------------------------------------------------------------------------

POPULARITY_VS_ORDER = Experiment(
    "order-vs-popularity",
    "s",
    {"control": 1, "treatment": 1},
    configs={"control": ArmConfig(scorer="fallback")},
)


def unit_in(experiment: Experiment, arm: str) -> str:
    """A user id the experiment buckets into ``arm``."""
    return next(u for u in (f"user{n}" for n in range(1000)) if assign(experiment, u) == arm)


@pytest.mark.parametrize("arm, scorer", [("control", "fallback"), ("treatment", "candidate-order")])
def test_an_arm_changes_the_scorer_is_logged_and_explained(arm: str, scorer: str) -> None:
    store = InMemoryFeatureStore()
    store.write(world_rows())
    user = unit_in(POPULARITY_VS_ORDER, arm)
    store.write([session_row(user_id=user, version=T0 + 1), user_row(user)])
    config = ServingConfig(experiment=POPULARITY_VS_ORDER)
    recommender, _, log = make(store, config=config)
    answer = recommender.recommend("s1", k=5)
    assert (answer.experiment, answer.arm) == ("order-vs-popularity", arm)
    assert answer.scorer == scorer and not answer.degraded
    assert answer.to_dict()["arm"] == arm
    record = log.get(answer.request_id)
    assert record is not None and record.body["experiment"] == {
        "name": "order-vs-popularity",
        "arm": arm,
        "control": "control",
        "unit": "user",
        "unit_id": user,
    }
    plain, _, _ = make(store)
    expected = plain.recommend("s1", k=5)  # the treatment arm is the default scorer
    assert (ids(answer) == ids(expected)) == (arm == "treatment")
    explanation = recommender.explain(answer.request_id)
    assert explanation.reproduced and explanation.scorer == scorer
    assert (explanation.experiment, explanation.arm) == ("order-vs-popularity", arm)
    assert [i.item_id for i in explanation.kept] == ids(answer)


def test_anonymous_sessions_are_bucketed_by_session_and_degraded_ones_keep_their_arm() -> None:
    recommender, _, log = make(config=ServingConfig(experiment=POPULARITY_VS_ORDER))
    for n in range(40):
        answer = recommender.recommend(f"s-unknown-{n}", k=5)  # no session row, no user
        assert answer.degraded and answer.scorer == "fallback"
        assert answer.arm == assign(POPULARITY_VS_ORDER, f"s-unknown-{n}")
        record = log.get(answer.request_id)
        assert record is not None and record.body["experiment"]["unit"] == "session"
        assert recommender.explain(answer.request_id).reproduced


def test_the_arm_is_part_of_the_cache_key() -> None:
    """A session whose unit changes (the user becomes known) is answered for its new arm."""
    experiment = Experiment("e", "", {"a": 1, "b": 1}, configs={"a": ArmConfig(scorer="fallback")})
    user = unit_in(experiment, "a")
    session = next(s for s in (f"anon{n}" for n in range(1000)) if assign(experiment, s) == "b")
    store = InMemoryFeatureStore()
    store.write(world_rows())
    store.write([session_row(session, user_id=None), user_row(user)])
    recommender, _, _ = make(store, config=ServingConfig(experiment=experiment))
    anonymous = recommender.recommend(session, k=5)
    assert anonymous.arm == "b" and anonymous.scorer == "candidate-order"
    known = recommender.recommend(session, user, k=5)
    assert known.arm == "a" and known.scorer == "fallback" and not known.cached
    assert recommender.recommend(session, user, k=5).cached


def test_an_arm_can_serve_another_model_version() -> None:
    experiment = Experiment(
        "models", "", {"old": 1, "new": 1}, configs={"new": ArmConfig(model_version="m2")}
    )
    loads: list[str] = []
    m1 = toy_model("m1")

    def load(version: str) -> LoadedModel:
        loads.append(version)
        return LoadedModel(version, m1.ranker)  # one fit is enough: the version is the point

    store = InMemoryFeatureStore()
    store.write(world_rows())
    recommender = Recommender(
        InMemoryRows(store),
        InMemoryRequestLog(),
        model=m1,
        models=load,
        config=ServingConfig(experiment=experiment),
        clock=lambda: NOW_S,
    )
    assert loads == ["m2"]  # loaded once, when the recommender is built
    seen = {}
    for arm in ("old", "new"):
        user = unit_in(experiment, arm)
        store.write([session_row(f"s-{arm}", user_id=user), user_row(user)])
        answer = recommender.recommend(f"s-{arm}", k=5)
        seen[arm] = answer.model_version
        assert recommender.explain(answer.request_id).reproduced
    assert seen == {"old": "m1", "new": "m2"} and loads == ["m2"]


def test_an_arm_that_needs_a_model_refuses_to_start_without_one() -> None:
    experiment = Experiment("e", "", {"a": 1, "b": 1}, configs={"b": ArmConfig(scorer="model")})
    with pytest.raises(ConfigError, match="arm 'b' of experiment 'e' scores with the model"):
        make(config=ServingConfig(experiment=experiment))
    versioned = Experiment("e", "", {"a": 1, "b": 1}, configs={"b": ArmConfig(model_version="v9")})
    with pytest.raises(ConfigError, match="model 'v9', which is not loaded"):
        make(config=ServingConfig(experiment=versioned))


def test_an_items_merged_row_follows_its_rows_when_they_are_read_again() -> None:
    """The merged item row and its log entries are made once per pair of cached rows: while
    the cache holds the rows they are reused, and once the rows are read again (the cache aged
    out) the request scores and logs the new values."""
    store = InMemoryFeatureStore()
    store.write(world_rows())
    clock = [0.0]
    log = InMemoryRequestLog()
    recommender = Recommender(
        InMemoryRows(store),
        log,
        config=ServingConfig(item_cache_s=10.0),
        clock=lambda: NOW_S,
        monotonic=lambda: clock[0],
    )

    def logged_price(request_id: str, item: str) -> object:
        record = log.get(request_id)
        assert record is not None
        [row] = [r.row for r in record.rows if r.view == "item_features" and r.key == item]
        assert row is not None
        return row.values["price"]

    first = recommender.recommend("s1", "u1", k=5)
    item = first.items[0].item_id
    old_price = logged_price(first.request_id, item)
    [current] = [r for r in world_rows() if r.view == "item_features" and r.key == item]
    store.write([replace(current, values={**current.values, "price": 999.0}, version=T0 + 1)])
    recommender.responses = type(recommender.responses)(recommender.config.cache_sessions)
    again = recommender.recommend("s1", "u1", k=5)
    assert logged_price(again.request_id, item) == old_price  # the cached rows, reused
    clock[0] = 11.0  # the item cache ages out: rows are read again
    recommender.responses = type(recommender.responses)(recommender.config.cache_sessions)
    fresh = recommender.recommend("s1", "u1", k=5)
    assert logged_price(fresh.request_id, item) == 999.0
    assert recommender.explain(fresh.request_id).reproduced


class RowSums:
    """A ranker whose scores move with every column of the matrix (NaN counts as 0)."""

    def score_candidates(self, X: np.ndarray) -> np.ndarray:
        return np.nan_to_num(np.asarray(X, dtype=np.float64)).sum(axis=1)


def test_item_columns_follow_their_rows_and_survive_a_full_table() -> None:
    """The model's item columns are computed once per pair of cached rows (the recommender's
    item table): a re-read row replaces its columns in place, and a table cleared because it is
    full (capacity 1: before every request) gives the same raw scores for the same rows. Each
    answer explains bit for bit from the log (the columns equal the logged rows')."""
    store = InMemoryFeatureStore()
    store.write(world_rows())
    clock = [0.0]
    logs = [InMemoryRequestLog(), InMemoryRequestLog()]
    recommenders = [
        Recommender(
            InMemoryRows(store),
            log,
            model=LoadedModel("m-sum", RowSums()),
            config=ServingConfig(item_cache_s=10.0, item_cache_rows=rows),
            clock=lambda: NOW_S,
            monotonic=lambda: clock[0],
        )
        for log, rows in zip(logs, (200_000, 1), strict=True)
    ]

    def raw(recommender: Recommender, log: InMemoryRequestLog) -> tuple[bytes, list[str]]:
        recommender.responses = type(recommender.responses)(recommender.config.cache_sessions)
        answer = recommender.recommend("s1", "u1", k=5)
        assert recommender.explain(answer.request_id).reproduced
        record = log.get(answer.request_id)
        assert record is not None
        served = ServedRequest.from_record(record)
        return np.asarray(served.raw_scores).tobytes(), [c.item_id for c in served.candidates]

    before = [raw(r, log) for r, log in zip(recommenders, logs, strict=True)]
    assert before[0] == before[1]
    # Every item becomes expensive and popular: the rows are read again once the cache ages out.
    changed = [
        replace(
            r,
            values={**r.values, "price": 999.0, "n_view_7d": 500, "conversion_rate_30d": 0.9},
            version=T0 + 1,
        )
        for r in world_rows()
        if r.view == "item_features"
    ]
    store.write(changed)
    mid = [raw(r, log) for r, log in zip(recommenders, logs, strict=True)]
    # The first still holds the old rows (and their columns); the second holds one row at a
    # time, so it read the new ones (its table was cleared and filled again).
    assert mid[0] == before[0]
    assert mid[1][1] == before[1][1] and mid[1][0] != before[1][0]  # same pool, new scores
    clock[0] = 11.0  # the first one's cache ages out: its rows are read again, columns replaced
    after = [raw(r, log) for r, log in zip(recommenders, logs, strict=True)]
    assert after[0] == after[1] == mid[1]
