"""featrec's hand-written encoding of Feast's wire format, checked against Feast's own code."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime

import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import DoubleList, StringList, Value, ValueType
from feast.type_map import python_values_to_proto_values
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from featrec.adapters.feast.layout import values as feast_wire
from featrec.adapters.feast.layout.values import InvalidFeatureRow, encode_value
from featrec.adapters.feast.types import feast_type, value_proto
from featrec.core.features import catalog
from featrec.core.features.catalog import Dtype
from featrec.core.features.rows import FeatureRow

int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
floats = st.floats(allow_nan=False)
texts = st.text()  # hypothesis leaves out lone surrogates, which UTF-8 cannot carry

VALUES = {
    Dtype.INT64: st.none() | int64s,
    Dtype.FLOAT64: st.none() | floats,
    Dtype.STRING: st.none() | texts,
    Dtype.STRING_LIST: st.none() | st.lists(texts, max_size=12),
    Dtype.FLOAT64_LIST: st.none() | st.lists(floats, max_size=12),
}


def protobuf_value(dtype: Dtype, value: object) -> Value:
    """The Value built by protobuf itself (the oracle for the hand encoding)."""
    if value is None:
        return Value()
    return {
        Dtype.INT64: lambda v: Value(int64_val=v),
        Dtype.FLOAT64: lambda v: Value(double_val=v),
        Dtype.STRING: lambda v: Value(string_val=v),
        Dtype.STRING_LIST: lambda v: Value(string_list_val=StringList(val=v)),
        Dtype.FLOAT64_LIST: lambda v: Value(double_list_val=DoubleList(val=v)),
    }[dtype](value)


@pytest.mark.parametrize("dtype", list(Dtype))
@given(data=st.data())
def test_values_encode_as_protobuf_does(dtype: Dtype, data: st.DataObject) -> None:
    value = data.draw(VALUES[dtype])
    expected = protobuf_value(dtype, value).SerializeToString()
    assert encode_value(dtype, value) == expected
    assert value_proto(dtype, feast_wire.normalize(dtype, value)).SerializeToString() == expected


@pytest.mark.parametrize("dtype", list(Dtype))
@given(data=st.data())
def test_values_encode_as_feasts_own_conversion_does(dtype: Dtype, data: st.DataObject) -> None:
    value = data.draw(VALUES[dtype])
    [feast_proto] = python_values_to_proto_values([value], feast_type(dtype).to_value_type())
    assert encode_value(dtype, value) == feast_proto.SerializeToString()


def test_known_bytes() -> None:
    assert encode_value(Dtype.INT64, 1) == b"\x20\x01"
    assert encode_value(Dtype.INT64, 300) == b"\x20\xac\x02"
    assert encode_value(Dtype.INT64, -1) == b"\x20" + b"\xff" * 9 + b"\x01"
    assert encode_value(Dtype.FLOAT64, 1.5) == b"\x29" + struct.pack("<d", 1.5)
    assert encode_value(Dtype.STRING, "ü") == b"\x12\x02\xc3\xbc"
    assert encode_value(Dtype.STRING_LIST, []) == b"\x62\x00"  # set, but empty
    assert encode_value(Dtype.FLOAT64_LIST, []) == b"\x7a\x00"
    assert encode_value(Dtype.STRING_LIST, None) == b""  # null


def test_numbers_of_other_python_types_are_converted() -> None:
    assert encode_value(Dtype.FLOAT64, 3) == encode_value(Dtype.FLOAT64, 3.0)
    assert encode_value(Dtype.FLOAT64_LIST, (1, 2.5)) == encode_value(
        Dtype.FLOAT64_LIST, [1.0, 2.5]
    )
    assert encode_value(Dtype.STRING_LIST, ("a",)) == encode_value(Dtype.STRING_LIST, ["a"])


def test_nan_is_null_but_stays_inside_lists() -> None:
    assert encode_value(Dtype.FLOAT64, math.nan) == b""
    nan_list = Value(double_list_val=DoubleList(val=[math.nan])).SerializeToString()
    assert encode_value(Dtype.FLOAT64_LIST, [math.nan]) == nan_list


@pytest.mark.parametrize(
    ("dtype", "value", "message"),
    [
        (Dtype.INT64, True, "expected an int"),
        (Dtype.INT64, 1.0, "expected an int"),
        (Dtype.INT64, "1", "expected an int"),
        (Dtype.INT64, -(2**63) - 1, "outside the int64 range"),
        (Dtype.FLOAT64, "1.0", "expected a float"),
        (Dtype.FLOAT64, False, "expected a float"),
        (Dtype.STRING, b"bytes", "expected a str"),
        (Dtype.STRING, "\udc80", "not valid UTF-8"),
        (Dtype.STRING_LIST, "abc", "expected a list of str"),
        (Dtype.STRING_LIST, ["a", None], "item 1 is NoneType"),
        (Dtype.STRING_LIST, ["\ud800"], "not valid UTF-8"),
        (Dtype.FLOAT64_LIST, [1.0, "2"], "item 1 is str"),
        (Dtype.FLOAT64_LIST, [True], "item 0 is bool"),
    ],
)
def test_bad_values_are_refused_with_the_reason(dtype: Dtype, value: object, message: str) -> None:
    with pytest.raises(InvalidFeatureRow, match=message):
        encode_value(dtype, value)
    with pytest.raises(InvalidFeatureRow, match=message):
        value_proto(dtype, feast_wire.normalize(dtype, value))


@given(join_key=st.sampled_from(["session_id", "item_id", "ü_id"]), value=texts)
def test_entity_keys_serialize_as_feast_does(join_key: str, value: str) -> None:
    proto = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=value)])
    expected = serialize_entity_key(proto, entity_key_serialization_version=3)
    assert feast_wire.encode_entity_key(join_key, value) == expected
    assert feast_wire.STRING_VALUE_TYPE == ValueType.STRING


@given(view=st.text(min_size=1), feature=st.text(min_size=1))
def test_field_hashes_are_feasts(view: str, feature: str) -> None:
    assert feast_wire.field_hash(view, feature) == _mmh3(f"{view}:{feature}")


@given(micros=st.integers(min_value=0, max_value=2**62 // 1000))
def test_timestamps_encode_as_protobuf_does_and_decode_back(micros: int) -> None:
    ts = Timestamp()
    ts.FromMicroseconds(micros)
    assert feast_wire.encode_timestamp(micros) == ts.SerializeToString()
    assert feast_wire.decode_timestamp_ns(ts.SerializeToString()) == micros * 1000


def test_timestamps_feast_writes_decode_to_the_row_version() -> None:
    row = FeatureRow("v", "k", {}, version=1_700_000_000_123_456)
    ts = Timestamp()
    ts.FromDatetime(row.event_time)  # what Feast's Redis store does with the event time
    assert feast_wire.decode_timestamp_ns(ts.SerializeToString()) == row.version * 1000
    negative = Timestamp(seconds=-5, nanos=7)
    assert feast_wire.decode_timestamp_ns(negative.SerializeToString()) == -5_000_000_000 + 7
    assert datetime.fromtimestamp(row.version / 1e6, tz=UTC) == row.event_time


def test_a_timestamp_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not a protobuf Timestamp"):
        feast_wire.decode_timestamp_ns(b"\x1a\x00")


def test_rows_are_grouped_by_view_in_order() -> None:
    a1, b1, a2 = (FeatureRow(v, k, {}, 1) for v, k in (("a", "1"), ("b", "1"), ("a", "2")))
    assert feast_wire.group_by_view([a1, b1, a2]) == {"a": [a1, a2], "b": [b1]}


def test_view_of_names_missing_and_unknown_features_together() -> None:
    values = dict.fromkeys(catalog.SESSION_FEATURES.feature_names)
    del values["n_views"]
    values["colour"] = None
    row = FeatureRow(catalog.SESSION_FEATURES.name, "k", values, 1)
    with pytest.raises(InvalidFeatureRow) as info:
        feast_wire.view_of(row)
    assert str(info.value) == (
        "session_features row for key 'k': missing features ['n_views']; "
        "unknown features ['colour']"
    )
