"""Uniswap v3 pool state per block (Parquet: blockNumber, sqrtPrice, tick, token0Price, token1Price,
totalValueLockedUSD, timestamp) -> prices with price_type 'pool'.

Which column is the price: in the subgraph's naming `token1Price` is token1 per token0 and
`token0Price` its inverse. The symbol is BASE/QUOTE with base = token0, so price = token1Price.
That orientation is checked against `sqrtPrice`, not assumed: (sqrtPrice / 2^96)^2 is the raw
token1-per-token0 ratio, and token1Price / raw must be one power of ten (the decimals gap, 12
for USDe (18) / USDT (6)) on every row; rows that disagree are quarantined. For the USDe/USDT
pool this gives USDT per USDe, ~0.994–1.0001 on 10 October 2025.

The symbol comes from `--symbol BASE/QUOTE` (base = token0); a file whose name mentions USDe
defaults to USDE/USDT (recorded). `_row` is the 1-based Parquet row number.
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from . import common as c
from .base import FormatError, Options, Parsed

FORMAT = "uniswap"
SOURCE = "file"

REQUIRED = {"sqrtPrice", "token0Price", "token1Price", "timestamp"}


def _columns(path: Path) -> set[str]:
    try:
        return set(pq.read_schema(path).names)
    except Exception:
        return set()


def sniff(path: Path, head: str) -> bool:
    return path.name.lower().endswith(".parquet") and REQUIRED <= _columns(path)


def parse(path: Path, options: Options) -> Parsed:
    try:
        df = pl.read_parquet(path)
    except Exception as e:
        raise FormatError(path, f"cannot read Parquet (truncated or corrupt?): {e}") from None
    missing = REQUIRED - set(df.columns)
    if missing:
        raise FormatError(path, f"not a Uniswap pool-state file: missing {sorted(missing)}")
    decisions: dict = {"price": "token1Price (token1 per token0; base = token0)"}
    if options.symbol:
        symbol, decisions["symbol_basis"] = options.symbol.upper(), "--symbol"
    elif "usde" in path.name.lower():
        symbol, decisions["symbol_basis"] = "USDE/USDT", "file name mentions USDe (token0 USDe, token1 USDT)"
    else:
        raise FormatError(path, "which pool is this? pass --symbol BASE/QUOTE (base = token0)")
    df = df.with_row_index("_row", offset=1).with_columns(pl.col("_row").cast(pl.Int64))
    raw = df.select("_row", *[pl.col(n).cast(pl.String) for n in df.columns if n != "_row"])
    ts_int = df["timestamp"].cast(pl.Int64, strict=False)
    unit, evidence = c.decide_unit(ts_int)
    decisions.update(ts_unit=unit, ts_unit_rows=evidence)
    work = df.with_columns(
        ts_int.alias("_ts_i"),
        pl.col("token1Price").cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False).alias("_p"),
        ((pl.col("sqrtPrice").cast(pl.String).cast(pl.Float64, strict=False) / 2.0**96) ** 2).alias("_raw"),
    ).with_columns(c.to_utc_us("_ts_i", unit).alias("_ts"), (pl.col("_p") / pl.col("_raw")).log10().alias("_gap"))
    gaps = work["_gap"].drop_nulls().drop_nans()
    gap = round(float(gaps.median())) if len(gaps) else 0
    decisions["decimals_gap"] = gap
    off = ((pl.col("_gap") - gap).abs() > math.log10(1 + 1e-6)).fill_null(False) & pl.col("_p").is_not_null()
    rejected = pl.concat(
        [
            c.unit_rejections(work, "_ts_i", unit, "timestamp"),
            c.rejections(work, off, "token1Price disagrees with sqrtPrice (orientation or decimals)"),
        ],
        how="vertical_relaxed",
    ).unique("_row", keep="first", maintain_order=True)
    prices = work.select(
        "_row", pl.col("_ts").alias("ts"), pl.lit("uniswap").alias("venue"), pl.lit("pool").alias("market"),
        pl.lit(symbol).alias("symbol"), pl.lit(symbol.replace("/", "-")).alias("native_symbol"),
        pl.lit("pool").alias("price_type"), pl.col("_p").alias("price"),
    )
    return Parsed(
        format="uniswap.pool_state", rows_read=df.height, tables={"prices": prices}, rejected=rejected,
        decisions=decisions, raw=raw,
    )
