"""Which lines of a block of CSV text cannot be rows of a file, and why: one rule for every importer.

A line is malformed, and quarantined on its own with its file line number, when it:

  - is not UTF-8 ("undecodable bytes"),
  - holds a NUL byte ("NUL bytes": binary data),
  - holds a carriage return that does not end a field ("stray carriage return"): a CR before a
    comma or at the end of the line (CRLF line ends) is dropped, as the CSV reader drops it; any
    other CR is a line break of another system or damage, and the line is not guessed at,
  - has a quoted field that does not end on the line ("unbalanced quote"; formats that quote only),
  - has more fields than the format has columns ("extra field").

A line with fewer fields is not malformed here: its missing cells read as nulls, which validation
quarantines with the column's name, as before. Blank lines are rows of nulls for the same reason.

Why a scan of its own: the CSV reader refuses a whole block for one such line (or, for a CR or a
stray quote, silently reads two lines as one), so the reader's fast path is kept for clean blocks
and only a block it refuses, or whose text looks wrong, is scanned (`common.read_csv_cells`).
The scan is vectorised over the block; only lines holding a quote or a non-ASCII byte are looked
at one by one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import polars as pl

from .base import QUARANTINE_COLUMNS

#: The kinds, in the order a line's first problem is reported.
KINDS = ("undecodable bytes", "NUL bytes", "stray carriage return", "unbalanced quote", "extra field")
_RAW_CHARS = 2000  # a quarantined line is quoted up to this many characters


@dataclass(frozen=True)
class Scan:
    """A block's lines split into those a CSV reader can take and the malformed ones."""

    good: bytes  # the readable lines, joined (each ends in a newline)
    good_lines: np.ndarray  # their 0-based line numbers in the block
    malformed: pl.DataFrame  # _row (0-based line in the block), reason, raw
    n_lines: int


def _bounds(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, newline not included) of each line."""
    nl = np.flatnonzero(arr == 10)
    ends = nl if len(arr) == 0 or arr[-1] == 10 else np.append(nl, len(arr))
    starts = np.concatenate([[0], nl + 1])[: len(ends)]
    return starts.astype(np.int64), ends.astype(np.int64)


def scan(data: bytes, width: int, *, quoted: bool) -> Scan:
    """Find the malformed lines of `data` (whole lines) for a format of `width` columns.

    `quoted`: the format may quote fields (`"a,b"` is one field); otherwise a quote is a byte like
    any other and fields are what the commas separate.
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    starts, ends = _bounds(arr)
    n = len(ends)
    found: dict[int, tuple[int, str]] = {}  # line -> (kind index, reason)

    def mark(lines: np.ndarray, kind: int, reasons: list[str]) -> None:
        for i, r in zip(lines.tolist(), reasons):
            if i not in found or found[i][0] > kind:
                found[i] = (kind, f"{KINDS[kind]}: {r}")

    def line_of(pos: np.ndarray) -> np.ndarray:
        return np.searchsorted(ends, pos, side="left")

    high = np.flatnonzero(arr >= 0x80) if not data.isascii() else np.zeros(0, np.int64)
    if len(high):
        lines = np.unique(line_of(high))
        bad, why = [], []
        for i in lines.tolist():
            seg = data[starts[i]:ends[i]]
            try:
                seg.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.append(i)
                why.append(f"not UTF-8 at byte {e.start + 1} of the line ({seg[e.start:e.start + 4]!r})")
        mark(np.array(bad, dtype=np.int64), 0, why)
    nul = np.flatnonzero(arr == 0) if b"\x00" in data else np.zeros(0, np.int64)
    if len(nul):
        lines, first = np.unique(line_of(nul), return_index=True)
        mark(lines, 1, [f"at byte {p - starts[i] + 1} of the line (binary data?)" for i, p in zip(lines, nul[first])])
    cr = np.flatnonzero(arr == 13) if b"\r" in data else np.zeros(0, np.int64)
    if len(cr):
        nxt = np.where(cr + 1 < len(arr), arr[np.minimum(cr + 1, len(arr) - 1)], 10)
        stray = cr[(nxt != 10) & (nxt != 44) & (cr + 1 < len(arr))]
        if len(stray):
            lines, first = np.unique(line_of(stray), return_index=True)
            mark(lines, 2, [
                f"a CR at byte {p - starts[i] + 1} of the line that does not end a field "
                "(a line break of another system inside the line?)" for i, p in zip(lines, stray[first])
            ])
    # Commas per line: a sum over each line's bytes (its newline included, which is no comma).
    commas = np.add.reduceat(arr == 44, starts, dtype=np.int64) if n else np.zeros(0, np.int64)
    fields = commas + 1
    quote_lines = np.unique(line_of(np.flatnonzero(arr == 34))) if quoted and n else np.zeros(0, np.int64)
    if len(quote_lines):
        unbalanced = []
        for i in quote_lines.tolist():
            if i in found:
                continue
            text = data[starts[i]:ends[i]].decode("utf-8").rstrip("\r")
            try:
                if text.count('"') % 2:  # the CSV reader would run this field on into the next line
                    raise csv.Error("odd number of quotes")
                fields[i] = len(next(csv.reader([text], strict=True)))
            except (csv.Error, StopIteration):
                unbalanced.append(i)
        mark(np.array(unbalanced, dtype=np.int64), 3, ["a quoted field does not end on this line, or a quote stands "
                                                       "inside a field"] * len(unbalanced))
    extra = np.flatnonzero(fields > width)
    if len(extra):
        mark(extra, 4, [f"{fields[i]} fields, expected {width}" for i in extra.tolist()])
    if not found:
        return Scan(data, np.arange(n, dtype=np.int64), pl.DataFrame(schema=QUARANTINE_COLUMNS), n)
    bad_lines = np.array(sorted(found), dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    keep[bad_lines] = False
    pieces, pos = [], 0
    for i in bad_lines.tolist():  # the text between malformed lines, each line with its newline
        pieces.append(data[pos:starts[i]])
        pos = ends[i] + 1
    pieces.append(data[pos:])
    good = b"".join(pieces)
    if good and not good.endswith(b"\n"):
        good += b"\n"
    malformed = pl.DataFrame(
        {
            "_row": bad_lines,
            "reason": [found[i][1] for i in bad_lines.tolist()],
            "raw": [_readable(data[starts[i]:ends[i]]) for i in bad_lines.tolist()],
        },
        schema=QUARANTINE_COLUMNS,
    )
    return Scan(good, np.flatnonzero(keep), malformed, n)


#: Control characters (but tab) shown as escapes in a quoted line, so it can be read and copied.
_ESCAPES = {c: f"\\x{c:02x}" for c in range(32) if c != 9} | {13: "\\r", 127: "\\x7f"}


def _readable(line: bytes) -> str:
    """A malformed line as text for the quarantine: bytes that are no UTF-8 and control characters
    as escapes (`\\xff`, `\\r`, `\\x00`), cut at `_RAW_CHARS` characters."""
    return line.decode("utf-8", "backslashreplace").translate(_ESCAPES)[:_RAW_CHARS]


def kinds(malformed: pl.DataFrame) -> dict[str, tuple[int, int]]:
    """kind -> (lines, first line) of a frame of malformed lines (`_row`, `reason` as `scan` gives)."""
    if malformed.height == 0:
        return {}
    g = (
        malformed.group_by(pl.col("reason").str.split(": ").list.first().alias("kind"))
        .agg(pl.len().alias("n"), pl.col("_row").min().alias("first"))
        .sort("first")
    )
    return {k: (int(n), int(f)) for k, n, f in g.iter_rows()}


def merge(into: dict[str, tuple[int, int]], more: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Counts of two parts of a file added, first lines kept."""
    out = dict(into)
    for k, (n, first) in more.items():
        had = out.get(k)
        out[k] = (n, first) if had is None else (had[0] + n, min(had[1], first))
    return out
