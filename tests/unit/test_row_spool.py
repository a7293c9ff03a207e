"""RowSpool: the held-out and training rows of `featrec train` wait on disk, not in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featrec.app.training import RowSpool


def _blocks(seed: int, sizes: list[int], width: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    blocks = [rng.normal(size=(n, width)) for n in sizes]
    for block in blocks:
        if len(block):
            block[0, 0] = np.nan  # NaN (unknown feature) survives the round trip
    return blocks


def test_read_gives_back_every_row_in_order(tmp_path: Path) -> None:
    spool = RowSpool(tmp_path, "train")
    blocks = _blocks(1, [3, 0, 7, 1], width=5)
    for block in blocks:
        spool.append(block)
    got = spool.read(5)
    np.testing.assert_array_equal(got, np.vstack(blocks))
    assert got.flags.c_contiguous and got.dtype == np.float64
    assert spool.rows == 11


@pytest.mark.parametrize("chunk", [1, 4, 11, 100])
def test_chunks_cover_the_rows_once_in_order(tmp_path: Path, chunk: int) -> None:
    spool = RowSpool(tmp_path, "held")
    blocks = _blocks(2, [5, 6], width=3)
    for block in blocks:
        spool.append(block)
    parts = list(spool.chunks(chunk))
    assert all(len(p) <= chunk for p in parts)
    np.testing.assert_array_equal(np.vstack(parts), np.vstack(blocks))


def test_a_non_contiguous_block_is_written_as_its_values(tmp_path: Path) -> None:
    spool = RowSpool(tmp_path, "x")
    block = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2]  # a strided view
    spool.append(block)
    np.testing.assert_array_equal(spool.read(3), block)


def test_an_empty_spool_reads_as_no_rows(tmp_path: Path) -> None:
    spool = RowSpool(tmp_path, "empty")
    assert spool.read(62).shape == (0, 62)
    assert list(spool.chunks(10)) == []


def test_a_block_of_another_width_is_refused(tmp_path: Path) -> None:
    spool = RowSpool(tmp_path, "w")
    spool.append(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="width 5 in a spool of 4"):
        spool.append(np.zeros((1, 5)))


def test_close_removes_the_file(tmp_path: Path) -> None:
    spool = RowSpool(tmp_path, "gone")
    spool.append(np.ones((2, 2)))
    assert spool.path.is_file()
    spool.close()
    assert not spool.path.exists()
