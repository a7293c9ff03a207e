"""The names of event-file layouts (how a file stores records) and of every input format.

A layout is physical (JSON lines, CSV, TSV, Parquet); a decoder of
:mod:`featrec.core.events.formats` says what a record means. This module imports nothing
heavy, so the CLI builds its ``--format`` choices from it without loading pyarrow.
"""

from __future__ import annotations

from typing import Final

from featrec.core.events.formats import FORMATS

JSONL: Final = "jsonl"
CSV: Final = "csv"
TSV: Final = "tsv"
PARQUET: Final = "parquet"
#: The layouts of featrec event files: what ``write_events`` writes, by suffix.
FILE_FORMATS: Final = (JSONL, CSV, PARQUET)
#: Every ``fmt`` that ``read_events`` accepts: a featrec file layout or a decoder.
READ_FORMATS: Final = (*FILE_FORMATS, *FORMATS)
