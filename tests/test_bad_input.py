"""Damaged and hostile input: a clear error naming the file (nothing written), or quarantined rows."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import lz4.frame
import polars as pl
import pytest

from crashlab.ingest.formats.base import Options
from crashlab.ingest.lake import Lake
from crashlab.ingest.pipeline import ingest_paths

from test_importers import MS, US, _block_file, write_gz, write_zip

HEADER = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"


def _trades(n: int = 50, start: int = 0) -> str:
    return "".join(f"coinbase,BTC-USD,{US + i * 1000},{US + i * 1000 + 7},{i},buy,{120000 + i}.5,0.01\n" for i in range(start, start + n))


def _ingest(tmp_path: Path, *files: Path, options: Options | None = None):
    lake = Lake.open(tmp_path / "lake")
    return lake, ingest_paths(list(files), lake, options or Options())


def _nothing_written(lake: Lake) -> bool:
    return not lake.manifest_dir.exists() or not list(lake.manifest_dir.glob("*.parquet"))


def test_truncated_gzip(tmp_path):
    f = tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz"
    full = gzip.compress((HEADER + _trades(5000)).encode())
    f.write_bytes(full[: len(full) // 2])
    lake, (rep,) = _ingest(tmp_path, f)
    assert rep.status == "error"
    assert str(f) in rep.message and "truncated" in rep.message
    assert _nothing_written(lake) and lake.files("trades") == []


def test_truncated_zip_and_bad_checksum(tmp_path):
    text = "".join(f"{i},100.5,0.1,{i},{i},{US + i},True,True\n" for i in range(2000))
    z = write_zip(tmp_path / "a" / "spot" / "BTCUSDT-aggTrades-2025-10-10.zip", text)
    z.write_bytes(z.read_bytes()[:-100])
    bad_sum = write_zip(tmp_path / "b" / "spot" / "BTCUSDT-aggTrades-2025-10-10.zip", text, checksum="0" * 64)
    lake, reps = _ingest(tmp_path, z, bad_sum)
    assert [r.status for r in reps] == ["error", "error"]
    assert str(z) in reps[0].message and "truncated or corrupt" in reps[0].message
    assert str(bad_sum) in reps[1].message and "CHECKSUM" in reps[1].message
    assert _nothing_written(lake)


def test_wrong_header(tmp_path):
    f = write_gz(tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz", HEADER.replace("price,amount", "amount,price") + _trades(3))
    lake, (rep,) = _ingest(tmp_path, f)
    assert rep.status == "error" and "line 1" in rep.message and "header does not match" in rep.message
    k = write_zip(tmp_path / "um" / "BTCUSDT-aggTrades-2025-10-10.zip", "a,b,c,d,e,f,g\n" f"1,100,1,1,1,{MS},true\n")
    lake2 = Lake.open(tmp_path / "lake2")
    (rep2,) = ingest_paths([k], lake2, Options())
    assert rep2.status == "error" and "header" in rep2.message and "line 1" in rep2.message


def test_a_line_with_an_extra_field_is_quarantined_with_its_line(tmp_path):
    """Once the whole file was refused for it; now the line goes alone, like a line missing a field."""
    f = write_gz(tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz", HEADER + _trades(3) + "coinbase,BTC-USD,1,2,3,buy,1,1,EXTRA\n")
    lake, (rep,) = _ingest(tmp_path, f)
    assert (rep.status, rep.rows_read, rep.rows_written, rep.rows_quarantined) == ("written", 4, 3, 1)
    [q] = lake.quarantine().to_dicts()
    assert q["line"] == 5 and q["reason"] == "extra field: 9 fields, expected 8"
    assert q["raw"] == "coinbase,BTC-USD,1,2,3,buy,1,1,EXTRA"


def test_ms_rows_in_a_us_file_are_quarantined(tmp_path):
    rows = _trades(10) + f"coinbase,BTC-USD,{MS + 500},{US + 600},99,sell,120000,0.02\n"
    f = write_gz(tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz", HEADER + rows)
    lake, (rep,) = _ingest(tmp_path, f)
    assert (rep.status, rep.rows_read, rep.rows_written, rep.rows_quarantined) == ("written", 11, 10, 1)
    q = lake.quarantine().row(0, named=True)
    assert q["line"] == 12 and q["reason"] == "timestamp in ms, file is µs" and q["raw"].startswith("coinbase,BTC-USD,")


def test_whole_file_in_the_wrong_unit_is_refused(tmp_path):
    spot_ms = write_zip(tmp_path / "spot" / "BTCUSDT-aggTrades-2025-10-10.zip", f"1,100,1,1,1,{MS},True,True\n")
    um_us = write_zip(
        tmp_path / "um" / "BTCUSDT-aggTrades-2025-10-10.zip",
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n" f"1,100,1,1,1,{US},true\n",
    )
    tardis_ms = write_gz(tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz", HEADER + f"coinbase,BTC-USD,{MS},{MS},1,buy,1,1\n")
    lake, reps = _ingest(tmp_path, spot_ms, um_us, tardis_ms)
    assert [r.status for r in reps] == ["error"] * 3
    assert "in ms" in reps[0].message and "in µs" in reps[0].message
    assert "in µs" in reps[1].message and "um files" in reps[1].message
    assert "Tardis files are in µs" in reps[2].message
    assert _nothing_written(lake)


def test_nan_and_bad_numbers_are_quarantined_with_the_line(tmp_path):
    rows = _trades(3) + (
        f"coinbase,BTC-USD,{US + 9000},{US + 9001},100,buy,NaN,0.01\n"
        f"coinbase,BTC-USD,{US + 9000},{US + 9001},101,buy,12x,0.01\n"
        f"coinbase,BTC-USD,{US + 9000},{US + 9001},102,buy,-5,0.01\n"
        f"coinbase,BTC-USD,{US + 9000},{US + 9001},103,sideways,5,0.01\n"
        f"coinbase,BTC-USD,{US + 86400 * 10**6 * 3},{US + 9001},104,buy,5,0.01\n"
    )
    f = write_gz(tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz", HEADER + rows)
    lake, (rep,) = _ingest(tmp_path, f)
    assert (rep.rows_read, rep.rows_written, rep.rows_quarantined) == (8, 3, 5)
    q = lake.quarantine().sort("line")
    assert q["line"].to_list() == [5, 6, 7, 8, 9]
    assert q["reason"].to_list() == [
        "price is NaN or infinite", "missing or non-numeric price", "non-positive price", "unknown side",
        "timestamp outside the file's day",
    ]
    assert q["raw"][1] == f"coinbase,BTC-USD,{US + 9000},{US + 9001},101,buy,12x,0.01"


def test_duplicated_rows(tmp_path):
    body = _trades(5)
    f = write_gz(tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz", HEADER + body + body.splitlines(True)[2])
    lake, (rep,) = _ingest(tmp_path, f)
    assert (rep.rows_read, rep.rows_written, rep.rows_quarantined) == (6, 5, 1)
    q = lake.quarantine().row(0, named=True)
    assert q["line"] == 7 and q["reason"] == "duplicate event_id (same row as line 4)"


def test_symbol_with_dot_dot_stays_inside_the_lake(tmp_path):
    rows = _trades(2) + f"coinbase,../x,{US + 5},{US + 6},77,buy,1,1\n" + f"coinbase,../../etc/x,{US + 5},{US + 6},78,buy,1,1\n"
    f = write_gz(tmp_path / "in" / "coinbase_trades_2025-10-10_..-x.csv.gz", HEADER + rows)
    lake, (rep,) = _ingest(tmp_path, f)
    assert (rep.status, rep.rows_written, rep.rows_quarantined) == ("written", 2, 2)
    assert set(lake.quarantine()["reason"].str.slice(0, 21).to_list()) == {"symbol not understood"}
    root = (tmp_path / "lake").resolve()
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and root not in p.resolve().parents and "in" not in p.parts]
    assert outside == []
    assert not any(p.name == "x" for p in tmp_path.rglob("*"))
    assert {p.parent.parent.name for p in lake.files("trades")} == {"coinbase"}


def test_empty_files(tmp_path):
    empty_gz = tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz"
    empty_gz.write_bytes(gzip.compress(b""))
    header_only = write_zip(tmp_path / "um" / "BTCUSDT-aggTrades-2025-10-10.zip", "")
    zero = tmp_path / "empty.csv"
    zero.write_bytes(b"")
    lake, reps = _ingest(tmp_path, empty_gz, header_only, zero)
    assert [(r.status, r.rows_read, r.rows_written) for r in reps[:2]] == [("written", 0, 0), ("written", 0, 0)]
    decisions = [json.loads(d) for d in lake.manifest().sort("path")["decisions"]]
    assert all("empty" in d for d in decisions)
    assert reps[2].status == "error" and "empty file (0 bytes)" in reps[2].message and "empty.csv" in reps[2].message


def test_unknown_exchange_is_refused_not_guessed(tmp_path):
    f = write_gz(tmp_path / "ftx_trades_2025-10-10_BTC-PERP.csv.gz", HEADER + f"ftx,BTC-PERP,{US},{US},1,buy,1,1\n")
    lake, (rep,) = _ingest(tmp_path, f)
    assert rep.status == "error" and "unknown Tardis exchange 'ftx'" in rep.message and "line 2" in rep.message
    assert _nothing_written(lake)


def test_accounting_holds_for_every_bad_file(tmp_path):
    """rows_read = written + quarantined for a file mixing every kind of bad row."""
    rows = _trades(20) + "\n" + "coinbase,BTC-USD,,,,,,\n" + f"coinbase,BTC-USD,{US},{US},5,buy,1\n"
    f = write_gz(tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz", HEADER + rows)
    lake, (rep,) = _ingest(tmp_path, f)
    assert rep.rows_read == 23 and rep.rows_written + rep.rows_quarantined == 23 and rep.rows_written == 20
    man = lake.manifest().row(0, named=True)
    assert man["rows_read"] == 23 and man["rows_quarantined"] == 3
    assert pl.read_parquet(lake.files("trades")[0]).height == 20


# ---- files that are not what their names say: refused, named, never an empty source -------------

def _text_gz(tmp_path: Path) -> Path:
    f = tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz"
    f.write_text(HEADER + _trades(3))  # a plain CSV, not gzipped
    return f


def _truncated_gz(tmp_path: Path) -> Path:
    f = tmp_path / "coinbase_trades_2025-10-10_BTC-USD.csv.gz"
    data = gzip.compress((HEADER + _trades(3000)).encode())
    f.write_bytes(data[:-5])  # only the gzip trailer's last bytes are missing
    return f


def _zip_named_csv(tmp_path: Path) -> Path:
    z = write_zip(tmp_path / "x" / "um" / "BTCUSDT-bookDepth-2025-10-10.zip", "timestamp,percentage,depth,notional\n")
    f = tmp_path / "um" / "BTCUSDT-bookDepth-2025-10-10.csv"
    f.parent.mkdir(parents=True)
    f.write_bytes(z.read_bytes())
    return f


def _html_zip(tmp_path: Path) -> Path:
    f = tmp_path / "spot" / "BTCUSDC-aggTrades-2025-10-04.zip"
    f.parent.mkdir(parents=True)
    f.write_text("<html><body>404 Not Found</body></html>")
    return f


def _truncated_lz4(tmp_path: Path) -> Path:
    f = _block_file(tmp_path / "node_fills_by_block" / "hourly" / "20251010" / "21.lz4")
    f.write_bytes(f.read_bytes()[:-40])
    return f


def _not_lz4(tmp_path: Path) -> Path:
    f = tmp_path / "node_fills" / "hourly" / "20251010" / "21.lz4"
    f.parent.mkdir(parents=True)
    f.write_bytes(gzip.compress(b'["0xa", {}]\n'))
    return f


def _truncated_parquet(tmp_path: Path) -> Path:
    src = tmp_path / "full.parquet"
    pl.DataFrame({"ts": [1, 2], "open": [1.0, 1.0], "high": [1.0, 1.0], "low": [1.0, 1.0], "close": [1.0, 1.0],
                  "volume": [1.0, 1.0]}).write_parquet(src)
    f = tmp_path / "in" / "bars.parquet"
    f.parent.mkdir()
    f.write_bytes(src.read_bytes()[:-10])
    src.unlink()
    return f


def _empty(name: str):
    def make(tmp_path: Path) -> Path:
        f = tmp_path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
        return f
    return make


ODD_FILES = {
    # importer path -> (file maker, what the refusal must say)
    "tardis .csv.gz of 0 bytes": (_empty("coinbase_trades_2025-10-10_BTC-USD.csv.gz"), "empty file (0 bytes), so not a gzip file"),
    "tardis .csv.gz that is plain text": (_text_gz, "not a gzip file, as its name says: it is plain text starting 'exchange,symbol"),
    "tardis .csv.gz truncated": (_truncated_gz, "truncated or corrupt"),
    "tardis .csv of 0 bytes": (_empty("coinbase_trades_2025-10-10_BTC-USD.csv"), "empty file (0 bytes)"),
    "binance .zip of 0 bytes": (_empty("um/BTCUSDT-aggTrades-2025-10-10.zip"), "empty file (0 bytes), so not a zip archive"),
    "binance .zip that is an HTML page": (_html_zip, "not a zip archive, as its name says: it is text starting '<html>"),
    "binance .csv of 0 bytes": (_empty("um/BTCUSDT-bookDepth-2025-10-10.csv"), "empty file (0 bytes)"),
    "binance .csv that is a zip": (_zip_named_csv, "not a CSV file, as its name says: it is a zip archive"),
    "hyperliquid .lz4 of 0 bytes": (_empty("node_fills/hourly/20251010/1.lz4"), "empty file (0 bytes), so not an LZ4 frame"),
    "hyperliquid .lz4 that is gzip": (_not_lz4, "not an LZ4 frame, as its name says: it is a gzip file"),
    "hyperliquid .lz4 truncated": (_truncated_lz4, "cannot decompress LZ4 (truncated or corrupt?)"),
    "parquet of 0 bytes": (_empty("onchain/uniswap_usde.parquet"), "empty file (0 bytes), so not a Parquet file"),
    "parquet truncated": (_truncated_parquet, "truncated Parquet file"),
    "markers .csv of 0 bytes": (_empty("markers.csv"), "empty file (0 bytes)"),
}


@pytest.mark.parametrize("case", list(ODD_FILES))
def test_a_file_that_is_not_what_its_name_says_is_refused(tmp_path, case):
    make, says = ODD_FILES[case]
    f = make(tmp_path)
    lake, (rep,) = _ingest(tmp_path, f, options=Options(venue="binance", market="spot", symbol="BTC/USDT"))
    assert rep.status == "error", (case, rep)
    assert rep.message.startswith(f"{f}: ") and says in rep.message, rep.message
    assert _nothing_written(lake) and lake.committed() == frozenset()


def test_refusals_exit_non_zero_and_are_listed_with_their_cause(tmp_path):
    good = write_gz(tmp_path / "in" / "coinbase_trades_2025-10-10_ETH-USD.csv.gz", HEADER + _trades(3).replace("BTC-USD", "ETH-USD"))
    empty = tmp_path / "in" / "coinbase_trades_2025-10-10_BTC-USD.csv.gz"
    empty.write_bytes(b"")
    p = subprocess.run(
        [sys.executable, "-m", "crashlab", "ingest", str(tmp_path / "in"), "--lake", str(tmp_path / "lake"), "--quiet"],
        capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert p.returncode == 1, p.stderr
    out = p.stdout + p.stderr
    assert "refused" in out and "empty file (0 bytes)" in out and str(empty) in out
    assert "1 written" in out and "1 refused" in out
    assert good.name[:20] in out


def test_a_book_delta_whose_is_snapshot_is_no_boolean_is_quarantined(tmp_path):
    """Once written with is_snapshot null; the flag decides whether a delta resets the book."""
    head = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n"
    rows = "".join(f"coinbase,BTC-USD,{US + i},{US + i + 5},{flag},bid,{100 + i},1\n"
                   for i, flag in enumerate(["true", "false", "maybe", "false"]))
    f = write_gz(tmp_path / "coinbase_incremental_book_L2_2025-10-10_BTC-USD.csv.gz", head + rows)
    lake, (rep,) = _ingest(tmp_path, f)
    assert (rep.status, rep.rows_read, rep.rows_written, rep.rows_quarantined) == ("written", 4, 3, 1), rep.message
    [q] = lake.quarantine().to_dicts()
    assert q["line"] == 4 and q["reason"] == "is_snapshot is not true/false"
