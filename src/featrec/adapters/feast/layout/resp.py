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
    return LEN[n] if n < 4096 else b"$%d\r\n" % n


def fields_packer(view: View) -> FieldsPacker:
    """A function: a row's values (every feature of ``view``) -> RESP of its field/value pairs."""
    env: dict[str, Any] = {
        "_LEN": LEN,
        "_len": _len,
        "_CRLF": CRLF,
        "_DOUBLE": b"$9\r\n" + wire._TAG_DOUBLE,
        "_pack_d": struct.Struct("<d").pack,
        "_SMALL": [bulk(wire._TAG_INT64 + bytes((i,))) for i in range(128)],
        "_enc": {dtype: wire.ENCODERS[dtype] for dtype in Dtype},
        "_Dtype": Dtype,
    }
    lines = ["def pack(values):"]
    parts = []
    for i, feature in enumerate(view.features):
        head = bulk(wire.field_hash(view.name, feature.name))
        env[f"_H{i}"] = head
        lines.append(f"    v = values[{feature.name!r}]")
        if feature.dtype is Dtype.FLOAT64:
            lines.append(
                f"    e{i} = _DOUBLE + _pack_d(v) + _CRLF if type(v) is float and v == v "
                f"else _bulk(_enc[_Dtype.FLOAT64](v))"
            )
        elif feature.dtype is Dtype.INT64:
            lines.append(
                f"    e{i} = _SMALL[v] if type(v) is int and 0 <= v < 128 "
                f"else _bulk(_enc[_Dtype.INT64](v))"
            )
        else:
            lines.append(f"    e{i} = _bulk(_enc[_Dtype.{feature.dtype.name}](v))")
        parts.append(f"_H{i}, e{i}")
    lines.append(f"    return b''.join(({', '.join(parts)},))")
    env["_bulk"] = bulk
    # The source is generated from the catalog's feature names (repr-quoted) and dtypes only.
    exec(compile("\n".join(lines), f"<fields packer of {view.name}>", "exec"), env)  # nosec B102
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
