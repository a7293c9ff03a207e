"""Workflows over declared features: backfill from the event log, and the skew monitor.

- :func:`backfill`: the batch engine (:mod:`featrec.adapters.duckdb.declared`) computes every
  applied declaration from the event log. It writes each view's offline history (one row per
  key and event time: the rows the stream wrote over time, which Feast's point-in-time joins
  read for training sets) and each key's newest row into the online store (what the stream
  holds; a new feature's online values before the restarted flow reaches them).
  Feast's own ``materialize`` cannot do this: windowed aggregations are "not supported in the
  local compute engine".
- :func:`skew`: samples online rows through stock ``get_online_features``, recomputes each one
  with the batch engine as of the row's own ``as_of_us``, and reports mismatches per feature.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from featrec.adapters.duckdb.declared import POINTS_SCHEMA, DeclaredBatch
from featrec.core.features.declared.model import AS_OF, Declaration
from featrec.core.features.declared.skew import SkewReport
from featrec.core.features.rows import FeatureRow
from featrec.errors import ConfigError

if TYPE_CHECKING:
    from feast import FeatureStore

    from featrec.settings import Settings


@dataclass(frozen=True, slots=True)
class Backfilled:
    view: str
    history_rows: int
    online_rows: int
    seconds: float


def load_declarations(store: FeatureStore, names: Sequence[str] = ()) -> list[Declaration]:
    """The applied declarations (all, or those named)."""
    from featrec.adapters.feast.declared import applied_declarations

    declared = applied_declarations(store)
    if names:
        known = {d.name for d in declared}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"unknown declared views: {', '.join(unknown)} "
                f"(applied: {', '.join(sorted(known)) or 'none: run featrec apply'})"
            )
        declared = [d for d in declared if d.name in names]
    return declared


def history_path(store: FeatureStore, view: str) -> Path:
    """The Parquet file a declared view's FileSource reads (its offline history)."""
    from feast.infra.offline_stores.file_source import FileSource

    from featrec.adapters.feast.declared import quiet_stream_views

    with quiet_stream_views():
        source = store.get_stream_feature_view(view).batch_source
    if not isinstance(source, FileSource):
        raise ConfigError(f"declared view {view!r} needs a FileSource batch source")
    return Path(FileSource.get_uri_for_file_path(Path(store.repo_path), source.path))


def history_table(decl: Declaration, computed: pa.Table) -> pa.Table:
    """Batch output as the view's offline schema (features, ``event_timestamp`` = as-of)."""
    from featrec.adapters.feast.types import EVENT_TIMESTAMP, arrow_schema

    schema = arrow_schema(decl.view())
    ts = computed.column(AS_OF).cast(pa.timestamp("us", tz="UTC"))
    columns = [computed.column(f.name) for f in schema if f.name != EVENT_TIMESTAMP]
    return pa.Table.from_arrays([*columns, ts], schema=schema)


def rows_of(decl: Declaration, computed: pa.Table) -> list[FeatureRow]:
    names = [f.name for f in decl.view().features]
    return [
        FeatureRow(decl.name, r[decl.join_key], {n: r[n] for n in names}, r[AS_OF])
        for r in computed.to_pylist()
    ]


def backfill(
    settings: Settings,
    views: Sequence[str] = (),
    *,
    until_us: int | None = None,
    online: bool = True,
    on_view: Callable[[Backfilled], None] | None = None,
) -> list[Backfilled]:
    """Compute the declared views from the event log (see the module doc)."""
    from featrec.adapters.feast.repo import open_store
    from featrec.adapters.feast.writers import open_writer

    store = open_store(settings)
    declared = load_declarations(store, views)
    done = []
    writer = (
        open_writer(settings, store, views={d.name: d.view() for d in declared}) if online else None
    )
    try:
        with DeclaredBatch(settings.event_log_dir) as batch:
            for decl in declared:
                start = time.perf_counter()
                history = batch.compute(decl, batch.history_points(decl, until_us))
                path = history_path(store, decl.name)
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(history_table(decl, history), path)
                latest = batch.compute(decl, batch.latest_points(decl, until_us))
                written = writer.write(rows_of(decl, latest)) if writer is not None else 0
                result = Backfilled(
                    decl.name, history.num_rows, written, time.perf_counter() - start
                )
                done.append(result)
                if on_view is not None:
                    on_view(result)
    finally:
        if writer is not None:
            writer.close()
    return done


def read_online(
    store: FeatureStore, decl: Declaration, keys: Sequence[str]
) -> list[dict[str, Any] | None]:
    """The online rows of ``keys`` through stock ``get_online_features`` (None: no row)."""
    from featrec.adapters.errors import translated

    names = [f.name for f in decl.view().features]
    from featrec.adapters.feast.declared import quiet_stream_views

    with quiet_stream_views(), translated(f"reading {decl.name} with get_online_features"):
        columns = store.get_online_features(
            features=[f"{decl.name}:{n}" for n in names],
            entity_rows=[{decl.join_key: k} for k in keys],
        ).to_dict()
    out: list[dict[str, Any] | None] = []
    for i in range(len(keys)):
        row = {n: columns[n][i] for n in names}
        out.append(None if row[AS_OF] is None else row)
    return out


def skew(
    settings: Settings,
    views: Sequence[str] = (),
    *,
    sample: int = 200,
    seed: int | None = None,
    keep: int = 3,
) -> SkewReport:
    """Sample up to ``sample`` keys per declared view (keys of the event log), read their
    online rows, recompute each as of its ``as_of_us`` and compare (see the module doc)."""
    from featrec.adapters.feast.repo import open_store

    if sample < 1:
        raise ConfigError(f"--sample must be at least 1, got {sample}")
    store = open_store(settings)
    declared = load_declarations(store, views)
    # Sampling keys to check, not security.
    rng = random.Random(seed)  # nosec B311
    report = SkewReport()
    with DeclaredBatch(settings.event_log_dir) as batch:
        for decl in declared:
            keys = batch.latest_points(decl).column("key").to_pylist()
            keys = rng.sample(keys, min(sample, len(keys)))
            online = read_online(store, decl, keys)
            present = [(k, row) for k, row in zip(keys, online, strict=True) if row is not None]
            report.missing += len(keys) - len(present)
            if not present:
                continue
            points = pa.table(
                {"key": [k for k, _ in present], AS_OF: [row[AS_OF] for _, row in present]},
                schema=POINTS_SCHEMA,
            )
            recomputed = {
                (r[decl.join_key], r[AS_OF]): r for r in batch.compute(decl, points).to_pylist()
            }
            names = [a.name for a in decl.aggregations]
            for key, row in present:
                expected = recomputed[(key, row[AS_OF])]
                report.compare(decl.name, key, row[AS_OF], row, expected, names, keep)
    return report


def publish_gauges(report: SkewReport, registry: Any) -> None:
    """Set the skew gauges (``featrec_skew_mismatch_rate{view,feature}`` and friends)."""
    gauges = _gauges(registry)
    for skew_ in report.features.values():
        gauges["rate"].labels(view=skew_.view, feature=skew_.feature).set(skew_.rate)
    gauges["rows"].set(report.rows)
    gauges["missing"].set(report.missing)
    gauges["last"].set_to_current_time()


_GAUGES: dict[int, dict[str, Any]] = {}


def _gauges(registry: Any) -> dict[str, Any]:
    from prometheus_client import Gauge

    found = _GAUGES.get(id(registry))
    if found is None:
        found = _GAUGES[id(registry)] = {
            "rate": Gauge(
                "featrec_skew_mismatch_rate",
                "Share of sampled online rows whose value differs from the batch recomputation.",
                ["view", "feature"],
                registry=registry,
            ),
            "rows": Gauge(
                "featrec_skew_rows_checked",
                "Online rows checked in the last round.",
                registry=registry,
            ),
            "missing": Gauge(
                "featrec_skew_rows_missing",
                "Sampled keys without an online row in the last round.",
                registry=registry,
            ),
            "last": Gauge(
                "featrec_skew_last_run_timestamp_seconds",
                "When the last skew round finished.",
                registry=registry,
            ),
        }
    return found
