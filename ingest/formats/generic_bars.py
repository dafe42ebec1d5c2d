"""OHLCV bars from any Parquet or CSV file (e.g. usde/usde_minute_binance.parquet) -> bars.

Such a file says nothing about where its prices come from, so the user says it:
`--venue binance --market spot --symbol USDE/USDT` are required; `--interval` defaults to the
most common spacing of the timestamps and `--price-type` to `trade` when a volume column carries
volume (both recorded in the decisions). This importer only claims files whose columns include
open, high, low and close, so stray CSVs are not mistaken for bars.

Time: a pandas index stored as `__index_level_0__` (or the index the pandas metadata names), or a
column called ts / timestamp / time / datetime / date / open_time. Naive datetimes are taken as
UTC (recorded); epoch numbers get their unit from their magnitude. `_row` is the 1-based Parquet
row, or the CSV line (header = line 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from . import common as c
from . import malformed as mal
from .base import FormatError, Options, Parsed

FORMAT = "bars"
SOURCE = "file"

_OHLC = {"open", "high", "low", "close"}
_TIME_NAMES = ("ts", "timestamp", "time", "datetime", "date", "open_time", "__index_level_0__")
_ALIASES = {
    "volume": ("volume", "vol", "base_volume"),
    "quote_volume": ("quote_volume", "quote_asset_volume", "quotevolume"),
    "trade_count": ("trade_count", "count", "trades", "number_of_trades"),
    "taker_buy_volume": ("taker_buy_volume", "taker_buy_base_asset_volume"),
}
_FLAGS = "--venue VENUE --market spot|perp|future --symbol BASE/QUOTE [--interval 1m] [--price-type trade]"


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(".parquet")


def _names(path: Path, head: str) -> list[str]:
    if _is_parquet(path):
        try:
            return list(pq.read_schema(path).names)
        except Exception:
            return []
    first = head.lstrip("\ufeff").splitlines()[0] if head else ""
    return [h.strip().strip('"') for h in first.split(",")]


def sniff(path: Path, head: str) -> bool:
    name = path.name.lower()
    if not (name.endswith((".parquet", ".csv", ".csv.gz"))):
        return False
    return _OHLC <= {n.lower() for n in _names(path, head)}


def _pandas_index(path: Path) -> str | None:
    try:
        meta = pq.read_schema(path).metadata or {}
        info = json.loads(meta.get(b"pandas", b"{}"))
        idx = info.get("index_columns") or []
        return idx[0] if idx and isinstance(idx[0], str) else None
    except Exception:
        return None


def _interval(ts: pl.Series) -> str | None:
    d = ts.sort().diff().drop_nulls()
    d = d.filter(d.dt.total_microseconds() > 0)
    if len(d) == 0:
        return None
    mode = d.dt.total_seconds().mode().sort()[0]
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if mode % secs == 0:
            return f"{mode // secs}{unit}"
    return None


def parse(path: Path, options: Options) -> Parsed:
    missing = [f for f in ("venue", "market", "symbol") if not getattr(options, f)]
    if missing:
        raise FormatError(path, f"OHLCV bars do not say where they come from: pass {_FLAGS} (missing --{', --'.join(missing)})")
    from ..schema import MARKETS, VENUES

    if options.venue not in VENUES:
        raise FormatError(path, f"--venue {options.venue!r} is not a known venue ({', '.join(sorted(VENUES))})")
    if options.market not in MARKETS:
        raise FormatError(path, f"--market {options.market!r} is not one of {', '.join(sorted(MARKETS))}")
    decisions: dict = {"venue": options.venue, "market": options.market, "symbol": options.symbol}
    malformed = c.empty_rejected()
    if _is_parquet(path):
        try:
            df = pl.read_parquet(path)
        except Exception as e:
            raise FormatError(path, f"cannot read Parquet (truncated or corrupt?): {e}") from None
        df = df.with_row_index("_row", offset=1).with_columns(pl.col("_row").cast(pl.Int64))
    else:
        data = c.read_bytes(path)
        first = c.first_line(data)
        names = [h.strip().strip('"') for h in first.split(",")]
        if first:
            chunk = c.read_csv_cells(path, data, names, header=True)
            df, malformed = chunk.cells, chunk.malformed
        else:
            df = pl.DataFrame(schema={"_row": pl.Int64})
    lower = {n.lower(): n for n in df.columns if n != "_row"}
    if not _OHLC <= set(lower):
        raise FormatError(path, f"no open/high/low/close columns in {[n for n in df.columns if n != '_row']}")
    raw = df.select("_row", *[pl.col(n).cast(pl.String) for n in df.columns if n != "_row"])
    tcol = _pandas_index(path) if _is_parquet(path) else None
    if tcol not in df.columns:
        tcol = next((lower[n] for n in _TIME_NAMES if n in lower), None)
    if tcol is None:
        raise FormatError(path, f"no time column (looked for the pandas index and {', '.join(_TIME_NAMES[:-1])})")
    decisions["time_column"] = tcol
    t = df[tcol]
    rejected = [c.empty_rejected(), malformed]
    if isinstance(t.dtype, pl.Datetime):
        if t.dtype.time_zone is None:
            decisions["timezone"] = "naive datetimes taken as UTC"
            ts = t.dt.replace_time_zone("UTC")
        else:
            ts = t.dt.convert_time_zone("UTC")
        work = df.with_columns(ts.dt.cast_time_unit("us").alias("_ts"))
    elif t.dtype == pl.String:
        work = df.with_columns(pl.col(tcol).str.to_datetime(strict=False, time_zone="UTC").dt.cast_time_unit("us").alias("_ts"))
        if work["_ts"].is_null().all() and work.height:
            ints = df[tcol].cast(pl.Int64, strict=False)
            unit, ev = c.decide_unit(ints)
            decisions.update(ts_unit=unit, ts_unit_rows=ev)
            work = df.with_columns(ints.alias("_ts_i")).with_columns(c.to_utc_us("_ts_i", unit).alias("_ts"))
            rejected.append(c.unit_rejections(work, "_ts_i", unit, tcol))
        else:
            decisions["timezone"] = "text times without zone taken as UTC"
    else:
        ints = t.cast(pl.Int64, strict=False)
        unit, ev = c.decide_unit(ints)
        decisions.update(ts_unit=unit, ts_unit_rows=ev)
        work = df.with_columns(ints.alias("_ts_i")).with_columns(c.to_utc_us("_ts_i", unit).alias("_ts"))
        rejected.append(c.unit_rejections(work, "_ts_i", unit, tcol))

    def col(name: str) -> pl.Expr:
        return pl.col(lower[name]).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)

    def opt(kind: str, dtype: pl.DataType = pl.Float64) -> pl.Expr:
        for a in _ALIASES[kind]:
            if a in lower:
                e = pl.col(lower[a]).cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
                return e.cast(dtype, strict=False).alias(kind)
        return pl.lit(None, dtype=dtype).alias(kind)

    interval = options.interval or _interval(work["_ts"].drop_nulls())
    decisions["interval"] = interval
    decisions["interval_basis"] = "--interval" if options.interval else "most common spacing"
    if interval is None:
        raise FormatError(path, "cannot infer the bar interval: pass --interval")
    has_volume = any(a in lower for a in _ALIASES["volume"])
    if options.price_type:
        price_type, basis = options.price_type, "--price-type"
    elif has_volume and work.select(opt("volume").fill_null(0).abs().sum()).item() > 0:
        price_type, basis = "trade", "volume present and non-zero"
    else:
        raise FormatError(path, "no traded volume: are these mark/index prices? pass --price-type")
    decisions.update(price_type=price_type, price_type_basis=basis)
    bars = work.select(
        "_row", pl.col("_ts").alias("ts"), pl.lit(options.venue).alias("venue"), pl.lit(options.market).alias("market"),
        pl.lit(options.symbol).alias("symbol"), pl.lit(options.symbol.replace("/", "")).alias("native_symbol"),
        pl.lit(interval).alias("interval"), pl.lit(price_type).alias("price_type"),
        col("open").alias("open"), col("high").alias("high"), col("low").alias("low"), col("close").alias("close"),
        opt("volume"), opt("quote_volume"), opt("trade_count", pl.Int64), opt("taker_buy_volume"),
    )
    rej = pl.concat(rejected, how="vertical_relaxed").unique("_row", keep="first", maintain_order=True)
    return Parsed(
        format="bars.ohlcv", rows_read=df.height + malformed.height, tables={"bars": bars}, rejected=rej,
        day=c.file_day(path), decisions=decisions, raw=raw, malformed=mal.kinds(malformed),
    )
