"""Training sets: labelled examples from the event log, joined point-in-time with Feast.

The examples (:mod:`featrec.core.ranking.examples`) become Feast's entity rows: ``user_id``
and ``item_id`` (the candidate) as join keys, the prediction time as ``event_timestamp``. Feast's
``get_historical_features`` on the DuckDB offline store then adds the long-term features
(feature service ``long_term_v1``, full names such as ``user_features__n_view_7d``) as of each
row's time: the newest daily snapshot not after it and within the views' ttl, or nulls when
there is none (a row is never dropped: the row count is checked).
"""

from __future__ import annotations

import itertools
import random
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featrec.adapters.duckdb.event_stream import EVENT_FIELDS, LogStream, events_of
from featrec.adapters.errors import translated
from featrec.adapters.files.atomic import atomic_path
from featrec.adapters.files.event_log import read_event_log
from featrec.core.candidates.point_generators import CandidateGenerator, default_generator
from featrec.core.events.model import Event
from featrec.core.features import catalog
from featrec.core.features.declared.ranking import METADATA_KEY, RANKER_SERVICE, DeclaredColumn
from featrec.core.features.snapshot_days import midnight
from featrec.core.progress import SILENT, Progress
from featrec.core.ranking.examples import Example, stream_examples
from featrec.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from feast import FeatureStore

#: Columns of the examples, before Feast adds the features.
EXAMPLE_COLUMNS = (
    "point_id",
    "session_id",
    "user_id",
    "event_timestamp",
    "position",
    "current_item_id",
    "item_id",
    "candidate_rank",
    "label",
)


#: Examples per chunk written (~60 MB of Python objects while a chunk is built).
CHUNK_ROWS = 262_144
#: Examples per Feast join (each call has a fixed cost of a few seconds).
JOIN_ROWS = 1_048_576


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """What was written: ``rows`` examples for ``points`` prediction points, of which
    ``points_with_target`` had the next item among their candidates."""

    path: Path
    rows: int
    points: int
    points_with_target: int
    events: int
    #: The log's prediction points before sampling (``max_points``).
    eligible: int = 0


def log_events(log_dir: Path) -> list[Event]:
    """Every logged event (deduplicated), in time order, in memory (small logs: evaluation,
    tests; training streams with :class:`LogStream`)."""
    table = read_event_log(log_dir)
    columns = [table.column(name).to_pylist() for name in EVENT_FIELDS]
    return [Event(*values) for values in zip(*columns, strict=True)]


#: The examples' schema, before Feast adds the features.
EXAMPLE_SCHEMA = pa.schema(
    [
        ("point_id", pa.int64()),
        ("session_id", pa.string()),
        ("user_id", pa.string()),
        ("event_timestamp", pa.timestamp("us", tz="UTC")),
        ("position", pa.int64()),
        ("current_item_id", pa.string()),
        ("item_id", pa.string()),
        ("candidate_rank", pa.int64()),
        ("label", pa.int64()),
    ]
)


def examples_table(examples: Sequence[Example]) -> pa.Table:
    """Examples as a table (:data:`EXAMPLE_COLUMNS`)."""
    columns = {
        "point_id": [ex.point for ex in examples],
        "session_id": [ex.session_id for ex in examples],
        "user_id": [ex.user_id for ex in examples],
        "event_timestamp": [ex.at for ex in examples],
        "position": [ex.position for ex in examples],
        "current_item_id": [ex.current_item for ex in examples],
        "item_id": [ex.candidate for ex in examples],
        "candidate_rank": [ex.rank for ex in examples],
        "label": [ex.label for ex in examples],
    }
    return pa.Table.from_pydict(columns, schema=EXAMPLE_SCHEMA)


def join_features(
    store: FeatureStore, examples: pa.Table, service: str = catalog.LONG_TERM_SERVICE
) -> pa.Table:
    """``examples`` with the service's features as of each row's ``event_timestamp``, in the
    examples' order (Feast's join does not keep it)."""
    import pandas as pd

    if examples.num_rows == 0:
        raise ConfigError("no examples to join features to")
    frame = examples.append_column("_row", pa.array(range(examples.num_rows), pa.int64()))
    entity_df = frame.to_pandas(types_mapper={pa.string(): pd.StringDtype()}.get)
    with translated("retrieving historical features"):
        features = store.get_feature_service(service)
        joined: pa.Table = store.get_historical_features(
            entity_df=entity_df, features=features, full_feature_names=True
        ).to_arrow()
    if joined.num_rows != examples.num_rows:
        raise StoreError(
            f"Feast returned {joined.num_rows} rows for {examples.num_rows} entity rows: "
            "use the duckdb offline store (the file store drops unmatched rows)"
        )
    joined = joined.sort_by("_row").drop_columns(["_row"])
    if "__index_level_0__" in joined.column_names:
        joined = joined.drop_columns(["__index_level_0__"])
    return joined


def declared_columns(store: FeatureStore) -> tuple[DeclaredColumn, ...]:
    """The ranker's declared features (feature service ``ranker_declared``; none when the
    repo has no such service), each view checked to have its offline history."""
    from featrec.adapters.feast.declared import ranker_columns
    from featrec.jobs.declared import history_path

    columns = ranker_columns(store)
    for view in dict.fromkeys(c.view for c in columns):
        if not history_path(store, view).exists():
            raise ConfigError(
                f"declared view {view!r} has no offline history yet: run "
                f"`featrec declared backfill {view}` before `featrec dataset build`"
            )
    return columns


def join_declared(
    store: FeatureStore, examples: pa.Table, columns: Sequence[DeclaredColumn]
) -> pa.Table:
    """``examples`` with the declared ``columns`` (:func:`declared_columns`) as of each row's
    time, their names listed in the schema metadata (the order ``featrec train`` appends them
    in). Unchanged when there are none."""
    if not columns:
        return examples
    joined = join_features(store, examples, RANKER_SERVICE)
    names = ",".join(c.name for c in columns)
    metadata = {**(joined.schema.metadata or {}), METADATA_KEY: names.encode()}
    return joined.replace_schema_metadata(metadata)


@dataclass(frozen=True, slots=True)
class Labelled:
    """What :func:`label_examples` wrote: ``rows`` examples for ``points`` points, ``hits``
    of which had their next item among the candidates, from a log of ``events`` events."""

    rows: int
    points: int
    hits: int
    events: int
    eligible: int


def label_examples(
    log_dir: Path,
    out: Path,
    *,
    generator: CandidateGenerator | None = None,
    collapse_repeats: bool = True,
    since: date | None = None,
    until: date | None = None,
    max_points: int | None = None,
    seed: int = 0,
    progress: Progress = SILENT,
    chunk_rows: int = CHUNK_ROWS,
    temp_dir: Path | None = None,
) -> Labelled:
    """Stream the log and write the examples of its prediction points (no features) to
    ``out`` (Parquet, :data:`EXAMPLE_SCHEMA`), ``chunk_rows`` at a time.

    The log is read in time order from DuckDB in batches (:class:`LogStream`, spilling to
    ``temp_dir``): memory holds the open sessions, the generator's signals and one chunk,
    never the log. The same rows as the in-memory path: the seeded sample draws the same
    points (``random.Random(seed).sample`` over the eligible points' ordinals, which is what
    it draws over their list).
    """
    if max_points is not None and max_points < 1:
        raise ConfigError(f"max points must be >= 1, got {max_points}")
    start = midnight(since) if since is not None else None
    end = midnight(until) + timedelta(days=1) if until is not None else None
    progress.stage("loading the event log (DuckDB: deduplicate, order, sessions)")
    with LogStream(log_dir, temp_dir=temp_dir) as log:
        n_events = log.count()
        if not n_events:
            raise ConfigError(f"the event log {log_dir} is empty: run `featrec log import` first")
        eligible = log.count_points(collapse_repeats=collapse_repeats, start=start, end=end)
        chosen: npt.NDArray[np.int64] | None = None
        if max_points is not None and eligible > max_points:
            sample = random.Random(seed).sample(range(eligible), max_points)
            chosen = np.sort(np.asarray(sample, dtype=np.int64))
        n_points = eligible if chosen is None else len(chosen)
        if n_points == 0:
            raise ConfigError("no prediction points in the chosen days: widen --since/--until")
        sampled = "" if chosen is None else f" (a seeded sample of {eligible:,})"
        progress.stage(
            f"labelling {n_points:,} prediction points{sampled} over {n_events:,} events",
            n_events,
        )
        rows = _labelled_rows(
            log.batches(collapse_repeats=collapse_repeats, start=start, end=end),
            chosen,
            progress,
        )
        n_rows, hits = write_examples(
            stream_examples(rows, generator or default_generator()), out, chunk_rows
        )
    return Labelled(n_rows, n_points, hits, n_events, eligible)


def build_training_set(
    store: FeatureStore,
    log_dir: Path,
    out: Path,
    *,
    generator: CandidateGenerator | None = None,
    collapse_repeats: bool = True,
    since: date | None = None,
    until: date | None = None,
    max_points: int | None = None,
    seed: int = 0,
    progress: Progress = SILENT,
    chunk_rows: int = CHUNK_ROWS,
    join_rows: int = JOIN_ROWS,
) -> TrainingSet:
    """Label the log's prediction points (:func:`label_examples`, streaming), join their
    features with Feast ``join_rows`` examples at a time, write ``out`` (Parquet)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".dataset-", dir=out.parent) as work:
        examples = Path(work) / "examples.parquet"
        labelled = label_examples(
            log_dir,
            examples,
            generator=generator,
            collapse_repeats=collapse_repeats,
            since=since,
            until=until,
            max_points=max_points,
            seed=seed,
            progress=progress,
            chunk_rows=chunk_rows,
            temp_dir=Path(work) / "duckdb",
        )
        progress.stage(
            f"joining features to {labelled.rows:,} examples (Feast, point in time)",
            labelled.rows,
        )
        joined = join_file(store, examples, out, join_rows, progress)
    return TrainingSet(
        out, joined, labelled.points, labelled.hits, labelled.events, labelled.eligible
    )


def _labelled_rows(
    batches: Iterator[pa.RecordBatch],
    chosen: npt.NDArray[np.int64] | None,
    progress: Progress,
) -> Iterator[tuple[Event, str | None, bool]]:
    """``(event, target, last)`` per event; the target only at the ``chosen`` ordinals of
    the prediction points (None: every point)."""
    seen = 0
    for batch in batches:
        targets = batch.column("target")
        if chosen is not None:
            is_point = pc.is_valid(targets).to_numpy(zero_copy_only=False)
            ordinals = seen + np.cumsum(is_point) - 1
            seen += int(is_point.sum())
            at = np.searchsorted(chosen, ordinals)
            found = (at < len(chosen)) & (chosen[np.minimum(at, len(chosen) - 1)] == ordinals)
            targets = pc.if_else(pa.array(is_point & found), targets, pa.scalar(None, pa.string()))
        yield from zip(
            events_of(batch),
            targets.to_pylist(),
            batch.column("last").to_pylist(),
            strict=True,
        )
        progress.advance(batch.num_rows)


def write_examples(examples: Iterator[Example], path: Path, chunk_rows: int) -> tuple[int, int]:
    """Write ``examples`` to ``path`` (:data:`EXAMPLE_COLUMNS`) in chunks; returns the row
    count and how many of them are labelled 1."""
    rows = hits = 0
    with pq.ParquetWriter(path, EXAMPLE_SCHEMA) as writer:
        while True:
            chunk = list(itertools.islice(examples, chunk_rows))
            if not chunk:
                break
            table = examples_table(chunk)
            writer.write_table(table)
            rows += table.num_rows
            hits += sum(ex.label for ex in chunk)
    return rows, hits


def join_file(
    store: FeatureStore, examples: Path, out: Path, chunk_rows: int, progress: Progress = SILENT
) -> int:
    """Join features to the examples file chunk by chunk and write ``out``; returns the rows
    written."""
    source = pq.ParquetFile(examples)
    declared = declared_columns(store)
    written = 0
    with atomic_path(out) as tmp:
        writer: pq.ParquetWriter | None = None
        try:
            for batch in source.iter_batches(batch_size=chunk_rows):
                chunk = join_features(store, pa.Table.from_batches([batch]))
                joined = join_declared(store, chunk, declared)
                if writer is None:
                    schema = joined.schema
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_table(_conform(joined, schema))
                written += joined.num_rows
                progress.advance(batch.num_rows)
        finally:
            if writer is not None:
                writer.close()
    return written


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in ``schema`` (a chunk whose feature column is all null may come out with
    another type)."""
    if table.schema.equals(schema):
        return table
    return table.select(schema.names).cast(schema)
