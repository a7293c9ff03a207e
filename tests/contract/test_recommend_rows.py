"""The serving path's reads: the hand-written Value decoder, the direct Redis reader and the
Feast SDK reader (both against stock ``get_online_features``), and the in-process caches."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from featrec.adapters.feast.layout.decode import DECODERS, UndecodableValue, decode_value
from featrec.adapters.feast.layout.values import encode_value, normalize
from featrec.adapters.feast.repo import redis_layout_options
from featrec.adapters.feast.rows import FeastRowReader
from featrec.adapters.feast.types import value_proto
from featrec.adapters.feast.writers import RedisLayoutWriter
from featrec.adapters.redis.rows import RedisRowReader
from featrec.app.serving.cache import ResponseCache, RowCache, same_row
from featrec.core.features import catalog
from featrec.core.features.catalog import Dtype
from featrec.core.features.rows import FeatureRow
from featrec.core.ports.features import InMemoryFeatureStore
from featrec.core.ports.serving import (
    Found,
    InMemoryRows,
    RereadingRowReader,
    StampedRow,
    Wanted,
)
from featrec.errors import StoreError, StoreUnavailable
from featrec.settings import Settings

T0 = 1_700_000_000_123_456

finite = st.floats(allow_nan=False)
strings = st.text(max_size=300)
VALUES: dict[Dtype, st.SearchStrategy[Any]] = {
    Dtype.INT64: st.integers(-(2**63), 2**63 - 1),
    Dtype.FLOAT64: finite,
    Dtype.STRING: strings,
    Dtype.STRING_LIST: st.lists(strings, max_size=20),
    Dtype.FLOAT64_LIST: st.lists(finite, max_size=20),
}


@settings(deadline=None)
@given(st.data())
def test_decode_inverts_featrec_encoder_and_feast_serializer(data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(list(Dtype)))
    value = data.draw(st.one_of(st.none(), VALUES[dtype]))
    expected = value if value is None or dtype is not Dtype.INT64 else int(value)
    sdk_encoded = value_proto(dtype, normalize(dtype, value)).SerializeToString()
    for encoded in (encode_value(dtype, value), sdk_encoded):
        decoded = DECODERS[dtype](encoded)
        assert decoded == expected
        if isinstance(expected, float):
            assert math.copysign(1, decoded) == math.copysign(1, expected)  # type: ignore[arg-type]


def test_decode_unpacked_doubles_and_null_val() -> None:
    from feast.protos.feast.types.Value_pb2 import Null
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    assert decode_value(ValueProto(null_val=Null.NULL).SerializeToString()) is None
    # field 1 of DoubleList written unpacked: 0x09 + 8 bytes, twice
    unpacked = b"\x7a\x12" + b"\x09" + bytes.fromhex("000000000000f83f")
    unpacked += b"\x09" + bytes.fromhex("0000000000000040")
    assert decode_value(unpacked) == [1.5, 2.0]


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x08\x01", "tag 0x8"),  # bytes_val/int32: not a type featrec writes
        (b"\x12\x05ab", "corrupt"),  # string shorter than its length
        (b"\x20\x01\x00", "trailing"),
    ],
)
def test_decode_refuses_what_it_does_not_know(data: bytes, message: str) -> None:
    with pytest.raises(UndecodableValue, match=message):
        decode_value(data)


# -- rows written by featrec's writer, read back by every reader ------------------------------


def full_values(view: catalog.View, **values: object) -> dict[str, object]:
    out: dict[str, object] = dict.fromkeys(view.feature_names)
    unknown = set(values) - set(out)
    assert not unknown, unknown
    out.update(values)
    return out


ROWS = [
    FeatureRow(
        catalog.SESSION_FEATURES.name,
        "s1",
        full_values(
            catalog.SESSION_FEATURES,
            user_id="u1",
            n_events=3,
            last_items=["i2", "i1"],
            last_price=19.99,
            version=T0,
        ),
        T0,
    ),
    FeatureRow(
        catalog.USER_FEATURES.name,
        "u1",
        full_values(catalog.USER_FEATURES, top_categories=["A"], top_category_shares=[0.75]),
        T0 - 5_000_000,
    ),
    FeatureRow(
        catalog.ITEM_FEATURES.name,
        "i1",
        full_values(catalog.ITEM_FEATURES, price=9.5, category="A", n_view_7d=12),
        T0 - 7_000_000,
    ),
    FeatureRow(
        catalog.ITEM_TRENDING.name,
        "i1",
        full_values(catalog.ITEM_TRENDING, trend_view=3.25, category="A", as_of_s=1.7e9),
        T0 - 1,
    ),
    FeatureRow(
        catalog.ITEM_NEIGHBOURS.name,
        "i1",
        full_values(
            catalog.ITEM_NEIGHBOURS, neighbour_ids=["i2", "i3"], neighbour_weights=[2.0, 0.5]
        ),
        T0 - 2,
    ),
]
WANTED: Wanted = {
    catalog.SESSION_FEATURES.name: ["s1", "nobody"],
    catalog.USER_FEATURES.name: ["u1"],
    catalog.ITEM_FEATURES.name: ["i1", "i2", "i1"],
    catalog.ITEM_TRENDING.name: ["i1", "i2"],
    catalog.ITEM_NEIGHBOURS.name: ["i1"],
}


def expected_rows(seconds_only: bool = False) -> Found:
    by_key = {(r.view, r.key): r for r in ROWS}
    out: Found = {}
    for view, keys in WANTED.items():
        rows: list[StampedRow | None] = []
        for key in keys:
            row = by_key.get((view, key))
            if row is None:
                rows.append(None)
                continue
            ts = row.version - row.version % 1_000_000 if seconds_only else row.version
            rows.append(StampedRow(dict(row.values), ts))
        out[view] = rows
    return out


def test_in_memory_rows_are_the_reference() -> None:
    store = InMemoryFeatureStore()
    store.write(ROWS)
    assert InMemoryRows(store).read_rows(WANTED) == expected_rows()


def test_redis_reader_reads_what_the_writer_wrote_in_one_round_trip(
    redis_settings: Settings,
) -> None:
    project, _ = redis_layout_options(redis_settings)
    client = redis.Redis.from_url(redis_settings.redis_url)
    RedisLayoutWriter(client, project).write(ROWS)
    reader = RedisRowReader(client, project)
    assert reader.read_rows(WANTED) == expected_rows()
    assert reader.read_rows({catalog.ITEM_FEATURES.name: []}) == {catalog.ITEM_FEATURES.name: []}


def test_redis_reader_rereads_an_unchanged_row_as_the_object_it_knows(
    redis_settings: Settings,
) -> None:
    """A row read again whose stored bytes are unchanged is the known object (not decoded);
    a changed row, a row known from elsewhere (no fingerprint) or a deleted one are read anew."""
    project, _ = redis_layout_options(redis_settings)
    client = redis.Redis.from_url(redis_settings.redis_url)
    RedisLayoutWriter(client, project).write(ROWS)
    reader = RedisRowReader(client, project)
    assert isinstance(reader, RereadingRowReader)
    first = reader.read_rows(WANTED)
    again = reader.reread_rows(WANTED, first)
    assert again == first == expected_rows()
    for view, rows in again.items():
        for row, was in zip(rows, first[view], strict=True):
            assert row is was  # every present row: the very object known
    items = catalog.ITEM_FEATURES.name
    i1 = first[items][0]
    assert i1 is not None and i1.fingerprint is not None
    # a changed row (same key, new values) is decoded anew
    newer = newer_i1()
    RedisLayoutWriter(client, project).write([newer])
    changed = reader.reread_rows({items: ["i1"]}, {items: [i1]})[items][0]
    assert changed is not i1 and changed == StampedRow(dict(newer.values), newer.version)
    assert changed is not None and changed.fingerprint != i1.fingerprint
    # a known row without a fingerprint (another reader's) is decoded, equal
    plain = StampedRow(dict(changed.values), changed.ts_us)
    assert reader.reread_rows({items: ["i1"]}, {items: [plain]})[items][0] == changed
    assert reader.reread_rows({items: ["i1"]}, {items: [plain]})[items][0] is not plain
    # through the row cache: the held row comes back when unchanged
    now = [0.0]
    cache = RowCache(reader, max_age_s=1.0, monotonic=lambda: now[0])
    held = cache.get({items: ["i1", "i2"]})[items]
    now[0] = 2.0
    assert cache.get({items: ["i1", "i2"]})[items] == held
    assert cache.get({items: ["i1"]})[items][0] is held[0]
    client.delete(*client.keys("*"))  # the row is gone: read as missing, not kept
    now[0] = 4.0
    assert cache.get({items: ["i1"]})[items] == [None]


def test_redis_reader_equals_stock_feast_and_the_sdk_reader(redis_settings: Settings) -> None:
    """The fast reader, the SDK reader and stock get_online_features agree on the same store."""
    from featrec.adapters.feast.repo import apply_repo, open_store

    apply_repo(redis_settings)
    store = open_store(redis_settings)
    project, _ = redis_layout_options(redis_settings)
    client = redis.Redis.from_url(redis_settings.redis_url)
    RedisLayoutWriter(client, project).write(ROWS)
    fast = RedisRowReader(client, project).read_rows(WANTED)
    sdk = FeastRowReader(store).read_rows(WANTED)
    assert sdk == fast == expected_rows()
    stock = store.get_online_features(
        features=[f"{catalog.ITEM_FEATURES.name}:{n}" for n in ("price", "category", "n_view_7d")],
        entity_rows=[{"item_id": "i1"}],
    ).to_dict()
    row = fast[catalog.ITEM_FEATURES.name][0]
    assert row is not None
    assert stock == {"item_id": ["i1"], **{k: [row.values[k]] for k in stock if k != "item_id"}}


def test_sdk_reader_on_sqlite_keeps_whole_seconds(sqlite_store: Any) -> None:
    from featrec.adapters.feast.writers import FeastBatchWriter

    FeastBatchWriter(sqlite_store).write(ROWS)
    assert FeastRowReader(sqlite_store).read_rows(WANTED) == expected_rows(seconds_only=True)


def test_redis_reader_down_is_store_unavailable(redis_settings: Settings) -> None:
    from featrec.adapters.redis.rows import serving_client

    project, _ = redis_layout_options(redis_settings)
    dead = serving_client("redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable, match="reading Feast's Redis layout"):
        RedisRowReader(dead, project).read_rows(WANTED)


# -- caches ------------------------------------------------------------------------------------


class CountingRows:
    """A real in-memory reader that records the reads it was asked for (and can be switched
    off like a store that went away)."""

    def __init__(self, store: InMemoryFeatureStore) -> None:
        self.inner = InMemoryRows(store)
        self.calls: list[dict[str, list[str]]] = []
        self.down = False

    def read_rows(self, wanted: Wanted) -> Found:
        if self.down:
            raise StoreUnavailable("store is down")
        self.calls.append({view: list(keys) for view, keys in wanted.items()})
        return self.inner.read_rows(wanted)


def counting_cache(
    max_age_s: float = 5.0,
) -> tuple[RowCache, CountingRows, InMemoryFeatureStore, list[float]]:
    """A row cache over a counting in-memory reader of ``ROWS``, on a clock the test sets."""
    store = InMemoryFeatureStore()
    store.write(ROWS)
    rows = CountingRows(store)
    now = [0.0]
    return RowCache(rows, max_age_s=max_age_s, monotonic=lambda: now[0]), rows, store, now


def newer_i1() -> FeatureRow:
    """Item ``i1``'s row with another price, one version later."""
    items = catalog.ITEM_FEATURES.name
    return FeatureRow(items, "i1", {**ROWS[2].values, "price": 10.0}, ROWS[2].version + 1)


def test_row_cache_bounds_staleness_and_reads_misses_in_one_call() -> None:
    cache, rows, store, now = counting_cache()
    items = catalog.ITEM_FEATURES.name
    trending = catalog.ITEM_TRENDING.name
    first = cache.get({items: ["i1", "i2"], trending: ["i1"]})
    assert rows.calls == [{items: ["i1", "i2"], trending: ["i1"]}]
    assert first[items][0] is not None and first[items][1] is None
    # a newer row is written; within 5 s the cache answers (bounded staleness), after it re-reads
    newer = newer_i1()
    store.write([newer])
    now[0] = 5.0
    again = cache.get({items: ["i1", "i2"], trending: ["i1"]})
    assert again == first and len(rows.calls) == 1
    now[0] = 5.01
    fresh = cache.get({items: ["i2", "i1"]})
    assert rows.calls[-1] == {items: ["i2", "i1"]}
    assert fresh[items][1] == StampedRow(dict(newer.values), newer.version)


def test_row_cache_keeps_an_unchanged_row_read_again_as_the_same_object() -> None:
    cache, rows, store, now = counting_cache()
    items = catalog.ITEM_FEATURES.name
    first = cache.get({items: ["i1", "i2"]})[items]
    now[0] = 6.0  # both rows are read again; i1 is unchanged, i2 is still missing
    again = cache.get({items: ["i1", "i2"]})[items]
    assert len(rows.calls) == 2
    assert again[0] is first[0] and again[1] is None
    # the serving path's memos key on identity: a changed row must be a new object
    newer = newer_i1()
    store.write([newer])
    now[0] = 12.0
    fresh = cache.get({items: ["i1"]})[items][0]
    assert fresh is not first[0] and fresh == StampedRow(dict(newer.values), newer.version)
    now[0] = 18.0
    assert cache.get({items: ["i1"]})[items][0] is fresh


@pytest.mark.parametrize(
    ("old", "new", "same"),
    [
        ({"a": 1.5, "b": ["x", "y"], "c": None}, {"a": 1.5, "b": ["x", "y"], "c": None}, True),
        ({"a": 1.5}, {"a": 1.5, "b": 2.0}, False),  # a field more
        ({"a": 1.5, "b": 2.0}, {"a": 1.5, "c": 2.0}, False),  # another field
        ({"a": 1}, {"a": 1.0}, False),  # equal, of another type: the log keeps types
        ({"a": True}, {"a": 1}, False),
        ({"a": ["x", "y"]}, {"a": ["y", "x"]}, False),
        ({"a": [1.0, 2.5]}, {"a": [1.0, 2.5, 3.0]}, False),
        ({"a": float("nan")}, {"a": float("nan")}, False),  # two NaNs are never equal
        ({"a": None}, {"a": 0.0}, False),
        ({"a": 0.0}, {"a": None}, False),
    ],
)
def test_same_row_means_the_same_values_of_the_same_types(
    old: dict[str, object], new: dict[str, object], same: bool
) -> None:
    assert same_row(StampedRow(old, 7), StampedRow(new, 7)) is same
    assert same_row(StampedRow(new, 7), StampedRow(old, 7)) is same
    assert not same_row(StampedRow(old, 7), StampedRow(old, 8))  # another time
    assert not same_row(None, StampedRow(new, 7))


def test_row_cache_answers_stale_only_when_allowed() -> None:
    cache, rows, _, now = counting_cache(max_age_s=1.0)
    items = catalog.ITEM_FEATURES.name
    cached = cache.get({items: ["i1"]})[items][0]
    rows.down = True
    now[0] = 100.0
    with pytest.raises(StoreError):
        cache.get({items: ["i1"]})
    assert cache.get({items: ["i1", "i9"]}, stale_ok=True) == {items: [cached, None]}
    calls = len(rows.calls)
    rows.down = False
    assert cache.get({items: ["i1"]}, offline=True) == {items: [cached]}
    assert len(rows.calls) == calls  # offline never asks the store


def test_row_cache_is_bounded() -> None:
    store = InMemoryFeatureStore()
    cache = RowCache(CountingRows(store), max_age_s=60, capacity=3)
    cache.get({"item_features": ["a", "b", "c", "d", "e"]})
    assert len(cache) == 3
    # the oldest rows went first, whatever their view; the newest stay cached
    rows = cache.reader
    assert isinstance(rows, CountingRows)
    cache.get({"item_trending": ["x"]})  # c, the oldest of c d e, makes room
    assert len(cache) == 3
    calls = len(rows.calls)
    cache.get({"item_features": ["d", "e"], "item_trending": ["x"]})
    assert len(rows.calls) == calls
    cache.get({"item_features": ["c"]})
    assert rows.calls[calls:] == [{"item_features": ["c"]}]


def test_response_cache_serves_one_version_and_never_an_older_one() -> None:
    cache: ResponseCache[str] = ResponseCache()
    assert cache.put("s", 10, "k", "answer@10", ["a", "b"])
    assert cache.get("s", 10, "k") == "answer@10"
    assert cache.get("s", 11, "k") is None  # the next event: no hit
    assert cache.get("s", 10, "other") is None
    assert cache.shown_before("s", 11) == ("a", "b")
    assert cache.put("s", 11, "k", "answer@11", ["b", "a"])
    assert cache.get("s", 10, "k") is None  # old entry gone, not only unmatched
    assert cache.get("s", 11, "k") == "answer@11"
    assert cache.shown_before("s", 11) == ("a", "b")  # what was shown before version 11
    assert not cache.put("s", 10, "k", "late answer@10", ["z"])  # an outdated answer is refused
    assert cache.get("s", 10, "k") is None
    assert cache.get("s", 11, "k") == "answer@11"


def test_response_cache_is_bounded_per_session_and_in_sessions() -> None:
    cache: ResponseCache[int] = ResponseCache(capacity=2, variants=2)
    for i in range(3):
        cache.put("s", 1, i, i, [])
    assert [cache.get("s", 1, i) for i in range(3)] == [None, 1, 2]
    cache.put("t", 1, 0, 0, [])
    cache.put("u", 1, 0, 0, [])
    assert len(cache) == 2 and cache.get("s", 1, 2) is None


# -- the item features serving reads -------------------------------------------------------------


def _random_item_rows(rng: random.Random, n: int) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for i in range(n):
        features: dict[str, object] = {}
        for f in catalog.ITEM_FEATURES.features:
            if f.dtype is Dtype.INT64:
                features[f.name] = rng.randint(0, 100)
            elif f.dtype is Dtype.FLOAT64:
                features[f.name] = rng.random() * 100 if rng.random() > 0.1 else None
            else:
                features[f.name] = rng.choice(["A", "B", "C", None])
        features["first_seen_s"] = 1.7e9 - rng.random() * 1e7
        trending = {f.name: rng.random() * 10 for f in catalog.ITEM_TRENDING.features}
        trending["category"] = rng.choice(["A", "B", None])
        trending["as_of_s"] = 1.7e9 - rng.random() * 1e4
        out[f"i{i}"] = {"features": features, "trending": trending}
    return out


def test_the_served_item_features_are_all_that_ranking_and_fallback_read() -> None:
    from featrec.app.serving.steps import SERVED_FEATURES
    from featrec.core.candidates.model import Candidate
    from featrec.core.ranking.ranker import (
        fallback_scores,
        item_row,
        popularity_score,
        ranking_matrix,
    )

    rng = random.Random(3)
    raw = _random_item_rows(rng, 60)
    served = SERVED_FEATURES[catalog.ITEM_FEATURES.name]
    sources = ("covisit", "session", "history", "trending", "popular")
    candidates = [
        Candidate(item, (rng.choice(sources),), {s: rng.random() for s in rng.sample(sources, 2)})
        for item in raw
    ]
    session = {"last_items": ["i1", "i2"], "last_category": "A", "last_price": 20.0}
    user = {"top_categories": ["A", "B"], "top_category_shares": [0.6, 0.3]}
    now = 1.7e9

    def items(keep: tuple[str, ...] | None) -> dict[str, dict[str, object] | None]:
        return {
            key: item_row(
                {k: v for k, v in r["features"].items() if keep is None or k in keep},
                r["trending"],
            )
            for key, r in raw.items()
        }

    full, sub = items(None), items(served)
    assert (
        ranking_matrix(candidates, session, user, full, now).tobytes()
        == ranking_matrix(candidates, session, user, sub, now).tobytes()
    )
    assert fallback_scores(candidates, user, full, now).tobytes() == (
        fallback_scores(candidates, user, sub, now).tobytes()
    )
    assert popularity_score(candidates, full, now).tobytes() == (
        popularity_score(candidates, sub, now).tobytes()
    )
    # and each served feature is needed: without it the matrix changes
    for name in served:
        fewer = items(tuple(f for f in served if f != name))
        assert (
            ranking_matrix(candidates, session, user, fewer, now).tobytes()
            != ranking_matrix(candidates, session, user, full, now).tobytes()
        ), name


def test_readers_read_only_the_chosen_features(redis_settings: Settings) -> None:
    from featrec.adapters.feast.repo import apply_repo, open_store

    chosen = {catalog.ITEM_FEATURES.name: ("price", "category")}
    apply_repo(redis_settings)
    project, _ = redis_layout_options(redis_settings)
    client = redis.Redis.from_url(redis_settings.redis_url)
    RedisLayoutWriter(client, project).write(ROWS)
    wanted = {catalog.ITEM_FEATURES.name: ["i1"], catalog.ITEM_TRENDING.name: ["i1"]}
    fast = RedisRowReader(client, project, features=chosen).read_rows(wanted)
    sdk = FeastRowReader(open_store(redis_settings), chosen).read_rows(wanted)
    assert fast == sdk
    row = fast[catalog.ITEM_FEATURES.name][0]
    assert row is not None and row.values == {"price": 9.5, "category": "A"}
    trending = fast[catalog.ITEM_TRENDING.name][0]
    assert trending is not None and set(trending.values) == set(catalog.ITEM_TRENDING.feature_names)
