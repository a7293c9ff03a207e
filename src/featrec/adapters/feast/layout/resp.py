"""Redis commands of Feast-layout rows as RESP bytes, encoded in one pass per row.

A row of the sessions view is 16 values: encoding each through its generic encoder, then
packing the ~35 command arguments, costs a function call and a list slot per value twice.
:func:`fields_packer` instead compiles, once per view, a function from a row's values to
the RESP bytes of all its ``field value`` pairs: the field hashes and their RESP headers are
constants in the code, and the common Python type of each dtype (an ``int`` for INT64, a
``float`` for FLOAT64, a ``str`` for STRING) is encoded inline. Anything else calls the
dtype's encoder from :mod:`featrec.adapters.feast.layout.values`, so the bytes are exactly
the generic path's (tested), and a bad value raises the same ``InvalidFeatureRow``.

:func:`hset` and :func:`evalsha` wrap those bytes into whole commands.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Final

from featrec.adapters.feast.layout import values as wire
from featrec.core.features.catalog import Dtype, View

CRLF: Final = b"\r\n"
#: ``$<n>\r\n`` for the lengths values usually have.
LEN: Final = [b"$%d\r\n" % n for n in range(4096)]

FieldsPacker = Callable[[Mapping[str, object]], bytes]


def bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    n = len(data)
    return (LEN[n] if n < 4096 else b"$%d\r\n" % n) + data + CRLF


def _len(n: int) -> bytes:
    """``$<n>\r\n``: the head of a bulk string of n bytes."""
    return LEN[n] if n < 4096 else b"$%d\r\n" % n


def fields_packer(view: View) -> FieldsPacker:
    """A function: a row's values (every feature of ``view``) -> RESP of its field/value pairs."""
    dtypes = {f.name: f.dtype for f in view.features}
    names = list(dtypes)
    env: dict[str, Any] = {
        "_LEN": LEN,
        "_CRLF": CRLF,
        "_DOUBLE": b"$9\r\n" + wire._TAG_DOUBLE,
        "_pack_d": struct.Struct("<d").pack,
        "_SMALL": [bulk(wire._TAG_INT64 + bytes((i,))) for i in range(128)],
        # "$<n+2>\r\n" + string tag + one-byte length, for strings of n < 126 bytes.
        "_STR": [_len(n + 2) + wire._TAG_STRING + bytes((n,)) for n in range(126)],
        "_INT": wire._TAG_INT64,
        # "$<n+1>\r\n" + int64 tag, for a varint of n bytes (at most 10).
        "_VAR": [_len(n + 1) + wire._TAG_INT64 for n in range(11)],
        "_varint": wire.varint,
        "_bulk": bulk,
    }
    lines = ["def pack(values):"]
    parts = []
    for i, name in enumerate(names):
        dtype = dtypes[name]
        env[f"_H{i}"] = bulk(wire.field_hash(view.name, name))
        env[f"_E{i}"] = wire.ENCODERS[dtype]
        lines.append(f"    v = values[{name!r}]")
        # The inline branch covers the common Python type of the dtype; anything else (None,
        # NaN, another type, a non-ASCII string) takes the generic encoder: the same bytes.
        if dtype is Dtype.FLOAT64:
            lines.append(
                f"    e{i} = _DOUBLE + _pack_d(v) + _CRLF if type(v) is float and v == v "
                f"else _bulk(_E{i}(v))"
            )
        elif dtype is Dtype.INT64:
            # Large ints (versions, µs clocks) are a 5-9 byte varint: the bulk is built inline.
            lines.append(
                f"    e{i} = (_SMALL[v] if 0 <= v < 128 else "
                f"_VAR[len(b := _varint(v))] + b + _CRLF) "
                f"if type(v) is int and 0 <= v < 9223372036854775808 else _bulk(_E{i}(v))"
            )
        elif dtype is Dtype.STRING:
            lines.append(
                f"    e{i} = _STR[len(v)] + v.encode() + _CRLF "
                f"if type(v) is str and len(v) < 126 and v.isascii() else _bulk(_E{i}(v))"
            )
        else:
            lines.append(f"    e{i} = _bulk(_E{i}(v))")
        parts.append(f"_H{i}, e{i}")
    lines.append(f"    return b''.join(({', '.join(parts)},))")
    # The source is generated from the catalog's feature names (repr-quoted) and dtypes only.
    code = compile("\n".join(lines), f"<fields packer of {view.name}>", "exec")
    exec(code, env)  # nosec B102
    packer: FieldsPacker = env["pack"]
    return packer


def hset(key: bytes, ts_field: bytes, ts: bytes, fields: bytes, n_fields: int) -> bytes:
    """``HSET key ts_field ts <fields>``; ``fields`` holds ``n_fields`` field/value pairs."""
    return b"".join(
        (b"*%d\r\n$4\r\nHSET\r\n" % (4 + 2 * n_fields), bulk(key), bulk(ts_field), bulk(ts), fields)
    )


def evalsha(
    sha: bytes, key: bytes, head: tuple[object, ...], ts_field: bytes, ts: bytes, fields: bytes,
    n_fields: int,
) -> bytes:  # fmt: skip
    """``EVALSHA sha 1 key *head ts_field ts <fields>`` (``head``: the script's own arguments)."""
    n = 4 + len(head) + 2 + 2 * n_fields
    out = [b"*%d\r\n$7\r\nEVALSHA\r\n" % n, bulk(sha), b"$1\r\n1\r\n", bulk(key)]
    out.extend(bulk(a if isinstance(a, bytes) else str(a).encode()) for a in head)
    out.extend((bulk(ts_field), bulk(ts), fields))
    return b"".join(out)
