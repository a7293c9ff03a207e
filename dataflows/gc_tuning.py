"""Garbage-collector settings for long-running flows.

A flow holds many long-lived objects (one state per live session, bytewax's buffers); with
CPython's default thresholds the cyclic collector rescans them over and over, and that cost
grows with the number of live sessions. featrec's state has no reference cycles (dataclasses,
sets, lists: reference counting frees them), so collecting rarely is safe. Measured on 400k
generated events with 10k concurrent sessions: 16.9k -> 21.6k events per CPU-second.
"""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Freeze what start-up allocated (imports, Feast registry) and collect rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
