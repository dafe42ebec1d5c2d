"""What every importer returns, and the errors it raises.

An importer (one module per source format in this folder) turns one file into canonical rows.
It does not validate prices or compute ids and never writes: `ingest.pipeline` does that the same
way for all formats, so the rule "every row read is written or quarantined" lives in one place.

Each table frame carries the canonical columns minus `event_id`, `source_id` (added by the
pipeline) plus `_row`: the source unit the row came from (the 1-based line number for CSV files).
A unit is written only if every table row derived from it passes validation; otherwise all its
rows are dropped and the unit is quarantined once, so `rows_read = written + quarantined` counts
source units, whatever fan-out a format has (a 25-level snapshot line makes 50 book rows).

A malformed unit (a CSV line with an extra field, undecodable bytes, a stray CR or NUL bytes; a
line that is not JSON) is quarantined like any other, and also counted in `Parsed.malformed`: a
file whose malformed units are more than `Options.max_malformed` of its units (default
`MAX_MALFORMED`, half) is refused as a whole, since it is most likely not the format it claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Protocol

import polars as pl

QUARANTINE_COLUMNS = {"_row": pl.Int64, "reason": pl.String, "raw": pl.String}

#: A file is refused when more than this share of its units are malformed (see the module doc):
#: above half, a file is more garbage than data, and quarantining it row by row would hide that.
MAX_MALFORMED = 0.5


def check_max_malformed(value: float) -> float:
    """The `max_malformed` share, checked: a number from 0 (refuse any malformed line) to 1 (never refuse)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(
            f"max_malformed={value!r}: must be a share of a file's lines from 0 to 1 "
            f"(0 refuses a file with any malformed line, 1 never refuses; default {MAX_MALFORMED})"
        )
    return float(value)


class FormatError(Exception):
    """The file is not what its name or header says (or is truncated): nothing of it is written."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


@dataclass
class Parsed:
    format: str  # e.g. "tardis.trades", "binance.aggTrades"
    rows_read: int  # source units read (data lines, fills, ...)
    tables: dict[str, pl.DataFrame]  # canonical columns (no event_id/source_id) + "_row"
    rejected: pl.DataFrame = field(  # units rejected while parsing: _row, reason, raw
        default_factory=lambda: pl.DataFrame(schema=QUARANTINE_COLUMNS)
    )
    day: date | None = None  # the file's day, if its name says; rows far outside it are rejected
    decisions: dict[str, Any] = field(default_factory=dict)  # what was detected or chosen, and why
    # The source rows as text (_row + columns), to quote in the quarantine; a function when the text
    # is only read again if some line is rejected (see `common.read_csv_cells`).
    raw: pl.DataFrame | Callable[[], pl.DataFrame] | None = None
    id_columns: dict[str, list[str]] = field(default_factory=dict)  # override per table
    # Units in `rejected` that are no unit of this format at all, by kind (e.g. "extra field"):
    # (how many, first line of the file). Counted against `Options.max_malformed` over the whole file.
    malformed: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class Options:
    """Choices a user can force on the command line where a file cannot tell."""

    price_type: str | None = None  # klines: trade | mark | index | premium
    venue: str | None = None  # generic bars / prices
    market: str | None = None
    symbol: str | None = None
    interval: str | None = None
    verify_checksum: bool = True
    max_malformed: float = MAX_MALFORMED  # refuse a file with more than this share of malformed lines

    def __post_init__(self) -> None:
        self.max_malformed = check_max_malformed(self.max_malformed)


class Importer(Protocol):
    """One module per format implements these two functions."""

    FORMAT: str  # family name, e.g. "tardis"
    SOURCE: str  # the `source` column value of the rows it makes, e.g. "tardis", "binance-vision"

    def sniff(self, path: Path, head: str) -> bool:  # pragma: no cover - protocol
        """True if the file name and first line(s) are this format's."""

    def parse(self, path: Path, options: Options) -> Parsed:  # pragma: no cover - protocol
        """Read the whole file; raise FormatError if it is not this format or is damaged."""

    # Optional, for formats whose files can be larger than memory (Tardis CSV, Binance trades):
    #
    #   def iter_parse(self, path: Path, options: Options, chunk_rows: int) -> Iterator[Parsed]
    #
    # yields consecutive chunks of about `chunk_rows` rows, in file order: `_row` keeps counting
    # over the whole file, every unit lies in exactly one chunk, `rows_read` is per chunk, and the
    # LAST chunk's `decisions` are the file's (update one dict as you read). Raise FormatError at
    # any point (even after the last chunk, e.g. when a whole-file check fails): the pipeline then
    # removes every part already written. The chunks must give exactly the rows `parse` gives.
