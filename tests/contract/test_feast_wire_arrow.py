"""Vectorized encodings (feast_wire_arrow) equal the per-value ones (feast_wire), which
test_feast_wire checks against Feast's own serializers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from featrec.adapters.feast.layout import arrow as feast_wire_arrow
from featrec.adapters.feast.layout import values as feast_wire
from featrec.adapters.feast.layout.values import InvalidFeatureRow
from featrec.core.features.catalog import Dtype

int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
floats = st.floats()  # NaN included: stored as null, like the per-value path
texts = st.text(max_size=300)  # long enough for two-byte length varints

COLUMNS = {
    Dtype.INT64: (st.none() | int64s, pa.int64()),
    Dtype.FLOAT64: (st.none() | floats, pa.float64()),
    Dtype.STRING: (st.none() | texts, pa.string()),
    Dtype.STRING_LIST: (st.none() | st.lists(texts, max_size=8), pa.list_(pa.string())),
    Dtype.FLOAT64_LIST: (st.none() | st.lists(floats, max_size=30), pa.list_(pa.float64())),
}


@pytest.mark.parametrize("dtype", list(Dtype))
@given(data=st.data())
def test_columns_encode_value_by_value_alike(dtype: Dtype, data: st.DataObject) -> None:
    values_strategy, arrow_type = COLUMNS[dtype]
    values = data.draw(st.lists(values_strategy, max_size=40))
    column = pa.array(values, arrow_type)
    encoded = feast_wire_arrow.encode_column(dtype, column).to_pylist()
    assert encoded == [feast_wire.encode_value(dtype, v) for v in values]
    # The same through a chunked, sliced column (offsets not at zero).
    chunked = pa.chunked_array([pa.array([values[0] if values else None], arrow_type), column])
    assert feast_wire_arrow.encode_column(dtype, chunked.combine_chunks().slice(1)).to_pylist() == (
        encoded
    )


@given(st.lists(int64s, max_size=50))
def test_varints(values: list[int]) -> None:
    got = feast_wire_arrow.varints(np.array(values, dtype=np.int64)).to_pylist()
    assert got == [feast_wire.varint(v) for v in values]


@given(st.lists(st.integers(min_value=0, max_value=4_102_444_800_000_000), max_size=30))
def test_timestamps(micros: list[int]) -> None:
    got = feast_wire_arrow.timestamps(np.array(micros, dtype=np.int64)).to_pylist()
    assert got == [feast_wire.encode_timestamp(m) for m in micros]


@given(st.lists(texts, max_size=30), st.sampled_from([b"", b"featrec"]))
def test_entity_keys(keys: list[str], suffix: bytes) -> None:
    got = feast_wire_arrow.entity_keys("user_id", pa.array(keys, pa.string()), suffix)
    assert got.to_pylist() == [feast_wire.encode_entity_key("user_id", k) + suffix for k in keys]


def test_resp_commands_known_answer() -> None:
    payload = feast_wire_arrow.resp_commands(
        [b"HSET", pa.array([b"k1", b"key2"]), b"f", pa.array([b"", b"vv"])], 2
    )
    assert payload == (
        b"*4\r\n$4\r\nHSET\r\n$2\r\nk1\r\n$1\r\nf\r\n$0\r\n\r\n"
        b"*4\r\n$4\r\nHSET\r\n$4\r\nkey2\r\n$1\r\nf\r\n$2\r\nvv\r\n"
    )
    # Equal-length values take the constant-header path; the bytes are the same.
    same = feast_wire_arrow.resp_bulks([pa.array([b"ab", b"cd"]), b"x"], 2)
    assert same == b"$2\r\nab\r\n$1\r\nx\r\n$2\r\ncd\r\n$1\r\nx\r\n"
    assert feast_wire_arrow.resp_bulks([b"only"], 2) == b"$4\r\nonly\r\n" * 2
    assert feast_wire_arrow.resp_commands([b"PING"], 0) == b""


def test_bad_columns_are_refused() -> None:
    with pytest.raises(InvalidFeatureRow, match="null item"):
        feast_wire_arrow.encode_column(Dtype.STRING_LIST, pa.array([["a", None]]))
    with pytest.raises(InvalidFeatureRow, match="null user_id"):
        feast_wire_arrow.entity_keys("user_id", pa.array(["a", None]))
    with pytest.raises(ValueError, match="3 values for 2 rows"):
        feast_wire_arrow.resp_commands([b"GET", pa.array([b"a", b"b", b"c"])], 2)
