"""A malformed line is quarantined alone, with its true file line and a reason; the rest is ingested.

Malformed: an extra field, undecodable bytes (a few binary lines), a stray carriage return, NUL
bytes. The line number is the 1-based line of the file, header included, whichever reader took
the file (whole-file read, chunks sliced from it, the block-streaming reader of large files) and
whatever came before the line. A file mostly made of such lines is refused as a whole, saying how
many lines failed and why (`--max-malformed`, default: more than half).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import lz4.frame
import polars as pl
import pytest

from crashlab.ingest.formats import common
from crashlab.ingest.formats.base import Options
from crashlab.ingest.lake import Lake
from crashlab.ingest.pipeline import ingest_paths

from test_importers import MS, US, _fill, write_zip

HEADER = b"exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"


def _row(i: int, price: str | None = None) -> bytes:
    return f"coinbase,BTC-USD,{US + i * 1000},{US + i * 1000 + 7},{i},buy,{price or f'{120000 + i}.5'},0.01\n".encode()


#: line number -> (the bytes of that line, the reason it must be quarantined with)
BAD = {
    4: (b"coinbase,BTC-USD,1760054400003000,1760054400003007,3,buy,120003.5,0.01,EXTRA\n", "extra field: 9 fields, expected 8"),
    7: (b"\x89PNG\r\n", None),  # binary: its own line 7 (a CR before the LF ends it), see below
    8: (b"\xff\xfe\x00\x01garbage,\x80\x81\n", "undecodable bytes: not UTF-8 at byte 1 of the line (b'\\xff\\xfe\\x00\\x01')"),
    11: (b"coinbase,BTC-USD,1760054400010000,1760054400010007,10,buy,120010.5,0.01\rcoinbase,BTC-USD,1760054400011000,"
         b"1760054400011007,11,buy,120011.5,0.01\n", "stray carriage return: a CR at byte 72 of the line"),
    14: (b"coinbase,BTC-USD,1760054400013000,1760054400013007,1\x003,buy,120013.5,0.01\n", "NUL bytes: at byte 53 of the line"),
}


def _file_with_bad_lines(n: int = 40) -> tuple[bytes, dict[int, str]]:
    """A Tardis trades file with the BAD lines at their line numbers, a non-positive price on the
    last line (quarantined by validation, so its number shows the count after the bad lines)."""
    lines = [HEADER]
    reasons: dict[int, str] = {}
    for line_no in range(2, n + 2):
        if line_no in BAD:
            raw, why = BAD[line_no]
            lines.append(raw)
            reasons[line_no] = why or "undecodable bytes"
        else:
            lines.append(_row(line_no - 1, "-1" if line_no == n + 1 else None))
    reasons[n + 1] = "non-positive price"
    return b"".join(lines), reasons


def _check(lake: Lake, rep, reasons: dict[int, str], n: int = 40) -> None:
    assert rep.status == "written", rep.message
    assert (rep.rows_read, rep.rows_written, rep.rows_quarantined) == (n, n - len(reasons), len(reasons))
    q = lake.quarantine().sort("line")
    assert q["line"].to_list() == sorted(reasons)
    for line, reason, raw in q.select("line", "reason", "raw").iter_rows():
        assert reason.startswith(reasons[line]), (line, reason)
        assert raw, line
    trades = pl.concat([pl.read_parquet(f) for f in lake.files("trades")])
    assert trades.height == n - len(reasons)
    bad_ids = {str(line - 1) for line in reasons}
    assert not set(trades["trade_id"]) & bad_ids
    man = lake.manifest().row(0, named=True)
    assert man["rows_read"] == man["rows_written"] + man["rows_quarantined"] == n


@pytest.mark.parametrize("reader", ["whole", "plain", "sliced", "streamed"])
def test_malformed_lines_are_quarantined_with_their_true_line(tmp_path, monkeypatch, reader):
    data, reasons = _file_with_bad_lines()
    name = "coinbase_trades_2025-10-10_BTC-USD.csv"
    if reader == "plain":
        f = tmp_path / "in" / name
        f.parent.mkdir()
        f.write_bytes(data)
    else:
        f = tmp_path / "in" / (name + ".gz")
        f.parent.mkdir()
        f.write_bytes(gzip.compress(data))
    if reader == "streamed":
        monkeypatch.setattr(common, "WHOLE_READ_BYTES", 0)
    lake = Lake.open(tmp_path / "lake")
    [rep] = ingest_paths([f], lake, Options(), chunk_rows=7 if reader in ("sliced", "streamed") else 1_000_000)
    _check(lake, rep, reasons)
    q = {r["line"]: r["raw"] for r in lake.quarantine().to_dicts()}
    assert q[4] == BAD[4][0].decode().rstrip("\n")  # quoted as written
    assert q[8].startswith("\\xff\\xfe\\x00\\x01garbage")  # undecodable bytes shown, not dropped


@pytest.mark.parametrize("where", ["id", "symbol"])
def test_a_cr_inside_a_cell_of_an_otherwise_clean_file_is_quarantined(tmp_path, where):
    """A file the fast typed read takes whole: a CR inside a cell written as read (the trade id) is
    quarantined as a stray CR, one inside a cell checked against known values (the symbol) by that
    check; a CR ending a field or a CRLF line end is dropped, as the CSV reader does."""
    lines = [HEADER.replace(b"\n", b"\r\n")] + [_row(i).replace(b"\n", b"\r\n") for i in range(1, 6)]
    lines[3] = lines[3].replace(b",buy,", b",buy\r,")  # CR before a comma: dropped
    bad = _row(9).replace(b",9,", b",9\r9,") if where == "id" else _row(9).replace(b"BTC-USD", b"BTC-\rUSD")
    lines.insert(4, bad)  # line 5
    f = tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz"
    f.write_bytes(gzip.compress(b"".join(lines)))
    lake = Lake.open(tmp_path / "lake")
    [rep] = ingest_paths([f], lake)
    assert (rep.rows_read, rep.rows_written, rep.rows_quarantined) == (6, 5, 1), rep
    [q] = lake.quarantine().to_dicts()
    assert q["line"] == 5
    if where == "id":
        assert q["reason"].startswith("stray carriage return: a CR at byte 53 of the line") and "9\\r9" in q["raw"]
    else:
        assert q["reason"].startswith("symbol not understood")


def test_markers_generic_bars_and_binance_quarantine_malformed_lines(tmp_path):
    markers = tmp_path / "m" / "markers.csv"
    markers.parent.mkdir()
    markers.write_bytes(
        b"ts,end_ts,label,kind,source_url\n"
        b'2025-10-10T20:50:00Z,,"Tariff post, 100 %",news,https://x\n'
        b"2025-10-10T21:00:00Z,,extra,news,https://x,EXTRA\n"
        b"2025-10-10T21:10:00Z,,\xff\xfe,news,https://x\n"
        b"2025-10-10T21:20:00Z,,fine,news,https://x\n"
    )
    bars = tmp_path / "b" / "bars.csv"
    bars.parent.mkdir()
    bars.write_bytes(
        b"ts,open,high,low,close,volume\n"
        + b"".join(f"2025-10-10T21:{m:02d}:00,1,2,0.5,1.5,10\n".encode() for m in range(5))
        + b"2025-10-10T21:05:00,1,2,0.5,1.5,10,7\n"
    )
    rows = [f"{100 + i},{60000 + i}.1,0.5,{1000 + i},{1000 + i},{MS + i * 10},true" for i in range(6)]
    rows[2] += ",EXTRA"
    agg = write_zip(tmp_path / "z" / "um" / "BTCUSDT-aggTrades-2025-10-10.zip",
                    "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n" + "\n".join(rows) + "\n")
    lake = Lake.open(tmp_path / "lake")
    reps = ingest_paths([markers, bars, agg], lake, Options(venue="binance", market="spot", symbol="USDE/USDT"))
    assert [(r.status, r.rows_read, r.rows_written, r.rows_quarantined) for r in reps] == [
        ("written", 4, 2, 2), ("written", 6, 5, 1), ("written", 6, 5, 1)], [r.message for r in reps]
    q = lake.quarantine().sort("path", "line")
    got = {(Path(p).name, line, reason.split(":")[0]) for p, line, reason in q.select("path", "line", "reason").iter_rows()}
    assert got == {("markers.csv", 3, "extra field"), ("markers.csv", 4, "undecodable bytes"),
                   ("bars.csv", 7, "extra field"), ("BTCUSDT-aggTrades-2025-10-10.zip", 4, "extra field")}
    labels = pl.concat([pl.read_parquet(f) for f in lake.files("markers")])["label"].to_list()
    assert sorted(labels) == ["Tariff post, 100 %", "fine"]  # a quoted comma is no extra field


def test_hyperliquid_lines_are_cut_at_lf_only(tmp_path):
    """A bare CR inside a line no longer splits it (which shifted every later line number)."""
    t = MS + 3600_000
    good = [json.dumps(["0xa", _fill("BTC", "110000", "0.1", "B", t + i, i, True)]).encode() for i in range(1, 6)]
    lines = good[:2] + [b'["0xb", {"coin": "BT\rC"}]', b"\xff\xfe binary"] + good[2:]
    f = tmp_path / "node_fills" / "hourly" / "20251010" / "1.lz4"
    f.parent.mkdir(parents=True)
    f.write_bytes(lz4.frame.compress(b"\n".join(lines) + b"\n"))
    lake = Lake.open(tmp_path / "lake")
    [rep] = ingest_paths([f], lake)
    assert (rep.status, rep.rows_read, rep.rows_written, rep.rows_quarantined) == ("written", 7, 5, 2), rep.message
    reasons = sorted(lake.quarantine()["reason"].to_list())
    assert reasons[0].startswith("line 3 is not a fill record") and reasons[1].startswith("line 4 is not a fill record")


# ---- a mostly malformed file is refused --------------------------------------------------------

def _mostly_binary(tmp_path: Path, good: int, bad: int) -> Path:
    body = b"".join(_row(i) for i in range(1, good + 1)) + b"\x00\xff\xfe,\x01\x02\n" * (bad - 3) + b"a,b,c,d,e,f,g,h,i\n" * 3
    f = tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz"
    f.write_bytes(gzip.compress(HEADER + body))
    return f


def test_a_mostly_malformed_file_is_refused_saying_how_many_lines_and_why(tmp_path):
    f = _mostly_binary(tmp_path, good=10, bad=30)
    lake = Lake.open(tmp_path / "lake")
    [rep] = ingest_paths([f], lake)
    assert rep.status == "error"
    assert rep.message.startswith(f"{f}: 30 of its 40 lines (75%) are malformed, more than the 50% a file may have")
    assert "27 undecodable bytes (first at line 12); 3 extra field (first at line 39)" in rep.message
    assert lake.committed() == frozenset() and not list(lake.root.rglob("*.parquet"))
    # The same file at a limit it stays under: its good lines are ingested, the rest quarantined.
    [rep] = ingest_paths([f], lake, Options(max_malformed=0.8))
    assert (rep.status, rep.rows_written, rep.rows_quarantined) == ("written", 10, 30)


def test_the_limit_is_a_share_of_the_lines_and_is_checked(tmp_path, monkeypatch):
    half = _mostly_binary(tmp_path, good=20, bad=20)  # exactly half: not more than half, kept
    lake = Lake.open(tmp_path / "lake")
    [rep] = ingest_paths([half], lake)
    assert (rep.status, rep.rows_written, rep.rows_quarantined) == ("written", 20, 20)
    one = tmp_path / "one" / "coinbase_trades_2025-10-10_ETH-USD.csv.gz"
    one.parent.mkdir()
    one.write_bytes(gzip.compress(HEADER + _row(1).replace(b"BTC", b"ETH") + b"x,y,z,1,2,3,4,5,6\n"))
    [strict] = ingest_paths([one], Lake.open(tmp_path / "strict"), Options(max_malformed=0))
    assert strict.status == "error" and "1 of its 2 lines (50%) are malformed" in strict.message
    monkeypatch.setattr(common, "WHOLE_READ_BYTES", 0)  # refused after the last chunk, parts removed
    [streamed] = ingest_paths([_mostly_binary(tmp_path, 5, 30)], Lake.open(tmp_path / "streamed"), chunk_rows=4)
    assert streamed.status == "error" and "30 of its 35 lines" in streamed.message
    assert not list((tmp_path / "streamed").rglob("*.parquet"))
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match=r"max_malformed=.*from 0 to 1"):
            Options(max_malformed=bad)  # type: ignore[arg-type]
    p = subprocess.run([sys.executable, "-m", "crashlab", "ingest", str(half), "--max-malformed", "2"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--max-malformed: '2' is not a share from 0 to 1" in p.stderr
