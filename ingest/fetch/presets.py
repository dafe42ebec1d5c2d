"""Named download plans: what a study of one event needs from Binance's archive, in one word.

`oct10` covers the crash of 10 October 2025 (UTC evening) and the morning after: the majors, the
collateral assets that depegged on Binance only (USDe, WBETH, BNSOL) and the altcoins with the
deepest wicks, as trades, order-book depth bands, price klines (trade, mark, index) and metrics
(open interest). It is a table, not code, so a reader can see and edit exactly what is fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from .binance_archive import ArchiveFile, plan

MAJORS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT"]
#: Binance-only collateral depeg (21:36-22:16 UTC): spot pairs against USDT and their underlying
COLLATERAL_SPOT = ["USDEUSDT", "WBETHETH", "WBETHUSDT", "BNSOLSOL", "BNSOLUSDT"]
#: altcoins with the deepest wicks (21:18-21:24 UTC), per the public record
WICKS = ["ATOMUSDT", "IOTXUSDT", "ENJUSDT", "SUIUSDT", "AVAXUSDT", "LINKUSDT", "ADAUSDT", "ENAUSDT"]


@dataclass(frozen=True)
class PresetItem:
    market: str  # spot | um | cm
    type: str
    symbols: tuple[str, ...]
    interval: str | None = None
    why: str = ""


@dataclass(frozen=True)
class Preset:
    name: str
    start: date
    end: date
    items: tuple[PresetItem, ...]
    description: str

    def files(self) -> list[ArchiveFile]:
        out: list[ArchiveFile] = []
        for it in self.items:
            out.extend(plan(it.market, it.type, list(it.symbols), self.start, self.end, it.interval))
        return out


OCT10 = Preset(
    name="oct10",
    start=date(2025, 10, 10),
    end=date(2025, 10, 11),
    description="crash of 10-11 October 2025: majors, depegged collateral, wick altcoins; spot and futures",
    items=(
        PresetItem("spot", "trades", tuple(MAJORS + COLLATERAL_SPOT + WICKS), why="every spot print: wicks, taker flow"),
        PresetItem("spot", "klines", tuple(MAJORS + COLLATERAL_SPOT + WICKS), "1m", why="spot minute bars"),
        PresetItem("um", "trades", tuple(MAJORS + WICKS), why="USDⓈ-M perpetual prints"),
        PresetItem("um", "markPriceKlines", tuple(MAJORS + WICKS), "1m", why="the price margin was marked at"),
        PresetItem("um", "indexPriceKlines", tuple(MAJORS + WICKS), "1m", why="the index the mark follows"),
        PresetItem("um", "bookDepth", tuple(MAJORS + WICKS), why="±1..5 % depth bands: the liquidity vacuum"),
        PresetItem("um", "metrics", tuple(MAJORS + WICKS), why="open interest every 5 minutes"),
        PresetItem("cm", "trades", ("BTCUSD_PERP", "ETHUSD_PERP", "SOLUSD_PERP", "BNBUSD_PERP"), why="COIN-M prints"),
        PresetItem("cm", "markPriceKlines", ("BTCUSD_PERP", "ETHUSD_PERP", "SOLUSD_PERP", "BNBUSD_PERP"), "1m"),
    ),
)

PRESETS: dict[str, Preset] = {OCT10.name: OCT10}
