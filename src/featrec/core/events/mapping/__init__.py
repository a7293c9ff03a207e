"""Bring your own schema: a declarative mapping from a shop's own rows onto featrec events.

A mapping is read from a table (``[mappings.NAME]`` in ``featrec.toml``, a TOML file, or
``--map key=value`` flags, all the same keys) and applied to one row at a time::

    format = "csv"               # csv | jsonl | parquet; default: from the file's suffix
    delimiter = ";"              # csv only; "\\t" or "tab" for tabs
    encoding = "utf-8"           # text files
    other_types = "keep"         # keep | reject: event types outside [types]

    [fields]                     # featrec field = where its value comes from
    session_id = "sid"           # a column, or a dotted path into nested JSON ("user.id",
    user_id = "user.id"          #   "items.0.sku"); { column = "a.b" } for a dotted name
    item_id = "product"
    type = { const = "view" }    # a constant
    price = "price"              # event_id: optional; default a hash of the whole row

    [ts]                         # the event time
    column = "ts_ms"             # a column or path, as above
    unit = "ms"                  # auto (numbers are seconds, text ISO-8601) | iso | s | ms
                                 # | us | a strptime format such as "%d.%m.%Y %H:%M:%S"
    date = "date"                # optional: a date column; the time is then that day's
    date_format = "%Y-%m-%d"     #   midnight plus column (an offset in unit s, ms or us)
    timezone = "Europe/Berlin"   # for times without an offset (default UTC)

    [types]                      # the shop's event names -> featrec's (view, click, cart,
    addToCart = "cart"           #   purchase, or any lower-case identifier)

:func:`parse_mapping` checks the table and names the offending key; :meth:`EventMapping.apply`
turns a row into a mapping in featrec's schema (validated afterwards by
:func:`~featrec.core.events.model.event_from_mapping`, like every other input) or raises
:class:`~featrec.errors.InvalidEvent` naming the featrec field and where its value came from.
:func:`map_record` does that for a :class:`~featrec.core.events.formats.RawRecord` and never
raises: a row that does not map becomes a dead letter with the field and the reason.
"""

from featrec.core.events.mapping.config import merge_tables, parse_mapping, parse_overrides
from featrec.core.events.mapping.rules import (
    LAYOUTS,
    REQUIRED_TARGETS,
    TARGET_FIELDS,
    TIME_UNITS,
    EventMapping,
    Source,
    TimeRule,
    map_record,
    row_id,
)

__all__ = [
    "LAYOUTS",
    "REQUIRED_TARGETS",
    "TARGET_FIELDS",
    "TIME_UNITS",
    "EventMapping",
    "Source",
    "TimeRule",
    "map_record",
    "merge_tables",
    "parse_mapping",
    "parse_overrides",
    "row_id",
]
