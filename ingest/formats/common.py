"""Reading text archives the same careful way for every CSV importer.

Why a shared helper: the rules "a truncated gzip/zip or a bad checksum is an error naming the
file", "unreadable cells become nulls that validation quarantines, with the original line kept",
"a malformed line (an extra field, undecodable bytes, a stray CR) is quarantined alone with its
file line number, the rest of the file is read" (see `malformed.py`) and "the timestamp unit is
decided from the data and recorded, rows in another unit are rejected" must hold for Tardis,
Binance, markers and generic CSV files alike, so they are written once, here.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import polars as pl

from . import malformed as _malformed
from .base import QUARANTINE_COLUMNS, FormatError

_DAY = re.compile(r"(?<!\d)(20\d\d)-(\d\d)-(\d\d)(?!\d)")
_DAY_COMPACT = re.compile(r"(?<!\d)(20\d\d)(\d\d)(\d\d)(?!\d)")

#: Epoch-number magnitude -> unit (for dates between 1973 and 5138).
_UNIT_BOUNDS = (("s", 1e8, 1e11), ("ms", 1e11, 1e14), ("us", 1e14, 1e17), ("ns", 1e17, 1e20))
_TO_US = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}
UNIT_NAMES = {"s": "s", "ms": "ms", "us": "µs", "ns": "ns"}


def file_day(path: Path, *, compact: bool = False) -> date | None:
    """The day a file's name says it covers (`2025-10-10`, or `20251010` in a folder if `compact`)."""
    m = _DAY.search(path.name)
    if m is None and compact:
        for part in reversed(path.parts):
            m = _DAY_COMPACT.fullmatch(part) or _DAY.fullmatch(part)
            if m:
                break
    if m is None:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def verify_checksum(path: Path) -> str:
    """Check `<zip>.CHECKSUM` (sha256sum format) when it sits beside the file: 'verified' or 'absent'."""
    ck = path.with_name(path.name + ".CHECKSUM")
    if not ck.exists():
        return "absent"
    text = ck.read_text(errors="replace").strip()
    expected = text.split()[0].lower() if text else ""
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise FormatError(ck, "checksum file is not in sha256sum format ('<hex>  <name>')")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != expected:
        raise FormatError(path, f"sha256 {h.hexdigest()[:16]}… does not match {ck.name} ({expected[:16]}…)")
    return "verified"


def read_bytes(path: Path) -> bytes:
    """The whole decompressed text of a .gz, .zip (one member) or plain file; damage is a FormatError."""
    with open_stream(path) as fh:
        return fh.read()  # a zip member's CRC-32 is checked when it is read to the end


def head_bytes(path: Path, nbytes: int = 1 << 16) -> bytes:
    """The first decompressed bytes (header and a few lines) without reading the whole file."""
    with open_stream(path) as fh:
        return fh.read(nbytes)


def _numbered(df: pl.DataFrame, first_line: int) -> pl.DataFrame:
    """`_row` (the 1-based file line) in front, and every column in one contiguous chunk.

    Why the rechunk: the CSV reader returns each column in one chunk per reading thread, while the
    row index is one chunk; every later operation on such a frame re-aligns the chunks first
    (~4 ms per operation on 266 k rows), which costs far more than aligning them once (3 ms).
    """
    return df.with_row_index("_row", offset=first_line).with_columns(pl.col("_row").cast(pl.Int64)).rechunk()


#: Files up to this size (on disk) are read whole by Polars, which un-gzips faster than Python;
#: larger ones are streamed in blocks so memory stays bounded by the chunk size.
WHOLE_READ_BYTES = 32 << 20
_BLOCK = 8 << 20


@contextmanager
def open_stream(path: Path) -> Iterator[BinaryIO]:
    """The decompressed bytes of a .gz, .zip (one member) or plain file, as a stream."""
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                yield fh  # type: ignore[misc]
        elif name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.namelist() if not m.endswith("/")]
                if len(members) != 1:
                    raise FormatError(path, f"expected one CSV inside the zip, found {len(members)}")
                with zf.open(members[0]) as fh:
                    yield fh  # type: ignore[misc]
        else:
            with open(path, "rb") as fh:
                yield fh
    except FormatError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise FormatError(path, f"cannot decompress (truncated or corrupt?): {e}") from None


def _line_blocks(fh: BinaryIO, chunk_rows: int) -> Iterator[bytes]:
    """Consecutive runs of `chunk_rows` whole lines (the last run may be shorter or empty)."""
    pending, bufs, n = b"", [], 0
    while True:
        block = fh.read(_BLOCK)
        if not block:
            bufs.append(pending)
            yield b"".join(bufs)
            return
        data = pending + block
        nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
        start, i = 0, 0
        while len(nl) - i >= chunk_rows - n:
            k = i + (chunk_rows - n) - 1
            cut = int(nl[k]) + 1
            bufs.append(data[start:cut])
            yield b"".join(bufs)
            bufs, n, start, i = [], 0, cut, k + 1
        if len(nl) > i:
            cut = int(nl[-1]) + 1
            bufs.append(data[start:cut])
            n += len(nl) - i
            start = cut
        pending = data[start:]


@dataclass(frozen=True)
class CsvChunk:
    """A block of CSV lines as read: the cells of the lines that are rows, the malformed lines, and
    a way to get the rows as text (called only to quote rejected lines)."""

    cells: pl.DataFrame  # _row (1-based file line) + one column per name
    text: Callable[[], pl.DataFrame]
    malformed: pl.DataFrame  # _row, reason, raw (see `malformed.scan`)

    @property
    def rows_read(self) -> int:
        """Lines read: every one is a row of `cells` or a malformed line."""
        return self.cells.height + self.malformed.height

    def malformed_kinds(self) -> dict[str, tuple[int, int]]:
        return _malformed.kinds(self.malformed)


def _polars_csv(src: bytes | Path, names: list[str], schema: dict[str, pl.DataType], header: bool, quoted: bool) -> pl.DataFrame:
    return pl.read_csv(
        src, has_header=False, skip_rows=1 if header else 0, new_columns=names, schema=schema,
        quote_char='"' if quoted else None, missing_columns="insert",
    )


def _looks_clean(df: pl.DataFrame, columns: list[str]) -> bool:
    """No NUL, CR or newline in the text of `columns`: what a typed read that succeeded may still
    have let through (a CR inside a field; with quoting, lines read as one).

    A column whose every cell is an integer (trade ids, as most venues give them) holds none of
    them; that cast (2 ms on 266 k ids) is cheaper than searching the text (4 ms), which only the
    other columns get."""
    if not columns or df.height == 0:
        return True
    ints = df.select([pl.col(c).cast(pl.Int64, strict=False).null_count().alias(c) for c in columns]).row(0)
    rest = [c for c, n in zip(columns, ints) if n != df[c].null_count()]
    return not rest or not df.select(pl.any_horizontal([pl.col(c).str.contains(r"[\x00\r\n]") for c in rest]).any()).item()


def _line_count(data: bytes, header: bool) -> int:
    n = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return max(n - (1 if header else 0), 0)


def read_csv_cells(
    path: Path, data: bytes | None, names: list[str], *, header: bool,
    numeric: dict[str, pl.DataType] | None = None, line_offset: int = 0, quoted: bool = True,
    verbatim: list[str] | None = None,
) -> CsvChunk:
    """The cells of a CSV block, with `_row` = the 1-based file line, and its malformed lines apart.

    `data=None` lets Polars read (and un-gzip) the file itself, which is faster than Python.
    With `header` the first line is skipped (the caller has checked it). Missing trailing cells
    read as null (validation quarantines them); a malformed line (see `malformed.py`: an extra
    field, undecodable bytes, a stray CR, NUL bytes) is set apart with its line and reason, and the
    other lines are read. `line_offset` is the number of file lines before `data` (a chunk of a
    streamed file). `quoted=False` is for formats that never quote (Tardis, Binance): a quote is
    then an ordinary byte, and a stray one cannot make the reader take many lines for one.

    Why the columns in `numeric` come as numbers when they can: reading numbers as numbers (no text
    copies, no casts) is most of what makes an ingest about as fast as a bare `pl.read_csv`. The
    typed read is tried first; if any cell of a numeric column is not a number of its type, or a
    line is malformed, the block is scanned line by line, the malformed lines are set apart and the
    rest is read again (typed if it can be, else as text with the numeric columns stripped of
    surrounding blanks, so the importers' lenient casts give, cell for cell, what the typed read
    gives where it succeeds: `tests/test_typed_read.py`). The text of the lines is kept only on
    the slow path; on the fast one it is read again if, and only if, a line has to be quoted.
    `verbatim`: the text columns the importer writes as read (default: all text columns), checked
    on the fast path for what a typed read lets through (a CR or NUL inside a cell); a text column
    an importer checks against known values (a side, a symbol) need not be scanned again here.
    """
    numeric = numeric or {}
    schema = {n: numeric.get(n, pl.String) for n in names}
    text_cols = [n for n in names if n not in numeric] if verbatim is None else verbatim
    first = (2 if header else 1) + line_offset
    src = data if data is not None else path
    try:
        df = _polars_csv(src, names, schema, header, quoted)
    except (pl.exceptions.PolarsError, OSError):
        df = None  # a cell that is no number, a malformed line, damage: the scan says which
    if df is not None and _looks_clean(df, text_cols) and (data is None or _line_count(data, header) == df.height):
        cells = _numbered(df, first)
        if not numeric:
            return CsvChunk(cells, lambda: cells, _no_malformed())
        text_schema = {n: pl.String for n in names}
        return CsvChunk(cells, lambda: _numbered(_polars_csv(src, names, text_schema, header, quoted), first),
                        _no_malformed())
    return _read_scanned(path, data if data is not None else read_bytes(path), names, schema, header, first, quoted)


def _no_malformed() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_COLUMNS)


def _read_scanned(
    path: Path, data: bytes, names: list[str], schema: dict[str, pl.DataType], header: bool, first: int, quoted: bool
) -> CsvChunk:
    """The slow path of `read_csv_cells`: set the malformed lines apart, read the others."""
    if header:
        cut = data.find(b"\n")
        data = data[cut + 1:] if cut >= 0 else b""
    sc = _malformed.scan(data, len(names), quoted=quoted)
    rows = pl.Series("_row", sc.good_lines + first, dtype=pl.Int64)
    malformed = sc.malformed.with_columns(pl.col("_row") + first)
    text_schema = {n: pl.String for n in names}
    numeric = [n for n, t in schema.items() if t != pl.String]

    def read(sch: dict[str, pl.DataType]) -> pl.DataFrame:
        df = _polars_csv(sc.good, names, sch, False, quoted)
        if df.height != len(rows):
            raise RuntimeError(f"{path}: {len(rows)} readable lines gave {df.height} rows (CSV reader and line scan disagree)")
        return df.with_columns(rows).select("_row", *names).rechunk()

    def read_text() -> pl.DataFrame:
        try:
            return read(text_schema)
        except pl.exceptions.PolarsError as e:
            raise FormatError(path, f"cannot read as CSV: {str(e).splitlines()[0]}", first) from None

    if numeric and malformed.height:  # perhaps only malformed lines spoiled the typed read: try it on the rest
        try:
            return CsvChunk(read(schema), cache(read_text), malformed)
        except pl.exceptions.PolarsError:
            pass
    text = read_text()
    cells = text.with_columns(pl.col(n).str.strip_chars() for n in numeric) if numeric else text
    return CsvChunk(cells, lambda: text, malformed)


def iter_csv_cells(
    path: Path, names: list[str], *, header: bool, chunk_rows: int, numeric: dict[str, pl.DataType] | None = None,
    quoted: bool = True, verbatim: list[str] | None = None,
) -> Iterator[CsvChunk]:
    """`read_csv_cells` in chunks of about `chunk_rows` lines, `_row` counted over the whole file.

    At least one (possibly empty) chunk is yielded. Lines are cut at newlines, so a quoted cell
    holding a newline (no Tardis or Binance file has one) is a malformed line.
    """
    chunk_rows = max(1, int(chunk_rows))
    opts = dict(numeric=numeric, quoted=quoted, verbatim=verbatim)
    if path.stat().st_size <= WHOLE_READ_BYTES:
        whole = None if path.name.lower().endswith((".gz", ".csv")) else read_bytes(path)
        whole_chunk = read_csv_cells(path, whole, names, header=header, **opts)
        cells, mal, text = whole_chunk.cells, whole_chunk.malformed, cache(whole_chunk.text)
        if cells.height <= chunk_rows:
            yield CsvChunk(cells, text, mal)
            return
        # Rows in slices (no copies; the text has the same rows); a malformed line goes with the
        # slice its line number falls in, those before the first row with the first slice.
        offsets = list(range(0, cells.height, chunk_rows))
        bounds = [0, *cells["_row"].gather(offsets[1:]).to_list(), None]
        for k, off in enumerate(offsets):
            lo, hi = bounds[k], bounds[k + 1]
            part = mal if not mal.height else mal.filter(
                pl.col("_row") >= lo if hi is None else pl.col("_row").is_between(lo, hi, closed="left"))
            yield CsvChunk(cells.slice(off, chunk_rows), lambda off=off: text().slice(off, chunk_rows), part)
        return
    rows_before, yielded = 1 if header else 0, False
    with open_stream(path) as fh:
        try:
            if header:
                fh.readline()
            for data in _line_blocks(fh, chunk_rows):
                if yielded and not data:
                    continue
                chunk = read_csv_cells(path, data, names, header=False, line_offset=rows_before, **opts)
                rows_before += chunk.rows_read
                yielded = True
                yield chunk
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise FormatError(path, f"cannot decompress (truncated or corrupt?): {e}") from None


def first_line(data: bytes) -> str:
    return data[: data.find(b"\n") if b"\n" in data else len(data)].decode("utf-8", errors="replace").strip().lstrip("\ufeff")


def unit_expr(col: str) -> pl.Expr:
    """Each epoch number's unit from its magnitude (null if it is no plausible epoch time)."""
    a = pl.col(col).abs().cast(pl.Float64)
    expr = pl.lit(None, dtype=pl.String)
    for unit, lo, hi in reversed(_UNIT_BOUNDS):
        expr = pl.when((a >= lo) & (a < hi)).then(pl.lit(unit)).otherwise(expr)
    return expr


def decide_unit(ints: pl.Series) -> tuple[str | None, dict[str, int]]:
    """The file's unit = the unit of most rows (by magnitude), with the per-unit counts as evidence."""
    counts = (
        pl.DataFrame({"v": ints}).drop_nulls().select(unit_expr("v").alias("u"))
        .group_by("u").len().sort(["len", "u"], descending=[True, False])
    )
    evidence = {str(u): int(n) for u, n in counts.iter_rows()}
    majority = next((str(u) for u, _ in counts.iter_rows() if u is not None), None)
    return majority, evidence


def all_in_unit(df: pl.DataFrame, col: str) -> str | None:
    """The unit every non-null value of an integer column has, judged from its min and max, or None.

    A cheap test that lets the usual file (every timestamp in one unit) skip the per-row unit
    expressions; the bounds keep a margin so float rounding in `unit_expr` cannot disagree.
    """
    s = df[col]
    if s.null_count() == len(s):
        return None
    lo, hi = s.min(), s.max()
    for unit, b_lo, b_hi in _UNIT_BOUNDS:
        if lo >= b_lo + 1024 and hi < b_hi - 1024:  # type: ignore[operator]
            return unit
    return None


def to_utc_us(col: str, unit: str | None) -> pl.Expr:
    """Epoch integers in the file's unit -> timestamp[us, UTC]; rows in another unit become null."""
    if unit is None:
        return pl.lit(None, dtype=pl.Datetime("us", "UTC"))
    ok = unit_expr(col) == unit
    v = pl.col(col)
    us = v // 1000 if unit == "ns" else v * _TO_US[unit]
    return pl.when(ok).then(us).otherwise(None).cast(pl.Datetime("us", "UTC"))


def unit_rejections(df: pl.DataFrame, col: str, unit: str | None, label: str | None = None) -> pl.DataFrame:
    """Rows whose timestamp is in another unit than the file's, with the reason."""
    if df.height == 0 or unit is None or all_in_unit(df, col) == unit or df[col].null_count() == df.height:
        return empty_rejected()
    u = unit_expr(col)
    return df.filter(pl.col(col).is_not_null() & (u.is_null() | (u != unit))).select(
        "_row",
        pl.format(
            "{} in {}, file is {}",
            pl.lit(label or col),
            u.replace_strict(UNIT_NAMES, default="no epoch unit"),
            pl.lit(UNIT_NAMES[unit]),
        ).alias("reason"),
        pl.lit(None, dtype=pl.String).alias("raw"),
    )


def empty_rejected() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_COLUMNS)


def rejections(df: pl.DataFrame, cond: pl.Expr, reason: pl.Expr | str) -> pl.DataFrame:
    """`_row, reason, raw` for the rows matching `cond` (raw is filled by the pipeline from Parsed.raw)."""
    r = pl.lit(reason) if isinstance(reason, str) else reason
    hit = df.select(cond.fill_null(False).alias("_hit"))["_hit"] if df.height else None
    if hit is None or not hit.any():
        return empty_rejected()
    return df.filter(hit).select("_row", r.cast(pl.String).alias("reason"), pl.lit(None, dtype=pl.String).alias("raw"))


def num(col: str) -> pl.Expr:
    """Text -> float; unreadable text (padding included) becomes null, quarantined as non-numeric."""
    return pl.col(col).cast(pl.Float64, strict=False)


def integer(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Int64, strict=False)


def unit_counts(lf: pl.LazyFrame | pl.DataFrame, col: str) -> tuple[str | None, dict[str, int]]:
    """Like `decide_unit`, for an integer column of a frame, in one pass."""
    if isinstance(lf, pl.DataFrame) and (same := all_in_unit(lf, col)) is not None:
        n = lf.height - lf[col].null_count()
        return same, {same: n}
    u = unit_expr(col)
    names = [n for n, _, _ in _UNIT_BOUNDS]
    row = lf.lazy().select(
        *[(u == n).sum().alias(n) for n in names],
        (u.is_null() & pl.col(col).is_not_null()).sum().alias("none"),
    ).collect().row(0, named=True)
    evidence = {k: int(v) for k, v in row.items() if v}
    ranked = sorted((v, k) for k, v in evidence.items() if k != "none")
    return (ranked[-1][1] if ranked else None), evidence


def boolean(col: str) -> pl.Expr:
    """`true/false/True/False/1/0` -> bool; anything else null."""
    m = {"true": True, "True": True, "TRUE": True, "1": True, "false": False, "False": False, "FALSE": False, "0": False}
    return pl.col(col).replace_strict(m, default=None, return_dtype=pl.Boolean)
