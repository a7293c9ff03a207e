"""The micro-batcher: size bound, a deadline armed by the first item (not re-armed), EOF flush."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflows.batching import (
    BatchSnapshot,
    FirstItemDeadlineBatcher,
    micro_batch,
    shard_chunks,
    shard_of,
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_deadline_is_armed_by_the_first_item_and_not_moved_by_later_ones() -> None:
    clock = Clock()
    b = FirstItemDeadlineBatcher[int](100, timedelta(milliseconds=50), now=clock)
    t0 = clock.now
    assert b.on_batch([[1]]) == ([], False)
    assert b.notify_at() == t0 + timedelta(milliseconds=50)
    clock.now += timedelta(milliseconds=40)
    assert b.on_batch([[2], [3]]) == ([], False)
    assert b.notify_at() == t0 + timedelta(milliseconds=50)  # op.collect would say t0+90ms
    out, discard = b.on_notify()
    assert list(out) == [[1, 2, 3]]
    assert discard is True
    assert b.notify_at() is None


def test_size_bound_splits_and_rearms_for_the_rest() -> None:
    clock = Clock()
    b = FirstItemDeadlineBatcher[int](3, timedelta(seconds=1), now=clock)
    b.on_batch([[0]])
    clock.now += timedelta(milliseconds=700)
    out, discard = b.on_batch([[1, 2], [3, 4, 5, 6]])
    assert list(out) == [[0, 1, 2], [3, 4, 5]]
    assert discard is False
    # The leftover item is a new batch whose first item arrived now.
    assert b.notify_at() == clock.now + timedelta(seconds=1)
    out, discard = b.on_eof()
    assert list(out) == [[6]]
    assert discard is True


def test_exact_fill_discards_the_key() -> None:
    b = FirstItemDeadlineBatcher[int](2, timedelta(seconds=1), now=Clock())
    out, discard = b.on_batch([[1], [2]])
    assert list(out) == [[1, 2]]
    assert discard is True


def test_snapshot_resumes_pending_items_and_deadline() -> None:
    clock = Clock()
    b = FirstItemDeadlineBatcher[str](10, timedelta(seconds=1), now=clock)
    b.on_batch([["a", "b"]])
    snap = b.snapshot()
    assert snap == BatchSnapshot(("a", "b"), clock.now + timedelta(seconds=1))
    b.on_batch([["c"]])
    assert snap.items == ("a", "b")  # the snapshot is not mutated by later items
    resumed = FirstItemDeadlineBatcher[str](10, timedelta(seconds=1), snap, now=clock)
    assert resumed.notify_at() == snap.flush_at
    assert list(resumed.on_eof()[0]) == [["a", "b"]]


def run_batches(items: list[object], max_rows: int, deadline: timedelta) -> list[list[int]]:
    flow = Dataflow("batching_test")
    up = op.input("input", flow, TestingSource(items))
    keyed = op.map("chunk", up, lambda x: ("all", [x]))
    batches = micro_batch("batch", keyed, max_rows, deadline)
    out: list[tuple[str, list[int]]] = []
    op.output("out", batches, TestingSink(out))
    run_main(flow)
    return [batch for _, batch in out]


def test_flow_flushes_on_size_and_at_eof() -> None:
    batches = run_batches(list(range(10)), 3, timedelta(seconds=30))
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_flow_flushes_a_trickle_at_the_first_items_deadline() -> None:
    # 8 items, at least 60 ms apart (> 420 ms in all); a 150 ms deadline armed by the first
    # item must flush before the trickle ends. op.collect(150 ms) re-arms on every item and
    # would hold all 8 until EOF.
    pause = TestingSource.PAUSE(timedelta(milliseconds=60))
    items: list[object] = []
    for i in range(8):
        items += [i, pause]
    batches = run_batches(items, 1000, timedelta(milliseconds=150))
    assert len(batches) >= 2
    assert [x for batch in batches for x in batch] == list(range(8))


def test_flow_with_a_long_deadline_flushes_the_trickle_once_at_eof() -> None:
    pause = TestingSource.PAUSE(timedelta(milliseconds=20))
    items: list[object] = []
    for i in range(5):
        items += [i, pause]
    assert run_batches(items, 1000, timedelta(seconds=30)) == [list(range(5))]


def test_flow_batches_chunks_of_several_keys() -> None:
    flow = Dataflow("chunks_test")
    up = op.input("input", flow, TestingSource(list(range(20)), batch_size=20))
    chunks = op.flat_map_batch("shard", up, lambda xs: shard_chunks(xs, str, 3))
    out: list[tuple[str, list[int]]] = []
    op.output("out", micro_batch("batch", chunks, 4, timedelta(seconds=30)), TestingSink(out))
    run_main(flow)
    by_shard: dict[str, list[int]] = {}
    for shard, batch in out:
        assert 1 <= len(batch) <= 4
        assert all(shard_of(str(x), 3) == shard for x in batch)
        by_shard.setdefault(shard, []).extend(batch)
    assert sorted(x for xs in by_shard.values() for x in xs) == list(range(20))
    assert all(xs == sorted(xs) for xs in by_shard.values())  # order kept per shard


def test_shard_chunks_groups_in_order() -> None:
    items = ["a1", "b1", "a2", "c1", "b2"]
    chunks = dict(shard_chunks(items, lambda s: s[0], 1000))
    assert chunks == {
        shard_of("a", 1000): ["a1", "a2"],
        shard_of("b", 1000): ["b1", "b2"],
        shard_of("c", 1000): ["c1"],
    }


def test_shards_are_stable_and_all_used() -> None:
    keys = [f"session-{i}" for i in range(1000)]
    shards = [shard_of(k, 4) for k in keys]
    assert set(shards) == {"0", "1", "2", "3"}
    assert shard_of("session-7", 4) == str(zlib.crc32(b"session-7") % 4)
    assert all(shard_of(k, 1) == "0" for k in keys[:10])


def test_micro_batch_rejects_bad_bounds() -> None:
    flow = Dataflow("bad_bounds")
    keyed = op.map("chunk", op.input("input", flow, TestingSource([1])), lambda x: (str(x), [x]))
    with pytest.raises(ValueError, match="max_rows"):
        micro_batch("b0", keyed, 0, timedelta(seconds=1))
    with pytest.raises(ValueError, match="deadline"):
        micro_batch("b1", keyed, 10, timedelta(0))
