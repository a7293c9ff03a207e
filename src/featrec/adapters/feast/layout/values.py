"""Feast's online wire format, encoded by hand so the fast paths need neither Feast nor protobuf.

What Feast stores for one entity (entity key serialization version 3) and how:

- entity key: ``u32 n_keys, (u32 STRING, u32 len, name)*, (u32 STRING, u32 len, value)*``
  (all little-endian); Redis appends the project name to make the hash key;
- Redis hash field of a feature: ``mmh3_32("view:feature")`` as 4 little-endian bytes;
- value: a serialized ``feast.types.Value`` protobuf (``b""`` is the empty Value: null);
- ``_ts:<view>``: a serialized ``google.protobuf.Timestamp``.

Every value goes through one normalizer per :class:`Dtype` (shared with the protobuf path in
:mod:`featrec.adapters.feast.types`), so a bad value fails the same way on every writer and
every writer stores the same thing. Tests check the bytes against Feast's own serializers.
"""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Callable, Mapping, Sequence

import mmh3

from featrec.core.features.catalog import VIEWS, Dtype, View
from featrec.core.features.rows import FeatureRow

#: ``feast.types.ValueType.STRING``: every featrec join key is a string.
STRING_VALUE_TYPE = 2

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_U32 = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")

# Protobuf tags of the Value oneof members featrec uses: (field number << 3) | wire type.
_TAG_STRING = b"\x12"  # 2 string_val, length-delimited
_TAG_INT64 = b"\x20"  # 4 int64_val, varint
_TAG_DOUBLE = b"\x29"  # 5 double_val, fixed64
_TAG_STRING_LIST = b"\x62"  # 12 string_list_val (StringList{repeated string val = 1})
_TAG_DOUBLE_LIST = b"\x7a"  # 15 double_list_val (DoubleList{repeated double val = 1}, packed)
_TAG_LIST_ITEM = b"\x0a"  # field 1, length-delimited (a string, or the packed doubles)


class InvalidFeatureRow(ValueError):
    """A feature row does not fit its view: unknown view, missing or unknown feature, a value
    of the wrong type, or a version that is not a positive integer (the message says which)."""


# -- normalizers: python value -> canonical python value, or None for null ------------------


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidFeatureRow(f"string is not valid UTF-8 ({e.reason}): {text!r}") from None


def _norm_int64(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InvalidFeatureRow(
                f"expected an int (int64), got {type(value).__name__} {value!r}"
            )
        value = int(value)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise InvalidFeatureRow(f"{value} is outside the int64 range")
    return value


def _norm_float64(value: object) -> float | None:
    if value is None:
        return None
    if type(value) is not float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidFeatureRow(
                f"expected a float (float64), got {type(value).__name__} {value!r}"
            )
        value = float(value)
    # Feast's DataFrame path stores NaN as null; every writer does the same.
    return None if math.isnan(value) else value


def _norm_string(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        _utf8(value)
        return value if type(value) is str else str(value)
    raise InvalidFeatureRow(f"expected a str, got {type(value).__name__} {value!r}")


def _norm_string_list(value: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise InvalidFeatureRow(f"expected a list of str, got {type(value).__name__} {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidFeatureRow(
                f"expected a list of str, item {i} is {type(item).__name__} {item!r}"
            )
        _utf8(item)
    return [str(item) for item in value]


def _norm_float64_list(value: object) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise InvalidFeatureRow(f"expected a list of float, got {type(value).__name__} {value!r}")
    out: list[float] = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise InvalidFeatureRow(
                f"expected a list of float, item {i} is {type(item).__name__} {item!r}"
            )
        out.append(float(item))
    return out


NORMALIZERS: dict[Dtype, Callable[[object], object]] = {
    Dtype.INT64: _norm_int64,
    Dtype.FLOAT64: _norm_float64,
    Dtype.STRING: _norm_string,
    Dtype.STRING_LIST: _norm_string_list,
    Dtype.FLOAT64_LIST: _norm_float64_list,
}


def normalize(dtype: Dtype, value: object) -> object:
    """The canonical python value stored for ``value`` (None: null). Raises InvalidFeatureRow."""
    return NORMALIZERS[dtype](value)


# -- protobuf encoding -----------------------------------------------------------------------


_BYTE = [bytes((i,)) for i in range(128)]
# Varints 14 bits at a time from two tables (~2x faster than a loop over 7-bit groups for the
# 5-8 byte varints of every row: versions, timestamps): _VARINT14[n] is the whole varint of
# n < 2**14, _CONT14[n] the two continuation bytes of a 14-bit group with more to follow.
_VARINT14 = [_BYTE[i] if i < 128 else bytes(((i & 0x7F) | 0x80, i >> 7)) for i in range(1 << 14)]
_CONT14 = [bytes(((i & 0x7F) | 0x80, ((i >> 7) & 0x7F) | 0x80)) for i in range(1 << 14)]


def varint(n: int) -> bytes:
    """Protobuf base-128 varint; negative numbers as their 64-bit two's complement."""
    if 0 <= n < 16384:
        return _VARINT14[n]
    n &= 0xFFFF_FFFF_FFFF_FFFF
    parts = []
    while n >= 16384:
        parts.append(_CONT14[n & 0x3FFF])
        n >>= 14
    parts.append(_VARINT14[n])
    return b"".join(parts)


# The encoders below take a fast path for the exact python types rows normally carry and fall
# back to the normalizers (which convert or raise) for anything else: the bytes are the same.
_SMALL_INT64 = [_TAG_INT64 + _BYTE[i] for i in range(128)]
_ITEM_HEAD = [_TAG_LIST_ITEM + _BYTE[i] for i in range(128)]


def _enc_int64(value: object) -> bytes:
    if type(value) is int and 0 <= value < 128:
        return _SMALL_INT64[value]
    n = _norm_int64(value)
    return b"" if n is None else _TAG_INT64 + varint(n)


def _enc_float64(value: object) -> bytes:
    if type(value) is float and value == value:  # noqa: PLR0124 - false for NaN only
        return _TAG_DOUBLE + _DOUBLE.pack(value)
    x = _norm_float64(value)
    return b"" if x is None else _TAG_DOUBLE + _DOUBLE.pack(x)


def _enc_string(value: object) -> bytes:
    s = value if type(value) is str else _norm_string(value)
    if s is None:
        return b""
    data = _utf8(s)
    return _TAG_STRING + varint(len(data)) + data


def _string_item(text: str) -> bytes:
    data = _utf8(text)
    n = len(data)
    return _ITEM_HEAD[n] + data if n < 128 else _TAG_LIST_ITEM + varint(n) + data


def _enc_string_list(value: object) -> bytes:
    if type(value) is list:
        try:
            # One join tells both that every item is a str and that all are ASCII (the usual
            # ids): then characters are bytes and no item can fail to encode.
            ascii_strs = "".join(value).isascii()
        except TypeError:
            ascii_strs = False  # not all str: the slow path converts or names the bad item
        if ascii_strs:
            inner = b"".join(
                [
                    _ITEM_HEAD[len(text)] + text.encode()
                    if len(text) < 128
                    else _TAG_LIST_ITEM + varint(len(text)) + text.encode()
                    for text in value
                ]
            )
            return _TAG_STRING_LIST + varint(len(inner)) + inner
    if type(value) is list and set(map(type, value)) <= {str}:
        try:
            encoded = [item.encode("utf-8") for item in value]
        except UnicodeEncodeError:
            pass  # the slow path names the bad item
        else:
            inner = b"".join(
                [
                    _ITEM_HEAD[len(data)] + data
                    if len(data) < 128
                    else _TAG_LIST_ITEM + varint(len(data)) + data
                    for data in encoded
                ]
            )
            return _TAG_STRING_LIST + varint(len(inner)) + inner
    items = _norm_string_list(value)
    if items is None:
        return b""
    inner = b"".join([_string_item(item) for item in items])
    return _TAG_STRING_LIST + varint(len(inner)) + inner


def _enc_float64_list(value: object) -> bytes:
    items = _norm_float64_list(value)
    if items is None:
        return b""
    if not items:
        return _TAG_DOUBLE_LIST + b"\x00"
    packed = struct.pack(f"<{len(items)}d", *items)
    inner = _TAG_LIST_ITEM + varint(len(packed)) + packed
    return _TAG_DOUBLE_LIST + varint(len(inner)) + inner


ENCODERS: dict[Dtype, Callable[[object], bytes]] = {
    Dtype.INT64: _enc_int64,
    Dtype.FLOAT64: _enc_float64,
    Dtype.STRING: _enc_string,
    Dtype.STRING_LIST: _enc_string_list,
    Dtype.FLOAT64_LIST: _enc_float64_list,
}


def encode_value(dtype: Dtype, value: object) -> bytes:
    """``value`` as a serialized ``feast.types.Value`` (``b""`` for null)."""
    return ENCODERS[dtype](value)


def entity_key_prefix(join_key: str) -> bytes:
    """The constant head of every v3 entity key on ``join_key`` (one string join key)."""
    name = _utf8(join_key)
    return (
        _U32.pack(1)
        + _U32.pack(STRING_VALUE_TYPE)
        + _U32.pack(len(name))
        + name
        + _U32.pack(STRING_VALUE_TYPE)
    )


def encode_entity_key(join_key: str, value: str) -> bytes:
    """Feast's ``serialize_entity_key`` (version 3) for one string join key."""
    return encode_entity_key_after(entity_key_prefix(join_key), value)


def encode_entity_key_after(prefix: bytes, value: str) -> bytes:
    """:func:`encode_entity_key` with the join key's prefix computed once by the caller."""
    data = _utf8(value)
    return prefix + _U32.pack(len(data)) + data


def field_hash(view: str, feature: str) -> bytes:
    """The Redis hash field of ``view:feature`` (Feast's ``_mmh3``)."""
    return int(mmh3.hash(f"{view}:{feature}", signed=False)).to_bytes(4, "little")


def ts_field(view: str) -> bytes:
    """The Redis hash field holding a view's event timestamp."""
    return f"_ts:{view}".encode()


def encode_timestamp(micros: int) -> bytes:
    """A serialized ``google.protobuf.Timestamp`` of ``micros`` µs since the epoch."""
    seconds, rest = divmod(micros, 1_000_000)
    out = b""
    if seconds:
        out += b"\x08" + varint(seconds)
    if rest:
        out += b"\x10" + varint(rest * 1000)
    return out


def decode_timestamp_ns(data: bytes) -> int:
    """Nanoseconds since the epoch of a serialized ``google.protobuf.Timestamp``."""
    seconds = nanos = 0
    i, end = 0, len(data)
    while i < end:
        tag = data[i]
        i += 1
        n = shift = 0
        while True:
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        if tag == 0x08:
            seconds = n - (1 << 64) if n >= 1 << 63 else n
        elif tag == 0x10:
            nanos = n - (1 << 64) if n >= 1 << 63 else n
        else:
            raise ValueError(f"not a protobuf Timestamp: unexpected tag {tag:#x} in {data!r}")
    return seconds * 1_000_000_000 + nanos


# -- rows --------------------------------------------------------------------------------------


def view_of(row: FeatureRow, views: Mapping[str, View] = VIEWS) -> View:
    """The catalog view of ``row``, after checking the row's shape (not yet its values)."""
    view = views.get(row.view)
    if view is None:
        raise InvalidFeatureRow(
            f"row for key {row.key!r}: unknown view {row.view!r} (known: {', '.join(views)})"
        )
    if type(row.version) is not int or row.version <= 0:
        raise InvalidFeatureRow(
            f"{row.view} row for key {row.key!r}: version must be a positive int "
            f"(µs clock), got {row.version!r}"
        )
    if not isinstance(row.key, str):
        raise InvalidFeatureRow(f"{row.view} row: key must be a str, got {row.key!r}")
    names = _feature_names(view)
    if row.values.keys() != names:
        missing = sorted(names - row.values.keys())
        unknown = sorted(row.values.keys() - names)
        raise InvalidFeatureRow(
            f"{row.view} row for key {row.key!r}: "
            + "; ".join(
                part
                for part in (
                    f"missing features {missing}" if missing else "",
                    f"unknown features {unknown}" if unknown else "",
                )
                if part
            )
        )
    return view


_NAME_SETS: dict[str, tuple[View, frozenset[str]]] = {}


def _feature_names(view: View) -> frozenset[str]:
    cached = _NAME_SETS.get(view.name)
    if cached is None or cached[0] is not view:
        cached = _NAME_SETS[view.name] = (view, frozenset(view.feature_names))
    return cached[1]


def normalized_values(view: View, row: FeatureRow) -> list[object]:
    """The row's values in the view's feature order, normalized (see :func:`normalize`)."""
    out: list[object] = []
    for feature in view.features:
        try:
            out.append(NORMALIZERS[feature.dtype](row.values[feature.name]))
        except InvalidFeatureRow as e:
            raise InvalidFeatureRow(
                f"{view.name} row for key {row.key!r}, feature {feature.name!r}: {e}"
            ) from None
    return out


def group_by_view(rows: Sequence[FeatureRow]) -> dict[str, list[FeatureRow]]:
    """Rows per view, in order of first appearance (each list keeps the rows' order)."""
    groups: dict[str, list[FeatureRow]] = {}
    for row in rows:
        groups.setdefault(row.view, []).append(row)
    return groups
