"""Feast's serialized ``feast.types.Value`` protobufs decoded by hand (no Feast, no protobuf).

The read-side twin of :mod:`featrec.adapters.feast.layout.values`, for readers of Feast's Redis
layout.
It decodes the members featrec's catalog uses (string, int64, double, string list, double
list), plus null (the empty message or ``null_val``); anything else is an error naming the
field, not a silent ``None``. Tests check it against Feast's own serializer.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence

from featrec.core.features.catalog import Dtype

_DOUBLE = struct.Struct("<d")

# (field number << 3) | wire type, for the members decoded here.
_STRING = 0x12  # 2 string_val
_INT64 = 0x20  # 4 int64_val
_DOUBLE_TAG = 0x29  # 5 double_val
_STRING_LIST = 0x62  # 12 string_list_val
_DOUBLE_LIST = 0x7A  # 15 double_list_val
_NULL = 0x98  # 19 null_val (varint): first byte of the two-byte tag 0x98 0x01


class UndecodableValue(ValueError):
    """Bytes that are not a Value featrec writes (another type, or corrupt)."""


def _varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _string_items(data: bytes, i: int, end: int) -> list[str]:
    out: list[str] = []
    append = out.append
    while i < end:
        if data[i] != 0x0A:
            raise UndecodableValue(f"unexpected tag {data[i]:#x} in a string list")
        n = data[i + 1]
        if n < 0x80:  # the usual one-byte length: no varint loop
            j = i + 2 + n
            append(data[i + 2 : j].decode("utf-8"))
            i = j
            continue
        n, i = _varint(data, i + 1)
        append(data[i : i + n].decode("utf-8"))
        i += n
    if i != end:
        raise UndecodableValue("a string in a string list runs past its end")
    return out


def _double_items(data: bytes, i: int, end: int) -> list[float]:
    out: list[float] = []
    while i < end:
        tag = data[i]
        if tag == 0x0A:  # packed
            n, i = _varint(data, i + 1)
            out.extend(struct.unpack_from(f"<{n // 8}d", data, i))
            i += n
        elif tag == 0x09:  # one unpacked double
            out.append(_DOUBLE.unpack_from(data, i + 1)[0])
            i += 9
        else:
            raise UndecodableValue(f"unexpected tag {tag:#x} in a double list")
    return out


def decode_value(data: bytes) -> object:
    """The python value of a serialized Value: str, int, float, list of str or float, or None."""
    if not data:
        return None
    try:
        tag = data[0]
        if tag == _DOUBLE_TAG and len(data) == 9:
            return _DOUBLE.unpack_from(data, 1)[0]
        if tag == _INT64:
            n, end = _varint(data, 1)
            _check_end(data, end)
            return n - (1 << 64) if n >= 1 << 63 else n
        if tag == _STRING:
            n, i = _varint(data, 1)
            _check_end(data, i + n)
            return data[i : i + n].decode("utf-8")
        if tag == _STRING_LIST:
            n, i = _varint(data, 1)
            _check_end(data, i + n)
            return _string_items(data, i, i + n)
        if tag == _DOUBLE_LIST:
            n, i = _varint(data, 1)
            _check_end(data, i + n)
            return _double_items(data, i, i + n)
        if tag == _NULL and data[1:2] == b"\x01":
            return None
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise UndecodableValue(f"corrupt Value {data[:40]!r}: {e}") from None
    raise UndecodableValue(f"not a Value featrec writes (tag {tag:#x}): {data[:40]!r}")


def _check_end(data: bytes, end: int) -> None:
    if end > len(data):
        raise UndecodableValue(f"corrupt Value, {end - len(data)} bytes short: {data[:40]!r}")
    if end < len(data):
        raise UndecodableValue(f"Value has {len(data) - end} trailing bytes: {data[:40]!r}")


def _decode_float64(data: bytes) -> object:
    # The common case (a double) without the generic dispatch.
    if len(data) == 9 and data[0] == _DOUBLE_TAG:
        return _DOUBLE.unpack_from(data, 1)[0]
    return decode_value(data)


#: Per dtype, a decoder (all accept any Value; the float one takes a fast path first).
DECODERS: dict[Dtype, Callable[[bytes], object]] = {
    Dtype.INT64: decode_value,
    Dtype.FLOAT64: _decode_float64,
    Dtype.STRING: decode_value,
    Dtype.STRING_LIST: decode_value,
    Dtype.FLOAT64_LIST: decode_value,
}


@functools.lru_cache(maxsize=64)
def _tagged_doubles(n: int) -> struct.Struct:
    """``n`` (tag byte, double) pairs: the bytes of ``n`` double Values joined."""
    return struct.Struct("<" + "xd" * n)


def _float_column(raws: Sequence[bytes | None]) -> list[object]:
    present = [raw for raw in raws if raw is not None]
    if all(len(raw) == 9 and raw[0] == _DOUBLE_TAG for raw in present):
        doubles = iter(_tagged_doubles(len(present)).unpack(b"".join(present)))
        return [None if raw is None else next(doubles) for raw in raws]
    return [None if raw is None else _decode_float64(raw) for raw in raws]


def decode_column(dtype: Dtype, raws: Sequence[bytes | None]) -> list[object]:
    """``[DECODERS[dtype](raw) or None for raw in raws]``, faster for many values: a column of
    doubles is unpacked in one call and repeated values (categories) are decoded once."""
    if dtype is Dtype.FLOAT64:
        return _float_column(raws)
    decode = DECODERS[dtype]
    if dtype in (Dtype.STRING, Dtype.INT64):
        memo: dict[bytes, object] = {}
        out: list[object] = []
        for raw in raws:
            if raw is None:
                out.append(None)
                continue
            value = memo.get(raw, memo)
            if value is memo:
                value = memo[raw] = decode(raw)
            out.append(value)
        return out
    return [None if raw is None else decode(raw) for raw in raws]
