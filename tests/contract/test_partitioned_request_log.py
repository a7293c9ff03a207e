"""The SQLite request log as one file per hour: entries land in their hour's file, retention
deletes whole hours, and reads, prune and forget see every hour and the one-file log written
before. Real SQLite files in a temp dir (the shared contract is in test_request_log.py)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from featrec.adapters.sqlite.partitioned_log import PERIOD_S, PartitionedRequestLog, part_name
from featrec.adapters.sqlite.request_log import SqliteRequestLog
from featrec.core.ports.serving import LoggedRow, RequestRecord, StampedRow
from featrec.errors import ConfigError

H = PERIOD_S
#: 2026-12-05 00:00:00 UTC, an hour boundary.
T0 = 1_796_428_800
ROW = StampedRow({"price": 9.99, "ids": ["x"]}, 1_700_000_000_000_000)


def record(request_id: str, created: float, user: str = "u1", session: str = "s1") -> RequestRecord:
    rows = [LoggedRow("session_features", session, ROW), LoggedRow("item_features", "a", ROW)]
    return RequestRecord(request_id, created, {"user_id": user, "session_id": session}, rows)


def entries(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return sorted(r for (r,) in db.execute("SELECT request_id FROM requests"))


def test_each_entry_lands_in_the_file_of_its_utc_hour_and_reads_back(tmp_path: Path) -> None:
    assert T0 % H == 0 and part_name(T0) == "20261205T000000Z.db"
    log = PartitionedRequestLog(tmp_path / "requests")
    # one batch straddling an hour boundary, then a later hour
    log.append_many([record("a", T0 + 10), record("b", T0 + H - 1), record("c", T0 + H)])
    log.append(record("d", T0 + 5 * H + 1))
    files = {p.name: entries(p) for p in log.parts()}
    assert files == {
        "20261205T000000Z.db": ["a", "b"],
        "20261205T010000Z.db": ["c"],
        "20261205T050000Z.db": ["d"],
    }
    for rid in "abcd":
        back = log.get(rid)
        assert back is not None and back.request_id == rid and back.rows[1].row == ROW
    assert log.get("nope") is None
    assert [r.request_id for r in log.iter_records()] == ["a", "b", "c", "d"]
    # since: whole hours before it are skipped, the hour holding it is filtered
    assert [r.request_id for r in log.iter_records(since_s=T0 + H - 1)] == ["b", "c", "d"]
    assert log.count() == 4
    log.close()


def test_the_writer_deletes_whole_hours_older_than_the_retention_as_it_starts_a_new_hour(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "requests"
    log = PartitionedRequestLog(directory, keep_s=2 * H)
    for hour in range(4):
        log.append(record(f"r{hour}", T0 + hour * H + 600))
    # newest entry at 3h10m: hours that ended by 1h10m go (hour 0); hour 1 ended at 2h: kept
    assert [p.name for p in log.parts()] == [part_name(T0 + h * H) for h in (1, 2, 3)]
    assert not any(p.name.startswith(part_name(T0)) for p in directory.iterdir())  # no -wal
    assert log.get("r0") is None and log.get("r1") is not None
    # more entries in the same hour delete nothing more
    log.append(record("r3b", T0 + 3 * H + 3000))
    assert len(log.parts()) == 3
    log.close()


def test_retention_shorter_than_an_hour_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 3600 s"):
        PartitionedRequestLog(tmp_path / "requests", keep_s=600)


def test_prune_deletes_earlier_hours_whole_and_the_older_entries_of_the_hour_holding_the_time(
    tmp_path: Path,
) -> None:
    log = PartitionedRequestLog(tmp_path / "requests")  # no retention: only prune deletes
    log.append_many([record("a", T0 + 1), record("b", T0 + 2), record("c", T0 + H + 10)])
    log.append_many([record("d", T0 + H + 20), record("e", T0 + 2 * H)])
    assert log.prune(older_than_s=T0 + H + 15) == 3  # a and b (their hour), and c
    assert [r.request_id for r in log.iter_records()] == ["d", "e"]
    assert [p.name for p in log.parts()] == [part_name(T0 + H), part_name(T0 + 2 * H)]
    back = log.get("d")  # its rows survived the prune inside its hour
    assert back is not None and back.rows[0].row == ROW
    log.close()


def test_forget_and_sessions_of_reach_every_hour_and_the_log_written_before(
    tmp_path: Path,
) -> None:
    legacy = tmp_path / "requests.db"
    old = SqliteRequestLog(legacy)
    old.append(record("old-u1", T0 - 10 * H, session="s0"))
    old.append(record("old-u2", T0 - 10 * H, user="u2", session="s9"))
    old.close()
    log = PartitionedRequestLog(tmp_path / "requests", keep_s=24 * H, legacy=legacy)
    log.append(record("h0", T0 + 5, session="s1"))
    log.append(record("h3", T0 + 3 * H, session="s2"))
    log.append(record("other", T0 + 3 * H + 1, user="u2", session="s3"))
    # the legacy file is read first (it is the oldest), and nothing new goes to it
    assert [r.request_id for r in log.iter_records()] == ["old-u1", "old-u2", "h0", "h3", "other"]
    assert entries(legacy) == ["old-u1", "old-u2"]
    assert log.sessions_of("u1") == {"s0", "s1", "s2"}
    assert log.forget("u1", {"s0", "s1", "s2"}) == 3
    assert [r.request_id for r in log.iter_records()] == ["old-u2", "other"]
    assert log.get("old-u2") is not None
    # prune reaches the legacy file too
    assert log.prune(older_than_s=T0) == 1
    assert entries(legacy) == []
    log.close()


def _drop_hour_zero(directory: str) -> None:
    """Another server process whose newer entry makes its retention delete hour 0."""
    other = PartitionedRequestLog(Path(directory), keep_s=H)
    other.append(record("late", T0 + 2 * H + 1))
    other.close()


def test_an_hour_deleted_by_another_process_is_left_out_and_writing_goes_on(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "requests"
    log = PartitionedRequestLog(directory)
    log.append(record("r0", T0 + 1))
    log.append(record("r1", T0 + H + 1))
    assert log.get("r0") is not None  # hour 0 is open here
    proc = multiprocessing.get_context("spawn").Process(
        target=_drop_hour_zero, args=(str(directory),)
    )
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert [p.name for p in log.parts()] == [part_name(T0 + H), part_name(T0 + 2 * H)]
    assert log.get("r0") is None and log.count() == 2
    log.append(record("r2", T0 + 2 * H + 5))  # both processes write the same hour
    assert entries(directory / part_name(T0 + 2 * H)) == ["late", "r2"]
    log.close()


def test_files_that_are_not_hours_are_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "requests"
    directory.mkdir()
    (directory / "notes.txt").write_text("x")
    (directory / "backup.db").write_bytes(b"")
    log = PartitionedRequestLog(directory, keep_s=H)
    log.append(record("a", T0 + 1))
    assert [p.name for p in log.parts()] == [part_name(T0)]
    assert (directory / "backup.db").exists()
    log.close()
