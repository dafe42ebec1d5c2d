"""Binance unified account / portfolio margin: uniMMR = Σ adjusted equity / Σ maintenance margin.

    adjusted equity = Σ_assets min(q·P·CR, q·P)  (+ Σ perp unrealised PnL)
                      haircut only on positive balances; loans count at full value
    MM              = Σ_perp bracket(|q|·mark)  +  Σ_loans |q|·P·loan_mmr
    uniMMR < 1.20 reduce-only, < 1.05 liquidation (parameters; crash_facts.md B1)

Tiered collateral ratios (PM Pro) are a piecewise-linear haircut by USD value, evaluated with
`piecewise_cum` so a 100 M position is not treated like a 1 M one.

The collateral *pricing* rule is the parameter that matters for 10 October (`collateral_pricing`):
- `internal_book`: the asset is priced on Binance's own spot book (USDE/USDT, WBETH/USDT,
  BNSOL/USDT), the rule in force that night, so the depeg hit margin directly;
- `conversion_rate`: WBETH = ETH × staking rate, BNSOL = SOL × rate, USDE = max(book, floor), the
  rule Binance moved to. The floor is not public; it is a parameter.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import (CASH_ASSETS, Account, ForcedOrder, Num, Pack, PriceKey, Rule, STATUS, column, pack_groups,
                   piecewise_cum, position_pnl, tiered, unpack, weight_col)


class BinanceUnified(Rule):
    name = "binance_unified"
    venue = "binance"
    metric_name = "uniMMR"
    DEFAULTS: dict[str, Any] = {
        "quote_asset": "USDT",
        "margin_call_threshold": 1.50,
        "reduce_only_threshold": 1.20,
        "liquidation_threshold": 1.05,
        "bankruptcy_threshold": 1.00,
        "collateral_pricing": "internal_book",  # internal_book | conversion_rate
        # asset -> flat ratio, or {bounds=[usd...], rates=[...]} (tiered, PM Pro)
        "collateral_ratios": {"USDT": 1.0, "USDC": 1.0, "BTC": 0.95, "ETH": 0.95},
        "default_collateral_ratio": 0.1,
        # symbol -> {bounds=[notional...], rates=[mmr...]}; "default" used for unlisted symbols
        "mm_brackets": {"default": {"bounds": [0, 50000, 250000, 1e6, 1e7, 2e7, 5e7, 1e8, 2e8, 3e8],
                                     "rates": [0.004, 0.005, 0.01, 0.025, 0.05, 0.1, 0.125, 0.15, 0.25, 0.5]}},
        "loan_mmr": 0.05,
        "conversion_underlying": {"WBETH": "ETH", "BNSOL": "SOL"},
        "conversion_rates": {"WBETH": 1.08, "BNSOL": 1.07},  # fallback when the lake has no rate
        "usde_floor": 0.97,
        "peg_assets": ["USDE"],  # priced max(book, usde_floor) under conversion_rate
        "liquidation_order": ["close_positions", "sell_collateral"],
        "collateral_sale_order": [],  # assets sold first, in this order; the rest by value
        "fee_rate": 0.0,  # insurance clearance fee: rates not public
    }

    # ---- prices ------------------------------------------------------------------------------
    def _asset_keys(self, asset: str) -> list[PriceKey]:
        if asset in CASH_ASSETS:
            return []
        if self.params["collateral_pricing"] == "conversion_rate":
            under = self.params["conversion_underlying"].get(asset)
            if under:
                return [("spot", self.venue, under), ("conversion_rate", self.venue, asset)]
        return [("spot", self.venue, asset)]

    def price_keys(self, account: Account) -> list[PriceKey]:
        keys: list[PriceKey] = []
        for a in sorted(account.balances):
            keys += self._asset_keys(a)
        for s in sorted(account.positions):
            keys.append(("mark", self.venue, s))
        return list(dict.fromkeys(keys))

    def asset_price(self, asset: str, prices: Mapping[PriceKey, Num]) -> Num:
        """The collateral price the rule counts an asset at (cash = 1)."""
        if asset in CASH_ASSETS:
            return 1.0
        if self.params["collateral_pricing"] == "conversion_rate":
            under = self.params["conversion_underlying"].get(asset)
            if under:
                rate = prices.get(("conversion_rate", self.venue, asset), np.nan)
                fallback = float(self.params["conversion_rates"].get(asset, 1.0))
                rate = np.where(np.isnan(rate), fallback, rate)
                out = prices[("spot", self.venue, under)] * rate
                return float(out) if np.ndim(out) == 0 else out
            p = prices[("spot", self.venue, asset)]
            if asset in self.params["peg_assets"]:
                out = np.maximum(p, float(self.params["usde_floor"]))
                return float(out) if np.ndim(out) == 0 else out
            return p
        return prices[("spot", self.venue, asset)]

    def collateral_value(self, asset: str, value: Num, weight: float = 1.0) -> Num:
        """min(value·CR, value) with flat or tiered CR; negative values (loans) at full value.

        Tiers apply per real account, so a representative of `weight` accounts is haircut on its
        per-account value."""
        default = 1.0 if asset in CASH_ASSETS else self.params["default_collateral_ratio"]
        spec = self.params["collateral_ratios"].get(asset, default)
        v = np.asarray(value, dtype=float)
        pos = np.maximum(v, 0.0)
        if isinstance(spec, Mapping):
            w = max(float(weight), 1e-12)
            hair = w * piecewise_cum(pos / w, list(spec["bounds"]), list(spec["rates"]))
        else:
            hair = pos * float(spec)
        out = np.minimum(hair, pos) + np.minimum(v, 0.0)
        return float(out) if np.ndim(out) == 0 else out

    def bracket_mm(self, symbol: str, notional: Num, weight: float = 1.0) -> Num:
        """Brackets apply per real account: a representative of `weight` accounts pays `weight`
        times the bracket of its per-account notional, not the bracket of the group's total."""
        br = self.params["mm_brackets"].get(symbol) or self.params["mm_brackets"]["default"]
        w = max(float(weight), 1e-12)
        return w * piecewise_cum(np.asarray(notional, dtype=float) / w, list(br["bounds"]), list(br["rates"]))

    # ---- the metric --------------------------------------------------------------------------
    def evaluate(self, account: Account, prices: Mapping[PriceKey, Num]) -> tuple[Num, Num, Num]:
        eq: Num = 0.0
        mm: Num = 0.0
        for asset, q in account.balances.items():
            if q == 0:
                continue
            p = self.asset_price(asset, prices)
            eq = eq + self.collateral_value(asset, q * p, account.weight)
            if q < 0 and asset not in CASH_ASSETS:
                mm = mm + abs(q) * p * float(self.params["loan_mmr"])
            elif q < 0:
                mm = mm + abs(q) * float(self.params["loan_mmr"])
        for sym, pos in account.positions.items():
            mark = prices[("mark", self.venue, sym)]
            eq = eq + position_pnl(pos, mark)
            mm = mm + self.bracket_mm(sym, np.abs(pos.qty * mark), account.weight)
        mm_arr = np.asarray(mm, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            metric = np.where(mm_arr > 0, np.asarray(eq) / np.where(mm_arr > 0, mm_arr, 1.0), np.inf)
            metric = np.where(np.asarray(eq) < 0, np.minimum(metric, 0.0), metric)  # negative equity liquidates
        if np.ndim(metric) == 0:
            metric = float(metric)
        return eq, mm, metric

    # ---- many accounts: `evaluate` over (accounts, steps), same operations in the same order ----
    def pack(self, accounts) -> Pack:
        def sig(a: Account):
            return (tuple((x, q == 0, q < 0) for x, q in a.balances.items()), tuple(a.positions))

        def extract(sg, accs):
            bal, syms = sg
            return {"q": [column([a.balances[x] for a in accs]) for x, _, _ in bal], "w": weight_col(accs),
                    "qty": [column([a.positions[s].qty for a in accs]) for s in syms],
                    "entry": [column([a.positions[s].entry for a in accs]) for s in syms]}
        return pack_groups(accounts, sig, extract)

    def _collateral_value_w(self, asset: str, value: Num, w: np.ndarray) -> Num:
        """`collateral_value` with a per-account weight column."""
        default = 1.0 if asset in CASH_ASSETS else self.params["default_collateral_ratio"]
        spec = self.params["collateral_ratios"].get(asset, default)
        v = np.asarray(value, dtype=float)
        pos = np.maximum(v, 0.0)
        if isinstance(spec, Mapping):
            hair = tiered(pos, w, list(spec["bounds"]), list(spec["rates"]))
        else:
            hair = pos * float(spec)
        return np.minimum(hair, pos) + np.minimum(v, 0.0)

    def evaluate_packed(self, pack: Pack, prices, n: int):
        def one(sg, c):
            bal, syms = sg
            eq: Num = 0.0
            mm: Num = 0.0
            for i, (asset, zero, neg) in enumerate(bal):
                if zero:
                    continue
                q = c["q"][i]
                p = self.asset_price(asset, prices)
                eq = eq + self._collateral_value_w(asset, q * p, c["w"])
                if neg and asset not in CASH_ASSETS:
                    mm = mm + np.abs(q) * p * float(self.params["loan_mmr"])
                elif neg:
                    mm = mm + np.abs(q) * float(self.params["loan_mmr"])
            for i, sym in enumerate(syms):
                mark = prices[("mark", self.venue, sym)]
                eq = eq + c["qty"][i] * (mark - c["entry"][i])
                br = self.params["mm_brackets"].get(sym) or self.params["mm_brackets"]["default"]
                mm = mm + tiered(np.abs(c["qty"][i] * mark), c["w"], list(br["bounds"]), list(br["rates"]))
            mm_arr = np.asarray(mm, dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                metric = np.where(mm_arr > 0, np.asarray(eq) / np.where(mm_arr > 0, mm_arr, 1.0), np.inf)
                metric = np.where(np.asarray(eq) < 0, np.minimum(metric, 0.0), metric)
            return eq, mm, metric
        return unpack(pack, n, one)

    def status(self, metric: Num, equity: Num, maintenance: Num) -> Any:
        m = np.asarray(metric, dtype=float)
        p = self.params
        code = np.where(m < p["liquidation_threshold"], STATUS["liquidate"],
               np.where(m < p["reduce_only_threshold"], STATUS["reduce_only"],
               np.where(m < p["margin_call_threshold"], STATUS["margin_call"], STATUS["ok"])))
        return int(code) if np.ndim(code) == 0 else code

    # ---- liquidation -------------------------------------------------------------------------
    def liquidation_plan(self, account: Account, prices: Mapping[PriceKey, float]) -> list[ForcedOrder]:
        """Cancel orders (none are modelled), then close positions and sell collateral, in the
        configured order. The sale covers the liabilities; Binance's real sale order is not public."""
        orders: list[ForcedOrder] = []
        quote = self.quote_asset
        for step in self.params["liquidation_order"]:
            if step == "close_positions":
                for sym in sorted(account.positions):
                    pos = account.positions[sym]
                    orders.append(ForcedOrder(self.venue, "perp", sym, "sell" if pos.qty > 0 else "buy",
                                              abs(pos.qty), "close_position"))
            elif step == "sell_collateral":
                first = [a for a in self.params["collateral_sale_order"] if account.balances.get(a, 0) > 0]
                rest = sorted(
                    (a for a, q in account.balances.items()
                     if q > 0 and a not in CASH_ASSETS and a not in first),
                    key=lambda a: (-account.balances[a] * float(self.asset_price(a, prices)), a),
                )
                for a in first + rest:
                    if a in CASH_ASSETS:
                        continue
                    orders.append(ForcedOrder(self.venue, "spot", f"{a}/{quote}", "sell",
                                              account.balances[a], "sell_collateral", asset=a))
            else:
                raise ValueError(f"binance_unified.liquidation_order: unknown step {step!r}")
        return orders
