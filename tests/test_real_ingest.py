"""Every real trade, depth and kline file of the crash day ingests, and every CSV row is accounted for."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import polars as pl
import pytest

from crashlab.ingest.formats.base import Options
from crashlab.ingest.lake import Lake
from crashlab.ingest.paths import SHARED_REAL
from crashlab.ingest.pipeline import ingest_paths

pytestmark = pytest.mark.skipif(
    not (SHARED_REAL / "tardis").is_dir(), reason=f"real data folder {SHARED_REAL} is absent (see its MANIFEST.md)"
)

USDE = Options(venue="binance", market="spot", symbol="USDE/USDT", interval="1m", price_type="trade")


def _tardis() -> list[Path]:
    return sorted((SHARED_REAL / "tardis").rglob("*.csv.gz"))


def _binance() -> list[Path]:
    return sorted(p for p in (SHARED_REAL / "binance-vision").rglob("*") if p.suffix in (".zip", ".csv"))


def _lines(path: Path) -> int:
    """Data lines counted independently of the importer (header excluded)."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            data = zf.read(zf.namelist()[0])
    elif path.name.endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    else:
        data = path.read_bytes()
    n = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    first = data.split(b",", 1)[0]
    return n - (0 if first.strip().isdigit() else 1)


@pytest.fixture(scope="module")
def lake_and_reports(tmp_path_factory):
    lake = Lake.open(tmp_path_factory.mktemp("real") / "lake")
    self_describing = [SHARED_REAL / "tardis", SHARED_REAL / "binance-vision", SHARED_REAL / "onchain" / "uniswap_usde.parquet"]
    reports = ingest_paths(self_describing, lake, Options(), jobs=2)
    reports += ingest_paths([SHARED_REAL / "usde" / "usde_minute_binance.parquet"], lake, USDE, jobs=1)
    return lake, {r.path: r for r in reports}, self_describing


def test_every_real_file_ingests(lake_and_reports):
    lake, reports, _ = lake_and_reports
    tardis, binance = _tardis(), _binance()
    assert len(tardis) == 44 and len(binance) == 95
    expected = [*map(str, tardis), *map(str, binance), str(SHARED_REAL / "onchain" / "uniswap_usde.parquet"),
                str(SHARED_REAL / "usde" / "usde_minute_binance.parquet")]
    errors = {p: reports[p].message for p in expected if reports[p].status != "written"}
    assert errors == {}
    for p in binance:
        r = reports[str(p)]
        assert r.rows_read == _lines(p) and r.rows_written + r.rows_quarantined == r.rows_read, p.name
    assert reports[str(SHARED_REAL / "usde" / "usde_minute_binance.parquet")].rows_written == 184_125
    assert reports[str(SHARED_REAL / "onchain" / "uniswap_usde.parquet")].rows_written == 2_980


def test_tardis_rows_in_trades_equal_csv_rows_minus_quarantined(lake_and_reports):
    lake, reports, _ = lake_and_reports
    per_source = dict(pl.scan_parquet([str(f) for f in lake.files("trades")]).group_by("source_id").len().collect().iter_rows())
    quarantined = dict(lake.quarantine().group_by("source_id").len().iter_rows()) if lake.quarantine().height else {}
    for p in _tardis():
        r = reports[str(p)]
        lines = _lines(p)
        assert r.rows_read == lines, p.name
        assert per_source.get(r.source_id, 0) == lines - quarantined.get(r.source_id, 0), p.name


def test_real_values_make_sense(lake_and_reports):
    lake, _, _ = lake_and_reports
    trades = pl.scan_parquet([str(f) for f in lake.files("trades")])
    coinm = trades.filter(pl.col("native_symbol") == "AAVEUSD_PERP").select(
        (pl.col("quote_amount") / 10).round(6).alias("contracts"), "amount", "price"
    ).head(1000).collect()
    # COIN-M: every trade is a whole number of 10-USD contracts, and base = contracts × 10 / price
    assert (coinm["contracts"] == coinm["contracts"].round(0)).all()
    assert ((coinm["amount"] * coinm["price"] / 10 - coinm["contracts"]).abs() < 1e-6).all()
    venues = set(trades.select("venue").unique().collect()["venue"])
    assert venues == {"binance", "coinbase", "gemini"}
    bars = pl.scan_parquet([str(f) for f in lake.files("bars")])
    types = dict(bars.group_by("price_type").len().collect().iter_rows())
    assert set(types) == {"unknown_price", "trade"} and types["trade"] == 184_125
    usde_low = bars.filter(pl.col("symbol") == "USDE/USDT").select(pl.col("low").min()).collect().item()
    assert 0.6 < usde_low < 0.7  # the depeg to ~0.65 on Binance
    pool = pl.scan_parquet([str(f) for f in lake.files("prices")]).select(pl.col("price").min()).collect().item()
    assert 0.99 < pool < 1.0  # ... while the on-chain pool held
    decisions = [json.loads(d) for d in lake.manifest().filter(pl.col("format") == "binance.klines")["decisions"]]
    assert all(d["price_type"] == "unknown_price" and "warning" in d for d in decisions)


def test_second_ingest_writes_nothing(lake_and_reports):
    lake, _, self_describing = lake_and_reports
    before = sorted((p, p.stat().st_mtime_ns) for p in lake.root.rglob("*.parquet"))
    again = ingest_paths(self_describing, lake, Options(), jobs=2)
    again += ingest_paths([SHARED_REAL / "usde" / "usde_minute_binance.parquet"], lake, USDE, jobs=1)
    assert {r.status for r in again} == {"already ingested"} and len(again) == 44 + 95 + 2
    assert sorted((p, p.stat().st_mtime_ns) for p in lake.root.rglob("*.parquet")) == before
