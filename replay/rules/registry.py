"""Rule name -> class. A new venue rule is registered here (see README.md in this folder)."""

from __future__ import annotations

from typing import Any, Mapping

from .aave_v3 import AaveV3
from .base import Rule
from .binance_unified import BinanceUnified
from .binance_usdm import BinanceUsdm
from .hyperliquid import Hyperliquid

RULES: dict[str, type[Rule]] = {c.name: c for c in (BinanceUnified, BinanceUsdm, Hyperliquid, AaveV3)}


def make_rule(name: str, params: Mapping[str, Any] | None = None) -> Rule:
    try:
        cls = RULES[name]
    except KeyError:
        raise KeyError(f"unknown venue rule {name!r}; known: {', '.join(sorted(RULES))}") from None
    return cls(params)
