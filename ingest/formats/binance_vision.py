"""Binance public-data archives (data.binance.vision), zipped or not, with or without a header.

  trades, aggTrades            -> trades (taker side: buyer is maker => taker sold)
  klines (1s … 1mo), mark/index/premiumIndex price klines -> bars
  bookDepth                    -> depth_bands (band_pct = percentage, depth in base, notional in quote)
  metrics                      -> open_interest
  fundingRate                  -> funding

Market (spot, USDⓈ-M `um`, COIN-M `cm`) comes, in this order, from the folder names (`spot`,
`um`, `cm` as in Binance's own paths, or our `futures-um-…` folders), the symbol (`_PERP` or
`_YYMMDD` is COIN-M), the column count (spot trades/aggTrades carry an extra best-match column),
a header (spot files have none), and then the timestamp unit; `--market` is only a last resort.
The decision and its basis are recorded.

Timestamps: spot files from 2025-01-01 are µs, everything else ms. The unit of each row is read
from its magnitude; the majority is the file's unit and must be the one expected for the market
and date, or the file is refused (a µs futures file is a mislabelled file, not something to fix
silently). Rows in another unit are quarantined with the reason.

Price klines (mark/index/premium) have the trade-kline layout; the file name cannot tell them
apart. Binance's folder names (`markPriceKlines`, …) or `--price-type` decide. Without either,
a file whose volume is zero on every bar is written with `price_type = 'unknown_price'` and a
warning in the decisions (the CLI prints it): never labelled `mark` or `index` by guess. A file
with traded volume is a trade kline; `--price-type mark` on it is refused.

COIN-M quantities are contracts (100 USD for BTC, 10 USD for others): base = contracts × size /
price and quote_amount = contracts × size; COIN-M klines carry the base volume in column 8.
A `<zip>.CHECKSUM` beside the zip is verified (sha256) before reading.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Iterator

import polars as pl

from . import common as c
from .base import FormatError, Options, Parsed
from .symbols import Instrument, UnknownSymbol, binance_vision

FORMAT = "binance"
SOURCE = "binance-vision"

INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1mo")
KINDS = ("trades", "aggTrades", "bookDepth", "metrics", "fundingRate")
_NAME = re.compile(
    r"^(?P<symbol>[A-Z0-9]+(?:_[A-Z0-9]+)?)-(?P<kind>" + "|".join(KINDS + INTERVALS)
    + r")-(?P<date>\d{4}-\d{2}(?:-\d{2})?)\.(?:csv|zip)$"
)

AGG = ["agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time", "is_buyer_maker"]
TRADES_UM = ["id", "price", "qty", "quote_qty", "time", "is_buyer_maker"]
TRADES_CM = ["id", "price", "qty", "base_qty", "time", "is_buyer_maker"]
#: Read as numbers when every cell is one (`common.read_csv_cells`); ids stay text, as stored.
_NUMERIC_TRADE_COLUMNS = {"price", "quantity", "qty", "quote_qty", "base_qty"}
KLINES = [
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "count",
    "taker_buy_volume", "taker_buy_quote_volume", "ignore",
]
BOOK_DEPTH = ["timestamp", "percentage", "depth", "notional"]
METRICS = [
    "create_time", "symbol", "sum_open_interest", "sum_open_interest_value", "count_toptrader_long_short_ratio",
    "sum_toptrader_long_short_ratio", "count_long_short_ratio", "sum_taker_long_short_vol_ratio",
]
FUNDING = ["calc_time", "funding_interval_hours", "last_funding_rate"]
_PRICE_FOLDERS = {"markpriceklines": "mark", "indexpriceklines": "index", "premiumindexklines": "premium"}
_PRICE_TYPES = ("trade", "mark", "index", "premium")
SPOT_US_FROM = date(2025, 1, 1)


def sniff(path: Path, head: str) -> bool:
    return _NAME.match(path.name) is not None


# ---- deciding the market ---------------------------------------------------------------------

def _path_market(path: Path) -> str | None:
    found = set()
    for part in path.parent.parts[-4:]:
        tokens = set(re.split(r"[-_./]", part.lower()))
        if "spot" in tokens:
            found.add("spot")
        if tokens & {"um", "usdm"}:
            found.add("um")
        if tokens & {"cm", "coinm"}:
            found.add("cm")
    return found.pop() if len(found) == 1 else None


def _price_folder(path: Path) -> str | None:
    for part in path.parent.parts[-4:]:
        if part.lower() in _PRICE_FOLDERS:
            return _PRICE_FOLDERS[part.lower()]
    return None


def _has_header(first: str) -> bool:
    cell = first.split(",", 1)[0].strip()
    return cell != "" and not re.fullmatch(r"-?\d+(\.\d*)?", cell)


def _decide_market(path: Path, kind: str, symbol: str, first: str, header: bool, opts: Options) -> tuple[str, str]:
    """(market, basis). `um`/`cm`/`spot`, from the strongest evidence available."""
    by_path = _path_market(path)
    if by_path:
        return by_path, "folder name"
    if re.search(r"_(PERP|\d{6})$", symbol):
        return "cm", "COIN-M symbol"
    if kind in ("bookDepth", "metrics", "fundingRate"):
        return "um", f"{kind} exists only for futures; symbol is not COIN-M"
    ncols = len(first.split(","))
    if kind == "aggTrades":
        return ("spot", "8 columns (best-match flag)") if ncols == 8 else ("um", f"{ncols} columns")
    if kind == "trades":
        if ncols == 7:
            return "spot", "7 columns (best-match flag)"
        if header and "base_qty" in first:
            return "cm", "base_qty column"
        return "um", f"{ncols} columns"
    if header:
        return "um", "header row (spot files have none)"
    if opts.market:
        m = {"spot": "spot", "perp": "um", "future": "um"}.get(opts.market)
        if m:
            return m, "--market"
    return "", "undecided"


# ---- columns -----------------------------------------------------------------------------------

def _instrument_and_columns(path, market: str, native: str, kind: str, width: int, header: bool, first: str,
                            decisions: dict):
    """The instrument and the column names a file must have; both readers (whole file, chunked) check
    the same way, so a file is refused for the same reason whichever path reads it."""
    try:
        ins = binance_vision(market, native)
    except UnknownSymbol as e:
        raise FormatError(path, str(e)) from None
    if ins.contract_size:
        decisions["contract_size"] = f"{ins.contract_size:g} USD per contract"
    cols = _columns(kind, market, width)
    if width != len(cols):
        raise FormatError(path, f"{width} columns, expected {len(cols)} for {market} {kind}: {','.join(cols)}", 1)
    if header:
        _check_header(path, first, cols)
    return ins, cols


def _columns(kind: str, market: str, width: int) -> list[str]:
    if kind == "aggTrades":
        return AGG + (["is_best_match"] if market == "spot" else [])
    if kind == "trades":
        base = TRADES_CM if market == "cm" else TRADES_UM
        return base + (["is_best_match"] if market == "spot" else [])
    if kind == "bookDepth":
        return BOOK_DEPTH + (["weighted_avg_price"] if width == 5 else [])
    if kind == "metrics":
        return METRICS
    if kind == "fundingRate":
        return FUNDING
    return KLINES


def _check_header(path: Path, first: str, expected: list[str]) -> None:
    got = [h.strip().lower() for h in first.split(",")]
    want = [e.lower() for e in expected]
    aliases = {"count": {"count", "number_of_trades"}, "quantity": {"quantity", "qty"}}
    ok = len(got) == len(want) and all(g == w or g in aliases.get(w, ()) for g, w in zip(got, want))
    if not ok:
        raise FormatError(path, f"header {first[:120]!r} is not Binance's for this file (expected {','.join(expected)})", 1)


# ---- building the tables -----------------------------------------------------------------------

def _key(ins: Instrument, native: str) -> list[pl.Expr]:
    return [
        pl.col("_ts").alias("ts"),
        pl.lit(ins.venue).alias("venue"),
        pl.lit(ins.market).alias("market"),
        pl.lit(ins.symbol).alias("symbol"),
        pl.lit(native).alias("native_symbol"),
    ]


def _side_from_maker(col: str) -> pl.Expr:
    b = c.boolean(col)
    return pl.when(b).then(pl.lit("sell")).when(~b).then(pl.lit("buy")).otherwise(None)


def _trades(df: pl.DataFrame, kind: str, ins: Instrument, native: str) -> pl.DataFrame:
    price = c.num("price")
    if kind == "aggTrades":
        qty, tid = c.num("quantity"), "agg_trade_id"
    else:
        qty, tid = c.num("qty"), "id"
    if ins.contract_unit == "quote":  # COIN-M: contracts of `size` USD
        base = c.num("base_qty") if kind == "trades" else qty * ins.contract_size / price
        quote = qty * ins.contract_size
    else:
        base, quote = qty, price * qty
    return df.select(
        "_row", *_key(ins, native), pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("local_ts"),
        pl.col(tid).str.strip_chars().alias("trade_id"), _side_from_maker("is_buyer_maker").alias("side"),
        price.alias("price"), base.alias("amount"), quote.alias("quote_amount"),
        pl.lit(None, dtype=pl.Boolean).alias("is_liquidation"),
    )


def _klines(df: pl.DataFrame, ins: Instrument, native: str, interval: str, price_type: str) -> pl.DataFrame:
    if ins.contract_unit == "quote":  # COIN-M: volume in contracts, quote_volume column = base volume
        volume, quote_vol = c.num("quote_volume"), c.num("volume") * ins.contract_size
        taker = c.num("taker_buy_quote_volume")
    else:
        volume, quote_vol, taker = c.num("volume"), c.num("quote_volume"), c.num("taker_buy_volume")
    return df.select(
        "_row", *_key(ins, native), pl.lit(interval).alias("interval"), pl.lit(price_type).alias("price_type"),
        c.num("open").alias("open"), c.num("high").alias("high"), c.num("low").alias("low"),
        c.num("close").alias("close"), volume.alias("volume"), quote_vol.alias("quote_volume"),
        c.integer("count").alias("trade_count"), taker.alias("taker_buy_volume"),
    )


def _kline_price_type(path: Path, df: pl.DataFrame, opts: Options, decisions: dict) -> str:
    vol = df.select(c.num("volume").fill_null(0).abs().sum(), c.num("quote_volume").fill_null(0).abs().sum()).row(0)
    zero_volume = df.height > 0 and vol[0] == 0 and vol[1] == 0
    closes = df["close"].drop_nulls()
    decimals = closes.str.strip_chars_end("0").str.split(".").list.get(1, null_on_oob=True).str.len_chars().fill_null(0)
    frac = float((decimals > 2).mean() or 0.0) if len(decimals) else 0.0
    decisions["kline_evidence"] = {"zero_volume": zero_volume, "share_of_closes_with_over_2_decimals": round(frac, 3)}
    folder = _price_folder(path)
    chosen = opts.price_type or folder
    if chosen is not None and chosen not in _PRICE_TYPES:
        raise FormatError(path, f"--price-type {chosen!r} is not one of {', '.join(_PRICE_TYPES)}")
    if chosen:
        decisions["price_type_basis"] = "--price-type" if opts.price_type else "folder name"
        if chosen != "trade" and not zero_volume:
            raise FormatError(path, f"bars have traded volume, so this is a trade kline, not {chosen!r}")
        if chosen == "trade" and zero_volume and frac > 0.5:
            decisions["warning"] = "told --price-type trade, but volume is zero and prices are fractional (a price kline?)"
        return chosen
    if zero_volume:
        decisions["price_type_basis"] = "zero volume on every bar"
        decisions["warning"] = (
            "zero-volume kline: a mark, index or premium price kline that the file name does not identify; "
            "written as price_type 'unknown_price' (pass --price-type mark|index|premium to label it)"
        )
        return "unknown_price"
    decisions["price_type_basis"] = "traded volume present"
    return "trade"


def _expected_unit(market: str, day: date | None) -> str:
    if market == "spot":
        return "us" if day is None or day >= SPOT_US_FROM else "ms"
    return "ms"


def _name_and_checksum(path: Path, options: Options) -> tuple[str, str, str, dict]:
    """(symbol, kind, date text, decisions) from the file name, after the `.CHECKSUM` beside a zip is checked."""
    m = _NAME.match(path.name)
    if m is None:
        raise FormatError(path, "not a Binance public-data file name ({SYMBOL}-{type}-{YYYY-MM-DD}.zip|csv)")
    decisions: dict = {}
    if path.name.lower().endswith(".zip"):
        decisions["checksum"] = c.verify_checksum(path) if options.verify_checksum else "not checked (--no-verify)"
    return m.group("symbol"), m.group("kind"), m.group("date"), decisions


def _first_line_and_market(
    path: Path, kind: str, native: str, text: bytes, options: Options, decisions: dict
) -> tuple[str, bool, str, str]:
    """(first line, has a header, market, why that market): what the file's start tells."""
    first = c.first_line(text)
    header = bool(first) and _has_header(first)
    decisions["header"] = header
    market, basis = _decide_market(path, kind, native, first, header, options)
    return first, header, market, basis


def parse(path: Path, options: Options) -> Parsed:
    native, kind, day_text, decisions = _name_and_checksum(path, options)
    data = c.read_bytes(path)
    day = c.file_day(path)
    fmt = f"binance.{kind if kind in KINDS else 'klines'}"
    first, header, market, basis = _first_line_and_market(path, kind, native, data, options, decisions)
    if not first:
        decisions["empty"] = "no rows in the file"
        return Parsed(format=fmt, rows_read=0, tables={}, day=day, decisions=decisions)
    ts_col = {"aggTrades": "transact_time", "trades": "time", "bookDepth": "timestamp", "metrics": "create_time",
              "fundingRate": "calc_time"}.get(kind, "open_time")
    width = len(first.split(","))
    if not market:
        # Only the timestamp unit can still tell: µs is spot (from 2025); ms in 2025 is futures.
        probe = c.read_csv_cells(path, data, [f"c{i}" for i in range(width)], header=header, quoted=False).cells
        unit, _ = c.decide_unit(probe.select(c.integer("c0")).to_series())
        if unit == "us":
            market, basis = "spot", "µs timestamps (spot since 2025)"
        elif unit == "ms" and day is not None and day >= SPOT_US_FROM:
            market, basis = "um", "ms timestamps in 2025 or later (spot would be µs)"
        else:
            raise FormatError(path, "cannot tell spot from futures for this file: pass --market spot or --market perp")
    decisions.update(market=market, market_basis=basis)
    ins, cols = _instrument_and_columns(path, market, native, kind, width, header, first, decisions)
    chunk = c.read_csv_cells(path, data, cols, header=header, quoted=False)
    df = chunk.cells
    rejected = [c.empty_rejected(), chunk.malformed]
    if kind in ("bookDepth", "metrics"):
        ts = pl.col(ts_col).str.strip_chars().str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_zone="UTC").dt.cast_time_unit("us")
        work = df.with_columns(ts.alias("_ts"))
        decisions["ts_format"] = "YYYY-MM-DD HH:MM:SS (UTC)"
    else:
        expected = _expected_unit(market, day)
        ints = df.select(c.integer(ts_col)).to_series()
        unit, evidence = c.decide_unit(ints)
        decisions.update(ts_unit=unit, ts_unit_rows=evidence, ts_unit_expected=expected)
        if unit is not None and unit != expected:
            raise FormatError(
                path,
                f"timestamps are in {c.UNIT_NAMES[unit]} ({evidence}) but {market} files dated {day_text} are in "
                f"{c.UNIT_NAMES[expected]}: wrong market or a damaged file",
            )
        work = df.with_columns(c.integer(ts_col).alias("_ts_i")).with_columns(c.to_utc_us("_ts_i", unit).alias("_ts"))
        rejected.append(c.unit_rejections(work, "_ts_i", unit, ts_col))
    if kind in ("trades", "aggTrades"):
        bad_flag = c.boolean("is_buyer_maker").is_null()
        rejected.append(c.rejections(work, bad_flag, "is_buyer_maker is not true/false"))
        tables = {"trades": _trades(work, kind, ins, native)}
    elif kind == "bookDepth":
        tables = {"depth_bands": work.select(
            "_row", *_key(ins, native), c.num("percentage").alias("band_pct"), c.num("depth").alias("depth"),
            c.num("notional").alias("notional"),
        )}
    elif kind == "metrics":
        other = pl.col("symbol").str.strip_chars() != native
        rejected.append(c.rejections(work, other, pl.format("symbol {} differs from the file's", pl.col("symbol"))))
        if market == "cm":
            decisions["units"] = "COIN-M metrics written as published (sum_open_interest in contracts, unverified)"
        tables = {"open_interest": work.select(
            "_row", *_key(ins, native), c.num("sum_open_interest").alias("open_interest"),
            c.num("sum_open_interest_value").alias("open_interest_value"),
        )}
    elif kind == "fundingRate":
        tables = {"funding": work.select("_row", *_key(ins, native), c.num("last_funding_rate").alias("rate"))}
    else:
        interval = options.interval or kind
        decisions["interval"] = interval
        price_type = _kline_price_type(path, df, options, decisions)
        decisions["price_type"] = price_type
        tables = {"bars": _klines(work, ins, native, interval, price_type)}
    rej = pl.concat(rejected, how="vertical_relaxed").unique("_row", keep="first", maintain_order=True)
    return Parsed(format=fmt, rows_read=chunk.rows_read, tables=tables, rejected=rej, day=day, decisions=decisions,
                  raw=df, malformed=chunk.malformed_kinds())


def iter_parse(path: Path, options: Options, chunk_rows: int) -> Iterator[Parsed]:
    """Trades and aggTrades (the big archives) in chunks of `chunk_rows` lines; other kinds whole.

    Same decisions and rows as `parse`: the market comes from the name, folders and first line,
    and the timestamp unit is checked over the whole file after the last chunk.
    """
    m = _NAME.match(path.name)
    if m is None or m.group("kind") not in ("trades", "aggTrades"):
        yield parse(path, options)
        return
    native, kind, day_text, decisions = _name_and_checksum(path, options)
    day = c.file_day(path)
    fmt = f"binance.{kind}"
    first, header, market, basis = _first_line_and_market(path, kind, native, c.head_bytes(path), options, decisions)
    if not first:
        decisions["empty"] = "no rows in the file"
        yield Parsed(format=fmt, rows_read=0, tables={}, day=day, decisions=decisions)
        return
    ts_col = "transact_time" if kind == "aggTrades" else "time"
    width = len(first.split(","))
    decisions.update(market=market, market_basis=basis)
    ins, cols = _instrument_and_columns(path, market, native, kind, width, header, first, decisions)
    expected = _expected_unit(market, day)
    evidence: dict[str, int] = {}
    numeric = {n: (pl.Int64 if n == ts_col else pl.Float64) for n in cols if n in _NUMERIC_TRADE_COLUMNS or n == ts_col}
    tid = "agg_trade_id" if kind == "aggTrades" else "id"
    for chunk in c.iter_csv_cells(path, cols, header=header, chunk_rows=chunk_rows, numeric=numeric, quoted=False,
                                  verbatim=[tid]):
        df = chunk.cells
        _, chunk_evidence = c.decide_unit(df.select(c.integer(ts_col)).to_series())
        for k, v in chunk_evidence.items():
            evidence[k] = evidence.get(k, 0) + v
        majority = _majority(evidence)
        decisions.update(ts_unit=majority, ts_unit_rows=dict(evidence), ts_unit_expected=expected)
        unit = None if majority is None else expected  # a wrong majority is refused after the last chunk
        work = df.with_columns(c.integer(ts_col).alias("_ts_i")).with_columns(c.to_utc_us("_ts_i", unit).alias("_ts"))
        rejected = [c.empty_rejected(), chunk.malformed, c.unit_rejections(work, "_ts_i", unit, ts_col),
                    c.rejections(work, c.boolean("is_buyer_maker").is_null(), "is_buyer_maker is not true/false")]
        rej = pl.concat(rejected, how="vertical_relaxed").unique("_row", keep="first", maintain_order=True)
        yield Parsed(format=fmt, rows_read=chunk.rows_read, tables={"trades": _trades(work, kind, ins, native)},
                     rejected=rej, day=day, decisions=decisions, raw=chunk.text, malformed=chunk.malformed_kinds())
    unit = _majority(evidence)
    if unit is not None and unit != expected:
        raise FormatError(
            path,
            f"timestamps are in {c.UNIT_NAMES[unit]} ({evidence}) but {market} files dated {day_text} are in "
            f"{c.UNIT_NAMES[expected]}: wrong market or a damaged file",
        )


def _majority(evidence: dict[str, int]) -> str | None:
    """The unit of most rows, as `common.decide_unit` ranks them (count, then name)."""
    ranked = sorted(((-n, u) for u, n in evidence.items() if u != "None"), key=lambda x: x)
    return ranked[0][1] if ranked else None
