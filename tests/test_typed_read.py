"""The typed CSV read (fast path) and the text read (fallback) must give the same rows.

`common.read_csv_cells` reads numeric columns as numbers and, when any cell is not a number (or a
line is malformed), scans the chunk line by line, sets the malformed lines apart and reads the rest
as text with the numeric columns stripped, leaving the importers' lenient casts to decide. A file
must ingest to the same lake whichever path it took, every line must come out exactly once (a row
or a malformed line) under its own line number, and a rejected line must be quoted exactly as it
is in the file on both paths.
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from crashlab.ingest.formats import common
from crashlab.ingest.lake import Lake
from crashlab.ingest.pipeline import ingest_paths

from test_importers import US, write_gz

HEADER = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"

#: Cells built from what numbers (and damaged numbers) are made of.
_CELL = st.text(alphabet=list("0123456789.-+eE \tnaifNAIF_x,"), max_size=8)


def _csv(cells: list[str]) -> bytes:
    def quote(c: str) -> str:
        return '"' + c + '"' if "," in c else c
    return ("a\n" + "".join(quote(c) + "\n" for c in cells)).encode()


def _same(x: object, y: object) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return x == y and (not isinstance(x, float) or math.copysign(1, x) == math.copysign(1, y))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(_CELL, min_size=1, max_size=12), st.sampled_from([pl.Float64, pl.Int64]))
def test_typed_cells_equal_stripped_text_cast(cells, dtype):
    """Wherever the typed read succeeds, each value equals what the text path's cast gives."""
    data = _csv(cells)
    typed = common.read_csv_cells(Path("x.csv"), data, ["a"], header=True, numeric={"a": dtype}).cells
    text = common.read_csv_cells(Path("x.csv"), data, ["a"], header=True).cells
    assert typed["_row"].to_list() == text["_row"].to_list()
    expected = text["a"].str.strip_chars().cast(dtype, strict=False).to_list()
    got = typed["a"].cast(dtype, strict=False).to_list()
    for g, e, c in zip(got, expected, text["a"].to_list()):
        assert _same(g, e), f"cell {c!r}: typed path {g!r}, text path {e!r}"


def _lake_rows(lake: Lake) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(f) for f in lake.files("trades")]).drop("source_id").sort("ts")


def test_a_file_ingests_the_same_on_both_paths(tmp_path):
    """Padded numbers are numbers on both paths; one unreadable cell only costs its own line."""
    good = "".join(
        f"coinbase,BTC-USD,{US + i * 1000},{US + i * 1000 + 7},{i},buy,{' ' if i % 7 == 0 else ''}{120000 + i}.50,0.010\n"
        for i in range(40)
    )
    fast = write_gz(tmp_path / "a" / "coinbase_trades_2025-10-10_BTC-USD.csv.gz", HEADER + good)
    poisoned = good + f"coinbase,BTC-USD,{US + 99_000},{US + 99_007},99,buy,12O000.5,0.01\n"  # letter O, not zero
    slow = write_gz(tmp_path / "b" / "coinbase_trades_2025-10-10_BTC-USD.csv.gz", HEADER + poisoned)
    lake_a = Lake.open(tmp_path / "la")
    (ra,) = ingest_paths([fast], lake_a)
    lake_b = Lake.open(tmp_path / "lb")
    (rb,) = ingest_paths([slow], lake_b)
    assert (ra.rows_written, ra.rows_quarantined) == (40, 0)
    assert (rb.rows_written, rb.rows_quarantined) == (40, 1)
    assert _lake_rows(lake_a).equals(_lake_rows(lake_b))  # same rows, same event ids
    q = lake_b.quarantine().row(0, named=True)
    assert q["line"] == 42 and q["reason"] == "missing or non-numeric price"
    assert q["raw"] == f"coinbase,BTC-USD,{US + 99_000},{US + 99_007},99,buy,12O000.5,0.01"


def test_rejected_lines_are_quoted_as_written_on_the_fast_path(tmp_path):
    """A line rejected after a typed read is quoted from the file's text, not re-printed numbers."""
    body = "".join(f"coinbase,BTC-USD,{US + i * 1000},{US + i * 1000 + 7},{i},buy,{120000 + i}.50,0.010\n" for i in range(10))
    body += f"coinbase,BTC-USD,{US + 20_000},{US + 20_007},20,buy,-0.50,0.0100\n"
    f = write_gz(tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz", HEADER + body)
    lake = Lake.open(tmp_path / "lake")
    (rep,) = ingest_paths([f], lake)
    assert (rep.rows_written, rep.rows_quarantined) == (10, 1)
    q = lake.quarantine().row(0, named=True)
    assert q["reason"] == "non-positive price"
    assert q["raw"] == f"coinbase,BTC-USD,{US + 20_000},{US + 20_007},20,buy,-0.50,0.0100"


#: Lines made of what damaged CSV lines are made of: extra commas, CRs, NULs, bytes that are no UTF-8.
_LINE = st.lists(
    st.sampled_from([b"1", b"2.5", b" 7", b"x", b",", b",", b"\r", b"\x00", b"\xff", b"\xc3\xa9", b"", b'"']),
    max_size=8,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, min_size=1, max_size=15), st.booleans(), st.booleans())
def test_every_line_comes_out_once_under_its_own_number(lines, quoted, typed):
    """Whatever the lines hold, each is a row or a malformed line, with its 1-based file line, and the
    typed and text reads agree on which lines are malformed and on the rows."""
    data = b"a,b,c\n" + b"".join(l + b"\n" for l in lines)
    numeric = {"a": pl.Float64, "c": pl.Int64} if typed else None
    chunk = common.read_csv_cells(Path("x.csv"), data, ["a", "b", "c"], header=True, numeric=numeric, quoted=quoted)
    text = common.read_csv_cells(Path("x.csv"), data, ["a", "b", "c"], header=True, quoted=quoted)
    got = sorted(chunk.cells["_row"].to_list() + chunk.malformed["_row"].to_list())
    assert got == list(range(2, len(lines) + 2)) and chunk.rows_read == len(lines)
    assert chunk.malformed.equals(text.malformed)
    assert chunk.cells["_row"].to_list() == text.cells["_row"].to_list()
    for row, raw in zip(chunk.malformed["_row"], chunk.malformed["raw"]):
        line = lines[row - 2]
        assert raw == line.decode("utf-8", "backslashreplace").replace("\r", "\\r").replace("\x00", "\\x00")
        assert line.count(b",") >= 3 or b"\r" in line or b"\x00" in line or b"\xff" in line or b'"' in line
