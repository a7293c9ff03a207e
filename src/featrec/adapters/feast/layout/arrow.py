"""Feast's online wire format for whole Arrow columns: the vectorized twin of ``feast_wire``.

:mod:`featrec.adapters.feast.layout.values` encodes one value at a time; materializing a million
rows
that way costs seconds of Python per feature. Here every step is an Arrow or numpy kernel over
a column: varints, serialized ``feast.types.Value`` protobufs, v3 entity keys, protobuf
``Timestamp``s and finally Redis protocol (RESP) commands, one per row, as one bytes payload.
The bytes are identical to ``feast_wire``'s (tests compare them value by value), which are
checked against Feast's own serializers.

Arrays returned are ``pa.binary()`` (32-bit offsets): callers encode batches of at most a few
hundred thousand rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from featrec.adapters.feast.layout import values as feast_wire
from featrec.adapters.feast.layout.values import InvalidFeatureRow
from featrec.core.features.catalog import Dtype

_BIN: Final = pa.binary()
_EMPTY: Final = pa.scalar(b"", _BIN)
_CRLF: Final = pa.scalar(b"\r\n", _BIN)
_DOLLAR: Final = pa.scalar(b"$", _BIN)

# Protobuf tags (see feast_wire): Value oneof members and the list item field.
_TAG_STRING: Final = b"\x12"
_TAG_INT64: Final = b"\x20"
_TAG_DOUBLE: Final = b"\x29"
_TAG_STRING_LIST: Final = b"\x62"
_TAG_DOUBLE_LIST: Final = b"\x7a"
_TAG_LIST_ITEM: Final = b"\x0a"

#: An argument of a Redis command: the same bytes on every row, or one value per row.
Arg: TypeAlias = bytes | pa.Array


def _scalar(data: bytes) -> pa.Scalar:
    return pa.scalar(data, _BIN)


def _from_parts(lengths: npt.NDArray[np.int64], data: npt.NDArray[np.uint8]) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(
        _BIN, len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def varints(values: npt.NDArray[np.integer], tag: bytes = b"") -> pa.Array:
    """``tag`` + the protobuf base-128 varint of each integer (negatives as 64-bit two's
    complement)."""
    rest = np.asarray(values).astype(np.int64).view(np.uint64).copy()
    n, head = len(rest), len(tag)
    groups = np.zeros((n, head + 10), dtype=np.uint8)
    groups[:, :head] = np.frombuffer(tag, dtype=np.uint8)
    lengths = np.full(n, head + 1, dtype=np.int64)
    width = head
    while width < head + 10:
        low = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest >>= np.uint64(7)
        more = rest != 0
        groups[:, width] = low | (more.astype(np.uint8) << 7)
        lengths += more
        width += 1
        if not more.any():
            break
    mask = np.arange(width) < lengths[:, None]
    return _from_parts(lengths, groups[:, :width][mask])


def _join(*parts: pa.Array | pa.Scalar) -> pa.Array:
    joined: pa.Array = pc.binary_join_element_wise(*parts, _EMPTY)
    return joined


def _null_to_empty(encoded: pa.Array, is_null: pa.Array) -> pa.Array:
    if not pc.any(is_null).as_py():
        return encoded
    out: pa.Array = pc.if_else(is_null, _EMPTY, encoded)
    return out


def _length_prefixed(tag: bytes, data: pa.Array) -> pa.Array:
    """``tag + varint(len(data)) + data`` per row (data without nulls)."""
    lengths = pc.binary_length(data).to_numpy(zero_copy_only=False)
    return _join(varints(lengths, tag), data)


def _as_binary(column: pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    out: pa.Array = column.cast(_BIN)
    return out


def encode_column(dtype: Dtype, column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Serialized ``feast.types.Value`` per row (``b""`` for null), as ``feast_wire`` does."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    is_null = column.is_null()
    if dtype is Dtype.INT64:
        ints = column.cast(pa.int64()).fill_null(0).to_numpy()
        return _null_to_empty(varints(ints, _TAG_INT64), is_null)
    if dtype is Dtype.FLOAT64:
        doubles = column.cast(pa.float64()).fill_null(0.0).to_numpy()
        # NaN is stored as null, as Feast's DataFrame path and every featrec writer do.
        is_null = pc.or_(is_null, pa.array(np.isnan(doubles)))
        data = np.empty((len(doubles), 9), dtype=np.uint8)
        data[:, 0] = _TAG_DOUBLE[0]
        data[:, 1:] = doubles.astype("<f8").view(np.uint8).reshape(-1, 8)
        packed = _from_parts(np.full(len(doubles), 9, dtype=np.int64), data.reshape(-1))
        return _null_to_empty(packed, is_null)
    if dtype is Dtype.STRING:
        text = _as_binary(column.fill_null(""))
        return _null_to_empty(_length_prefixed(_TAG_STRING, text), is_null)
    if dtype is Dtype.STRING_LIST:
        return _null_to_empty(_string_lists(column), is_null)
    if dtype is Dtype.FLOAT64_LIST:
        return _null_to_empty(_double_lists(column), is_null)
    raise AssertionError(f"unhandled dtype {dtype}")


def _list_parts(column: pa.Array) -> tuple[pa.Array, npt.NDArray[np.int64]]:
    """The list's items (nulls refused) and the item count of every row (0 for null rows)."""
    items = column.flatten()
    if items.null_count:
        raise InvalidFeatureRow("a list feature holds a null item")
    counts = column.value_lengths().fill_null(0).to_numpy().astype(np.int64)
    return items, counts


def _string_lists(column: pa.Array) -> pa.Array:
    items, counts = _list_parts(column)
    encoded_items = _length_prefixed(_TAG_LIST_ITEM, _as_binary(items))
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    lists = pa.ListArray.from_arrays(pa.array(offsets), encoded_items)
    inner = pc.binary_join(lists, _EMPTY)
    return _length_prefixed(_TAG_STRING_LIST, inner)


def _double_lists(column: pa.Array) -> pa.Array:
    items, counts = _list_parts(column)
    doubles = items.cast(pa.float64()).to_numpy().astype("<f8")
    packed = _from_parts(counts * 8, doubles.view(np.uint8))
    inner = pc.if_else(pa.array(counts == 0), _EMPTY, _length_prefixed(_TAG_LIST_ITEM, packed))
    return _length_prefixed(_TAG_DOUBLE_LIST, inner)


def entity_keys(join_key: str, keys: pa.Array | pa.ChunkedArray, suffix: bytes = b"") -> pa.Array:
    """v3 serialized entity keys of string ``keys`` on one join key, each followed by
    ``suffix`` (Redis appends the project name)."""
    data = _as_binary(keys)
    if data.null_count:
        raise InvalidFeatureRow(f"null {join_key} in the rows to write")
    lengths = pc.binary_length(data).to_numpy(zero_copy_only=False).astype("<u4")
    prefix = _scalar(feast_wire.entity_key_prefix(join_key))
    length_bytes = _from_parts(np.full(len(lengths), 4, dtype=np.int64), lengths.view(np.uint8))
    return _join(prefix, length_bytes, data, _scalar(suffix))


def timestamps(micros: npt.NDArray[np.int64]) -> pa.Array:
    """Serialized ``google.protobuf.Timestamp`` of µs since the epoch (zero fields omitted)."""
    seconds, rest = np.divmod(np.asarray(micros, dtype=np.int64), 1_000_000)
    nanos = rest * 1000
    sec_part = _null_to_empty(varints(seconds, b"\x08"), pa.array(seconds == 0))
    nano_part = _null_to_empty(varints(nanos, b"\x10"), pa.array(nanos == 0))
    return _join(sec_part, nano_part)


def decimal(values: npt.NDArray[np.integer]) -> pa.Array:
    """Integers as ASCII decimal bytes (how Redis reads numeric arguments)."""
    return _as_binary(pa.array(np.asarray(values, dtype=np.int64)).cast(pa.string()))


def bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def resp_bulks(args: Sequence[Arg], n_rows: int, *, head: bytes = b"") -> bytes:
    """Row by row: ``head`` then every argument as a RESP bulk string, all rows concatenated.

    ``args[i]`` is either constant bytes (the same on every row) or an array with one value
    per row.
    """
    if n_rows == 0:
        return b""
    parts: list[pa.Array | pa.Scalar] = []
    constant = head
    for arg in args:
        if isinstance(arg, bytes):
            constant += bulk(arg)
            continue
        if len(arg) != n_rows:
            raise ValueError(f"argument has {len(arg)} values for {n_rows} rows")
        sizes = pc.binary_length(arg).to_numpy(zero_copy_only=False)
        if n_rows and sizes.min() == sizes.max():
            # Every value has the same length: its bulk header is a constant.
            constant += b"$%d\r\n" % sizes[0]
            parts.extend((_scalar(constant), arg))
            constant = b"\r\n"
            continue
        if constant:
            parts.append(_scalar(constant))
            constant = b""
        parts.extend((_DOLLAR, decimal(sizes), _CRLF, arg, _CRLF))
    if constant:
        parts.append(_scalar(constant))
    if all(isinstance(p, pa.Scalar) for p in parts):
        return b"".join(p.as_py() for p in parts) * n_rows
    rows = _join(*parts)
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)
    first, last = offsets[rows.offset], offsets[rows.offset + n_rows]
    data = rows.buffers()[2]
    return b"" if data is None else data.to_pybytes()[first:last]


def resp_commands(args: Sequence[Arg], n_rows: int) -> bytes:
    """One Redis command per row (``args`` as in :func:`resp_bulks`), concatenated."""
    return resp_bulks(args, n_rows, head=b"*%d\r\n" % len(args))
