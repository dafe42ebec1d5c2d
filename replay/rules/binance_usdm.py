"""Binance USDⓈ-M perpetuals: maintenance-margin brackets, mark-price liquidation, insurance fund, ADL.

    MM_i      = bracket(|q_i|·mark_i)          (notional·MMR_tier − cum, i.e. piecewise-linear)
    isolated  : equity_i = margin_i + PnL_i      liquidated when equity_i < MM_i
    cross     : equity   = wallet + Σ PnL_cross   liquidated when equity < Σ MM_cross
    metric    = equity / MM ("margin level", higher is safer; the venue shows MM/equity)

Liquidation closes the breaching position(s) with one IOC order into the book. A fill worse than
the bankruptcy price leaves a deficit that the insurance fund pays; what it cannot pay is taken
from the most profitable, most leveraged opposite positions (ADL, `adl_rank`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import (Account, ForcedOrder, Num, Pack, PriceKey, Rule, STATUS, column, pack_groups, piecewise_cum,
                   position_pnl, tiered, unpack, weight_col)


class BinanceUsdm(Rule):
    name = "binance_usdm"
    venue = "binance"
    metric_name = "margin_level"
    DEFAULTS: dict[str, Any] = {
        "quote_asset": "USDT",
        "liquidation_threshold": 1.0,
        "margin_call_threshold": 1.25,
        "mm_brackets": {"default": {"bounds": [0, 50000, 250000, 1e6, 1e7, 2e7, 5e7, 1e8, 2e8, 3e8],
                                     "rates": [0.004, 0.005, 0.01, 0.025, 0.05, 0.1, 0.125, 0.15, 0.25, 0.5]}},
        "liquidation_fee_rate": 0.0125,  # charged on liquidated notional (value per symbol not public)
        "insurance_fund_usd": 1.0e9,  # scaled to the scenario; the real fund size at 21:00 is not public
    }

    def price_keys(self, account: Account) -> list[PriceKey]:
        return [("mark", self.venue, s) for s in sorted(account.positions)]

    def bracket_mm(self, symbol: str, notional: Num, weight: float = 1.0) -> Num:
        """Brackets apply per real account: a representative of `weight` accounts pays `weight`
        times the bracket of its per-account notional, not the bracket of the group's total."""
        br = self.params["mm_brackets"].get(symbol) or self.params["mm_brackets"]["default"]
        w = max(float(weight), 1e-12)
        return w * piecewise_cum(np.asarray(notional, dtype=float) / w, list(br["bounds"]), list(br["rates"]))

    def parts(self, account: Account, prices: Mapping[PriceKey, Num]) -> list[tuple[str | None, Num, Num]]:
        """(symbol or None for the cross part, equity, MM) per margin unit of the account."""
        out: list[tuple[str | None, Num, Num]] = []
        cross_eq: Num = account.balances.get(self.quote_asset, 0.0)
        cross_mm: Num = 0.0
        has_cross = False
        for sym in sorted(account.positions):
            pos = account.positions[sym]
            mark = prices[("mark", self.venue, sym)]
            mm = self.bracket_mm(sym, np.abs(pos.qty * mark), account.weight)
            pnl = position_pnl(pos, mark)
            if pos.margin is not None:
                out.append((sym, pos.margin + pnl, mm))
            else:
                has_cross = True
                cross_eq = cross_eq + pnl
                cross_mm = cross_mm + mm
        if has_cross or not out:
            out.append((None, cross_eq, cross_mm))
        return out

    @staticmethod
    def _level(eq: Num, mm: Num) -> Num:
        mm_a = np.asarray(mm, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            lvl = np.where(mm_a > 0, np.asarray(eq) / np.where(mm_a > 0, mm_a, 1.0), np.inf)
        return float(lvl) if np.ndim(lvl) == 0 else lvl

    def evaluate(self, account: Account, prices: Mapping[PriceKey, Num]) -> tuple[Num, Num, Num]:
        parts = self.parts(account, prices)
        eq: Num = 0.0
        mm: Num = 0.0
        metric: Num = np.inf
        for _, e, m in parts:
            eq = eq + e
            mm = mm + m
            metric = np.minimum(metric, self._level(e, m))
        if np.ndim(metric) == 0:
            metric = float(metric)
        return eq, mm, metric

    # ---- many accounts: `evaluate` over (accounts, steps), same operations in the same order ----
    def pack(self, accounts) -> Pack:
        def sig(a: Account):
            return tuple((s, a.positions[s].margin is not None) for s in sorted(a.positions))

        def extract(sg, accs):
            pos = [[a.positions[s] for a in accs] for s, _ in sg]
            return {"bal": column([a.balances.get(self.quote_asset, 0.0) for a in accs]), "w": weight_col(accs),
                    "qty": [column([p.qty for p in ps]) for ps in pos],
                    "entry": [column([p.entry for p in ps]) for ps in pos],
                    "margin": [column([p.margin if p.margin is not None else 0.0 for p in ps]) for ps in pos]}
        return pack_groups(accounts, sig, extract)

    def evaluate_packed(self, pack: Pack, prices, n: int):
        def one(sg, c):
            parts: list[tuple[Num, Num]] = []
            cross_eq: Num = c["bal"]
            cross_mm: Num = 0.0
            has_cross = False
            for i, (sym, isolated) in enumerate(sg):
                mark = prices[("mark", self.venue, sym)]
                br = self.params["mm_brackets"].get(sym) or self.params["mm_brackets"]["default"]
                mm = tiered(np.abs(c["qty"][i] * mark), c["w"], list(br["bounds"]), list(br["rates"]))
                pnl = c["qty"][i] * (mark - c["entry"][i])
                if isolated:
                    parts.append((c["margin"][i] + pnl, mm))
                else:
                    has_cross = True
                    cross_eq = cross_eq + pnl
                    cross_mm = cross_mm + mm
            if has_cross or not parts:
                parts.append((cross_eq, cross_mm))
            eq: Num = 0.0
            mm_t: Num = 0.0
            metric: Num = np.inf
            for e, m in parts:
                eq = eq + e
                mm_t = mm_t + m
                metric = np.minimum(metric, self._level(e, m))
            return eq, mm_t, metric
        return unpack(pack, n, one)

    def status(self, metric: Num, equity: Num, maintenance: Num) -> Any:
        m = np.asarray(metric, dtype=float)
        code = np.where(m < self.params["liquidation_threshold"], STATUS["liquidate"],
               np.where(m < self.params["margin_call_threshold"], STATUS["margin_call"], STATUS["ok"]))
        return int(code) if np.ndim(code) == 0 else code

    def liquidation_plan(self, account: Account, prices: Mapping[PriceKey, float]) -> list[ForcedOrder]:
        orders = []
        thr = self.params["liquidation_threshold"]
        parts = self.parts(account, prices)
        breached = {s for s, e, m in parts if self._level(e, m) < thr}
        for sym in sorted(account.positions):
            pos = account.positions[sym]
            unit = sym if pos.margin is not None else None
            if unit in breached:
                orders.append(ForcedOrder(self.venue, "perp", sym, "sell" if pos.qty > 0 else "buy",
                                          abs(pos.qty), "close_position"))
        return orders

    def bankruptcy_price(self, account: Account, symbol: str) -> float:
        """The price at which the position's margin is exactly used up."""
        pos = account.positions[symbol]
        margin = pos.margin if pos.margin is not None else account.balances.get(self.quote_asset, 0.0)
        return pos.entry - margin / pos.qty
