"""Materialization: offline batch sources -> online store, stock or fast, same bookkeeping.

``fast=False`` calls Feast's ``materialize`` / ``materialize_incremental`` (the stock local
engine). ``fast=True`` does what that engine does with a faster write:

1. the interval: ``[start, end]``, or for ``incremental`` ``[most recent end, end]`` with
   ``now - ttl`` for a view never materialized (Feast's own rule);
2. the rows: Feast's offline store ``pull_latest_from_table_or_query`` (the newest row per
   entity in the interval: exactly the rows the stock engine writes);
3. the write: on Redis, :class:`~featrec.adapters.redis.bulk_writer.RedisBulkWriter` (Arrow
   kernels build the Redis protocol); on SQLite, :class:`~featrec.adapters.sqlite.bulk_writer.
   SqliteBulkWriter` (Feast's rows, one ``executemany`` per feature), or the provider's own
   writer for SQLite layouts it does not know;
4. the bookkeeping: ``registry.apply_materialization(view, project, start, end)``, as Feast
   records it, so ``materialize-incremental`` (stock or fast) continues where this run ended.

Either way stock ``get_online_features`` reads the values (tests check it on both stores).

With a ``deny`` list (forgotten users, :mod:`featrec.core.privacy`), rows of denied users and
sessions never stay in the online store: the fast path drops them before writing; after the
stock engine (which cannot filter) they are found in the pulled rows and deleted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

from featrec.adapters.errors import translated
from featrec.core.features import catalog
from featrec.core.features.rows import FeatureRow
from featrec.core.privacy import DenySet, Kind
from featrec.errors import ConfigError
from featrec.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

#: Rows handed to the SQLite writer per call.
SQLITE_CHUNK_ROWS: Final = 5_000


@dataclass(frozen=True, slots=True)
class Materialized:
    """One view's run: the interval, rows pulled (None on the stock path, which does not say)
    and rows written (newer than what the store held), and the wall time."""

    view: str
    start: datetime
    end: datetime
    rows: int | None
    written: int | None
    seconds: float


def materialize(
    store: FeatureStore,
    views: Sequence[str],
    *,
    end: datetime,
    start: datetime | None = None,
    incremental: bool = False,
    fast: bool = False,
    now: datetime | None = None,
    on_rows: Callable[[str, int], None] | None = None,
    deny: DenySet | None = None,
) -> list[Materialized]:
    """Materialize ``views`` (see the module doc); ``on_rows(view, n)`` reports progress;
    ``deny``: forgotten users and sessions, never written."""
    if incremental == (start is not None):
        raise ConfigError("give a start time, or incremental=True, not both (nor neither)")
    _check_tz(end, "end")
    if start is not None:
        _check_tz(start, "start")
        if start > end:
            raise ConfigError(f"start {start.isoformat()} is after end {end.isoformat()}")
    unknown = [v for v in views if v not in catalog.VIEWS]
    if unknown:
        raise ConfigError(
            f"unknown views: {', '.join(unknown)} (known: {', '.join(catalog.VIEWS)})"
        )
    now = now or datetime.now(UTC)
    done = []
    for name in views:
        with translated(f"materializing {name}"):
            fv = store.get_feature_view(name)
            begin = start if start is not None else incremental_start(fv, now)
            if begin >= end:  # already materialized up to end: nothing to do, nothing recorded
                done.append(Materialized(name, begin, end, 0, 0, 0.0))
                continue
            t0 = time.perf_counter()
            rows: int | None = None
            written: int | None = None
            if fast:
                rows, written = _materialize_fast(store, fv, begin, end, on_rows, deny)
            else:
                if incremental:
                    store.materialize_incremental(end_date=end, feature_views=[name])
                else:
                    store.materialize(start_date=begin, end_date=end, feature_views=[name])
                if deny:
                    _delete_denied(store, fv, begin, end, deny)
            done.append(Materialized(name, begin, end, rows, written, time.perf_counter() - t0))
    return done


def incremental_start(feature_view: Any, now: datetime) -> datetime:
    """Where ``materialize_incremental`` starts a view: its most recent end, else now - ttl
    (a year when the ttl is 0), as Feast decides."""
    last: datetime | None = feature_view.most_recent_end_time
    if last is not None:
        return last if last.tzinfo else last.replace(tzinfo=UTC)
    ttl: timedelta | None = feature_view.ttl
    if ttl is None:
        raise ConfigError(
            f"feature view {feature_view.name} has no ttl and was never materialized: "
            "give a start time"
        )
    return now - (ttl if ttl.total_seconds() > 0 else timedelta(weeks=52))


def pull_latest(store: FeatureStore, feature_view: Any, start: datetime, end: datetime) -> pa.Table:
    """The newest offline row per entity with an event timestamp in ``[start, end]``, through
    Feast's offline store (the rows the stock engine would write)."""
    source = feature_view.batch_source
    provider: Any = store._get_provider()
    job = provider.offline_store.pull_latest_from_table_or_query(
        config=store.config,
        data_source=source,
        join_key_columns=[c.name for c in feature_view.entity_columns],
        feature_name_columns=[f.name for f in feature_view.features],
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column or None,
        start_date=start,
        end_date=end,
    )
    table: pa.Table = job.to_arrow()
    if source.timestamp_field != "event_timestamp":
        table = table.rename_columns(
            ["event_timestamp" if c == source.timestamp_field else c for c in table.column_names]
        )
    return table


def _materialize_fast(
    store: FeatureStore,
    fv: Any,
    start: datetime,
    end: datetime,
    on_rows: Callable[[str, int], None] | None,
    deny: DenySet | None = None,
) -> tuple[int, int]:
    view = catalog.VIEWS[fv.name]
    registered = {f.name for f in fv.features}
    if registered != set(view.feature_names):
        raise ConfigError(
            f"feature view {fv.name!r} in the registry has features {sorted(registered)}, the "
            f"catalog {sorted(view.feature_names)}: apply the feature repo again"
        )
    table = pull_latest(store, fv, start, end)
    if deny:
        table = _without_denied(table, view, deny)
    kind = store.config.online_store.type
    if kind == "redis":
        written = _write_redis(store, view, table, on_rows)
    elif kind == "sqlite":
        written = _write_sqlite(store, fv, view, table, on_rows)
    else:
        raise ConfigError(f"the fast path supports the sqlite and redis online stores, not {kind}")
    store.registry.apply_materialization(fv, store.project, start, end)
    return table.num_rows, written


def _write_redis(
    store: FeatureStore,
    view: catalog.View,
    table: pa.Table,
    on_rows: Callable[[str, int], None] | None,
) -> int:
    from featrec.adapters.redis.bulk_writer import bulk_writer_for, check_single_server

    config = store.config
    check_single_server(config.online_store)
    online: Any = store._get_provider().online_store
    writer = bulk_writer_for(
        online._get_client(config.online_store),
        config.project,
        key_ttl_seconds=config.online_store.key_ttl_seconds,
    )
    return _write_in_chunks(writer, view, table, on_rows)


def _write_sqlite(
    store: FeatureStore,
    fv: Any,
    view: catalog.View,
    table: pa.Table,
    on_rows: Callable[[str, int], None] | None,
) -> int:
    from feast.infra.online_stores.helpers import compute_table_id

    from featrec.adapters.sqlite.bulk_writer import SqliteBulkWriter, supports

    config = store.config
    if not supports(config):
        return _write_sqlite_rows(store, view, table, on_rows)
    online: Any = store._get_provider().online_store
    writer = SqliteBulkWriter(online._get_conn(config), compute_table_id(config.project, fv))
    return _write_in_chunks(writer, view, table, on_rows)


def _write_sqlite_rows(
    store: FeatureStore,
    view: catalog.View,
    table: pa.Table,
    on_rows: Callable[[str, int], None] | None,
) -> int:
    """Through the provider's batch writer, for SQLite layouts the bulk writer does not know."""
    import pyarrow.compute as pc

    from featrec.adapters.feast.writers import FeastBatchWriter

    writer = FeastBatchWriter(store, {view.name: view})
    join_key = view.entity.join_key
    written = 0
    for batch in table.to_batches(max_chunksize=SQLITE_CHUNK_ROWS):
        micros = pc.cast(
            pc.cast(batch.column("event_timestamp"), pa.timestamp("us", tz="UTC")), pa.int64()
        ).to_pylist()
        keys = batch.column(join_key).to_pylist()
        columns = {name: batch.column(name).to_pylist() for name in view.feature_names}
        rows = [
            FeatureRow(
                view.name, key, {name: values[i] for name, values in columns.items()}, version
            )
            for i, (key, version) in enumerate(zip(keys, micros, strict=True))
        ]
        written += writer.write(rows)
        if on_rows is not None:
            on_rows(view.name, batch.num_rows)
    return written


#: Entities whose rows describe one person, and the deny-list kind of their keys.
_PERSONAL: Final[dict[str, Kind]] = {catalog.USER.name: "user", catalog.SESSION.name: "session"}


def _denied_mask(table: pa.Table, view: catalog.View, deny: DenySet) -> list[bool]:
    """Per row: is its entity, or the user a session row names, forgotten?"""
    kind = _PERSONAL.get(view.entity.name)
    if kind is None:
        return [False] * table.num_rows
    keys = table.column(view.entity.join_key).to_pylist()
    mask = [deny.contains(kind, k) for k in keys]
    if kind == "session" and "user_id" in table.column_names:
        users = table.column("user_id").to_pylist()
        mask = [m or deny.contains("user", u) for m, u in zip(mask, users, strict=True)]
    return mask


def _without_denied(table: pa.Table, view: catalog.View, deny: DenySet) -> pa.Table:
    mask = _denied_mask(table, view, deny)
    return table.filter(pa.array([not m for m in mask])) if any(mask) else table


def _delete_denied(
    store: FeatureStore, fv: Any, start: datetime, end: datetime, deny: DenySet
) -> int:
    """After the stock engine: delete the online rows of denied entities it just wrote."""
    view = catalog.VIEWS[fv.name]
    if view.entity.name not in _PERSONAL:
        return 0
    from featrec.adapters.feast.online_delete import OnlineRows

    table = pull_latest(store, fv, start, end)
    mask = _denied_mask(table, view, deny)
    keys = [
        k for k, m in zip(table.column(view.entity.join_key).to_pylist(), mask, strict=True) if m
    ]
    return OnlineRows(store).delete(view.name, keys) if keys else 0


def _check_tz(value: datetime, name: str) -> None:
    if value.tzinfo is None:
        raise ConfigError(f"{name} time must be tz-aware, got {value.isoformat()}")


def _write_in_chunks(
    writer: Any,
    view: catalog.View,
    table: pa.Table,
    on_rows: Callable[[str, int], None] | None,
    step: int = 100_000,
) -> int:
    """Write ``table`` with a bulk writer in slices of ``step`` rows, reporting progress."""
    written = 0
    for begin in range(0, table.num_rows, step):
        chunk = table.slice(begin, step)
        written += writer.write_table(view, chunk)
        if on_rows is not None:
            on_rows(view.name, chunk.num_rows)
    return written


def materialize_views(
    settings: Settings,
    views: Sequence[str],
    *,
    end: datetime | None = None,
    start: datetime | None = None,
    incremental: bool = False,
    fast: bool = False,
    on_view: Callable[[str], None] | None = None,
) -> list[Materialized]:
    """``featrec materialize``: each of ``views`` into the online store of ``settings``, one
    view at a time, leaving out the users and sessions on the deny-list.

    Without ``incremental``, from ``start`` (default: the beginning) to ``end`` (default:
    now); with it, from where the last run of each view ended. ``on_view(name)`` is called
    after each view."""
    from featrec.adapters.feast.repo import open_store
    from featrec.adapters.files.deny_list import load_deny_set
    from featrec.adapters.redis.deny_list import stores_for
    from featrec.core.events.model import MIN_TS

    if incremental and start is not None:
        raise ConfigError("a start time and an incremental run exclude each other")
    store = open_store(settings)
    deny = load_deny_set(stores_for(settings))
    end = end or datetime.now(UTC)
    begin = None if incremental else (start or MIN_TS)
    done: list[Materialized] = []
    for name in views:
        done += materialize(
            store, [name], end=end, start=begin, incremental=incremental, fast=fast, deny=deny
        )
        if on_view is not None:
            on_view(name)
    return done
