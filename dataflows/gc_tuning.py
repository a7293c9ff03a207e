"""Garbage-collector settings for long-running flows.

A flow holds many long-lived objects (one state per live session, bytewax's buffers); with
CPython's default thresholds the cyclic collector rescans them over and over, and that cost
grows with the number of live sessions. featrec's state has no reference cycles (dataclasses,
sets, lists: reference counting frees them), so collecting rarely is safe (cycles do
appear: a full collection in a 40 s run of the sessions flow freed ~33k objects, not traced
to their source; they are freed, only later). Measured on 400k
generated events with 10k concurrent sessions: 16.9k -> 21.6k events per CPU-second.

The first threshold is a trade of throughput against pauses: every young collection stops the
worker, and events arriving meanwhile wait (freshness). At 100,000 a young collection took up
to 45 ms; at 10,000 the same CPU per event (28.2 against 28.2-28.4 µs in one run of
``benchmarks/ingest.py --events 300000 --parts throughput,freshness``, thresholds alternated)
gave freshness p99 at 10k events/s of 27-29 ms against 39 ms, and at half the maximum 63-73
against 75-84 ms (README, Ingest).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: The sessions flow's thresholds: allocations before a young collection, then young
#: collections per middle one, middle per full (CPython's defaults: 700, 10, 10). A middle
#: collection walks the sessions created since the last one (a state, its item set and its
#: recent list each): every 50 young ones it stopped the worker 50-65 ms at 16k events/s,
#: every 10 it stops it 19 ms at most, five times as often, at no measurable CPU (README,
#: Ingest). Full collections stay as rare (every 50,000 young ones).
SESSIONS_GC_THRESHOLDS = (10_000, 10, 5000)
#: The item signals flow's (measured for throughput; its freshness was not re-measured).
ITEMS_GC_THRESHOLDS = (100_000, 50, 1000)


def tune_gc(thresholds: tuple[int, int, int]) -> None:
    """Freeze what start-up allocated (imports, Feast registry) and collect rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


def frozen_after(open_: Callable[[], T]) -> Callable[[], T]:
    """``open_`` (a worker's writer factory), then freeze the heap it leaves behind.

    The writer is opened on the worker, after :func:`tune_gc`'s freeze, and opening it
    imports Feast and loads its registry: hundreds of thousands of long-lived objects that
    the collector would otherwise walk again in the first middle collections (one stopped the
    sessions worker for 41-60 ms a few seconds into a run, events waiting) and in every full
    one. Freezing once more after it keeps them out of its reach; reference counting still
    frees them."""

    def opened() -> T:
        value = open_()
        gc.collect()
        gc.freeze()
        return value

    return opened


#: Seconds a thread may hold the GIL while another waits for it (CPython's default: 0.005).
SWITCH_INTERVAL_S = 0.0005


def tune_switch_interval() -> None:
    """Hand the GIL over sooner. The sessions flow's event log is written on a thread
    (:class:`featrec.adapters.files.event_log.BackgroundEventLog`); each time the worker
    thread waits on a socket (a stream read, a flush's round trip) that thread takes the GIL,
    and with the default 5 ms interval the worker waited up to 5 ms to get it back, per wait."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
