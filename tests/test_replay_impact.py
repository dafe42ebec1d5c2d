"""The impact model (replay/impact.py): log walk, bounded far density, resilience, floor; run tables
without NaN; and a check against the real Binance BTCUSDT bookDepth file."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

from crashlab.ingest.formats.base import Parsed
from crashlab.ingest.lake import Lake
from crashlab.ingest.paths import SHARED_REAL
from crashlab.ingest.pipeline import ingest_parsed, ingest_paths
from crashlab.replay.books import GRID, ladder_from_bands, ladder_from_trades
from crashlab.replay.engine import run_replay
from crashlab.replay.impact import ImpactState, extend, observed_extent, walk_log
from crashlab.replay.scenario import parse_scenario
from crashlab.replay.state import build_tape

UTC = timezone.utc
T0 = datetime(2025, 10, 10, 21, 0, tzinfo=UTC)
BOOKDEPTH = SHARED_REAL / "binance-vision" / "futures-um-bookDepth" / "BTCUSDT-bookDepth-2025-10-10.csv"
ONE = int(np.flatnonzero(GRID == 0.01)[0])


def book_ladder(d1: float, extent: float = 0.01) -> np.ndarray:
    """Depth d1 within 1 %, spread evenly up to `extent`, nothing beyond (a 20-level book)."""
    return np.where(GRID <= extent, d1 * GRID / 0.01, d1 * extent / 0.01)


# ---- the ladder ------------------------------------------------------------------------------------
def test_far_density_is_bounded_fraction_of_depth_within_1pct():
    lad = extend(book_ladder(50e6), "sell", 0.12)
    assert lad.extent == pytest.approx(0.01)
    # beyond the book: 0.12 x (50M per 1 %) per unit of log price
    assert lad.rho_far == pytest.approx(0.12 * 50e6 / 0.01)
    # selling 6M past the book moves the price about 1 % more (log)
    assert lad.dist(50e6 + 6e6) - lad.dist(50e6) == pytest.approx(0.01, rel=1e-6)


def test_band_and_trades_tails_are_not_taken_as_data():
    x = np.array([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5], dtype=float)
    y = np.array([250, 220, 190, 150, 100, 100, 150, 190, 220, 250], dtype=float) * 1e6  # concave, as real books
    bid, _ = ladder_from_bands(x, y)
    assert GRID[observed_extent(bid)] == pytest.approx(0.05)  # books.py's linear tail past 5 % is dropped
    assert GRID[observed_extent(ladder_from_trades(1e8, 0.5))] == pytest.approx(0.01)
    assert observed_extent(np.zeros(len(GRID))) == -1


@settings(max_examples=60, deadline=None)
@given(q=st.floats(1e3, 1e12), c=st.floats(0, 1e10), d1=st.floats(1e4, 1e9), ext=st.sampled_from([0.001, 0.01, 0.05]))
def test_walk_never_reaches_zero_and_is_monotone(q, c, d1, ext):
    lad = extend(book_ladder(d1, ext), "sell", 0.12)
    l0, l1, mean = walk_log(lad, c, q, 2.0)
    assert 0 <= l0 <= l1 <= 2.0
    assert math.exp(-(l1 - l0)) - 1e-12 <= mean <= 1.0 + 1e-12  # fills between the start and the end price
    _, l1b, _ = walk_log(lad, c, 2 * q, 2.0)
    assert l1b >= l1


# ---- the state: resilience and floor --------------------------------------------------------------
def test_resilience_half_life_and_permanent_part():
    imp = ImpactState(half_life_s=100.0, permanent_fraction=0.25)
    _, dlog = imp.execute(1, 0.0, "sell", 20e6, book_ladder(100e6))
    assert dlog < 0
    assert imp.level(1, 0.0) == pytest.approx(dlog)
    assert imp.level(1, 100.0) == pytest.approx(0.25 * dlog + 0.75 * dlog / 2)
    assert imp.level(1, 1e6) == pytest.approx(0.25 * dlog)
    t = np.array([0.0, 100.0, 1e6])
    assert np.allclose(imp.replay_series(1, t), [imp.level(1, x) for x in t])


def test_consumed_depth_refills():
    """A second sell right after the first walks deeper than the same sell after the book refilled."""
    lad = book_ladder(100e6)
    a = ImpactState(half_life_s=60.0, permanent_fraction=0.0)
    a.execute(1, 0.0, "sell", 80e6, lad)
    _, soon = a.execute(1, 1.0, "sell", 40e6, lad)
    b = ImpactState(half_life_s=60.0, permanent_fraction=0.0)
    b.execute(1, 0.0, "sell", 80e6, lad)
    _, late = b.execute(1, 3600.0, "sell", 40e6, lad)
    assert soon < late < 0


def test_floor_caps_the_level():
    imp = ImpactState.from_params({"max_log_impact": 1.0, "max_log_walk": 2.0})
    for k in range(20):
        factor, _ = imp.execute(7, float(k), "sell", 1e12, book_ladder(1e6))
        assert 0 < factor <= 1
    assert imp.level(7, 19.0) >= -1.0 - 1e-12
    assert imp.capped > 0
    # buys mirror it upward, never above the cap either
    up = ImpactState.from_params({"max_log_impact": 1.0})
    f, d = up.execute(7, 0.0, "buy", 1e12, book_ladder(1e6))
    assert f >= 1 and 0 < d <= 1.0


# ---- run tables: no NaN, liquidation notional ----------------------------------------------------
def _put(lake: Lake, table: str, df: pl.DataFrame, tag: str) -> None:
    rep = ingest_parsed(lake, Parsed(f"test.{table}", df["_row"].n_unique(), {table: df}), path=tag,
                        sha256=hashlib.sha256(tag.encode()).hexdigest(), source="test")
    assert rep.rows_quarantined == 0, rep


def _bars(prices: list[float]) -> pl.DataFrame:
    ts = [T0 + timedelta(minutes=i) for i in range(len(prices))]
    return pl.DataFrame({"ts": ts, "open": prices, "high": prices, "low": prices, "close": prices}).with_columns(
        pl.col("ts").dt.cast_time_unit("us"), pl.lit("binance").alias("venue"), pl.lit("perp").alias("market"),
        pl.lit("BTC/USDT:USDT").alias("symbol"), pl.lit("BTCUSDT").alias("native_symbol"), pl.lit("1m").alias("interval"),
        pl.lit("trade").alias("price_type"), pl.lit(100.0).alias("volume"), (pl.col("close") * 100).alias("quote_volume"),
        pl.lit(None, dtype=pl.Int64).alias("trade_count"), pl.lit(None, dtype=pl.Float64).alias("taker_buy_volume"),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("_row"))


def test_run_tables_have_no_nan_and_liquidations_have_notional(tmp_path):
    lake = Lake.open(tmp_path / "lake")
    prices = [100.0, 99.0, 97.0, 94.0, 90.0, 86.0, 84.0, 85.0, 86.0, 87.0]
    _put(lake, "bars", _bars(prices), "btc-path")
    sc = parse_scenario({"scenario": {"step": "1s", "bar_path": "close"}, "account": [
        {"id": f"a{k}", "rule": "binance_usdm", "position": [
            {"symbol": "BTC/USDT:USDT", "notional": 2e7, "entry": 100, "margin": 2e7 / lev}]}
        for k, lev in enumerate((5, 10, 20, 50))]})
    r = run_replay(lake, sc, T0, T0 + timedelta(minutes=len(prices)), out_dir=tmp_path / "run")
    assert r.liquidations.height >= 3
    liq = pl.read_parquet(tmp_path / "run" / "liquidations.parquet")
    assert liq["quote_amount"].null_count() == 0
    assert (liq["quote_amount"] > 0).all()
    assert (liq["price"] > 0).all() and (liq["amount"] > 0).all()
    for name in ("events", "liquidations", "price_path", "accounts"):
        df = pl.read_parquet(tmp_path / "run" / f"{name}.parquet")
        for c, t in df.schema.items():
            if t == pl.Float64:
                assert df[c].is_nan().sum() == 0, f"{name}.{c} has NaN"
    # the model price stays positive and within the floor of its start
    pp = r.price_path
    assert (pp["model_price"] > 0).all()
    assert (pp["model_price"] >= pp["model_price"][0] * math.exp(-3.0) * 0.999).all()


# ---- real data: Binance BTCUSDT bookDepth --------------------------------------------------------
@pytest.fixture(scope="module")
def real_lake(tmp_path_factory) -> Lake:
    if not BOOKDEPTH.exists():
        pytest.skip(f"real Binance bookDepth not found at {BOOKDEPTH} (../shared/data/real absent)")
    lake = Lake.open(tmp_path_factory.mktemp("real_bookdepth"))
    ingest_paths([BOOKDEPTH], lake)
    return lake


def test_real_bookdepth_impact_is_sane(real_lake):
    """On the real ask ladder (the bid side carries a stale crossed order), US$100M walks a few
    tenths of a percent before the crash and more at the 21:22 depth low, never absurdly."""
    tape = build_tape(real_lake, datetime(2025, 10, 10, 18, 0, tzinfo=UTC), datetime(2025, 10, 10, 22, 0, tzinfo=UTC),
                      step=timedelta(seconds=10))
    (i,) = [k for k, inst in enumerate(tape.instruments) if inst == ("binance", "perp", "BTC/USDT:USDT")]
    assert tape.depth_source[i] == "depth_bands"
    before = tape.ask[i][(3600 * 2) // 10]  # 20:00
    low = tape.ask[i][(3600 * 3 + 22 * 60 + 40) // 10]  # 21:22:40, after the 57M print at 21:22:31
    assert before[ONE] > 2e8 and low[ONE] < 1e8
    moves = {}
    for name, lad in (("before", before), ("low", low)):
        imp = ImpactState.from_params({})
        _, moves[name] = imp.execute(i, 0.0, "buy", 1e8, lad)
    assert 0 < moves["before"] < 0.01
    assert moves["before"] < moves["low"] < 0.10
    # a US$1B buy into the thin book: large but finite, under the walk cap
    _, big = ImpactState.from_params({}).execute(i, 0.0, "buy", 1e9, low)
    assert moves["low"] < big <= 2.0
