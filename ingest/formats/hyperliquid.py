"""Hyperliquid S3 archives (LZ4 frames of JSON lines): node_fills, node_fills_by_block, l2Book.

  node_fills/hourly/{YYYYMMDD}/{H}.lz4          one `[address, fill]` per line
  node_fills_by_block/hourly/{YYYYMMDD}/{H}.lz4 one `{local_time, block_time, block_number,
                                                 events: [[address, fill], ...]}` per line
  market_data/{YYYYMMDD}/{H}/l2Book/{COIN}.lz4  one `{time, ver_num, raw: {channel: l2Book,
                                                 data: {coin, time, levels: [bids, asks]}}}` per line

Fills -> trades, one row per trade: every trade is reported twice (taker `crossed=true`, maker
`crossed=false`) with one `tid`, so the source unit is the trade, not the fill. The taker's fill
gives the side (if only the maker's fill is in the file, the opposite of its side). A trade with
a fill carrying `liquidation: {liquidatedUser, markPx, method}` sets `is_liquidation` and also
yields a liquidations row (side = the liquidated user's fill side; `account` = that user).

`_row` for fills is the 1-based ordinal of the trade's first fill in file order; in node_fills that
is the line number, in node_fills_by_block it counts fills across blocks (the quarantine's raw
text names the file line). For l2Book `_row` is the line. `rows_read` = trades (plus lines that
are not JSON, each one unit, quarantined). Perpetuals are named by coin and map to `COIN/USDC:USDC`;
spot indices (`@107`) and builder markets cannot be mapped without spotMeta and are quarantined.
"""

from __future__ import annotations

import json
from pathlib import Path

import lz4.frame
import polars as pl

from . import common as c
from .base import FormatError, Options, Parsed
from .symbols import UnknownSymbol, hyperliquid_coin

FORMAT = "hyperliquid"
SOURCE = "hyperliquid-s3"

_SIDES = {"B": "buy", "A": "sell"}


def _first_json(path: Path) -> object | None:
    try:
        with lz4.frame.open(path, "rb") as fh:
            line = fh.readline(1 << 20)
        return json.loads(line)
    except Exception:
        return None


def _kind(path: Path) -> str | None:
    parts = {p.lower() for p in path.parts}
    if "node_fills_by_block" in parts:
        return "fills_by_block"
    if "node_fills" in parts:
        return "fills"
    if "l2book" in parts:
        return "l2book"
    obj = _first_json(path)
    if isinstance(obj, dict) and "events" in obj:
        return "fills_by_block"
    if isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], dict) and "tid" in obj[1]:
        return "fills"
    if isinstance(obj, dict) and isinstance(obj.get("raw"), dict) and obj["raw"].get("channel") == "l2Book":
        return "l2book"
    return None


def sniff(path: Path, head: str) -> bool:
    return path.name.lower().endswith(".lz4") and _kind(path) is not None


def _lines(path: Path) -> list[bytes]:
    try:
        with open(path, "rb") as fh:
            data = lz4.frame.decompress(fh.read())
    except Exception as e:
        raise FormatError(path, f"cannot decompress LZ4 (truncated or corrupt?): {e}") from None
    # Lines end at LF only: `bytes.splitlines` would also cut at a bare CR (or other separators) and
    # shift every later line number. A CR inside a JSON line is JSON's own business.
    lines = data.split(b"\n")
    return lines[:-1] if lines and lines[-1] == b"" else lines


def _ms_to_us(v: object) -> int | None:
    try:
        return int(v) * 1000  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _iso_us(col: str) -> pl.Expr:
    """Node wall-clock ISO times (ns digits, no zone) -> timestamp[us, UTC]."""
    return (
        pl.col(col).str.slice(0, 26).str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_zone="UTC")
        .dt.cast_time_unit("us")
    )


def _instrument_table(coins: list[str]) -> pl.DataFrame:
    rows = []
    for coin in sorted(set(coins)):
        try:
            ins = hyperliquid_coin(coin)
            rows.append((coin, ins.venue, ins.market, ins.symbol, None))
        except UnknownSymbol as e:
            rows.append((coin, None, None, None, f"symbol not understood: {e}"))
    return pl.DataFrame(
        rows, schema={"coin": pl.String, "_venue": pl.String, "_market": pl.String, "_unified": pl.String, "_sym_err": pl.String},
        orient="row",
    )


def _fills(path: Path, lines: list[bytes], by_block: bool) -> Parsed:
    recs: list[dict] = []
    bad: list[tuple[int, str, str]] = []
    bad_lines: list[int] = []
    ordinal = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if by_block:
                events = obj["events"]
                local = obj.get("local_time")
            else:
                events, local = [obj], None
            for ev in events:
                address, fill = ev
                ordinal += 1
                liq = fill.get("liquidation") or None
                recs.append({
                    "_fill": ordinal, "_line": lineno, "address": str(address), "coin": str(fill.get("coin", "")),
                    "px": str(fill.get("px")), "sz": str(fill.get("sz")), "side": str(fill.get("side")),
                    "time": _ms_to_us(fill.get("time")), "tid": None if fill.get("tid") is None else str(fill.get("tid")),
                    "crossed": bool(fill.get("crossed")) if fill.get("crossed") is not None else None,
                    "liq_user": (liq or {}).get("liquidatedUser") if isinstance(liq, dict) else None,
                    "is_liq": liq is not None, "local_time": local, "json": json.dumps([address, fill], separators=(",", ":")),
                })
        except (ValueError, KeyError, TypeError) as e:
            ordinal += 1
            bad.append((ordinal, f"line {lineno} is not a fill record: {type(e).__name__}: {e}", line[:500].decode("utf-8", "replace")))
            bad_lines.append(lineno)
    fills = pl.DataFrame(recs, schema={
        "_fill": pl.Int64, "_line": pl.Int64, "address": pl.String, "coin": pl.String, "px": pl.String, "sz": pl.String,
        "side": pl.String, "time": pl.Int64, "tid": pl.String, "crossed": pl.Boolean, "liq_user": pl.String,
        "is_liq": pl.Boolean, "local_time": pl.String, "json": pl.String,
    })
    # The unit: fills sharing a tid (a fill without tid is its own unit).
    fills = fills.with_columns(pl.coalesce(pl.col("tid"), pl.format("fill#{}", pl.col("_fill"))).alias("_key"))
    fills = fills.with_columns(pl.col("_fill").min().over("_key").alias("_row"))
    ins = _instrument_table(fills["coin"].to_list())
    fills = fills.join(ins, on="coin", how="left", maintain_order="left").with_columns(
        pl.col("side").replace_strict(_SIDES, default=pl.col("side").str.to_lowercase()).alias("_side"),
        pl.col("time").cast(pl.Datetime("us", "UTC")).alias("_ts"),
        pl.col("px").cast(pl.Float64, strict=False).alias("_px"),
        pl.col("sz").cast(pl.Float64, strict=False).alias("_sz"),
        (_iso_us("local_time") if by_block else pl.lit(None, dtype=pl.Datetime("us", "UTC"))).alias("_local"),
    )
    flip = pl.col("_side").replace_strict({"buy": "sell", "sell": "buy"}, default=pl.col("_side"))
    ranked = fills.with_columns(
        pl.when(pl.col("crossed").fill_null(False)).then(pl.col("_side")).otherwise(flip).alias("_taker_side"),
        pl.col("is_liq").any().over("_key").alias("_any_liq"),
    ).sort("_row", pl.col("crossed").fill_null(False), "_fill", descending=[False, True, False])
    first = ranked.unique("_row", keep="first", maintain_order=True)
    key = [
        pl.col("_ts").alias("ts"), pl.col("_venue").alias("venue"), pl.col("_market").alias("market"),
        pl.col("_unified").alias("symbol"), pl.col("coin").alias("native_symbol"), pl.col("_local").alias("local_ts"),
    ]
    trades = first.select(
        "_row", *key, pl.col("tid").alias("trade_id"), pl.col("_taker_side").alias("side"), pl.col("_px").alias("price"),
        pl.col("_sz").alias("amount"), (pl.col("_px") * pl.col("_sz")).alias("quote_amount"),
        pl.col("_any_liq").alias("is_liquidation"),
    )
    liq_fills = ranked.filter(pl.col("is_liq"))
    own = liq_fills.filter(pl.col("address") == pl.col("liq_user"))
    other = liq_fills.join(own.select("_row"), on="_row", how="anti").with_columns(
        flip.alias("_side"), pl.col("liq_user").alias("address")
    )
    liqs = pl.concat([own, other]).unique("_row", keep="first", maintain_order=True).sort("_row").select(
        "_row", *key, "_side", pl.col("_px").alias("price"), pl.col("_sz").alias("amount"),
        (pl.col("_px") * pl.col("_sz")).alias("quote_amount"), pl.col("address").alias("account"),
    ).rename({"_side": "side"})
    rejected = pl.concat([
        c.rejections(first, pl.col("_sym_err").is_not_null(), pl.col("_sym_err")),
        pl.DataFrame(bad, schema={"_row": pl.Int64, "reason": pl.String, "raw": pl.String}, orient="row"),
    ], how="vertical_relaxed").unique("_row", keep="first", maintain_order=True)
    raw = pl.concat([
        first.select("_row", pl.format("line {}: {}", pl.col("_line"), pl.col("json")).alias("fill")),
        rejected.filter(pl.col("raw").is_not_null()).select("_row", pl.col("raw").alias("fill")),
    ])
    decisions = {
        "unit": "trade (fills sharing a tid)", "fills": fills.height, "trades": first.height,
        "liquidation_trades": liqs.height, "ts_unit": "ms", "layout": "node_fills_by_block" if by_block else "node_fills",
    }
    tables = {"trades": trades}
    if liqs.height:
        tables["liquidations"] = liqs
    return Parsed(
        format=f"hyperliquid.{'fills_by_block' if by_block else 'fills'}", rows_read=first.height + len(bad),
        tables=tables, rejected=rejected, day=c.file_day(path, compact=True), decisions=decisions, raw=raw,
        malformed={"lines that are not fill records": (len(bad), bad_lines[0])} if bad else {},
    )


def _l2book(path: Path, lines: list[bytes]) -> Parsed:
    recs, bad, units, unreadable = [], [], 0, []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        units += 1
        try:
            obj = json.loads(line)
            data = obj["raw"]["data"]
            coin, ts = str(data["coin"]), _ms_to_us(data["time"])
            n = 0
            for side, levels in zip(("bid", "ask"), data["levels"]):
                for i, lv in enumerate(levels):
                    recs.append((lineno, coin, ts, obj.get("time"), side, i, str(lv.get("px")), str(lv.get("sz"))))
                    n += 1
            if n == 0:
                bad.append((lineno, "snapshot has no levels", line[:500].decode("utf-8", "replace")))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            bad.append((lineno, f"not an l2Book snapshot: {type(e).__name__}: {e}", line[:500].decode("utf-8", "replace")))
            unreadable.append(lineno)
    df = pl.DataFrame(recs, schema={
        "_row": pl.Int64, "coin": pl.String, "time": pl.Int64, "local_time": pl.String, "side": pl.String,
        "level": pl.Int32, "px": pl.String, "sz": pl.String,
    }, orient="row")
    ins = _instrument_table(df["coin"].to_list())
    df = df.join(ins, on="coin", how="left", maintain_order="left")
    snaps = df.select(
        "_row", pl.col("time").cast(pl.Datetime("us", "UTC")).alias("ts"), pl.col("_venue").alias("venue"),
        pl.col("_market").alias("market"), pl.col("_unified").alias("symbol"), pl.col("coin").alias("native_symbol"),
        _iso_us("local_time").alias("local_ts"), "side", "level",
        pl.col("px").cast(pl.Float64, strict=False).alias("price"), pl.col("sz").cast(pl.Float64, strict=False).alias("amount"),
    )
    rejected = pl.concat([
        c.rejections(df, pl.col("_sym_err").is_not_null(), pl.col("_sym_err")),
        pl.DataFrame(bad, schema={"_row": pl.Int64, "reason": pl.String, "raw": pl.String}, orient="row"),
    ], how="vertical_relaxed").unique("_row", keep="first", maintain_order=True)
    raw = pl.DataFrame(
        [(i, l.decode("utf-8", "replace")[:2000]) for i, l in enumerate(lines, start=1) if l.strip()],
        schema={"_row": pl.Int64, "line": pl.String}, orient="row",
    )
    return Parsed(
        format="hyperliquid.l2Book", rows_read=units, tables={"book_snapshots": snaps}, rejected=rejected,
        day=c.file_day(path, compact=True), decisions={"unit": "snapshot line", "ts_unit": "ms", "local_ts": "node wall clock"},
        raw=raw, malformed={"lines that are not l2Book snapshots": (len(unreadable), unreadable[0])} if unreadable else {},
    )


def parse(path: Path, options: Options) -> Parsed:
    kind = _kind(path)
    if kind is None:
        raise FormatError(path, "not a Hyperliquid node_fills, node_fills_by_block or l2Book LZ4 file")
    lines = _lines(path)
    if kind == "l2book":
        return _l2book(path, lines)
    return _fills(path, lines, by_block=(kind == "fills_by_block"))
