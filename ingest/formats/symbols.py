"""Venue, market and ccxt-unified symbol of a native instrument name, plus its contract size.

Why one module: Tardis, Binance public data and Hyperliquid name the same instruments in different
ways, and the lake must not (`BTC/USDT:USDT` is the USDⓈ-M perpetual wherever it came from). The
rules follow ccxt's unified symbols: spot `BASE/QUOTE`, linear perpetual `BASE/QUOTE:QUOTE`,
inverse perpetual `BASE/USD:BASE`, dated futures append `-YYMMDD`.

Nothing here guesses: an exchange id we do not know raises `UnknownExchange` (the importer turns
it into a FormatError naming the file), and a native symbol we cannot read raises `UnknownSymbol`
(the importer rejects those rows with the reason, so they land in the quarantine).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class UnknownExchange(ValueError):
    """An exchange id no mapping exists for: the whole file is refused."""


class UnknownSymbol(ValueError):
    """A native symbol this venue's rules cannot read: its rows are quarantined."""


@dataclass(frozen=True)
class Instrument:
    venue: str  # lake venue (a directory name, from schema.VENUES)
    market: str  # spot | perp | future | option
    symbol: str  # ccxt unified symbol
    #: None: amounts are already in the base asset. Otherwise one contract is worth
    #: `contract_size` units of `contract_unit` ("quote": USD for inverse contracts; "base").
    contract_size: float | None = None
    contract_unit: str | None = None


#: Quote assets of Binance-style concatenated symbols, longest first so `FDUSD` wins over `USD`.
BINANCE_QUOTES = tuple(
    sorted(
        {
            "USDT", "USDC", "FDUSD", "TUSD", "BUSD", "USDP", "DAI", "USD1", "BFUSD", "AEUR", "EURI",
            "BTC", "ETH", "BNB", "XRP", "TRX", "DOGE", "SOL", "DOT", "PAX", "VAI", "IDRT", "BIDR",
            "TRY", "EUR", "GBP", "BRL", "JPY", "MXN", "ARS", "PLN", "RON", "ZAR", "UAH", "IDR",
            "COP", "CZK", "AUD", "RUB", "NGN", "USD",
        },
        key=lambda q: (-len(q), q),
    )
)
GEMINI_QUOTES = tuple(
    sorted({"USD", "USDT", "USDC", "DAI", "BTC", "ETH", "EUR", "GBP", "SGD", "AUD"}, key=lambda q: (-len(q), q))
)

_SAFE_ASSET = re.compile(r"^[A-Z0-9]{1,20}$")
_MONTHS = {m: i + 1 for i, m in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])}

#: Binance COIN-M: one contract is 100 USD for BTC and 10 USD for every other coin.
def binance_coinm_size(base: str) -> float:
    return 100.0 if base == "BTC" else 10.0


#: OKX swaps: inverse 100 USD (BTC) / 10 USD; linear contract values we know (others are refused).
OKX_LINEAR_CTVAL = {"BTC": 0.01, "ETH": 0.1, "SOL": 1.0, "XRP": 100.0, "DOGE": 1000.0, "LTC": 1.0, "BNB": 0.01}


def _asset(a: str, native: str) -> str:
    if not _SAFE_ASSET.match(a):
        raise UnknownSymbol(f"cannot read asset {a!r} in symbol {native!r}")
    return a


def split_concatenated(native: str, quotes: tuple[str, ...] = BINANCE_QUOTES) -> tuple[str, str]:
    """`BTCUSDT` -> (`BTC`, `USDT`) by the longest known quote suffix; the base must be left over."""
    s = native.upper()
    for q in quotes:
        if s.endswith(q) and len(s) > len(q):
            return _asset(s[: -len(q)], native), q
    raise UnknownSymbol(f"no known quote asset at the end of {native!r}")


def _split_dash(native: str) -> tuple[str, str]:
    parts = native.upper().split("-")
    if len(parts) != 2:
        raise UnknownSymbol(f"expected BASE-QUOTE, got {native!r}")
    return _asset(parts[0], native), _asset(parts[1], native)


def _yymmdd(text: str, native: str) -> str:
    """`251226` stays, `26DEC25` becomes `251226`."""
    if re.fullmatch(r"\d{6}", text):
        return text
    m = re.fullmatch(r"(\d{1,2})([A-Z]{3})(\d{2})", text)
    if m and m.group(2) in _MONTHS:
        return f"{m.group(3)}{_MONTHS[m.group(2)]:02d}{int(m.group(1)):02d}"
    raise UnknownSymbol(f"cannot read the expiry {text!r} in {native!r}")


# ---- Binance (public data and Tardis binance / binance-futures / binance-delivery) ------------

def binance_spot(native: str) -> Instrument:
    base, quote = split_concatenated(native)
    return Instrument("binance", "spot", f"{base}/{quote}")


def binance_usdm(native: str) -> Instrument:
    """`BTCUSDT` perpetual, `BTCUSDT_251226` quarterly: linear, amounts in base."""
    head, _, expiry = native.upper().partition("_")
    base, quote = split_concatenated(head, ("USDT", "USDC"))
    if not expiry:
        return Instrument("binance", "perp", f"{base}/{quote}:{quote}")
    return Instrument("binance", "future", f"{base}/{quote}:{quote}-{_yymmdd(expiry, native)}")


def binance_coinm(native: str) -> Instrument:
    """`BTCUSD_PERP`, `ETHUSD_251226`: inverse, quantities in USD contracts (100 BTC, 10 others)."""
    head, sep, tail = native.upper().partition("_")
    if not sep or not head.endswith("USD") or len(head) <= 3:
        raise UnknownSymbol(f"expected BASEUSD_PERP or BASEUSD_YYMMDD for COIN-M, got {native!r}")
    base = _asset(head[:-3], native)
    size = binance_coinm_size(base)
    if tail == "PERP":
        return Instrument("binance", "perp", f"{base}/USD:{base}", size, "quote")
    return Instrument("binance", "future", f"{base}/USD:{base}-{_yymmdd(tail, native)}", size, "quote")


def binance_vision(market: str, native: str) -> Instrument:
    """Binance public data: `market` is `spot`, `um` (USDⓈ-M) or `cm` (COIN-M)."""
    return {"spot": binance_spot, "um": binance_usdm, "cm": binance_coinm}[market](native)


# ---- other venues, by Tardis exchange id ---------------------------------------------------

def _coinbase(native: str) -> Instrument:
    base, quote = _split_dash(native)
    return Instrument("coinbase", "spot", f"{base}/{quote}")


def _gemini(native: str) -> Instrument:
    base, quote = split_concatenated(native, GEMINI_QUOTES)
    return Instrument("gemini", "spot", f"{base}/{quote}")


def _bybit_spot(native: str) -> Instrument:
    base, quote = split_concatenated(native)
    return Instrument("bybit", "spot", f"{base}/{quote}")


def _bybit(native: str) -> Instrument:
    """Bybit derivatives: `BTCUSDT` linear, `BTCPERP` USDC perpetual, `BTCUSD` inverse (1 USD)."""
    s = native.upper()
    if s.endswith("USDT") and len(s) > 4:
        b = _asset(s[:-4], native)
        return Instrument("bybit", "perp", f"{b}/USDT:USDT")
    if s.endswith("PERP") and len(s) > 4:
        b = _asset(s[:-4], native)
        return Instrument("bybit", "perp", f"{b}/USDC:USDC")
    if s.endswith("USD") and len(s) > 3:
        b = _asset(s[:-3], native)
        return Instrument("bybit", "perp", f"{b}/USD:{b}", 1.0, "quote")
    raise UnknownSymbol(f"bybit: cannot read {native!r} (only perpetuals are mapped)")


def _okex(native: str) -> Instrument:
    base, quote = _split_dash(native)
    return Instrument("okx", "spot", f"{base}/{quote}")


def _okex_swap(native: str) -> Instrument:
    parts = native.upper().split("-")
    if len(parts) != 3 or parts[2] != "SWAP":
        raise UnknownSymbol(f"okex-swap: expected BASE-QUOTE-SWAP, got {native!r}")
    base, quote = _asset(parts[0], native), _asset(parts[1], native)
    if quote == "USD":
        return Instrument("okx", "perp", f"{base}/USD:{base}", 100.0 if base == "BTC" else 10.0, "quote")
    if base not in OKX_LINEAR_CTVAL:
        raise UnknownSymbol(f"okex-swap: contract value of {native!r} is not known here")
    return Instrument("okx", "perp", f"{base}/{quote}:{quote}", OKX_LINEAR_CTVAL[base], "base")


def _okex_futures(native: str) -> Instrument:
    parts = native.upper().split("-")
    if len(parts) != 3 or parts[1] != "USD":
        raise UnknownSymbol(f"okex-futures: only inverse BASE-USD-YYMMDD is mapped, got {native!r}")
    base = _asset(parts[0], native)
    return Instrument(
        "okx", "future", f"{base}/USD:{base}-{_yymmdd(parts[2], native)}", 100.0 if base == "BTC" else 10.0, "quote"
    )


def _hyperliquid(native: str) -> Instrument:
    """Perpetuals are named by coin (`BTC`, settled in USDC); spot pairs as `PURR/USDC`."""
    return hyperliquid_coin(native)


def hyperliquid_coin(coin: str) -> Instrument:
    s = coin.upper()
    if "/" in s or ("-" in s and not s.startswith("@")):
        sep = "/" if "/" in s else "-"
        base, _, quote = s.partition(sep)
        return Instrument("hyperliquid", "spot", f"{_asset(base, coin)}/{_asset(quote, coin)}")
    if s.startswith("@") or ":" in s:
        raise UnknownSymbol(f"hyperliquid: {coin!r} is a spot index or builder market, not mapped without spotMeta")
    base = _asset(s, coin)
    return Instrument("hyperliquid", "perp", f"{base}/USDC:USDC")


def _deribit(native: str) -> Instrument:
    s = native.upper()
    m = re.fullmatch(r"([A-Z0-9]+)_(USDC|USDT)-PERPETUAL", s)
    if m:
        b, q = _asset(m.group(1), native), m.group(2)
        return Instrument("deribit", "perp", f"{b}/{q}:{q}")
    m = re.fullmatch(r"([A-Z0-9]+)-PERPETUAL", s)
    if m:  # inverse: amounts are USD
        b = _asset(m.group(1), native)
        return Instrument("deribit", "perp", f"{b}/USD:{b}", 1.0, "quote")
    m = re.fullmatch(r"([A-Z0-9]+)-(\d{1,2}[A-Z]{3}\d{2})", s)
    if m:
        b = _asset(m.group(1), native)
        return Instrument("deribit", "future", f"{b}/USD:{b}-{_yymmdd(m.group(2), native)}", 1.0, "quote")
    raise UnknownSymbol(f"deribit: cannot read {native!r} (options are not mapped)")


TARDIS_EXCHANGES = {
    "binance": binance_spot,
    "binance-futures": binance_usdm,
    "binance-delivery": binance_coinm,
    "coinbase": _coinbase,
    "gemini": _gemini,
    "bybit": _bybit,
    "bybit-spot": _bybit_spot,
    "okex": _okex,
    "okex-swap": _okex_swap,
    "okex-futures": _okex_futures,
    "hyperliquid": _hyperliquid,
    "deribit": _deribit,
}


def tardis_instrument(exchange: str, native: str) -> Instrument:
    """Map a Tardis (exchange id, symbol) pair; raises UnknownExchange or UnknownSymbol."""
    fn = TARDIS_EXCHANGES.get(exchange)
    if fn is None:
        known = ", ".join(sorted(TARDIS_EXCHANGES))
        raise UnknownExchange(f"unknown Tardis exchange {exchange!r} (known: {known})")
    return fn(native)
