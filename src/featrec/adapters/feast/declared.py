"""Declared features in Feast's own objects, and back into featrec's declarations.

A data scientist writes, in a ``feature_repo/*.py`` file::

    user_carts = declared_view(
        name="user_carts",
        entity=user,                                   # a Feast Entity: session, user or item
        filters=Filters(event_types=("cart",)),        # featrec's filters, kept in the tags
        aggregations=[
            Aggregation(column="price", function="sum", time_window=timedelta(hours=24),
                        slide_interval=timedelta(hours=1), name="cart_value_24h"),
        ],
    )

:func:`declared_view` returns a stock ``StreamFeatureView`` (PushSource + Parquet FileSource,
``aggregations=[...]``, a schema derived from the aggregations, the filters in ``tags``), so
``feast apply``/``feast plan``, ``get_online_features`` and ``get_historical_features`` work on
it unchanged. Feast computes nothing for it here (its aggregations run only on Spark):
featrec's stream flow and DuckDB batch engine do, from :func:`declaration_of`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featrec.core.features.declared.model import (
    SUPPORTED,
    TAG_DECLARED,
    Aggregation,
    Declaration,
    DeclarationError,
    Filters,
    parse_function,
    validate,
)
from featrec.core.features.declared.ranking import (
    RANKER_SERVICE,
    DeclaredColumn,
    declared_columns,
    parse_names,
)

if TYPE_CHECKING:
    from feast import Entity
    from feast.stream_feature_view import StreamFeatureView

__all__ = ["Filters", "declaration_of", "declarations_in", "declared_view"]

#: Bounds point-in-time joins of the offline history (Feast does not apply ttl online).
DEFAULT_TTL = timedelta(days=30)


def declared_view(
    *,
    name: str,
    entity: Entity,
    aggregations: Sequence[Any],
    filters: Filters | None = None,
    data_dir: Path | str | None = None,
    ttl: timedelta = DEFAULT_TTL,
    description: str = "",
    owner: str = "",
) -> StreamFeatureView:
    """A ``StreamFeatureView`` featrec computes: see the module doc.

    The schema is derived from the aggregations (declare no ``Field`` by hand). ``data_dir``
    holds the offline history ``<name>.parquet``: pass the repo's ``data/`` as an absolute
    path (Feast's duckdb store resolves a relative one against the working directory).
    """
    from feast import FileSource, PushSource
    from feast.stream_feature_view import StreamFeatureView

    from featrec.adapters.feast.types import EVENT_TIMESTAMP, feast_schema

    filters = filters or Filters()
    decl = _declaration(name, entity.name, aggregations, filters)
    view = decl.view()
    base = Path(data_dir) if data_dir is not None else Path("data")
    batch = FileSource(
        name=f"{name}_batch",
        path=str(base / f"{name}.parquet"),
        timestamp_field=EVENT_TIMESTAMP,
        description=f"Offline history of {name} (featrec declared backfill).",
    )
    with warnings.catch_warnings():
        # "Stream feature views are experimental": featrec computes them itself.
        warnings.simplefilter("ignore", RuntimeWarning)
        return StreamFeatureView(
            name=name,
            source=PushSource(name=f"{name}_push", batch_source=batch),
            entities=[entity],
            ttl=ttl,
            schema=feast_schema(view),
            aggregations=list(aggregations),
            timestamp_field=EVENT_TIMESTAMP,
            online=True,
            tags={TAG_DECLARED: "1", **filters.to_tags()},
            description=description or view.description,
            owner=owner,
        )


def _micros(delta: timedelta | None) -> int | None:
    if delta is None:
        return None
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _declaration(
    name: str, entity: str, aggregations: Iterable[Any], filters: Filters
) -> Declaration:
    """Feast ``Aggregation`` objects as a validated :class:`Declaration`."""
    aggs = []
    for agg in aggregations:
        label = agg.name or f"{agg.function}_{agg.column}"
        try:
            function, n = parse_function(agg.function)
        except ValueError:
            raise DeclarationError(
                f"declaration {name!r}, aggregation {label!r}: unsupported function "
                f"{agg.function!r} (supported: {SUPPORTED})"
            ) from None
        window = _micros(agg.time_window)
        hop = _micros(agg.slide_interval) if window is not None else None
        aggs.append(
            Aggregation(
                name=agg.name or label,
                column=agg.column,
                function=function,
                n=n,
                window_us=window,
                hop_us=hop or window,
            )
        )
    return validate(Declaration(name, entity, tuple(aggs), filters))


def declaration_of(view: StreamFeatureView) -> Declaration:
    """The declaration a ``StreamFeatureView`` (from the repo or the registry) carries.

    Checks what a hand-written view could get wrong: one entity, and a schema that holds
    exactly the declared features with their types.
    """
    from featrec.adapters.feast.types import feast_type

    if len(view.entities) != 1:
        raise DeclarationError(
            f"declaration {view.name!r}: needs exactly one entity, has {len(view.entities)}"
        )
    decl = _declaration(
        view.name, view.entities[0], view.aggregations, Filters.from_tags(view.name, view.tags)
    )
    expected = {f.name: feast_type(f.dtype) for f in decl.view().features}
    # The registry's copy lists the join key among the features, the parsed one does not.
    declared = {f.name: f.dtype for f in view.features if f.name != decl.join_key}
    if declared != expected:
        missing = sorted(set(expected) - set(declared))
        extra = sorted(set(declared) - set(expected))
        wrong = sorted(k for k in set(expected) & set(declared) if expected[k] != declared[k])
        raise DeclarationError(
            f"declaration {view.name!r}: schema does not match its aggregations "
            f"(missing {missing}, not declared {extra}, wrong type {wrong}): "
            "build it with featrec.adapters.feast.declared.declared_view"
        )
    return decl


def declarations_in(views: Iterable[Any]) -> list[Declaration]:
    """The declarations among parsed or registered views (featrec-tagged stream views)."""
    from feast.stream_feature_view import StreamFeatureView

    return [
        declaration_of(v)
        for v in views
        if isinstance(v, StreamFeatureView) and v.tags.get(TAG_DECLARED) == "1"
    ]


def applied_declarations(store: Any) -> list[Declaration]:
    """The declarations of the views applied to ``store``'s registry (what flows compute)."""
    from featrec.adapters.errors import translated

    with quiet_stream_views(), translated("reading the declared views from the registry"):
        views = store.list_stream_feature_views()
    return declarations_in(views)


@contextlib.contextmanager
def quiet_stream_views() -> Iterator[None]:
    """Silence Feast's "stream feature views are experimental" warning, which it repeats
    whenever it reads one from the registry: featrec computes them itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Stream feature views are experimental")
        yield


def ranker_columns(store: Any) -> tuple[DeclaredColumn, ...]:
    """The declared features the ranker reads: those of the feature service
    :data:`~featrec.core.features.declared.ranking.RANKER_SERVICE` in ``feature_repo/``, in
    its order (empty when the repo has no such service)."""
    from feast.errors import FeatureServiceNotFoundException

    from featrec.adapters.errors import translated

    with quiet_stream_views(), translated("reading the ranker's feature service"):
        try:
            service = store.get_feature_service(RANKER_SERVICE)
        except FeatureServiceNotFoundException:
            return ()
        wanted = [(p.name, f.name) for p in service.feature_view_projections for f in p.features]
    return declared_columns(wanted, applied_declarations(store))


def model_columns(store: Any, names: Sequence[str]) -> tuple[DeclaredColumn, ...]:
    """A model's declared columns (its feature names after the built-in ones), checked
    against the declarations applied to ``store``."""
    if not names:
        return ()
    return declared_columns(parse_names(names), applied_declarations(store))
