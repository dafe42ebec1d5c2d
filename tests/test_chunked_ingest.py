"""Chunked (streaming) ingest gives the same lake content as whole-file ingest, in bounded memory.

Files are written here in Tardis' and Binance's formats, then ingested twice: in one chunk, and in
chunks of a few lines (both through Polars' whole-file read split into slices and through the
block-streaming reader used for large files). Rows, event ids, quarantine and accounting must agree,
including a duplicate whose first copy is in an earlier chunk.
"""

from __future__ import annotations

import gzip
import hashlib
import zipfile
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from crashlab.ingest.formats import common
from crashlab.ingest.formats.base import Options, Parsed
from crashlab.ingest.lake import Lake
from crashlab.ingest.pipeline import ingest_parsed, ingest_paths
from crashlab.ingest.validate import SeenIds

US = 1_760_054_400_000_000  # 2025-10-10 00:00 UTC in µs
MS = US // 1000
T0 = datetime(2025, 10, 10, 21, 0, tzinfo=timezone.utc)


def _tardis_trades(path: Path, n: int = 60) -> Path:
    lines = ["exchange,symbol,timestamp,local_timestamp,id,side,price,amount"]
    for i in range(n):
        ts = US + 80_000_000_000 + i * 1_000_000
        lines.append(f"binance-futures,BTCUSDT,{ts},{ts + 900},{5000 + i},{'buy' if i % 3 else 'sell'},{110000 + i}.5,0.01{i % 10}")
    lines[8] = lines[8].replace(",110007.5,", ",-1,")  # line 9: non-positive price
    lines[15] = lines[15].replace(",sell,", ",sideways,").replace(",buy,", ",sideways,")  # unknown side
    lines[20] = lines[20].replace(f",{US + 80_000_000_000 + 19_000_000},", f",{(US + 80_000_000_000) // 1000},", 1)  # ms
    lines.insert(13, lines[11])  # line 14 repeats line 12, in the same chunk of 5 lines (12-16)
    lines.insert(30, lines[4])  # line 31 repeats line 5, five chunks later
    lines[40] = lines[40].replace(",0.01", ",abc")  # non-numeric amount
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path


def _lake_content(lake: Lake) -> dict:
    tables = {}
    for t in ("trades", "book_snapshots"):
        files = lake.files(t)
        for f in files:
            assert pl.read_parquet(f)["ts"].is_sorted(), f"{f} is not sorted by ts"
        if files:
            tables[t] = pl.concat([pl.read_parquet(f) for f in files]).sort("event_id", "side" if t != "trades" else "ts")
    m = lake.manifest().drop("ingested_at").to_dicts()
    q = lake.quarantine().sort("line").select("line", "reason", "raw").to_dicts()
    return {"tables": tables, "manifest": m, "quarantine": q}


def _assert_same(a: dict, b: dict) -> None:
    assert a["manifest"] == b["manifest"]
    assert a["quarantine"] == b["quarantine"]
    assert a["tables"].keys() == b["tables"].keys()
    for t in a["tables"]:
        assert a["tables"][t].equals(b["tables"][t]), t


@pytest.mark.parametrize("streamed", [False, True], ids=["sliced", "streamed"])
def test_tardis_chunked_equals_whole(tmp_path, monkeypatch, streamed):
    f = _tardis_trades(tmp_path / "src" / "binance-futures_trades_2025-10-10_BTCUSDT.csv.gz")
    whole = Lake.open(tmp_path / "whole")
    [r1] = ingest_paths([f], whole, Options())
    if streamed:
        monkeypatch.setattr(common, "WHOLE_READ_BYTES", 0)
    chunked = Lake.open(tmp_path / "chunked")
    seen: list[tuple[str, int]] = []
    [r2] = ingest_paths([f], chunked, Options(), chunk_rows=5, rows_progress=lambda p, n: seen.append((p, n)))
    assert r1.status == r2.status == "written", (r1.message, r2.message)
    assert [n for _, n in seen] == [5 * k for k in range(1, 13)] + [62] and {p for p, _ in seen} == {str(f)}
    assert (r2.rows_read, r2.rows_written, r2.rows_quarantined) == (r1.rows_read, r1.rows_written, r1.rows_quarantined)
    assert r2.rows_read == r2.rows_written + r2.rows_quarantined == 62
    a, b = _lake_content(whole), _lake_content(chunked)
    _assert_same(a, b)
    reasons = {q["line"]: q["reason"] for q in b["quarantine"]}
    assert reasons[14] == "duplicate event_id (same row as line 12)"
    assert reasons[31] == "duplicate event_id (same row as line 5)"  # first copy six chunks earlier
    assert reasons[9] == "non-positive price"
    assert reasons[17] == "unknown side"
    assert "file is µs" in reasons[22]
    assert reasons[41] == "missing or non-numeric amount"
    assert len(whole.files("trades")) == 1 and whole.files("trades")[0].name == f"{r1.source_id}.parquet"
    parts = chunked.files("trades")
    assert len(parts) == 13 and all(p.name.startswith(f"{r1.source_id}.0") for p in parts)
    # Re-ingest of the same file is a no-op, and a fresh chunked ingest is byte-identical.
    again = Lake.open(tmp_path / "again")
    ingest_paths([f], again, Options(), chunk_rows=5)
    for p in parts:
        assert (again.root / p.relative_to(chunked.root)).read_bytes() == p.read_bytes()


def test_tardis_snapshots_chunked_equal_whole(tmp_path, monkeypatch):
    cols = ["exchange", "symbol", "timestamp", "local_timestamp"]
    for i in range(5):
        cols += [f"asks[{i}].price", f"asks[{i}].amount", f"bids[{i}].price", f"bids[{i}].amount"]
    lines = [",".join(cols)]
    for k in range(30):
        ts = US + 3_600_000_000 + k * 100_000
        cells = ["binance-futures", "ETHUSDT", str(ts), str(ts + 10)]
        for i in range(5):
            bid = 4000 - i - (3 if k == 7 else 0)
            ask = 4001 + i - (5 if k == 12 else 0)  # line 14: crossed book
            cells += [f"{ask}", "1.5", f"{bid}", "2"]
        lines.append(",".join(cells))
    lines.insert(20, lines[3])  # repeated snapshot line
    f = tmp_path / "src" / "binance-futures_book_snapshot_5_2025-10-10_ETHUSDT.csv.gz"
    f.parent.mkdir(parents=True)
    f.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    whole = Lake.open(tmp_path / "whole")
    [r1] = ingest_paths([f], whole, Options())
    monkeypatch.setattr(common, "WHOLE_READ_BYTES", 0)
    chunked = Lake.open(tmp_path / "chunked")
    [r2] = ingest_paths([f], chunked, Options(), chunk_rows=40)  # 4 lines (40 book rows) per chunk
    assert r1.status == r2.status == "written"
    a, b = _lake_content(whole), _lake_content(chunked)
    _assert_same(a, b)
    reasons = {q["line"]: q["reason"] for q in b["quarantine"]}
    assert reasons == {14: "crossed book: best bid at or above best ask", 21: "duplicate event_id (same row as line 4)"}
    assert len(chunked.files("book_snapshots")) == 8


def _agg_zip(path: Path, n: int = 40) -> Path:
    rows = [f"{100 + i},{60000 + i}.1,0.5,{1000 + i},{1000 + i},{MS + 7_200_000 + i * 10},{'true' if i % 2 else 'false'}"
            for i in range(n)]
    rows[17] = rows[17].replace(",true", ",maybe").replace(",false", ",maybe")
    rows.insert(25, rows[2])
    header = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(path.name[:-4] + ".csv", "\n".join([header, *rows]) + "\n")
    return path


def test_binance_aggtrades_chunked_equal_whole(tmp_path, monkeypatch):
    f = _agg_zip(tmp_path / "src" / "futures" / "um" / "BTCUSDT-aggTrades-2025-10-10.zip")
    whole = Lake.open(tmp_path / "whole")
    [r1] = ingest_paths([f], whole, Options())
    monkeypatch.setattr(common, "WHOLE_READ_BYTES", 0)
    chunked = Lake.open(tmp_path / "chunked")
    [r2] = ingest_paths([f], chunked, Options(), chunk_rows=7)
    assert r1.status == r2.status == "written", (r1.message, r2.message)
    _assert_same(_lake_content(whole), _lake_content(chunked))
    reasons = {q["line"]: q["reason"] for q in chunked.quarantine().to_dicts()}
    assert reasons == {19: "is_buyer_maker is not true/false", 27: "duplicate event_id (same row as line 4)"}
    assert len(chunked.files("trades")) == 6


def test_wrong_unit_found_late_refuses_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    lines = ["exchange,symbol,timestamp,local_timestamp,id,side,price,amount"]
    for i in range(30):
        ts = US + i * 1_000_000 if i < 5 else MS + i * 1000  # mostly ms: not a Tardis file
        lines.append(f"binance-futures,BTCUSDT,{ts},{ts},{i},buy,100.5,1")
    f = tmp_path / "binance-futures_trades_2025-10-10_BTCUSDT.csv.gz"
    f.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    monkeypatch.setattr(common, "WHOLE_READ_BYTES", 0)
    lake = Lake.open(tmp_path / "lake")
    [r] = ingest_paths([f], lake, Options(), chunk_rows=5)
    assert r.status == "error" and "Tardis files are in µs" in r.message
    assert [p for p in lake.root.rglob("*.parquet")] == []
    [whole] = ingest_paths([f], lake, Options())
    assert whole.status == "error" and "Tardis files are in µs" in whole.message


def test_recover_removes_uncommitted_part_files(tmp_path):
    lake = Lake.open(tmp_path)
    d = tmp_path / "trades" / "binance" / "2025-10-10"
    d.mkdir(parents=True)
    parts = [d / f"0123456789abcdef.{k:05d}.parquet" for k in range(3)]
    for p in parts:
        p.write_bytes(b"half")
    (tmp_path / "_quarantine").mkdir()
    q = tmp_path / "_quarantine" / ".0123456789abcdef.parquet.7.tmp"
    q.write_bytes(b"tmp")
    assert set(lake.recover()) == {*parts, q}
    assert not any(tmp_path.rglob("*.parquet"))


def test_seen_ids_across_many_runs():
    rng = np.random.default_rng(3)
    seen, first = SeenIds(), {}
    for chunk in range(40):
        ids = np.unique(rng.integers(0, 5000, 300))
        got = seen.lookup("trades", ids)
        want = np.array([first.get(int(i), -1) for i in ids])
        assert np.array_equal(got, want)
        new = got < 0
        seen.add("trades", ids[new], np.full(new.sum(), chunk, dtype=np.int64))
        first.update({int(i): chunk for i in ids[new]})
    assert seen.lookup("bars", ids).tolist() == [-1] * len(ids)


def _bars(price_type: str, low: float) -> Parsed:
    df = pl.DataFrame({
        "_row": [2, 3], "ts": [T0, T0.replace(minute=1)], "venue": ["binance"] * 2, "market": ["perp"] * 2,
        "symbol": ["BTC/USDT:USDT"] * 2, "native_symbol": ["BTCUSDT"] * 2, "interval": ["1m"] * 2,
        "price_type": [price_type] * 2, "open": [-0.0004, 0.0001], "high": [0.0002, 0.0003], "low": [low, -0.0001],
        "close": [-0.0001, 0.0002], "volume": [0.0, 0.0], "quote_volume": [0.0, 0.0], "trade_count": [0, 0],
        "taker_buy_volume": [0.0, 0.0],
    }, schema_overrides={"ts": pl.Datetime("us", "UTC")})
    return Parsed(format="test.bars", rows_read=2, tables={"bars": df}, day=date(2025, 10, 10))


def test_premium_bars_may_be_negative_other_bars_not(tmp_path):
    lake = Lake.open(tmp_path)
    r = ingest_parsed(lake, _bars("premium", -0.0009), path="p", sha256=hashlib.sha256(b"p").hexdigest(), source="t")
    assert (r.rows_written, r.rows_quarantined) == (2, 0)
    r = ingest_parsed(lake, _bars("mark", -0.0009), path="m", sha256=hashlib.sha256(b"m").hexdigest(), source="t")
    assert (r.rows_written, r.rows_quarantined) == (0, 2)
    assert set(lake.quarantine()["reason"]) == {"non-positive open", "non-positive low"}
    r = ingest_parsed(lake, _bars("premium", float("nan")), path="n", sha256=hashlib.sha256(b"n").hexdigest(), source="t")
    assert (r.rows_written, r.rows_quarantined) == (1, 1)


def test_raw_falls_back_to_json_when_raw_lacks_the_row(tmp_path):
    p = _bars("premium", 0.5)
    p.tables["bars"] = p.tables["bars"].with_columns(pl.Series("open", [1.0, float("inf")]))
    p.raw = pl.DataFrame({"_row": [2], "a": ["x"], "b": ["y"]})  # the importer kept only line 2
    lake = Lake.open(tmp_path)
    ingest_parsed(lake, p, path="r", sha256=hashlib.sha256(b"r").hexdigest(), source="t")
    [q] = lake.quarantine().to_dicts()
    assert q["line"] == 3 and q["reason"] == "open is NaN or infinite"
    assert q["raw"].startswith("{") and '"price_type":"premium"' in q["raw"]


def test_string_images_match_the_row_by_row_definition():
    """The fast paths (constant, few values, numeric, mixed) give each row its defined image."""
    from crashlab.ingest import event_id as E

    def reference(values: list) -> list[int]:
        out = []
        for v in values:
            if v is None:
                out.append(int(E._NULL))
                continue
            i = pl.Series([v]).cast(pl.Int64, strict=False)[0]
            out.append(i & 0xFFFFFFFFFFFFFFFF if i is not None else E._blake64(v) ^ 0x5DEECE66D)
        return out

    rng = np.random.default_rng(5)
    cases = [
        ["binance"] * 300,
        [str(x) for x in rng.integers(-10**15, 10**15, 300)],
        ["buy", "sell", None] * 100,
        ["sell"] * 5000 + ["buy"] * 3,  # a value the first rows do not show
        [f"x{i % 40}" if i % 3 else str(i) for i in range(300)],
        ["ÄÖü", "日本", "", "007", "+5", "1e3", None] * 20,
        ["007", "7", "x", None] * 50,  # few values, some numeric
        ["-3", "+3"] * 60,
        [None] * 10,
    ]
    for values in cases:
        got = E._string_image(pl.Series(values, dtype=pl.String))  # a constant may come as one scalar
        assert np.broadcast_to(got, (len(values),)).tolist() == reference(values)
