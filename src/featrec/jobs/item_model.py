"""The batch item model job: train SLIST on the event log, version it, write its lists.

``featrec items train-model`` (run it on a schedule: nightly, like ``featrec batch run``):

1. DuckDB reads the event log (deduplicated, forgotten users removed) as integer-coded arrays
   (:mod:`featrec.adapters.duckdb.clicks`): no Python object per event;
2. :func:`featrec.core.items.slist.fit` fits the model on the most frequent items and keeps
   each item's top-K;
3. the version is saved under ``<home>/item_models/`` (:mod:`~featrec.adapters.files.
   item_model_store`) and its lists are written as ``item_model`` rows into the online store,
   stamped with the training time, so each retraining replaces the previous lists.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from featrec.core.features.rows import micros
from featrec.core.items import slist
from featrec.errors import NotFound
from featrec.settings import Settings


@dataclass(frozen=True, slots=True)
class ItemModelReport:
    version: str
    events: int
    sessions: int
    items: int
    modelled: int
    read_s: float
    fit_s: float
    rows_written: int
    peak_rss_mb: float


def read_clicks(settings: Settings, until: datetime | None = None) -> slist.Clicks:
    """The event log's events before ``until`` as :class:`~featrec.core.items.slist.Clicks`."""
    from featrec.adapters.duckdb.clicks import click_arrays
    from featrec.adapters.duckdb.features import EventLogDB

    with EventLogDB(settings.event_log_dir, temp_dir=settings.home / "duckdb") as db:
        arrays = click_arrays(db, None if until is None else micros(until))
    if arrays.sessions.shape[0] == 0:
        raise NotFound(f"no events in the event log {settings.event_log_dir}")
    return slist.Clicks(
        arrays.sessions,
        arrays.items,
        arrays.times,
        tuple(arrays.item_ids),
        tuple(arrays.session_ids),
    )


def train_item_model(
    settings: Settings,
    config: slist.SlistConfig | None = None,
    *,
    until: datetime | None = None,
    write: bool = True,
    log: Callable[[str], None] = lambda _msg: None,
    source: str = "featrec items train-model",
) -> tuple[slist.ItemModel, ItemModelReport]:
    """Train, save a version and (``write``) write its rows; see the module docstring."""
    from featrec.adapters.files.item_model_store import item_models_dir, save_item_model

    config = config if config is not None else slist.SlistConfig()
    t0 = time.perf_counter()
    clicks = read_clicks(settings, until)
    read_s = time.perf_counter() - t0
    log(
        f"item model: read {len(clicks):,} events, {len(clicks.session_ids):,} sessions, "
        f"{len(clicks.items):,} items in {read_s:.1f} s"
    )
    t0 = time.perf_counter()
    model = slist.fit(clicks, config, progress=log)
    fit_s = time.perf_counter() - t0
    trained_at_s = float(clicks.times.max())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    manifest = save_item_model(
        model,
        item_models_dir(settings.home),
        training={
            "events": len(clicks),
            "sessions": len(clicks.session_ids),
            "items": len(clicks.items),
            "trained_until_s": trained_at_s,
            "read_s": round(read_s, 3),
            "fit_s": round(fit_s, 3),
            "peak_rss_mb": round(rss, 1),
            "source": source,
        },
    )
    log(f"item model {manifest.version}: {len(model.neighbours):,} lists, fit in {fit_s:.1f} s")
    written = 0
    if write:
        written = write_model_rows(settings, model, manifest.version, trained_at_s)
        log(f"item model: {written:,} item_model rows written")
    return model, ItemModelReport(
        version=manifest.version,
        events=len(clicks),
        sessions=len(clicks.session_ids),
        items=len(clicks.items),
        modelled=len(model.neighbours),
        read_s=read_s,
        fit_s=fit_s,
        rows_written=written,
        peak_rss_mb=rss,
    )


def write_model_rows(
    settings: Settings, model: slist.ItemModel, version: str, trained_at_s: float
) -> int:
    """The model's ``item_model`` rows into the online store, stamped with the wall clock
    (a retrained model's rows are always newer than the previous one's)."""
    from featrec.adapters.feast.writers import open_writer
    from featrec.app.item_signals import write_rows

    rows = slist.model_rows(model, version, trained_at_s, micros(datetime.now(UTC)))
    writer = open_writer(settings)
    try:
        return write_rows(writer, rows)
    finally:
        writer.close()
