"""The flows' collector settings: each flow sets its own thresholds (see dataflows/gc_tuning.py)."""

from __future__ import annotations

import gc

from dataflows.gc_tuning import ITEMS_GC_THRESHOLDS, SESSIONS_GC_THRESHOLDS, tune_gc


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
