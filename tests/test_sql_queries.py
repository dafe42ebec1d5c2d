"""Named queries on small synthetic lakes, checked against values computed by hand or in Polars."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from crashlab.analysis.db import QueryError, connect, list_queries, named_queries
from crashlab.ingest import schema
from crashlab.ingest.lake import Lake
from test_sql_fixtures import T0, add, trade, ts

REQUIRED = {"bars", "lows", "cross_venue", "depth", "basis", "depeg", "flow", "breadth", "timeline", "markers"}


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    lk = Lake.open(tmp_path_factory.mktemp("sqllake"))
    rows = []
    for i in range(10):  # a COIN-M perp that wicks -67.5 %, a spot venue that dips -22.5 %
        rows.append(trade("binance", "perp", "ATOM/USD:ATOM", ts(i, 5), 4.0 - 0.3 * i, 10, "sell" if i % 2 else "buy", 100 + 2 * i, liq=(i == 5)))
        rows.append(trade("binance", "perp", "ATOM/USD:ATOM", ts(i, 5), 4.1 - 0.3 * i, 5, "buy", 101 + 2 * i, liq=False))
        rows.append(trade("coinbase", "spot", "ATOM/USD", ts(i, 30), 4.0 - 0.1 * i, 3, "sell", 500 + i))
        rows.append(trade("gemini", "spot", "ATOM/USD", ts(i, 40), 4.0 - 0.05 * i, 1, "buy", 900 + i))
    add(lk, "trades", rows, "atom")
    # depth bands: +-1 % and +-2 %; the -1 % bid goes stale (identical) and crossed from minute 3 on
    bands = []
    for s in range(20):
        t = ts(s * 0.5)
        mid = 100.0 - s * 0.5
        for b in (-2.0, -1.0, 1.0, 2.0):
            if b == -1.0 and s >= 6:
                depth, notional = 2.0, 2.0 * 104.0  # stale, priced above every ask
            else:
                depth = 10.0 + s + abs(b)
                notional = depth * mid * (1 + b / 200)
            bands.append({"ts": t, "venue": "binance", "market": "perp", "symbol": "BTC/USDT:USDT",
                          "native_symbol": "BTCUSDT", "band_pct": b, "depth": depth, "notional": notional})
    add(lk, "depth_bands", bands, "depth")
    bars = [{"ts": ts(i), "venue": "binance", "market": "spot", "symbol": "USDE/USDT", "native_symbol": "USDEUSDT",
             "interval": "1m", "price_type": "trade", "open": 1.0, "high": 1.0, "low": 1.0 - 0.05 * i,
             "close": 1.0 - 0.04 * i, "volume": 1000.0, "quote_volume": None, "trade_count": 10, "taker_buy_volume": 400.0}
            for i in range(10)]
    add(lk, "bars", bars, "usde")
    pool = [{"ts": ts(i, 20), "venue": "uniswap", "market": "pool", "symbol": "USDE/USDT", "native_symbol": "0xpool",
             "price_type": "pool", "price": 0.999} for i in range(10)]
    add(lk, "prices", pool, "pool")
    liq = [{"ts": ts(3, 1), "local_ts": ts(3, 1), "venue": "binance", "market": "perp", "symbol": "ATOM/USD:ATOM",
            "native_symbol": "ATOMUSD_PERP", "side": "sell", "price": 3.1, "amount": 100.0, "quote_amount": 310.0, "account": None}]
    add(lk, "liquidations", liq, "liq")
    return lk


@pytest.fixture(scope="module")
def db(lake):
    with connect(lake) as f:
        yield f


def test_every_required_query_is_documented():
    qs = named_queries()
    assert REQUIRED <= set(qs)
    for name, question in list_queries():
        assert question and question[0].isupper(), name
        assert "?" not in qs[name].question or len(qs[name].question) > 10


def test_empty_lake_gives_typed_empty_views(tmp_path):
    with connect(tmp_path) as f:
        for table, sch in schema.TABLES.items():
            df = f.sql(f"SELECT * FROM {table}")
            if table == "markers":
                assert df.height > 0  # shipped markers stand in for an empty lake table
            else:
                assert df.height == 0
            assert df.columns == sch.names
        assert f.sql("SELECT * FROM manifest").height == 0
        assert f.query("bars").height == 0
        assert f.query("timeline", start="2025-10-10T21:00", end="2025-10-10T21:05").height == 5


def test_bars_match_polars(db, lake):
    got = db.query("bars", interval="5m")
    raw = pl.concat([pl.read_parquet(p) for p in lake.files("trades")])
    exp = (
        raw.with_columns(pl.col("ts").dt.truncate("5m").alias("bucket"), pl.col("trade_id").cast(pl.Int64).alias("tid"))
        .sort("ts", "tid")
        .group_by("venue", "market", "symbol", "bucket")
        .agg(
            pl.col("price").first().alias("open"), pl.col("price").max().alias("high"),
            pl.col("price").min().alias("low"), pl.col("price").last().alias("close"),
            pl.col("amount").sum().alias("volume"), pl.col("quote_amount").sum().alias("quote_volume"),
            pl.len().alias("trade_count"),
            pl.col("amount").filter(pl.col("side") == "buy").sum().alias("taker_buy_volume"),
            pl.col("amount").filter(pl.col("side") == "sell").sum().alias("taker_sell_volume"),
        )
        .sort("venue", "market", "symbol", "bucket")
    )
    assert got.height == exp.height == 6
    assert got["interval"].unique().to_list() == ["5m"]
    for c in ["open", "high", "low", "close", "volume", "quote_volume", "trade_count", "taker_buy_volume", "taker_sell_volume"]:
        assert got[c].to_list() == pytest.approx(exp[c].to_list()), c
    assert (got["vwap"] - got["quote_volume"] / got["volume"]).abs().max() < 1e-12
    # the tagged liquidation trade (minute 5, id 110, price 2.5 x 10) shows up in the 21:05 bar only
    atom = got.filter(pl.col("symbol") == "ATOM/USD:ATOM")
    assert atom["liquidation_quote"].to_list() == [0.0, 25.0]
    # open/close resolve equal timestamps by trade id: id 100 (4.0) opens, id 109 (2.9) closes
    assert atom["open"][0] == 4.0 and atom["close"][0] == pytest.approx(2.9)


def test_bars_filters_and_order(db):
    one = db.query("bars", venue="coinbase", start="2025-10-10T21:02", end="2025-10-10T21:04")
    assert one["venue"].unique().to_list() == ["coinbase"]
    assert one["ts"].to_list() == [ts(2), ts(3)]
    a = db.query("bars")
    assert a.equals(a.sort("venue", "market", "symbol", "ts"))


def test_lows_and_drawdown(db):
    df = db.query("lows", start="2025-10-10T21:00", end="2025-10-10T21:10", symbols="ATOM")
    perp = df.filter(pl.col("venue") == "binance").row(0, named=True)
    assert perp["low"] == pytest.approx(1.3) and perp["low_ts"] == ts(9, 5)
    assert perp["ref_price"] == 4.0 and perp["drawdown_pct"] == pytest.approx(-67.5)
    # reference later in the window: the last price at or before 21:05
    later = db.query("lows", start="2025-10-10T21:00", end="2025-10-10T21:10", ref="2025-10-10T21:05", venue="coinbase")
    assert later["ref_price"][0] == pytest.approx(3.6)
    # bars-only series (USDe) are measured on bars
    usde = db.query("lows", start="2025-10-10T21:00", end="2025-10-10T21:10", symbols="USDE")
    assert usde.filter(pl.col("venue") == "binance")["source_table"][0] == "bars"
    assert usde.filter(pl.col("venue") == "binance")["low"][0] == pytest.approx(0.55)


def test_cross_venue_deviation_from_others_median(db):
    df = db.query("cross_venue", start="2025-10-10T21:00", end="2025-10-10T21:10", asset="atom")
    assert df["venue"].to_list() == ["binance", "coinbase", "gemini"]  # deepest wick first
    b = df.row(0, named=True)
    others = sorted([3.1, 3.55])
    assert b["others_median_low"] == pytest.approx(sum(others) / 2)
    assert b["low_vs_others_pct"] == pytest.approx((1.3 / 3.325 - 1) * 100)
    g = df.row(2, named=True)
    assert g["others_median_low"] == pytest.approx((1.3 + 3.1) / 2)


def test_depth_flags_stale_and_crossed_band(db):
    d = db.query("depth", stale_n=4)
    assert set(d["band_pct"].to_list()) == {1.0}
    early = d.filter(pl.col("ts") < ts(3))
    late = d.filter(pl.col("ts") >= ts(3))
    assert early["bid_flagged"].sum() == 0 and early["bid_notional"].null_count() == 0
    assert late["bid_notional"].null_count() == late.height  # all flagged: unknown, not zero
    assert all("crossed" in f and "stale" in f for f in late["bid_flag"].to_list())
    assert late["ask_notional"].null_count() == 0 and late["ask_flagged"].sum() == 0
    flags = db.query("depth_flags", stale_n=4)
    assert flags["band_pct"].unique().to_list() == [-1.0]
    assert flags["ts"].min() == ts(3) and flags.height == 14
    # without the crossing, the stale rule alone needs the mid to move: a long enough run is flagged
    strict = db.query("depth_flags", stale_n=100)
    assert strict["stale"].sum() == 0 and strict["crossed"].all()


def test_depth_uses_the_widest_band_within_the_distance(db):
    """band_pct=2 reads the cumulative ±2 % bands (clean here), not the innermost ±1 % ones."""
    d = db.query("depth", band_pct=2, stale_n=4)
    assert set(d["band_pct"].to_list()) == {2.0}
    assert d["bid_flagged"].sum() == 0 and d["bid_notional"].null_count() == 0
    first = d.filter(pl.col("ts") == ts(0)).row(0, named=True)
    # samples at 0 s and 30 s of minute 0: s = 0, 1; depth = 10 + s + 2, notional = depth * mid * (1 -/+ 1 %)
    mids = [100.0, 99.5]
    assert first["bid_depth"] == pytest.approx((12 + 13) / 2)
    assert first["bid_notional"] == pytest.approx(sum((12 + s) * m * 0.99 for s, m in enumerate(mids)) / 2)
    assert first["ask_notional"] == pytest.approx(sum((12 + s) * m * 1.01 for s, m in enumerate(mids)) / 2)
    assert db.query("depth", band_pct=0.5).height == 0  # no band that narrow: no rows, not the 1 % band


def test_depeg_against_peg_and_pool(db):
    d = db.query("depeg", start="2025-10-10T21:00", end="2025-10-10T21:10")
    assert d.height == 10
    last = d.row(9, named=True)
    assert last["low_vs_peg_pct"] == pytest.approx(-45.0)
    assert last["pool_price"] == pytest.approx(0.999)
    assert last["basis_vs_pool_pct"] == pytest.approx((0.64 / 0.999 - 1) * 100)
    assert last["pool_ts"] == ts(9, 20)


def test_basis_against_constant_and_leg(db):
    b = db.query("basis", a_symbol="USDE/USDT", b_const=1.0, start="2025-10-10T21:00", end="2025-10-10T21:10")
    assert b["basis_pct"].to_list() == pytest.approx([-4.0 * i for i in range(10)])
    v = db.query("basis", a_symbol="ATOM/USD", a_venue="coinbase", b_symbol="ATOM/USD", b_venue="gemini",
                 b_market="spot", b_price_type="trade", start="2025-10-10T21:00", end="2025-10-10T21:10")
    assert v["basis_pct"][9] == pytest.approx((3.1 / 3.55 - 1) * 100)


def test_flow_imbalance_liquidations_and_caveat(db):
    f = db.query("flow", start="2025-10-10T21:03", end="2025-10-10T21:04", symbols="ATOM")
    perp = f.filter(pl.col("venue") == "binance").row(0, named=True)
    buy, sell = 3.2 * 5, 3.1 * 10
    assert perp["imbalance"] == pytest.approx((buy - sell) / (buy + sell))
    assert perp["liquidations_quote"] == 310.0 and perp["long_liq_quote"] == 310.0
    assert "lower bound" in perp["coverage"]
    cb = f.filter(pl.col("venue") == "coinbase").row(0, named=True)
    assert cb["liq_trades_quote"] is None and "not tagged" in cb["coverage"]


def test_breadth_counts(db):
    b = db.query("breadth", start="2025-10-10T21:00", end="2025-10-10T21:10")
    allrow = b.filter(pl.col("venue") == "ALL").row(0, named=True)
    # ATOM perp -67.5 %, USDE bars -45 %, coinbase -22.5 %, gemini -11.25 %
    assert (allrow["instruments"], allrow["fell_20"], allrow["fell_50"], allrow["fell_80"]) == (4, 3, 1, 0)
    assert b["venue"].to_list()[-1] == "ALL"


def test_timeline_rows_markers_and_depeg(db):
    t = db.query("timeline", start="2025-10-10T21:00", end="2025-10-10T21:20", symbols="ATOM,USDE,BTCUSDT")
    minutes = t["ts"].unique().sort().to_list()
    assert minutes == [T0 + timedelta(minutes=i) for i in range(20)]
    assert t.group_by("ts").len()["len"].unique().to_list() == [5]  # 3 ATOM + USDE + BTC depth-only
    m18 = t.filter(pl.col("ts") == ts(18))["markers"][0]
    assert "21:18" in m18 and m18.startswith("●")
    assert "▶" in t.filter(pl.col("ts") == ts(15))["markers"][0]
    perp = t.filter(pl.col("symbol") == "ATOM/USD:ATOM").sort("ts")
    assert perp["ret_pct"][1] == pytest.approx((3.8 / 4.1 - 1) * 100)
    assert perp["price"][15] == pytest.approx(1.4)  # carried forward after the last trade
    assert perp["liq_quote"][3] == pytest.approx(310.0)
    assert t.filter(pl.col("ts") == ts(9))["depeg_pct"][0] == pytest.approx(-36.0)
    btc = t.filter(pl.col("symbol") == "BTC/USDT:USDT").sort("ts")
    assert btc["source"][0] == "depth" and btc["bid_depth"][5] is None and btc["ask_depth"][5] is not None


def test_query_parameter_errors(db):
    with pytest.raises(QueryError, match="needs --param start"):
        db.query("lows", end="2025-10-10T22:00")
    with pytest.raises(QueryError, match="no parameter nope"):
        db.query("bars", nope=1)
    with pytest.raises(QueryError, match="cannot read time"):
        db.query("bars", start="yesterday")
    with pytest.raises(QueryError, match="no query named"):
        db.query("nosuch")


def test_markers_from_the_lake_replace_the_shipped_ones(tmp_path):
    from crashlab.ingest.formats import markers as importer
    from crashlab.ingest.pipeline import ingest_parsed, sha256_file

    lk = Lake.open(tmp_path / "lake")
    with connect(lk) as f:
        shipped = f.sql("SELECT * FROM markers")
    assert shipped.height >= 20 and shipped["source"][0].startswith("crashlab-markers (shipped")
    mine = tmp_path / "mine.csv"
    mine.write_text("ts,end_ts,label,kind,source_url\n2025-10-10T21:30:00Z,,my event,news,https://example.org\n"
                    "not a time,,bad,news,\n")
    assert importer.sniff(mine, mine.read_text())
    rep = ingest_parsed(lk, importer.parse(mine), path=str(mine), sha256=sha256_file(mine), source=importer.SOURCE)
    assert rep.rows_written == 1 and rep.rows_quarantined == 1
    with connect(lk) as f:
        got = f.sql("SELECT label, source FROM markers")
        q = f.sql("SELECT line, reason FROM quarantine")
    assert got["label"].to_list() == ["my event"] and got["source"][0] == importer.SOURCE
    assert q["line"].to_list() == [3] and "cannot read time" in q["reason"][0]
