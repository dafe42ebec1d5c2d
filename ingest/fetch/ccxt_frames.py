"""ccxt's unified structures -> the lake's canonical frames (plus `_row`, the source unit).

ccxt already parses each venue's JSON into one shape; this module only maps that shape onto the
lake's contract: the venue name, the market kind (ccxt `swap` is our `perp`), the native symbol
(`market['id']`) and amounts in the base asset (ccxt gives contracts for derivatives: linear
contracts are `contractSize` base units, inverse ones `contractSize` USD).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import polars as pl

from ..schema import VENUES

#: ccxt exchange id -> lake venue (the futures arms of one exchange are the same venue)
VENUE_ALIASES = {
    "binanceusdm": "binance",
    "binancecoinm": "binance",
    "coinbaseexchange": "coinbase",
    "coinbaseadvanced": "coinbase",
    "krakenfutures": "kraken",
    "myokx": "okx",
    "bybiteu": "bybit",
    "gateeu": "gate",
}

_KIND = {"spot": "spot", "swap": "perp", "future": "future", "option": "option"}
_TS = pl.Datetime("us", "UTC")


class UnknownVenue(ValueError):
    """A ccxt exchange whose venue the lake has no directory name for."""


def venue_of(exchange_id: str) -> str:
    v = VENUE_ALIASES.get(exchange_id, exchange_id)
    if v not in VENUES:
        raise UnknownVenue(
            f"ccxt exchange {exchange_id!r} maps to venue {v!r}, which the lake does not know "
            f"(known: {', '.join(sorted(VENUES))}); add it to ingest/schema.py VENUES"
        )
    return v


def market_kind(market: dict) -> str:
    kind = _KIND.get(str(market.get("type")))
    if kind is None:
        raise ValueError(f"ccxt market {market.get('symbol')!r} has type {market.get('type')!r}, not spot/swap/future/option")
    return kind


def to_base(market: dict, price: float | None, amount: float | None) -> tuple[float | None, float | None]:
    """(base amount, quote amount) of `amount` as ccxt reports it for this market."""
    if price is None or amount is None:
        return None, None
    if not market.get("contract"):
        return amount, price * amount
    cs = float(market.get("contractSize") or 1.0)
    if market.get("inverse"):
        quote = amount * cs  # inverse contracts are worth cs USD each
        return quote / price, quote
    base = amount * cs
    return base, base * price


def _ts(ms: Any) -> datetime | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)


def _key(venue: str, market: dict) -> dict[str, Any]:
    return {"venue": venue, "market": market_kind(market), "symbol": market["symbol"], "native_symbol": market["id"]}


def trades_frame(venue: str, market: dict, trades: list[dict], local_ts: datetime | None = None) -> pl.DataFrame:
    """One row per ccxt trade; `side` is ccxt's taker side."""
    k = _key(venue, market)
    rows = []
    for i, t in enumerate(trades, start=1):
        base, quote = to_base(market, t.get("price"), t.get("amount"))
        rows.append({
            "ts": _ts(t.get("timestamp")), **k, "local_ts": local_ts,
            "trade_id": None if t.get("id") is None else str(t["id"]),
            "side": t.get("side"), "price": t.get("price"), "amount": base, "quote_amount": quote,
            "is_liquidation": None, "_row": i,
        })
    return pl.DataFrame(rows, schema={
        "ts": _TS, "venue": pl.String, "market": pl.String, "symbol": pl.String, "native_symbol": pl.String,
        "local_ts": _TS, "trade_id": pl.String, "side": pl.String, "price": pl.Float64, "amount": pl.Float64,
        "quote_amount": pl.Float64, "is_liquidation": pl.Boolean, "_row": pl.Int64,
    })


def ohlcv_frame(venue: str, market: dict, candles: list[list], interval: str, price_type: str) -> pl.DataFrame:
    """Bars from ccxt `[ts, o, h, l, c, v]`; mark/index candles carry no volume (stored as 0)."""
    k = _key(venue, market)
    rows = []
    for i, c in enumerate(candles, start=1):
        ts, o, h, lo, cl, v = (list(c) + [None] * 6)[:6]
        if price_type != "trade":
            vol, qv = 0.0, None
        elif market.get("contract") and v is not None and cl:
            vol, qv = to_base(market, cl, v)  # contracts -> base at the close (inverse: approximate)
        else:
            vol, qv = v, None
        rows.append({
            "ts": _ts(ts), **k, "interval": interval, "price_type": price_type, "open": o, "high": h,
            "low": lo, "close": cl, "volume": vol, "quote_volume": qv, "trade_count": None,
            "taker_buy_volume": None, "_row": i,
        })
    return pl.DataFrame(rows, schema={
        "ts": _TS, "venue": pl.String, "market": pl.String, "symbol": pl.String, "native_symbol": pl.String,
        "interval": pl.String, "price_type": pl.String, "open": pl.Float64, "high": pl.Float64, "low": pl.Float64,
        "close": pl.Float64, "volume": pl.Float64, "quote_volume": pl.Float64, "trade_count": pl.Int64,
        "taker_buy_volume": pl.Float64, "_row": pl.Int64,
    })


def funding_frame(venue: str, market: dict, items: list[dict]) -> pl.DataFrame:
    k = _key(venue, market)
    rows = [{"ts": _ts(x.get("timestamp")), **k, "rate": x.get("fundingRate"), "_row": i} for i, x in enumerate(items, 1)]
    return pl.DataFrame(rows, schema={
        "ts": _TS, "venue": pl.String, "market": pl.String, "symbol": pl.String, "native_symbol": pl.String,
        "rate": pl.Float64, "_row": pl.Int64,
    })


def open_interest_frame(venue: str, market: dict, items: list[dict]) -> pl.DataFrame:
    """`open_interest` in base units (inverse venues report contracts: converted with the value)."""
    k = _key(venue, market)
    rows = []
    for i, x in enumerate(items, 1):
        amount, value = x.get("openInterestAmount"), x.get("openInterestValue")
        if market.get("contract") and amount is not None:
            cs = float(market.get("contractSize") or 1.0)
            if market.get("inverse"):
                amount = value if value is not None else None  # Binance COIN-M: value is in the base coin
            else:
                amount = amount * cs
        rows.append({"ts": _ts(x.get("timestamp")), **k, "open_interest": amount, "open_interest_value": value, "_row": i})
    return pl.DataFrame(rows, schema={
        "ts": _TS, "venue": pl.String, "market": pl.String, "symbol": pl.String, "native_symbol": pl.String,
        "open_interest": pl.Float64, "open_interest_value": pl.Float64, "_row": pl.Int64,
    })


def liquidations_frame(venue: str, market: dict, items: list[dict]) -> pl.DataFrame:
    k = _key(venue, market)
    rows = []
    for i, x in enumerate(items, 1):
        price = x.get("price")
        base = x.get("baseValue")
        quote = x.get("quoteValue")
        if base is None:
            base, q2 = to_base(market, price, x.get("contracts"))
            quote = quote if quote is not None else q2
        rows.append({
            "ts": _ts(x.get("timestamp")), **k, "local_ts": None, "side": x.get("side"), "price": price,
            "amount": base, "quote_amount": quote, "account": None, "_row": i,
        })
    return pl.DataFrame(rows, schema={
        "ts": _TS, "venue": pl.String, "market": pl.String, "symbol": pl.String, "native_symbol": pl.String,
        "local_ts": _TS, "side": pl.String, "price": pl.Float64, "amount": pl.Float64, "quote_amount": pl.Float64,
        "account": pl.String, "_row": pl.Int64,
    })


def book_frame(venue: str, market: dict, books: list[tuple[dict, datetime]], depth: int) -> pl.DataFrame:
    """Top `depth` levels of each ccxt order book; each snapshot is one source unit (`_row`).

    A snapshot's ts is the venue's when it gives one, else the local receipt time (Binance spot
    depth carries no timestamp), so two polls never share a ts unless the venue says they should.
    """
    k = _key(venue, market)
    rows = []
    for i, (ob, received) in enumerate(books, start=1):
        ts = _ts(ob.get("timestamp")) or received
        for side, levels in (("bid", ob.get("bids") or []), ("ask", ob.get("asks") or [])):
            for level, lv in enumerate(levels[:depth]):
                base, _ = to_base(market, lv[0], lv[1])
                rows.append({"ts": ts, **k, "local_ts": received, "side": side, "level": level,
                             "price": lv[0], "amount": base, "_row": i})
    return pl.DataFrame(rows, schema={
        "ts": _TS, "venue": pl.String, "market": pl.String, "symbol": pl.String, "native_symbol": pl.String,
        "local_ts": _TS, "side": pl.String, "level": pl.Int32, "price": pl.Float64, "amount": pl.Float64,
        "_row": pl.Int64,
    })


def raw_frame(items: list[Any]) -> pl.DataFrame:
    """The venue's own JSON of each unit, quoted in the quarantine when a unit is refused."""
    return pl.DataFrame(
        {"_row": list(range(1, len(items) + 1)),
         "json": [json.dumps(x.get("info", x) if isinstance(x, dict) else x, sort_keys=True, default=str) for x in items]},
        schema={"_row": pl.Int64, "json": pl.String},
    )


def content_sha256(identity: dict, frames: dict[str, pl.DataFrame]) -> str:
    """A batch's identity: what was asked plus what came back, so the same page hashes the same."""
    h = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    for name in sorted(frames):
        df = frames[name]
        h.update(name.encode())
        h.update(df.drop("_row", "local_ts", strict=False).write_csv().encode())
    return h.hexdigest()
