"""Catalog dtypes as Feast types, Arrow types and Feast ``Value`` protobufs.

The catalog (:mod:`featrec.core.features.catalog`) may not import Feast; this module is where its
small
type vocabulary meets Feast's. Importing it imports Feast (seconds): import it lazily from code
that does not always need Feast.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from feast import Field
from feast.protos.feast.types.Value_pb2 import DoubleList, StringList
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.types import Array, Float64, Int64, String

from featrec.core.features.catalog import Dtype, View

#: Name of the event-time column in batch sources and DataFrames written to Feast.
EVENT_TIMESTAMP = "event_timestamp"

_FEAST_TYPES: dict[Dtype, Any] = {
    Dtype.INT64: Int64,
    Dtype.FLOAT64: Float64,
    Dtype.STRING: String,
    Dtype.STRING_LIST: Array(String),
    Dtype.FLOAT64_LIST: Array(Float64),
}

_ARROW_TYPES: dict[Dtype, pa.DataType] = {
    Dtype.INT64: pa.int64(),
    Dtype.FLOAT64: pa.float64(),
    Dtype.STRING: pa.string(),
    Dtype.STRING_LIST: pa.list_(pa.string()),
    Dtype.FLOAT64_LIST: pa.list_(pa.float64()),
}


def feast_type(dtype: Dtype) -> Any:
    """The Feast type of a catalog dtype."""
    return _FEAST_TYPES[dtype]


def feast_schema(view: View) -> list[Any]:
    """Feast ``Field``s of a view: its join key (a string) first, then its features."""
    return [
        Field(name=view.entity.join_key, dtype=String),
        *(
            Field(name=f.name, dtype=feast_type(f.dtype), description=f.description)
            for f in view.features
        ),
    ]


def arrow_type(dtype: Dtype) -> pa.DataType:
    return _ARROW_TYPES[dtype]


def arrow_schema(view: View) -> pa.Schema:
    """Schema of the view's batch source: join key, features, event timestamp (µs, UTC)."""
    return pa.schema(
        [
            pa.field(view.entity.join_key, pa.string()),
            *(pa.field(f.name, arrow_type(f.dtype)) for f in view.features),
            pa.field(EVENT_TIMESTAMP, pa.timestamp("us", tz="UTC")),
        ]
    )


def value_proto(dtype: Dtype, normal: Any) -> Any:
    """A Feast ``Value`` protobuf for a value already normalized by ``feast_wire.normalize``."""
    if normal is None:
        return ValueProto()
    if dtype is Dtype.INT64:
        return ValueProto(int64_val=normal)
    if dtype is Dtype.FLOAT64:
        return ValueProto(double_val=normal)
    if dtype is Dtype.STRING:
        return ValueProto(string_val=normal)
    if dtype is Dtype.STRING_LIST:
        return ValueProto(string_list_val=StringList(val=normal))
    if dtype is Dtype.FLOAT64_LIST:
        return ValueProto(double_list_val=DoubleList(val=normal))
    raise AssertionError(f"unhandled dtype {dtype}")
