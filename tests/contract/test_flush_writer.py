"""The dataflows' FlushWriter beyond the shared contract (tests/contract/test_online_contract.py
runs that contract over it too): one round trip per call, remembered versions, recovery from a
lost script cache and from an unreachable server. Real redis-server, stock Feast reads."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from featrec.adapters.feast.flush_writer import FlushWriter
from featrec.adapters.feast.reader import FeastOnlineReader
from featrec.adapters.feast.writers import open_writer
from featrec.core.features import catalog
from featrec.core.features.rows import FeatureRow
from featrec.errors import StoreUnavailable
from featrec.settings import Settings
from featrec.testing.redis_server import free_port

SESSION = catalog.SESSION_FEATURES.name
T0 = 1_700_000_000_000_000


def values(n: int, user: str | None = "u1") -> dict[str, object]:
    return {
        "user_id": user, "n_events": n, "n_views": n, "n_clicks": 0, "n_carts": 0,
        "n_purchases": 0, "n_distinct_items": 1, "duration_s": 1.5, "mean_dwell_s": 0.5,
        "last_items": ["i1", "i2"], "last_category": "c", "last_price": 9.5,
        "cart_value": 0.0, "started_at_s": 1.0, "last_event_at_s": 2.5, "version": T0 + n,
    }  # fmt: skip


def row(key: str, n: int) -> FeatureRow:
    return FeatureRow(SESSION, key, values(n), T0 + n)


def client_of(settings: Settings) -> redis.Redis[bytes]:
    return redis.Redis.from_url(settings.redis_url)


def test_remembered_versions_guard_without_reading(
    redis_store: Any, redis_settings: Settings
) -> None:
    writer = FlushWriter(client_of(redis_settings), "featrec", remember=True)
    assert writer.write([row("s", 5), row("t", 1)]) == 2  # first rows: the script
    assert writer.write([row("s", 4)]) == 0  # older than what it wrote: skipped in memory
    assert writer.write([row("s", 7), row("s", 6), row("t", 2)]) == 2  # in order, as Redis
    reader = FeastOnlineReader(redis_store)
    assert reader.read(SESSION, ["s", "t"]) == [values(7), values(2)]


def test_a_restarted_writer_cannot_overwrite_newer_rows(
    redis_store: Any, redis_settings: Settings
) -> None:
    """A replay after a crash: a new writer remembers nothing, so the script guards."""
    first = FlushWriter(client_of(redis_settings), "featrec", remember=True)
    assert first.write([row("s", 9)]) == 1
    first.close()
    second = FlushWriter(client_of(redis_settings), "featrec", remember=True)
    assert second.write([row("s", 8), row("s", 9)]) == 0
    assert second.write([row("s", 10)]) == 1
    assert FeastOnlineReader(redis_store).read(SESSION, ["s"]) == [values(10)]


def test_a_flushed_script_cache_is_reloaded(redis_store: Any, redis_settings: Settings) -> None:
    client = client_of(redis_settings)
    writer = FlushWriter(client, "featrec")
    assert writer.write([row("s", 1)]) == 1
    client.script_flush()
    assert writer.write([row("s", 2), row("t", 1)]) == 2
    assert FeastOnlineReader(redis_store).read(SESSION, ["s", "t"]) == [values(2), values(1)]


def test_memory_is_bounded(redis_settings: Settings) -> None:
    writer = FlushWriter(client_of(redis_settings), "featrec", remember=True, max_known=3)
    assert writer.write([row(f"s{i}", 1) for i in range(3)]) == 3
    assert writer.write([row("s9", 1)]) == 1  # over the bound: everything is forgotten
    assert writer.write([row("s0", 1)]) == 0  # ... and the script guards again
    assert writer.write([row("s0", 2)]) == 1


def test_key_ttl_and_open_writer(redis_store: Any, redis_settings: Settings) -> None:
    client = client_of(redis_settings)
    writer = FlushWriter(client, "featrec", key_ttl_seconds=100, remember=True)
    assert writer.write([row("s", 1)]) == 1
    assert writer.write([row("s", 2)]) == 1  # the plain HSET path sets it too
    [key] = client.keys()
    assert 0 < client.ttl(key) <= 100
    flow_writer = open_writer(redis_settings, flow=True, exclusive=True)
    assert isinstance(flow_writer, FlushWriter)
    flow_writer.close()


def test_an_unreachable_server_is_store_unavailable_and_the_writer_recovers(
    redis_settings: Settings,
) -> None:
    dead = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreUnavailable):
        FlushWriter(dead, "featrec").write([row("s", 1)])
    writer = FlushWriter(client_of(redis_settings), "featrec", remember=True)
    assert writer.write([row("s", 1)]) == 1
    client_of(redis_settings).client_kill_filter(_type="normal", skipme=True)
    # The writer's connection was killed: the call fails as unavailable (the sink retries),
    # then a new connection is opened and nothing remembered is trusted.
    try:
        written = writer.write([row("s", 2)])
    except StoreUnavailable:
        written = writer.write([row("s", 2)])
    assert written == 1


@pytest.mark.parametrize("view", sorted(catalog.VIEWS))
def test_the_compiled_packer_gives_the_generic_bytes(view: str) -> None:
    """resp.fields_packer == hiredis packing of each value's generic encoding, for every
    value kind a row may carry (fast-path types and the ones that need converting)."""
    import math
    import random

    import hiredis

    from featrec.adapters.feast.layout import resp
    from featrec.adapters.feast.layout.values import ENCODERS, field_hash

    spec = catalog.VIEWS[view]
    rng = random.Random(7)
    samples: dict[catalog.Dtype, list[object]] = {
        catalog.Dtype.INT64: [0, 1, 127, 128, -1, 2**40, 2**63 - 1, None, 16383, 16384, 2**62],
        catalog.Dtype.FLOAT64: [0.0, -0.0, 1.5, math.nan, math.inf, None, 3, 1e300],
        catalog.Dtype.STRING: ["", "a", "é" * 200, None, "x" * 5000, "y" * 125, "y" * 126, "é"],
        catalog.Dtype.STRING_LIST: [
            [],
            ["a", "b"],
            None,
            ["é" * 130],
            ["z" * 127, "z" * 128, ""],
            ["a", "é"],
        ],
        catalog.Dtype.FLOAT64_LIST: [[], [1.0, math.nan], None, [2]],
    }
    packer = resp.fields_packer(spec)
    for _ in range(200):
        values = {f.name: rng.choice(samples[f.dtype]) for f in spec.features}
        expected = hiredis.pack_command(
            ("X", *[x for f in spec.features for x in (field_hash(view, f.name),
             ENCODERS[f.dtype](values[f.name]))])
        )  # fmt: skip
        assert b"*%d\r\n$1\r\nX\r\n" % (2 * len(spec.features) + 1) + packer(values) == expected


def test_varint_tables_give_the_protobuf_varint() -> None:
    """The table-driven varint == the plain 7-bit loop, at every boundary of 7 and 14 bits."""
    from featrec.adapters.feast.layout.values import varint

    def reference(n: int) -> bytes:
        n &= 0xFFFF_FFFF_FFFF_FFFF
        out = bytearray()
        while n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)

    edges = {0, 1, -1, -(2**63), 2**63 - 1, 2**64 - 1}
    for bits in range(1, 64):
        edges |= {2**bits - 1, 2**bits, 2**bits + 1}
    for n in sorted(edges):
        assert varint(n) == reference(n), n


def test_a_string_list_that_is_not_all_str_is_refused_naming_the_item() -> None:
    from featrec.adapters.feast.layout.values import InvalidFeatureRow, encode_value

    with pytest.raises(InvalidFeatureRow, match="item 1 is int"):
        encode_value(catalog.Dtype.STRING_LIST, ["a", 3])


def test_a_bad_value_names_its_feature(redis_settings: Settings) -> None:
    from featrec.adapters.feast.layout.values import InvalidFeatureRow

    writer = FlushWriter(client_of(redis_settings), "featrec")
    bad = values(1)
    bad["n_events"] = "many"
    with pytest.raises(InvalidFeatureRow, match="n_events"):
        writer.write([row("ok", 1), FeatureRow(SESSION, "s", bad, T0 + 1)])
    assert client_of(redis_settings).dbsize() == 0
