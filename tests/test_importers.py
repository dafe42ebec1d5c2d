"""Importers on small files written here in each source's documented format, through the real pipeline."""

from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
from pathlib import Path

import lz4.frame
import polars as pl
import pytest

from crashlab.ingest.detect import detect
from crashlab.ingest.formats import binance_vision, generic_bars, hyperliquid, tardis, uniswap_pool
from crashlab.ingest.formats.base import FormatError, Options
from crashlab.ingest.formats.symbols import (
    UnknownExchange,
    UnknownSymbol,
    binance_vision as bv_symbol,
    tardis_instrument,
)
from crashlab.ingest.lake import Lake
from crashlab.ingest.paths import SHARED_REAL
from crashlab.ingest.pipeline import ingest_paths

US = 1_760_054_400_000_000  # 2025-10-10 00:00 UTC in µs
MS = US // 1000


def write_gz(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()))
    return path


def write_zip(path: Path, text: str, checksum: bool | str = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(path.name[:-4] + ".csv", text)
    if checksum:
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if checksum is True else checksum
        path.with_name(path.name + ".CHECKSUM").write_text(f"{digest}  {path.name}\n")
    return path


def ingest(tmp_path: Path, *files: Path, options: Options | None = None):
    lake = Lake.open(tmp_path / "lake")
    return lake, ingest_paths(list(files), lake, options or Options())


def read(lake: Lake, table: str) -> pl.DataFrame:
    files = lake.files(table)
    return pl.concat([pl.read_parquet(f) for f in files]).sort("ts") if files else pl.DataFrame()


# ---- symbols ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "exchange,native,venue,market,symbol",
    [
        ("binance-delivery", "ATOMUSD_PERP", "binance", "perp", "ATOM/USD:ATOM"),
        ("binance-delivery", "BTCUSD_251226", "binance", "future", "BTC/USD:BTC-251226"),
        ("coinbase", "ATOM-USD", "coinbase", "spot", "ATOM/USD"),
        ("binance", "BTCUSDT", "binance", "spot", "BTC/USDT"),
        ("binance", "BNSOLSOL", "binance", "spot", "BNSOL/SOL"),
        ("binance", "FDUSDUSDT", "binance", "spot", "FDUSD/USDT"),
        ("binance-futures", "BTCUSDT", "binance", "perp", "BTC/USDT:USDT"),
        ("binance-futures", "1000PEPEUSDT", "binance", "perp", "1000PEPE/USDT:USDT"),
        ("gemini", "DOGEUSD", "gemini", "spot", "DOGE/USD"),
        ("okex-swap", "BTC-USD-SWAP", "okx", "perp", "BTC/USD:BTC"),
        ("bybit", "SOLUSDT", "bybit", "perp", "SOL/USDT:USDT"),
        ("hyperliquid", "BTC", "hyperliquid", "perp", "BTC/USDC:USDC"),
        ("deribit", "BTC-PERPETUAL", "deribit", "perp", "BTC/USD:BTC"),
    ],
)
def test_symbol_mapping(exchange, native, venue, market, symbol):
    ins = tardis_instrument(exchange, native)
    assert (ins.venue, ins.market, ins.symbol) == (venue, market, symbol)


def test_contract_sizes_and_refusals():
    assert tardis_instrument("binance-delivery", "BTCUSD_PERP").contract_size == 100
    assert tardis_instrument("binance-delivery", "ETHUSD_PERP").contract_size == 10
    assert bv_symbol("um", "BTCUSDT").symbol == "BTC/USDT:USDT"
    assert bv_symbol("cm", "BTCUSD_PERP").contract_unit == "quote"
    with pytest.raises(UnknownExchange, match="unknown Tardis exchange 'ftx'"):
        tardis_instrument("ftx", "BTC-PERP")
    for bad in ("../x", "BTC/../..", ""):
        with pytest.raises(UnknownSymbol):
            tardis_instrument("coinbase", bad)
    with pytest.raises(UnknownSymbol):
        tardis_instrument("hyperliquid", "@107")


# ---- Tardis ----------------------------------------------------------------------------------

def test_tardis_coinm_contracts_are_converted(tmp_path):
    f = write_gz(
        tmp_path / "binance-delivery_trades_2025-10-10_ATOMUSD_PERP.csv.gz",
        "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
        f"binance-delivery,ATOMUSD_PERP,{US + 1000},{US + 2000},1,buy,4.0,5\n"
        f"binance-delivery,ATOMUSD_PERP,{US + 3000},{US + 4000},2,sell,5.0,2\n"
        f"binance-delivery,ATOMUSD_PERP,{US + 5000},{US + 6000},3,unknown,5.0,1\n",
    )
    lake, (rep,) = ingest(tmp_path, f)
    assert rep.status == "written" and rep.rows_written == 3
    t = read(lake, "trades")
    assert t["symbol"].unique().to_list() == ["ATOM/USD:ATOM"]
    # 5 contracts × 10 USD / 4.0 = 12.5 ATOM; USD notional 50
    assert t["amount"].to_list() == pytest.approx([12.5, 4.0, 2.0])
    assert t["quote_amount"].to_list() == pytest.approx([50.0, 20.0, 10.0])
    assert t["side"].to_list() == ["buy", "sell", None]
    assert t["trade_id"].to_list() == ["1", "2", "3"]
    dec = json.loads(lake.manifest()["decisions"][0])
    assert dec["contract_size"] == {"ATOMUSD_PERP": "10 quote"} and dec["ts_unit"] == "us"


def test_tardis_book_types(tmp_path):
    cols5 = ",".join(f"asks[{i}].price,asks[{i}].amount,bids[{i}].price,bids[{i}].amount" for i in range(5))
    levels = ",".join(f"{101 + i},1,{100 - i},2" for i in range(4)) + ",,,,"
    snap = write_gz(
        tmp_path / "binance-futures_book_snapshot_5_2025-10-10_BTCUSDT.csv.gz",
        f"exchange,symbol,timestamp,local_timestamp,{cols5}\n"
        f"binance-futures,BTCUSDT,{US + 10},{US + 20},{levels}\n",
    )
    l2 = write_gz(
        tmp_path / "binance-futures_incremental_book_L2_2025-10-10_BTCUSDT.csv.gz",
        "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n"
        f"binance-futures,BTCUSDT,{US},{US + 5},true,bid,100,1.5\n"
        f"binance-futures,BTCUSDT,{US},{US + 5},true,ask,101,2\n"
        f"binance-futures,BTCUSDT,{US + 9},{US + 11},false,bid,100,0\n",
    )
    quotes = write_gz(
        tmp_path / "coinbase_quotes_2025-10-10_BTC-USD.csv.gz",
        "exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount\n"
        f"coinbase,BTC-USD,{US},{US},0.5,101,100,0.7\n"
        f"coinbase,BTC-USD,{US + 1},{US + 1},,,100,0.6\n",
    )
    tick = write_gz(
        tmp_path / "binance-futures_derivative_ticker_2025-10-10_BTCUSDT.csv.gz",
        "exchange,symbol,timestamp,local_timestamp,funding_timestamp,funding_rate,predicted_funding_rate,"
        "open_interest,last_price,index_price,mark_price\n"
        f"binance-futures,BTCUSDT,{US},{US},{US + 8 * 3600 * 10**6},0.0001,,1000,100.5,100.4,100.45\n"
        f"binance-futures,BTCUSDT,{US + 1},{US + 1},,,,,,,\n",
    )
    liq = write_gz(
        tmp_path / "binance-futures_liquidations_2025-10-10_BTCUSDT.csv.gz",
        "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n"
        f"binance-futures,BTCUSDT,{US},{US},,sell,99,0.3\n",
    )
    lake, reps = ingest(tmp_path, snap, l2, quotes, tick, liq)
    assert [r.status for r in reps] == ["written"] * 5, [r.message for r in reps]
    snaps = read(lake, "book_snapshots")
    five = snaps.filter(pl.col("venue") == "binance")
    assert five.height == 8 and sorted(five["level"].unique().to_list()) == [0, 1, 2, 3]
    assert five.filter((pl.col("side") == "bid") & (pl.col("level") == 0))["price"].item() == 100
    assert snaps.filter(pl.col("venue") == "coinbase").height == 3
    deltas = read(lake, "book_deltas")
    assert deltas["amount"].to_list() == [1.5, 2.0, 0.0] or sorted(deltas["amount"].to_list()) == [0.0, 1.5, 2.0]
    prices = read(lake, "prices")
    assert sorted(prices["price_type"].to_list()) == ["index", "last", "mark"]
    assert read(lake, "funding")["rate"].to_list() == [0.0001]
    assert read(lake, "open_interest")["open_interest_value"].item() == pytest.approx(1000 * 100.45)
    assert read(lake, "liquidations")["side"].to_list() == ["sell"]
    tick_rep = reps[3]
    assert tick_rep.rows_read == 2 and tick_rep.rows_quarantined == 1
    q = lake.quarantine()
    assert "ticker line carries no value" in q["reason"].to_list()


def test_tardis_header_is_checked_and_sniffed_without_name(tmp_path):
    f = write_gz(tmp_path / "some.csv.gz", "exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n")
    assert detect(f) is tardis
    with pytest.raises(FormatError, match="share one header"):
        tardis.parse(f, Options())


# ---- Binance public data -----------------------------------------------------------------------

def test_spot_aggtrades_without_header_in_us(tmp_path):
    text = (
        f"1,100.5,0.1,10,11,{US + 1},True,True\n"
        f"2,100.6,0.2,12,12,{US + 2},False,True\n"
    )
    f = write_zip(tmp_path / "spot" / "BTCUSDC-aggTrades-2025-10-10.zip", text, checksum=True)
    lake, (rep,) = ingest(tmp_path, f)
    assert rep.status == "written" and rep.rows_written == 2
    t = read(lake, "trades")
    assert t["side"].to_list() == ["sell", "buy"]  # buyer maker => taker sold
    assert t["symbol"].to_list() == ["BTC/USDC"] * 2 and t["market"].to_list() == ["spot"] * 2
    assert t["ts"][0].isoformat() == "2025-10-10T00:00:00.000001+00:00"
    dec = json.loads(lake.manifest()["decisions"][0])
    assert dec["checksum"] == "verified" and dec["ts_unit"] == "us" and dec["header"] is False


def test_futures_trades_with_header_and_coinm(tmp_path):
    um = write_zip(
        tmp_path / "BTCUSDT-aggTrades-2025-10-10.zip",
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"
        f"5,120000.0,0.01,1,2,{MS + 5},false\n",
    )
    cm = write_zip(
        tmp_path / "BTCUSD_PERP-trades-2025-10-10.zip",
        "id,price,qty,base_qty,time,is_buyer_maker\n" f"7,120000.0,3,0.0025,{MS + 9},true\n",
    )
    lake, reps = ingest(tmp_path, um, cm)
    assert [r.status for r in reps] == ["written", "written"], [r.message for r in reps]
    t = read(lake, "trades")
    row_um = t.filter(pl.col("native_symbol") == "BTCUSDT").row(0, named=True)
    assert row_um["symbol"] == "BTC/USDT:USDT" and row_um["side"] == "buy" and row_um["quote_amount"] == pytest.approx(1200)
    row_cm = t.filter(pl.col("native_symbol") == "BTCUSD_PERP").row(0, named=True)
    assert row_cm["symbol"] == "BTC/USD:BTC" and row_cm["amount"] == pytest.approx(0.0025)
    assert row_cm["quote_amount"] == pytest.approx(300)  # 3 contracts × 100 USD


KLINE_HEADER = ",".join(binance_vision.KLINES) + "\n"


def _kline_rows(n: int, volume: str, step_ms: int = 60_000) -> str:
    return "".join(
        f"{MS + i * step_ms},100.12345,101.5,99.87654,100.5555,{volume},{MS + (i + 1) * step_ms - 1},{volume},60,0,0,0\n"
        for i in range(n)
    )


def test_price_kline_is_never_labelled_by_guess(tmp_path):
    f = write_zip(tmp_path / "um" / "BTCUSDT-1m-2025-10-10.zip", KLINE_HEADER + _kline_rows(3, "0"))
    parsed = binance_vision.parse(f, Options())
    bars = parsed.tables["bars"]
    assert bars["price_type"].unique().to_list() == ["unknown_price"]
    assert "unknown_price" in parsed.decisions["warning"] and parsed.decisions["kline_evidence"]["zero_volume"]
    told = binance_vision.parse(f, Options(price_type="mark"))
    assert told.tables["bars"]["price_type"].unique().to_list() == ["mark"]
    assert told.decisions["price_type_basis"] == "--price-type"
    traded = write_zip(tmp_path / "um2" / "BTCUSDT-1m-2025-10-10.zip", KLINE_HEADER + _kline_rows(3, "12.5"))
    assert binance_vision.parse(traded, Options()).tables["bars"]["price_type"].unique().to_list() == ["trade"]
    with pytest.raises(FormatError, match="trade kline"):
        binance_vision.parse(traded, Options(price_type="mark"))
    folder = write_zip(tmp_path / "markPriceKlines" / "BTCUSDT" / "1m" / "BTCUSDT-1m-2025-10-10.zip", KLINE_HEADER + _kline_rows(2, "0"))
    p = binance_vision.parse(folder, Options())
    assert p.tables["bars"]["price_type"].unique().to_list() == ["mark"] and p.decisions["price_type_basis"] == "folder name"


def test_coinm_kline_volumes(tmp_path):
    row = f"{MS},100,101,99,100.5,40,{MS + 59_999},0.4,12,10,0.1,0\n"
    f = write_zip(tmp_path / "cm" / "ETHUSD_PERP-1m-2025-10-10.zip", KLINE_HEADER + row)
    b = binance_vision.parse(f, Options()).tables["bars"].row(0, named=True)
    assert b["symbol"] == "ETH/USD:ETH" and b["volume"] == 0.4 and b["quote_volume"] == 400 and b["taker_buy_volume"] == 0.1


def test_bookdepth_metrics_funding(tmp_path):
    depth = tmp_path / "BTCUSDT-bookDepth-2025-10-10.csv"
    depth.write_text(
        "timestamp,percentage,depth,notional,weighted_avg_price\n"
        "2025-10-10 00:00:07,-1,10.5,1260000,120000\n2025-10-10 00:00:07,1,9.5,1140000,120000\n"
    )
    metrics = write_zip(
        tmp_path / "BTCUSDT-metrics-2025-10-10.zip",
        ",".join(binance_vision.METRICS) + "\n"
        "2025-10-10 00:05:00,BTCUSDT,90000,1.08e10,1,1,1,1\n"
        "2025-10-10 00:05:00,BTCUSDT,90000,1.08e10,1,1,1,1\n",
    )
    funding = write_zip(
        tmp_path / "BTCUSDT-fundingRate-2025-10.zip",
        "calc_time,funding_interval_hours,last_funding_rate\n" f"{MS},8,0.0001\n{MS + 8 * 3600_000},8,-0.0002\n",
    )
    lake, reps = ingest(tmp_path, depth, metrics, funding)
    assert [r.status for r in reps] == ["written"] * 3, [r.message for r in reps]
    bands = read(lake, "depth_bands")
    assert sorted(bands["band_pct"].to_list()) == [-1.0, 1.0] and bands["symbol"].unique().to_list() == ["BTC/USDT:USDT"]
    assert reps[1].rows_written == 1 and reps[1].rows_quarantined == 1  # the duplicated metrics line
    assert read(lake, "open_interest")["open_interest"].to_list() == [90000]
    assert read(lake, "funding")["rate"].to_list() == [0.0001, -0.0002]


# ---- generic bars and the Uniswap pool -------------------------------------------------------

def test_generic_bars_csv_needs_flags(tmp_path):
    f = tmp_path / "my_bars.csv"
    f.write_text("timestamp,open,high,low,close,volume\n2025-10-10 21:00:00,1,1.01,0.9,0.95,10\n2025-10-10 21:01:00,0.95,0.96,0.7,0.8,30\n")
    assert detect(f) is generic_bars
    with pytest.raises(FormatError, match="--venue"):
        generic_bars.parse(f, Options())
    lake, (rep,) = ingest(tmp_path, f, options=Options(venue="binance", market="spot", symbol="USDE/USDT"))
    assert rep.status == "written" and rep.rows_written == 2
    bars = read(lake, "bars")
    assert bars["interval"].to_list() == ["1m", "1m"] and bars["price_type"].to_list() == ["trade", "trade"]
    assert bars["low"].to_list() == [0.9, 0.7]
    dec = json.loads(lake.manifest()["decisions"][0])
    assert dec["interval_basis"] == "most common spacing" and dec["price_type_basis"] == "volume present and non-zero"


def test_stray_csv_is_not_claimed(tmp_path):
    f = tmp_path / "notes.csv"
    f.write_text("timestamp,sol_open,sol_close\n2025-10-10 19:00:00,207,208\n")
    with pytest.raises(FormatError, match="unknown format"):
        detect(f)


def test_uniswap_pool_orientation_synthetic(tmp_path):
    # token0 = USDe (18 decimals), token1 = USDT (6): raw ratio 0.995e-12 -> 0.995 USDT per USDe
    sqrt = int((0.995e-12) ** 0.5 * 2**96)
    df = pl.DataFrame({
        "blockNumber": [1, 2], "liquidity": ["1", "1"], "sqrtPrice": [str(sqrt), str(sqrt)], "tick": ["0", "0"],
        "token0Price": [str(1 / 0.995), "1.0"], "token1Price": ["0.995", "0.5"],
        "totalValueLockedUSD": ["1", "1"], "timestamp": [1760130000, 1760130012],
    })
    f = tmp_path / "pool_usde.parquet"
    df.write_parquet(f)
    assert detect(f) is uniswap_pool
    p = uniswap_pool.parse(f, Options())
    assert p.tables["prices"]["price"][0] == pytest.approx(0.995) and p.decisions["decimals_gap"] == 12
    assert p.rejected["_row"].to_list() == [2]  # 0.5 contradicts sqrtPrice


@pytest.mark.skipif(not (SHARED_REAL / "onchain" / "uniswap_usde.parquet").exists(), reason="real data folder absent")
def test_uniswap_real_pool_is_usdt_per_usde():
    p = uniswap_pool.parse(SHARED_REAL / "onchain" / "uniswap_usde.parquet", Options())
    prices = p.tables["prices"]["price"]
    assert 0.99 < prices.min() < 0.996 and 1.0 <= prices.max() < 1.001
    assert p.rejected.height == 0 and p.decisions["decimals_gap"] == 12


# ---- Hyperliquid ---------------------------------------------------------------------------------

def _fill(coin, px, sz, side, t, tid, crossed, **extra):
    return {"coin": coin, "px": px, "sz": sz, "side": side, "time": t, "startPosition": "0", "dir": "Open Long",
            "closedPnl": "0", "hash": "0xabc", "oid": 1, "crossed": crossed, "fee": "0", "tid": tid, "feeToken": "USDC", **extra}


def _block_file(path: Path) -> Path:
    t = MS + 21 * 3600_000
    liq = {"liquidatedUser": "0xbad", "markPx": "3900.0", "method": "market"}
    blocks = [
        {"local_time": "2025-10-10T21:00:00.123456789", "block_time": "2025-10-10T21:00:00.1", "block_number": 1,
         "events": [["0xtaker", _fill("BTC", "110000", "0.5", "A", t, 11, True)],
                    ["0xmaker", _fill("BTC", "110000", "0.5", "B", t, 11, False)]]},
        {"local_time": "2025-10-10T21:00:01.000000001", "block_time": "2025-10-10T21:00:01", "block_number": 2,
         "events": [["0xbad", _fill("ETH", "3890", "2", "A", t + 1000, 12, True, liquidation=liq)],
                    ["0xmm", _fill("ETH", "3890", "2", "B", t + 1000, 12, False)],
                    ["0xmm2", _fill("SOL", "180", "3", "A", t + 1500, 13, False)],
                    ["0xspot", _fill("@107", "1", "3", "A", t + 1600, 14, True)]]},
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lz4.frame.compress("\n".join(json.dumps(b) for b in blocks).encode() + b"\n"))
    return path


def test_hyperliquid_fills_by_block(tmp_path):
    f = _block_file(tmp_path / "node_fills_by_block" / "hourly" / "20251010" / "21.lz4")
    assert detect(f) is hyperliquid
    lake, (rep,) = ingest(tmp_path, f)
    assert rep.status == "written", rep.message
    assert rep.rows_read == 4 and rep.rows_written == 3 and rep.rows_quarantined == 1  # @107 unmapped
    t = read(lake, "trades")
    assert t["trade_id"].to_list() == ["11", "12", "13"]
    assert t["side"].to_list() == ["sell", "sell", "buy"]  # SOL: only the maker's sell fill -> taker bought
    assert t["is_liquidation"].to_list() == [False, True, False]
    assert t["symbol"].to_list() == ["BTC/USDC:USDC", "ETH/USDC:USDC", "SOL/USDC:USDC"]
    assert t["local_ts"][0].isoformat() == "2025-10-10T21:00:00.123456+00:00"
    liqs = read(lake, "liquidations")
    assert liqs.select("side", "account", "amount").rows() == [("sell", "0xbad", 2.0)]
    q = lake.quarantine()
    assert q["reason"][0].startswith("symbol not understood") and "@107" in q["raw"][0]


def test_hyperliquid_node_fills_and_l2book(tmp_path):
    t = MS + 3600_000
    lines = [["0xa", _fill("BTC", "110000", "0.1", "B", t, 1, True)], ["0xb", _fill("BTC", "110000", "0.1", "A", t, 1, False)]]
    f = tmp_path / "node_fills" / "hourly" / "20251010" / "1.lz4"
    f.parent.mkdir(parents=True)
    f.write_bytes(lz4.frame.compress(("\n".join(json.dumps(x) for x in lines) + "\nnot json\n").encode()))
    p = hyperliquid.parse(f, Options())
    assert p.rows_read == 2 and p.tables["trades"]["side"].to_list() == ["buy"] and p.rejected.height == 1
    snap = {"time": "2025-10-10T01:00:02.003600000", "ver_num": 1, "raw": {"channel": "l2Book", "data": {
        "coin": "BTC", "time": t + 2000,
        "levels": [[{"px": "109999", "sz": "1.5", "n": 3}, {"px": "109998", "sz": "2", "n": 1}], [{"px": "110001", "sz": "0.7", "n": 2}]]}}}
    book = tmp_path / "market_data" / "20251010" / "1" / "l2Book" / "BTC.lz4"
    book.parent.mkdir(parents=True)
    book.write_bytes(lz4.frame.compress((json.dumps(snap) + "\n").encode()))
    lake, reps = ingest(tmp_path, f, book)
    assert [r.status for r in reps] == ["written", "written"], [r.message for r in reps]
    snaps = read(lake, "book_snapshots")
    assert snaps.select("side", "level", "price").rows() == [("ask", 0, 110001.0), ("bid", 0, 109999.0), ("bid", 1, 109998.0)] or \
        sorted(snaps.select("side", "level", "price").rows()) == [("ask", 0, 110001.0), ("bid", 0, 109999.0), ("bid", 1, 109998.0)]


def test_hyperliquid_truncated_lz4_is_refused(tmp_path):
    f = _block_file(tmp_path / "node_fills_by_block" / "hourly" / "20251010" / "21.lz4")
    f.write_bytes(f.read_bytes()[:-40])
    lake, (rep,) = ingest(tmp_path, f)
    assert rep.status == "error" and "21.lz4" in rep.message and "LZ4" in rep.message
    assert lake.files("trades") == []
