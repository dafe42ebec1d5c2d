"""Hyperliquid perpetuals: maintenance = ½ the initial margin at max leverage; book, backstop, ADL.

    MM_i    = |q_i|·mark_i / (2·max_leverage_i)
    equity  = USDC balance + Σ PnL (cross), or margin_i + PnL_i (isolated)
    metric  = equity / MM;  < 1 -> liquidation (market orders into the book, 20 % slices for
              positions above `partial_threshold_usd`);  < 2/3 -> backstop: the liquidator vault
              (HLP) takes the positions at mark and keeps the remaining margin
    ADL     : when an account's value goes negative, opposite positions ranked by
              (mark / entry) · (notional / account value) are closed at the previous mark.
Source: hyperliquid.gitbook.io (crash_facts.md B3).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import Account, ForcedOrder, Num, Pack, PriceKey, Rule, STATUS, column, pack_groups, position_pnl, unpack


class Hyperliquid(Rule):
    name = "hyperliquid"
    venue = "hyperliquid"
    metric_name = "margin_level"
    DEFAULTS: dict[str, Any] = {
        "quote_asset": "USDC",
        "liquidation_threshold": 1.0,
        "backstop_fraction": 2.0 / 3.0,
        "max_leverage": {"BTC": 40, "ETH": 25, "SOL": 20, "default": 10},
        "partial_threshold_usd": 100000.0,
        "partial_fraction": 0.2,
        "partial_cooldown_s": 30.0,
    }

    def price_keys(self, account: Account) -> list[PriceKey]:
        return [("mark", self.venue, s) for s in sorted(account.positions)]

    def max_leverage(self, symbol: str, pos_lev: float | None) -> float:
        if pos_lev:
            return float(pos_lev)
        base = symbol.split("/")[0]
        table = self.params["max_leverage"]
        return float(table.get(base, table["default"]))

    def evaluate(self, account: Account, prices: Mapping[PriceKey, Num]) -> tuple[Num, Num, Num]:
        eq: Num = account.balances.get(self.quote_asset, 0.0)
        mm: Num = 0.0
        for sym in sorted(account.positions):
            pos = account.positions[sym]
            mark = prices[("mark", self.venue, sym)]
            eq = eq + position_pnl(pos, mark) + (pos.margin or 0.0)
            mm = mm + np.abs(pos.qty * mark) / (2.0 * self.max_leverage(sym, pos.max_leverage))
        mm_a = np.asarray(mm, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            metric = np.where(mm_a > 0, np.asarray(eq) / np.where(mm_a > 0, mm_a, 1.0), np.inf)
        if np.ndim(metric) == 0:
            metric = float(metric)
        return eq, mm, metric

    # ---- many accounts: `evaluate` over (accounts, steps), same operations in the same order ----
    def pack(self, accounts) -> Pack:
        def extract(syms, accs):
            pos = [[a.positions[s] for a in accs] for s in syms]
            return {"bal": column([a.balances.get(self.quote_asset, 0.0) for a in accs]),
                    "qty": [column([p.qty for p in ps]) for ps in pos],
                    "entry": [column([p.entry for p in ps]) for ps in pos],
                    "margin": [column([p.margin or 0.0 for p in ps]) for ps in pos],
                    "lev2": [column([2.0 * self.max_leverage(s, p.max_leverage) for p in ps])
                             for s, ps in zip(syms, pos)]}
        return pack_groups(accounts, lambda a: tuple(sorted(a.positions)), extract)

    def evaluate_packed(self, pack: Pack, prices, n: int):
        def one(syms, c):
            eq: Num = c["bal"]
            mm: Num = 0.0
            for i, sym in enumerate(syms):
                mark = prices[("mark", self.venue, sym)]
                eq = eq + c["qty"][i] * (mark - c["entry"][i]) + c["margin"][i]
                mm = mm + np.abs(c["qty"][i] * mark) / c["lev2"][i]
            mm_a = np.asarray(mm, dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                metric = np.where(mm_a > 0, np.asarray(eq) / np.where(mm_a > 0, mm_a, 1.0), np.inf)
            return eq, mm, metric
        return unpack(pack, n, one)

    def status(self, metric: Num, equity: Num, maintenance: Num) -> Any:
        m = np.asarray(metric, dtype=float)
        thr = self.params["liquidation_threshold"]
        code = np.where(m < thr * self.params["backstop_fraction"], STATUS["backstop"],
               np.where(m < thr, STATUS["liquidate"], STATUS["ok"]))
        return int(code) if np.ndim(code) == 0 else code

    def liquidation_plan(self, account: Account, prices: Mapping[PriceKey, float]) -> list[ForcedOrder]:
        orders = []
        for sym in sorted(account.positions):
            pos = account.positions[sym]
            mark = float(prices[("mark", self.venue, sym)])
            qty = abs(pos.qty)
            if qty * mark / max(account.weight, 1.0) > self.params["partial_threshold_usd"] and self.params["partial_fraction"] < 1:
                qty *= float(self.params["partial_fraction"])
            orders.append(ForcedOrder(self.venue, "perp", sym, "sell" if pos.qty > 0 else "buy", qty, "market_liquidation"))
        return orders

    def adl_rank(self, account: Account, symbol: str, mark: float, equity: float) -> float:
        pos = account.positions.get(symbol)
        if pos is None or equity <= 0 or pos.entry <= 0:
            return -np.inf
        ratio = mark / pos.entry if pos.qty > 0 else pos.entry / mark
        return ratio * abs(pos.qty) * mark / equity
