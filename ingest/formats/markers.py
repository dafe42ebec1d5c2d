"""Event markers (news, venue statements, known data artifacts) from a small CSV into `markers`.

The repository ships that night's markers as `data/markers.csv`; a user can add their own file with
the same header. Each row is one event: `ts` (UTC), `end_ts` (empty for a point event; set for a
window such as Binance's compensation window 21:36-22:16), `label`, `kind`, `source_url`.
Times are read with `timeutil.parse_ts`, so a trailing `Z` and naive times both mean UTC.
A row with an unreadable time, an end before its start or an empty label is quarantined, not guessed,
and so is a malformed line (an extra field, undecodable bytes, a stray CR: `malformed.py`).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..timeutil import parse_ts
from . import common as c
from .base import QUARANTINE_COLUMNS, FormatError, Options, Parsed

FORMAT = "markers"
SOURCE = "crashlab-markers"
HEADER = ["ts", "end_ts", "label", "kind", "source_url"]


def sniff(path: Path, head: str) -> bool:
    first = head.lstrip("\ufeff").splitlines()[0].strip() if head else ""
    return [c.strip() for c in first.split(",")] == HEADER


def _ts(text: str | None):
    if text is None or not str(text).strip():
        return None
    return parse_ts(str(text))


def parse(path: Path, options: Options | None = None) -> Parsed:
    data = c.read_bytes(path)
    header = [h.strip() for h in c.first_line(data).split(",")]
    if header != HEADER:
        raise FormatError(path, f"markers header must be {','.join(HEADER)}, got {','.join(header)}", line=1)
    chunk = c.read_csv_cells(path, data, HEADER, header=True)  # labels may be quoted (commas in them)
    raw = chunk.cells
    rows, rejected = [], chunk.malformed.to_dicts()
    for rec in raw.iter_rows(named=True):
        line = rec["_row"]
        try:
            ts = _ts(rec["ts"])
            end = _ts(rec["end_ts"])
        except ValueError as e:
            rejected.append({"_row": line, "reason": str(e), "raw": None})
            continue
        label = (rec["label"] or "").strip()
        if ts is None:
            rejected.append({"_row": line, "reason": "missing ts", "raw": None})
        elif not label:
            rejected.append({"_row": line, "reason": "empty label", "raw": None})
        elif end is not None and end < ts:
            rejected.append({"_row": line, "reason": f"end_ts {end.isoformat()} is before ts {ts.isoformat()}", "raw": None})
        else:
            rows.append(
                {
                    "_row": line,
                    "ts": ts,
                    "end_ts": end,
                    "label": label,
                    "kind": (rec["kind"] or "").strip() or None,
                    "source_url": (rec["source_url"] or "").strip() or None,
                }
            )
    schema = {
        "_row": pl.Int64,
        "ts": pl.Datetime("us", "UTC"),
        "end_ts": pl.Datetime("us", "UTC"),
        "label": pl.String,
        "kind": pl.String,
        "source_url": pl.String,
    }
    frame = pl.DataFrame(rows, schema=schema)
    return Parsed(
        format=FORMAT,
        rows_read=chunk.rows_read,
        tables={"markers": frame},
        rejected=pl.DataFrame(rejected, schema=QUARANTINE_COLUMNS),
        decisions={"times": "UTC (naive times read as UTC)"},
        raw=raw.select("_row", *HEADER),
        malformed=chunk.malformed_kinds(),
    )
