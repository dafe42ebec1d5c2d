"""Aave v3: health factor with the protocol's oracle choice, close factor and liquidation bonus.

    HF = Σ collateral_i·oracle_i·LT_i / Σ debt_j·oracle_j ;  liquidatable iff HF < 1
    close factor 50 %, 100 % when HF < 0.95; the liquidator repays that share of the debt and
    seizes repaid·(1 + bonus) / oracle of collateral, which it sells on a market (`liquidator_*`):
    that sale is the forced flow. Collateral short of the debt is bad debt (a reserve deficit).
Oracle: USDe (and sUSDe via its rate) is priced from **USDT/USD** since the Feb-2025 payload, so
Binance's USDE/USDT book does not reach the health factor (crash_facts.md B4). `usde_oracle`
switches this to the market price for a counterfactual.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import Account, ForcedOrder, Num, Pack, PriceKey, Rule, STATUS, column, pack_groups, unpack

_STABLE = {"USDT", "USDC", "DAI", "USD"}


class AaveV3(Rule):
    name = "aave_v3"
    venue = "aave"
    metric_name = "HF"
    DEFAULTS: dict[str, Any] = {
        "quote_asset": "USDT",
        "liquidation_threshold": 1.0,
        "full_close_hf": 0.95,
        "close_factor": 0.5,
        "liquidation_thresholds": {"USDE": 0.92, "SUSDE": 0.92, "ETH": 0.83, "WETH": 0.83, "WBTC": 0.78, "default": 0.75},
        "liquidation_bonus": {"USDE": 0.03, "SUSDE": 0.03, "ETH": 0.05, "WETH": 0.05, "default": 0.05},
        "usde_oracle": "usdt",  # usdt (the payload in force) | market (the venue price of USDe)
        "susde_rate": 1.19,  # sUSDe/USDe exchange rate (CAPO-capped); approximate for Oct 2025
        "liquidator_venue": "binance",
        "price_venue": "binance",
    }

    def _oracle_key(self, asset: str) -> tuple[PriceKey, float]:
        """The key whose price the oracle uses for `asset`, and a multiplier."""
        if asset in ("USDE", "SUSDE") and self.params["usde_oracle"] == "usdt":
            mult = float(self.params["susde_rate"]) if asset == "SUSDE" else 1.0
            return ("oracle", self.venue, "USDT"), mult
        if asset == "SUSDE":
            return ("spot", self.params["price_venue"], "USDE"), float(self.params["susde_rate"])
        if asset == "WETH":
            return ("spot", self.params["price_venue"], "ETH"), 1.0
        return ("spot", self.params["price_venue"], asset), 1.0

    def price_keys(self, account: Account) -> list[PriceKey]:
        keys = [self._oracle_key(a)[0] for a in sorted(account.balances) if a not in _STABLE]
        if any(a in _STABLE for a in account.balances) or any(k[0] == "oracle" for k in keys):
            keys.append(("oracle", self.venue, "USDT"))
        return list(dict.fromkeys(keys))

    def oracle_price(self, asset: str, prices: Mapping[PriceKey, Num]) -> Num:
        if asset in _STABLE:
            p = prices.get(("oracle", self.venue, "USDT"), 1.0)
            p = np.where(np.isnan(p), 1.0, p)
            return float(p) if np.ndim(p) == 0 else p
        key, mult = self._oracle_key(asset)
        p = prices[key]
        if key[0] == "oracle":
            p = np.where(np.isnan(p), 1.0, p)
        out = p * mult
        return float(out) if np.ndim(out) == 0 else out

    def _param(self, table: str, asset: str) -> float:
        t = self.params[table]
        return float(t.get(asset, t["default"]))

    def _health(self, holdings, prices: Mapping[PriceKey, Num]) -> tuple[Num, Num, Num]:
        """(equity, debt, health factor) from (asset, quantity, is collateral) triples, zero ones left out.

        `evaluate` (scalars) and `evaluate_packed` (columns of accounts) both fold through here, so
        they run the same operations in the same order and agree to the bit.
        """
        coll: Num = 0.0
        adj: Num = 0.0
        debt: Num = 0.0
        for asset, q, positive in holdings:
            v = q * self.oracle_price(asset, prices)
            if positive:
                coll = coll + v
                adj = adj + v * self._param("liquidation_thresholds", asset)
            else:
                debt = debt - v
        d = np.asarray(debt, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            hf = np.where(d > 0, np.asarray(adj) / np.where(d > 0, d, 1.0), np.inf)
        return coll - debt, debt, hf  # equity, "maintenance" = the debt the collateral must cover

    def evaluate(self, account: Account, prices: Mapping[PriceKey, Num]) -> tuple[Num, Num, Num]:
        held = [(a, q, q > 0) for a, q in sorted(account.balances.items()) if q != 0]
        equity, debt, hf = self._health(held, prices)
        return equity, debt, (float(hf) if np.ndim(hf) == 0 else hf)

    # ---- many accounts: `evaluate` over (accounts, steps), same operations in the same order ----
    def pack(self, accounts) -> Pack:
        def sig(a: Account):
            return tuple((x, q == 0, q > 0) for x, q in sorted(a.balances.items()))

        def extract(sg, accs):
            return {"q": [column([a.balances[x] for a in accs]) for x, _, _ in sg]}
        return pack_groups(accounts, sig, extract)

    def evaluate_packed(self, pack: Pack, prices, n: int):
        def one(sg, c):
            held = [(asset, c["q"][i], positive) for i, (asset, zero, positive) in enumerate(sg) if not zero]
            return self._health(held, prices)
        return unpack(pack, n, one)

    def status(self, metric: Num, equity: Num, maintenance: Num) -> Any:
        m = np.asarray(metric, dtype=float)
        code = np.where(m < self.params["liquidation_threshold"], STATUS["liquidate"], STATUS["ok"])
        return int(code) if np.ndim(code) == 0 else code

    def liquidation_plan(self, account: Account, prices: Mapping[PriceKey, float]) -> list[ForcedOrder]:
        """One liquidation call: repay close_factor of the largest debt, seize the largest collateral."""
        _, _, hf = self.evaluate(account, prices)
        cf = 1.0 if hf < self.params["full_close_hf"] else float(self.params["close_factor"])
        debts = sorted(((a, -q) for a, q in account.balances.items() if q < 0), key=lambda x: (-x[1], x[0]))
        colls = sorted(((a, q * float(self.oracle_price(a, prices))) for a, q in account.balances.items() if q > 0),
                       key=lambda x: (-x[1], x[0]))
        if not debts or not colls:
            return []
        debt_asset, debt_qty = debts[0]
        coll_asset, coll_value = colls[0]
        repay_value = debt_qty * float(self.oracle_price(debt_asset, prices)) * cf
        bonus = self._param("liquidation_bonus", coll_asset)
        seize_value = min(repay_value * (1 + bonus), coll_value)
        p = float(self.oracle_price(coll_asset, prices))
        sell_asset = "ETH" if coll_asset == "WETH" else ("USDE" if coll_asset == "SUSDE" else coll_asset)
        qty = seize_value / p
        if coll_asset == "SUSDE":
            qty *= float(self.params["susde_rate"])
        return [ForcedOrder(self.params["liquidator_venue"], "spot", f"{sell_asset}/USDT", "sell", qty, "aave_seize",
                            asset=coll_asset)]

    def exec_key(self, order: ForcedOrder) -> PriceKey:
        sell_asset = order.symbol.split("/")[0]
        return ("spot", order.venue, sell_asset)

    def apply_fill(self, account: Account, order: ForcedOrder, price: float, qty: float, fee_rate: float = 0.0) -> float:
        """The account is settled at the oracle at seizure time, not at the liquidator's sale price:
        it loses qty of collateral and its largest debt shrinks by qty·oracle / (1 + bonus)."""
        raise NotImplementedError("aave_v3 settles at seizure: use settle_seizure")

    def settle_seizure(self, account: Account, order: ForcedOrder, prices: Mapping[PriceKey, float]) -> tuple[float, float]:
        """Apply a liquidation call to the account; returns (repaid debt value, bad debt value)."""
        coll = order.asset
        p = float(self.oracle_price(coll, prices))
        qty_coll = order.qty / (float(self.params["susde_rate"]) if coll == "SUSDE" else 1.0)
        qty_coll = min(qty_coll, account.balances.get(coll, 0.0))
        bonus = self._param("liquidation_bonus", coll)
        repaid_value = qty_coll * p / (1 + bonus)
        debts = sorted(((a, -q) for a, q in account.balances.items() if q < 0), key=lambda x: (-x[1], x[0]))
        account.balances[coll] = account.balances.get(coll, 0.0) - qty_coll
        bad = 0.0
        if debts:
            a, dq = debts[0]
            dp = float(self.oracle_price(a, prices))
            account.balances[a] += min(repaid_value / dp, dq)
            if all(q <= 1e-9 for q in (account.balances[x] for x in account.balances if account.balances[x] > 0)):
                rest = sum(-q * float(self.oracle_price(x, prices)) for x, q in account.balances.items() if q < 0)
                if rest > 0:
                    bad = rest
                    for x in list(account.balances):
                        if account.balances[x] < 0:
                            account.balances[x] = 0.0
        return repaid_value, bad
