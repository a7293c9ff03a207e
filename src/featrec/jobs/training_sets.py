"""Training sets: labelled examples from the event log, joined point-in-time with Feast.

The examples (:mod:`featrec.core.ranking.examples`) become Feast's entity rows: ``user_id``
and ``item_id`` (the candidate) as join keys, the prediction time as ``event_timestamp``. Feast's
``get_historical_features`` on the DuckDB offline store then adds the long-term features
(feature service ``long_term_v1``, full names such as ``user_features__n_view_7d``) as of each
row's time: the newest daily snapshot not after it and within the views' ttl, or nulls when
there is none (a row is never dropped: the row count is checked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from featrec.adapters.errors import translated
from featrec.adapters.files.atomic import atomic_path
from featrec.adapters.files.event_log import read_event_log
from featrec.core.candidates.point_generators import CandidateGenerator, default_generator
from featrec.core.events.model import Event
from featrec.core.features import catalog
from featrec.core.features.declared.ranking import METADATA_KEY, RANKER_SERVICE
from featrec.core.progress import SILENT, Progress
from featrec.core.ranking.examples import build_examples, choose_points, next_item_targets
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


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """What was written: ``rows`` examples for ``points`` prediction points, of which
    ``points_with_target`` had the next item among their candidates."""

    path: Path
    rows: int
    points: int
    points_with_target: int
    events: int


def log_events(log_dir: Path) -> list[Event]:
    """Every logged event (deduplicated), in time order."""
    table = read_event_log(log_dir)
    columns = [
        table.column(name).to_pylist()
        for name in (
            "event_id",
            "session_id",
            "item_id",
            "type",
            "ts",
            "user_id",
            "price",
            "category",
            "quantity",
        )
    ]
    return [Event(*values) for values in zip(*columns, strict=True)]


def examples_table(
    events: list[Event],
    targets: list[str | None],
    generator: CandidateGenerator,
    on_point: Callable[[], None] | None = None,
) -> tuple[pa.Table, int]:
    """The examples as a table (:data:`EXAMPLE_COLUMNS`) and how many points had their
    target among the candidates."""
    columns: dict[str, list[Any]] = {name: [] for name in EXAMPLE_COLUMNS}
    hits = 0
    last_point = -1
    for ex in build_examples(events, targets, generator):
        if ex.point != last_point:
            last_point = ex.point
            if on_point is not None:
                on_point()
        hits += ex.label
        columns["point_id"].append(ex.point)
        columns["session_id"].append(ex.session_id)
        columns["user_id"].append(ex.user_id)
        columns["event_timestamp"].append(ex.at)
        columns["position"].append(ex.position)
        columns["current_item_id"].append(ex.current_item)
        columns["item_id"].append(ex.candidate)
        columns["candidate_rank"].append(ex.rank)
        columns["label"].append(ex.label)
    schema = pa.schema(
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
    return pa.Table.from_pydict(columns, schema=schema), hits


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


def join_declared(store: FeatureStore, examples: pa.Table) -> pa.Table:
    """``examples`` with the ranker's declared features (feature service ``ranker_declared``)
    as of each row's time, their names listed in the schema metadata (the order ``featrec
    train`` appends them in). Unchanged when the repo has no such service."""
    from featrec.adapters.feast.declared import ranker_columns
    from featrec.jobs.declared import history_path

    columns = ranker_columns(store)
    if not columns:
        return examples
    for view in dict.fromkeys(c.view for c in columns):
        if not history_path(store, view).exists():
            raise ConfigError(
                f"declared view {view!r} has no offline history yet: run "
                f"`featrec declared backfill {view}` before `featrec dataset build`"
            )
    joined = join_features(store, examples, RANKER_SERVICE)
    names = ",".join(c.name for c in columns)
    metadata = {**(joined.schema.metadata or {}), METADATA_KEY: names.encode()}
    return joined.replace_schema_metadata(metadata)


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
) -> TrainingSet:
    """Read the log, label its prediction points, join features, write ``out`` (Parquet)."""
    progress.stage("reading the event log")
    events = log_events(log_dir)
    if not events:
        raise ConfigError(f"the event log {log_dir} is empty: run `featrec log import` first")
    targets = choose_points(
        events,
        next_item_targets(events, collapse_repeats),
        since=since,
        until=until,
        max_points=max_points,
        seed=seed,
    )
    n_points = sum(t is not None for t in targets)
    if n_points == 0:
        raise ConfigError("no prediction points in the chosen days: widen --since/--until")
    progress.stage(f"labelling {n_points:,} prediction points", n_points)
    examples, hits = examples_table(
        events, targets, generator or default_generator(), on_point=progress.advance
    )
    progress.stage(f"joining features to {examples.num_rows:,} examples (Feast, point in time)")
    joined = join_declared(store, join_features(store, examples))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pq.write_table(joined, tmp)
    return TrainingSet(out, joined.num_rows, n_points, hits, len(events))
