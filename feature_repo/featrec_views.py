"""Feature views: one per catalog view, built from the catalog (add a view there, it appears here).

Each view is fed by a PushSource (the stream writes to the online store) backed by a Parquet
FileSource ``<repo>/data/<view>.parquet`` (the offline copy for training sets and materialization).
Batch views (``catalog.BATCH_VIEWS``) read a directory ``<repo>/data/<view>/`` of daily snapshot
files instead (see :mod:`featrec.adapters.files.snapshots`).
"""

from datetime import timedelta
from pathlib import Path

from feast import FeatureView, FileSource, PushSource
from feast.data_format import ParquetFormat
from featrec_entities import ENTITIES

from featrec.adapters.feast.types import EVENT_TIMESTAMP, feast_schema
from featrec.adapters.files.snapshots import snapshot_dir
from featrec.core.features import catalog

# Bounds point-in-time joins and materialization only: Feast does not apply ttl to online
# reads (upstream issue #6821), so readers judge staleness from the event timestamps.
TTL = timedelta(days=1)

# Absolute, because Feast's duckdb offline store reads a FileSource path relative to the
# process's working directory, not to the repo (historical retrieval and materialization
# would fail anywhere but inside the repo). Re-apply after moving the repo.
DATA = Path(__file__).resolve().parent / "data"


def _feature_view(view: catalog.View) -> FeatureView:
    if view.name in catalog.BATCH_VIEWS:
        batch = FileSource(
            name=f"{view.name}_batch",
            path=str(snapshot_dir(DATA, view.name)),
            # A directory has no .parquet suffix to tell Feast the format.
            file_format=ParquetFormat(),
            timestamp_field=EVENT_TIMESTAMP,
            description=f"Daily snapshots of {view.name} (featrec batch run).",
        )
    else:
        batch = FileSource(
            name=f"{view.name}_batch",
            path=str(DATA / f"{view.name}.parquet"),
            timestamp_field=EVENT_TIMESTAMP,
            description=f"Offline copy of {view.name}.",
        )
    return FeatureView(
        name=view.name,
        entities=[ENTITIES[view.entity.name]],
        ttl=TTL,
        schema=feast_schema(view),
        source=PushSource(name=f"{view.name}_push", batch_source=batch),
        online=True,
        description=view.description,
    )


#: Every feature view by name.
FEATURE_VIEWS = {name: _feature_view(view) for name, view in catalog.VIEWS.items()}
# Feast collects only module attributes: publish each view under its own name.
globals().update(FEATURE_VIEWS)
