"""Bounded memos drop their oldest entries (insertion order), a batch at a time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from featrec.adapters.request_entries import IdentityMemo, RowDigests
from featrec.core.bounded import drop_oldest
from featrec.core.ports.serving import InMemoryRequestLog, LoggedRow, RequestRecord, StampedRow


@given(st.lists(st.integers(), unique=True, max_size=60), st.integers(-2, 70))
def test_drop_oldest_drops_the_first_inserted_keys(keys: list[int], n: int) -> None:
    d: dict[int, object] = {k: str(k) for k in keys}
    dropped = drop_oldest(d, n)
    cut = max(n, 0)
    assert dropped == keys[:cut]
    assert list(d) == keys[cut:]


def test_drop_oldest_again_after_newer_keys_and_a_key_set_again() -> None:
    d: dict[str, object] = dict.fromkeys("abcdef", 0)
    assert drop_oldest(d, 2) == ["a", "b"]
    d["c"] = 1  # setting a key again keeps its place
    d["g"] = 0
    assert drop_oldest(d, 3) == ["c", "d", "e"]
    assert list(d) == ["f", "g"]


def test_identity_memo_keeps_the_newest_and_holds_what_it_keeps() -> None:
    memo: IdentityMemo[int] = IdentityMemo(size=8)
    objects = [object() for _ in range(30)]
    for n, obj in enumerate(objects):
        memo.put(obj, n)
    kept = [n for n, obj in enumerate(objects) if memo.values.get(id(obj)) == n]
    assert kept == list(range(30 - len(kept), 30)) and 1 <= len(kept) <= 8
    assert set(memo.values) == set(memo._held)  # held while memoised, dropped together


def test_row_digests_forget_the_oldest_rows_first() -> None:
    digests = RowDigests(size=4)
    rows = [LoggedRow("v", f"k{n}", StampedRow({"x": float(n)}, n)) for n in range(12)]
    found = [digests.encode(row) for row in rows]
    assert len({d for d, _ in found}) == 12
    # the newest rows are still memoised by identity: the same (digest, bytes) objects back
    assert digests.encode(rows[-1])[1] is found[-1][1]
    for digest, _ in found:  # one stored row per batch
        digests.remember([digest], now=1.0)
    assert list(digests.stored) == [d for d, _ in found][-len(digests.stored) :]
    assert 1 <= len(digests.stored) <= 4


def test_in_memory_request_log_keeps_the_newest_capacity_records() -> None:
    log = InMemoryRequestLog(capacity=3)
    for n in range(10):
        log.append(RequestRecord(f"r{n}", float(n), {}, []))
    assert [log.get(f"r{n}") is not None for n in range(10)] == [False] * 7 + [True] * 3
