"""The flows' collector settings: each flow sets its own thresholds (see dataflows/gc_tuning.py)."""

from __future__ import annotations

import gc

from dataflows.gc_tuning import ITEMS_GC_THRESHOLDS, SESSIONS_GC_THRESHOLDS, frozen_after, tune_gc


def test_tune_gc_sets_the_thresholds_and_freezes_start_up_objects() -> None:
    before = gc.get_threshold()
    try:
        for thresholds in (SESSIONS_GC_THRESHOLDS, ITEMS_GC_THRESHOLDS):
            tune_gc(thresholds)
            assert gc.get_threshold() == thresholds
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_frozen_after_freezes_what_opening_the_writer_left_behind() -> None:
    made: list[object] = []

    def open_writer() -> list[object]:
        # Long-lived objects made while opening (as Feast's import and registry are).
        made.extend([i] for i in range(5_000))
        return made

    gc.unfreeze()
    try:
        opened = frozen_after(open_writer)
        assert not made  # nothing happens until the worker opens it
        assert opened() is made
        assert gc.get_freeze_count() >= 5_000
        frozen = {id(o) for o in gc.get_objects(generation=None)}  # permanent objects excluded
        assert not any(id(o) in frozen for o in made)
    finally:
        gc.unfreeze()
