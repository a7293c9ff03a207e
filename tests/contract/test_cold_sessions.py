"""The store of idle sessions (SQLite, a real file): what a resumed shard finds there is what
the store held when the shard's snapshot was taken; forgetting reaches every copy."""

from __future__ import annotations

from pathlib import Path

from featrec.adapters.sqlite.cold_sessions import HISTORY, ColdSessions, ColdShard
from featrec.core.sessions.shard import Cooled


def open_shard(tmp_path: Path, key: str = "s") -> ColdShard:
    return ColdSessions(tmp_path / "cold").shard(key)


def cooled(sid: str, state: bytes, touched: float = 100.0, user: str | None = None) -> Cooled:
    return Cooled(sid, user, touched, state)


def test_a_cooled_session_is_taken_once(tmp_path: Path) -> None:
    store = ColdSessions(tmp_path / "cold")
    three, four = store.shard("3"), store.shard("4")
    three.put([cooled("a", b"A"), cooled("b", b"B")], tag=1)
    assert three.count() == 2 and four.count() == 0 and store.count() == 2
    assert sorted(three.take(["a", "zzz"], tag=1, horizon=0.0)) == [b"A"]
    assert three.take(["a"], tag=2, horizon=0.0) == []  # revived: live in the shard now
    assert four.take(["b"], tag=2, horizon=0.0) == []  # another shard's file
    # A session idle past the TTL's horizon is not revived (it has expired).
    assert three.take(["b"], tag=2, horizon=100.0) == []
    assert three.take(["b"], tag=2, horizon=99.0) == [b"B"]
    assert store.count() == 0
    assert sorted(p.name for p in (tmp_path / "cold").iterdir() if p.suffix == ".sqlite") == [
        "shard-3.sqlite",
        "shard-4.sqlite",
    ]


def test_rollback_restores_what_the_store_held_at_a_snapshot(tmp_path: Path) -> None:
    store = open_shard(tmp_path)
    store.put([cooled("a", b"A1")], tag=1)  # cooled before snapshot 1
    assert store.take(["a"], tag=2, horizon=0.0) == [b"A1"]  # revived before snapshot 2
    store.put([cooled("a", b"A3")], tag=3)  # cooled again before snapshot 3
    store.put([cooled("b", b"B3")], tag=3)

    # Resumed from snapshot 2: a was live in that snapshot, b did not exist yet.
    assert store.rollback(2) == (2, 0)
    assert store.count() == 0
    # Resumed from snapshot 1 instead: a was cold, as A1.
    assert store.rollback(1) == (0, 1)
    assert store.take(["a"], tag=2, horizon=0.0) == [b"A1"]
    # A new shard (no snapshot): nothing it wrote counts.
    assert store.rollback(-1) == (1, 0) and store.count() == 0


def test_cooling_twice_under_one_tag_keeps_the_newer_state(tmp_path: Path) -> None:
    store = open_shard(tmp_path)
    store.put([cooled("a", b"old")], tag=4)
    assert store.take(["a"], tag=4, horizon=0.0) == [b"old"]
    store.put([cooled("a", b"new")], tag=4)
    assert store.take(["a"], tag=5, horizon=0.0) == [b"new"]


def test_expiry_and_old_history(tmp_path: Path) -> None:
    store = open_shard(tmp_path)
    store.put([cooled("old", b"O", touched=10.0), cooled("new", b"N", touched=50.0)], tag=1)
    store.take(["new"], tag=2, horizon=0.0)
    store.put([cooled("new", b"N2", touched=60.0)], tag=3)
    assert store.expire(horizon=20.0, tag=3) == 1  # "old"
    # The revived row of "new" is history a rollback to snapshot 2 or later no longer needs
    # once it is HISTORY snapshots old; until then it stays.
    assert store.expire(horizon=20.0, tag=2 + HISTORY - 1) == 0
    assert store.rollback(1) == (1, 1)  # so a rollback can still bring back N
    assert store.take(["new"], tag=2, horizon=0.0) == [b"N"]
    store.put([cooled("new", b"N2", touched=60.0)], tag=3)
    store.expire(horizon=20.0, tag=2 + HISTORY)
    assert store.rollback(1) == (1, 0)  # the history is gone: nothing to restore
    assert store.count() == 0


def test_forget_reaches_every_copy(tmp_path: Path) -> None:
    store = open_shard(tmp_path)
    store.put([cooled("a", b"A1", user="u1"), cooled("b", b"B", user="u2")], tag=1)
    store.take(["a"], tag=2, horizon=0.0)
    store.put([cooled("a", b"A3", user="u1")], tag=3)
    other = open_shard(tmp_path, "t")
    other.put([cooled("c", b"C", user="u1"), cooled("d", b"D")], tag=1)
    assert store.forget("a") == 2  # the live copy and the revived one
    assert "a" not in store.session_ids()
    assert other.forget_where(lambda sid, user: user == "u1") == 1
    assert ColdSessions(tmp_path / "cold").session_ids() == ["b", "d"]
    store.rollback(1)  # a rollback cannot bring a forgotten session back
    assert store.take(["a", "b"], tag=2, horizon=0.0) == [b"B"]


def test_a_shards_writes_survive_its_connection(tmp_path: Path) -> None:
    directory = tmp_path / "recovery" / "featrec" / "cold-sessions"  # directories are created
    shard = ColdSessions(directory).shard("a/b")  # any key: the file name is made safe
    for i in range(50):
        shard.put([cooled(f"s{i}", b"x")], tag=i)
    shard.close()
    assert ColdSessions(directory).count() == 50
    assert [p.name for p in directory.glob("*.sqlite")] == ["shard-a_b.sqlite"]
