"""The lake writer and the shared validation, on frames built here (no importer involved)."""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timezone

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from crashlab.ingest import schema
from crashlab.ingest.event_id import event_ids
from crashlab.ingest.formats.base import Parsed
from crashlab.ingest.lake import Lake, LakeError
from crashlab.ingest.pipeline import ingest_parsed

T0 = datetime(2025, 10, 10, 21, 0, tzinfo=timezone.utc)


def _trades(n: int = 6, **over) -> pl.DataFrame:
    base = {
        "_row": list(range(2, n + 2)),
        "ts": [T0.replace(second=i) for i in range(n)],
        "venue": ["binance"] * n,
        "market": ["spot"] * n,
        "symbol": ["ATOM/USDT"] * n,
        "native_symbol": ["ATOMUSDT"] * n,
        "local_ts": [T0.replace(second=i) for i in range(n)],
        "trade_id": [str(100 + i) for i in range(n)],
        "side": ["sell"] * n,
        "price": [3.0 - 0.1 * i for i in range(n)],
        "amount": [1.0] * n,
        "quote_amount": [3.0 - 0.1 * i for i in range(n)],
        "is_liquidation": [None] * n,
    }
    base.update(over)
    return pl.DataFrame(base, schema_overrides={"ts": pl.Datetime("us", "UTC"), "local_ts": pl.Datetime("us", "UTC"), "is_liquidation": pl.Boolean})


def _parsed(df: pl.DataFrame, **kw) -> Parsed:
    return Parsed(format="test.trades", rows_read=df.height, tables={"trades": df}, day=date(2025, 10, 10), **kw)


def _sha(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


def test_write_read_back_sorted_and_typed(tmp_path):
    lake = Lake.open(tmp_path)
    df = _trades().reverse()  # written out of order, must come back sorted by ts
    rep = ingest_parsed(lake, _parsed(df), path="x.csv", sha256=_sha("a"), source="test")
    assert (rep.rows_read, rep.rows_written, rep.rows_quarantined) == (6, 6, 0)
    files = lake.files("trades")
    assert len(files) == 1 and files[0].parent.name == "2025-10-10" and files[0].parent.parent.name == "binance"
    back = pl.read_parquet(files[0])
    assert back["ts"].is_sorted()
    assert back.schema["ts"] == pl.Datetime("us", "UTC")
    assert back["source"].unique().to_list() == ["test"]
    assert lake.manifest()["rows_written"].to_list() == [6]
    # The file carries the canonical Arrow schema, for pyarrow readers too, and DuckDB reads it typed.
    stored = pq.read_schema(files[0])
    assert [(f.name, f.type) for f in stored] == [(f.name, f.type) for f in schema.TABLES["trades"]]
    types = {r[0]: r[1] for r in duckdb.sql(f"DESCRIBE SELECT * FROM '{files[0]}'").fetchall()}
    assert types["ts"] == "TIMESTAMP WITH TIME ZONE" and types["symbol"] == "VARCHAR" and types["event_id"] == "BIGINT"


def test_same_source_twice_changes_nothing(tmp_path):
    lake = Lake.open(tmp_path)
    ingest_parsed(lake, _parsed(_trades()), path="x.csv", sha256=_sha("a"), source="test")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.parquet")}
    rep = ingest_parsed(lake, _parsed(_trades()), path="x.csv", sha256=_sha("a"), source="test")
    assert rep.status == "already ingested"
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.parquet")} == before


def test_bad_rows_quarantined_with_reasons_and_counts_add_up(tmp_path):
    lake = Lake.open(tmp_path)
    df = _trades(
        8,
        price=[3.0, float("nan"), -1.0, None, 2.5, 2.4, 2.4, 2.3],
        ts=[T0, T0, T0, T0, datetime(2025, 10, 12, tzinfo=timezone.utc), T0.replace(second=5), T0.replace(second=5), T0.replace(second=7)],
        trade_id=["1", "2", "3", "4", "5", "6", "6", "8"],
        quote_amount=[1.0] * 8,
    )
    rep = ingest_parsed(lake, _parsed(df), path="bad.csv", sha256=_sha("bad"), source="test")
    assert rep.rows_read == rep.rows_written + rep.rows_quarantined == 8
    q = lake.quarantine().sort("line")
    reasons = dict(zip(q["line"].to_list(), q["reason"].to_list()))
    assert reasons[3] == "price is NaN or infinite"
    assert reasons[4] == "non-positive price"
    assert reasons[5] == "missing or non-numeric price"
    assert reasons[6] == "timestamp outside the file's day"
    assert reasons[8].startswith("duplicate event_id (same row as line 7)")
    assert rep.rows_written == 3
    written = pl.read_parquet(lake.files("trades"))
    assert sorted(written["trade_id"].to_list()) == ["1", "6", "8"]


def test_crossed_snapshot_quarantined_whole(tmp_path):
    lake = Lake.open(tmp_path)
    rows = []
    for unit, (bid, ask) in enumerate([(99.0, 100.0), (101.0, 100.0)], start=2):
        for side, px in (("bid", bid), ("ask", ask)):
            rows.append({"_row": unit, "ts": T0.replace(second=unit), "venue": "binance", "market": "perp", "symbol": "BTC/USDT:USDT",
                         "native_symbol": "BTCUSDT", "local_ts": T0, "side": side, "level": 0, "price": px, "amount": 1.0})
    df = pl.DataFrame(rows, schema_overrides={"ts": pl.Datetime("us", "UTC"), "local_ts": pl.Datetime("us", "UTC"), "level": pl.Int32})
    p = Parsed(format="test.book", rows_read=2, tables={"book_snapshots": df}, day=date(2025, 10, 10))
    rep = ingest_parsed(lake, p, path="book.csv", sha256=_sha("book"), source="test")
    assert (rep.rows_written, rep.rows_quarantined) == (1, 1)
    assert lake.quarantine()["reason"].to_list() == ["crossed book: best bid at or above best ask"]
    assert pl.read_parquet(lake.files("book_snapshots")).height == 2


def test_unsafe_venue_never_becomes_a_path(tmp_path):
    lake = Lake.open(tmp_path / "lake")
    df = _trades(2, venue=["../../evil", "../../evil"])
    with pytest.raises(LakeError, match="not a safe directory name"):
        ingest_parsed(lake, _parsed(df), path="x", sha256=_sha("evil"), source="test")
    assert not (tmp_path / "evil").exists()
    assert not list(tmp_path.rglob("*.parquet"))


def test_symbol_with_dotdot_stays_inside(tmp_path):
    lake = Lake.open(tmp_path / "lake")
    df = _trades(2, symbol=["../../x", "../../x"], native_symbol=["../../x", "../../x"])
    ingest_parsed(lake, _parsed(df), path="x", sha256=_sha("dots"), source="test")
    outside = [p for p in tmp_path.rglob("*") if not str(p).startswith(str(tmp_path / "lake"))]
    assert outside == []
    assert pl.read_parquet(lake.files("trades"))["symbol"].to_list() == ["../../x"] * 2


def test_recover_removes_uncommitted_files(tmp_path):
    lake = Lake.open(tmp_path)
    ingest_parsed(lake, _parsed(_trades()), path="x", sha256=_sha("a"), source="test")
    orphan = tmp_path / "trades" / "binance" / "2025-10-10" / "0123456789abcdef.parquet"
    orphan.write_bytes(b"half")
    tmp = tmp_path / "trades" / "binance" / "2025-10-10" / ".x.parquet.1.tmp"
    tmp.write_bytes(b"tmp")
    removed = lake.recover()
    assert set(removed) == {orphan, tmp}
    assert len(lake.files("trades")) == 1


def test_event_ids_are_stable_and_content_sensitive():
    df = _trades()
    a = event_ids(df, ["venue", "native_symbol", "trade_id", "ts", "price"], "trades")
    b = event_ids(df.clone(), ["venue", "native_symbol", "trade_id", "ts", "price"], "trades")
    assert a.to_list() == b.to_list()
    assert a.n_unique() == df.height
    # A pinned value: the id of a row must never change between versions of the toolkit.
    assert a[:2].to_list() == [-7969608577258905029, 3622273304743683089]
    other = event_ids(df, ["venue", "native_symbol", "trade_id", "ts", "price"], "book")
    assert set(a.to_list()).isdisjoint(other.to_list())
    ids_with_str = event_ids(df.with_columns(pl.lit("x-1").alias("trade_id")), ["trade_id"], "t")
    assert ids_with_str.n_unique() == 1
