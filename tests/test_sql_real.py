"""The named queries on real files from that night (../shared/data/real), checked independently.

Skips with a reason when the real folder or an importer is missing. One module-scoped lake holds
only the files these tests need (about 3 s to ingest).
"""

from __future__ import annotations

import importlib
from datetime import datetime, timezone

import polars as pl
import pytest

from crashlab.ingest.formats.base import Options
from crashlab.ingest.lake import Lake
from crashlab.ingest.paths import SHARED_REAL as R
from crashlab.ingest.pipeline import ingest_paths

UTC = timezone.utc
ALTS = ["AVAX", "DOT", "AAVE"]
TRADES = {
    "AVAX": ["binance-delivery/binance-delivery_trades_2025-10-10_AVAXUSD_PERP", "coinbase/coinbase_trades_2025-10-10_AVAX-USD", "gemini/gemini_trades_2025-10-10_AVAXUSD"],
    "DOT": ["binance-delivery/binance-delivery_trades_2025-10-10_DOTUSD_PERP", "coinbase/coinbase_trades_2025-10-10_DOT-USD", "gemini/gemini_trades_2025-10-10_DOTUSD"],
    "AAVE": ["binance-delivery/binance-delivery_trades_2025-10-10_AAVEUSD_PERP", "coinbase/coinbase_trades_2025-10-10_AAVE-USD", "gemini/gemini_trades_2025-10-10_AAVEUSD"],
}
DEPTH = R / "binance-vision/futures-um-bookDepth/BTCUSDT-bookDepth-2025-10-10.csv"
USDE = R / "usde/usde_minute_binance.parquet"
POOL = R / "onchain/uniswap_usde.parquet"


def _need() -> None:
    if not R.exists():
        pytest.skip(f"real data folder {R} is absent")
    for mod in ("tardis", "binance_vision", "generic_bars", "uniswap_pool"):
        try:
            importlib.import_module(f"crashlab.ingest.formats.{mod}")
        except ModuleNotFoundError:
            pytest.skip(f"importer crashlab.ingest.formats.{mod} is not written yet")


def t(hm: str) -> datetime:
    return datetime.fromisoformat(f"2025-10-10T{hm}").replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    _need()
    lk = Lake.open(tmp_path_factory.mktemp("reallake"))
    files = [R / "tardis" / f"{p}.csv.gz" for ps in TRADES.values() for p in ps] + [DEPTH, POOL]
    reps = ingest_paths(files, lk)
    reps += ingest_paths([USDE], lk, Options(venue="binance", market="spot", symbol="USDE/USDT", price_type="trade", interval="1m"))
    bad = [r for r in reps if r.status != "written"]
    assert not bad, [(r.path, r.message) for r in bad]
    return lk


@pytest.fixture(scope="module")
def db(lake):
    from crashlab.analysis.db import connect

    with connect(lake) as f:
        yield f


def _csv_bars(path) -> pl.DataFrame:
    """1-minute bars straight from a Tardis CSV, without the lake: an independent computation."""
    raw = pl.read_csv(path, schema_overrides={"id": pl.String})
    return (
        raw.with_columns(
            pl.from_epoch("timestamp", time_unit="us").dt.replace_time_zone("UTC").alias("ts"),
            pl.col("id").cast(pl.Int64, strict=False).alias("tid"),
        )
        .sort("ts", "tid", maintain_order=True)
        .group_by(pl.col("ts").dt.truncate("1m").alias("bucket"))
        .agg(
            pl.col("price").first().alias("open"), pl.col("price").max().alias("high"),
            pl.col("price").min().alias("low"), pl.col("price").last().alias("close"),
            pl.col("amount").sum().alias("amount"), pl.len().alias("trade_count"),
            (pl.col("side") == "buy").sum().alias("buys"),
            (pl.col("price") * pl.col("amount")).sum().alias("pxamt"),
        )
        .sort("bucket")
    )


@pytest.mark.parametrize("venue,market,symbol,path", [
    ("coinbase", "spot", "AVAX/USD", TRADES["AVAX"][1]),
    ("gemini", "spot", "DOT/USD", TRADES["DOT"][2]),
    ("binance", "perp", "AVAX/USD:AVAX", TRADES["AVAX"][0]),
])
def test_bars_equal_independent_csv_computation(db, venue, market, symbol, path):
    exp = _csv_bars(R / "tardis" / f"{path}.csv.gz")
    got = db.query("bars", venue=venue, market=market, symbol=symbol)
    assert got["ts"].to_list() == exp["bucket"].to_list()
    for c in ("open", "high", "low", "close", "trade_count"):
        assert got[c].to_list() == exp[c].to_list(), c
    buys = db.sql(
        "SELECT time_bucket(INTERVAL 1 MINUTE, ts) AS b, count(*) FILTER (WHERE side = 'buy') AS n FROM trades "
        "WHERE venue = $v AND symbol = $s GROUP BY b ORDER BY b", {"v": venue, "s": symbol})
    assert buys["n"].to_list() == exp["buys"].to_list()
    if market == "spot":  # base amounts as in the file
        assert got["volume"].to_list() == pytest.approx(exp["amount"].to_list(), rel=1e-12)
        assert got["quote_volume"].to_list() == pytest.approx(exp["pxamt"].to_list(), rel=1e-9)
    else:  # COIN-M: contracts of US$10; the lake holds base amounts and USD notional
        assert got["quote_volume"].to_list() == pytest.approx((exp["amount"] * 10).to_list(), rel=1e-12)


def test_cross_venue_wicks_coinm_alts_vs_coinbase_gemini(db):
    cv = db.query("cross_venue", start="2025-10-10T20:00", end="2025-10-10T22:00", ref="2025-10-10T20:45")
    assert set(cv["asset"].unique()) == set(ALTS)
    for asset, files in TRADES.items():
        rows = cv.filter(pl.col("asset") == asset)
        assert rows.height == 3
        # every low equals the minimum trade price in the file over the same window
        for venue, f in zip(("binance", "coinbase", "gemini"), files):
            raw = pl.read_csv(R / "tardis" / f"{f}.csv.gz", schema_overrides={"id": pl.String}).with_columns(
                pl.from_epoch("timestamp", time_unit="us").dt.replace_time_zone("UTC").alias("ts"))
            win = raw.filter((pl.col("ts") >= t("20:00")) & (pl.col("ts") < t("22:00")))
            r = rows.filter(pl.col("venue") == venue).row(0, named=True)
            assert r["low"] == win["price"].min()
            assert r["low_ts"] == win.filter(pl.col("price") == win["price"].min())["ts"].min()
        # COIN-M wicked deepest, far below the others' median, and inside the 21:18-21:24 crash window
        coinm = rows.filter(pl.col("venue") == "binance").row(0, named=True)
        assert rows["venue"][0] == "binance"
        assert coinm["low_vs_others_pct"] < -40
        assert t("21:18") <= coinm["low_ts"] < t("21:25")


def test_btcusdt_depth_with_the_stale_bid_band_flagged(db):
    d = db.query("depth", symbols="BTCUSDT")
    assert d.height >= 1400 and set(d["band_pct"]) == {1.0}
    before = d.filter(pl.col("ts") < t("15:30"))
    after = d.filter(pl.col("ts") >= t("16:45"))
    assert before["bid_flagged"].sum() == 0 and before["bid_notional"].null_count() == 0
    assert (after["bid_flagged"] > 0).all() and after["bid_notional"].null_count() == after.height
    assert after["ask_notional"].null_count() == 0  # the ask side stays usable
    crash = d.filter((pl.col("ts") >= t("21:15")) & (pl.col("ts") < t("21:25")))
    assert all("stale" in f and "crossed" in f for f in crash["bid_flag"])
    flags = db.query("depth_flags", symbols="BTCUSDT")
    first = flags.row(0, named=True)
    assert first["ts"] == t("15:30:42") and first["band_pct"] == -1.0 and first["crossed"]
    assert abs(first["notional"] - 2.14e6) < 0.02e6 and abs(first["price"] - 121363) < 50
    # the ask side at the bottom shows the vacuum: within +1 % far below the afternoon average
    asks = d.filter((pl.col("ts") >= t("18:00")) & (pl.col("ts") < t("20:50")))["ask_notional"].mean()
    assert crash["ask_notional"].min() < 0.5 * asks


def test_usde_depeg_basis_against_the_uniswap_pool(db):
    dp = db.query("depeg", start="2025-10-10T21:00", end="2025-10-10T23:00")
    src = pl.read_parquet(USDE).rename({"__index_level_0__": "ts"}).with_columns(pl.col("ts").dt.cast_time_unit("us").dt.replace_time_zone("UTC"))
    win = src.filter((pl.col("ts") >= t("21:00")) & (pl.col("ts") < t("23:00")))
    assert dp.height == win.height
    assert dp["low"].min() == win["low"].min() == pytest.approx(0.65)
    low_row = dp.filter(pl.col("low") == dp["low"].min()).row(0, named=True)
    assert t("21:36") <= low_row["ts"] <= t("22:16")  # inside Binance's compensation window
    assert low_row["low_vs_peg_pct"] == pytest.approx(-35.0)
    # the pool never depegged: within 1 % of 1.0 all along, so the basis is Binance-specific
    assert dp["pool_price"].null_count() == 0
    assert (dp["pool_vs_peg_pct"].abs() < 1).all()
    assert low_row["low_vs_pool_pct"] < -34
    before = dp.filter(pl.col("ts") < t("21:15"))
    assert (before["basis_vs_pool_pct"].abs() < 1).all()


def test_timeline_on_real_data(db):
    tl = db.query("timeline", start="2025-10-10T21:15", end="2025-10-10T21:25", symbols="AVAX,USDE")
    assert tl["ts"].n_unique() == 10
    assert tl.group_by("ts").len()["len"].unique().to_list() == [4]
    m = tl.filter(pl.col("ts") == t("21:18"))["markers"][0]
    assert "glitches" in m
    avax = tl.filter(pl.col("symbol") == "AVAX/USD:AVAX")
    assert avax["cum_ret_pct"].min() < -60

