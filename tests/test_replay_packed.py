"""`Rule.evaluate_packed` (many accounts in one numpy pass) must equal `Rule.evaluate` per account
bit for bit: the engine's run tables are byte-identical with or without it. Accounts of mixed
shapes (isolated/cross, several symbols, zero and negative balances, tiered collateral) go in one
pack so grouping and row placement are exercised too."""

from __future__ import annotations

import numpy as np
import pytest

from crashlab.replay.rules.base import Account, Position, Rule
from crashlab.replay.rules.registry import make_rule

B = "binance"
N = 257


def _prices(rule: Rule, accounts: list[Account], rng: np.random.Generator) -> dict:
    keys = dict.fromkeys(k for a in accounts for k in rule.price_keys(a))
    out = {}
    for k in keys:
        base = {"USDT": 1.0, "USDE": 1.0, "BNSOL": 210.0, "WBETH": 4300.0, "ETH": 4000.0, "SOL": 200.0}
        p0 = base.get(k[2], 60_000.0 if "BTC" in k[2] else 3_900.0)
        path = p0 * np.exp(np.cumsum(rng.normal(0, 0.01, N)))
        if k[0] == "conversion_rate":
            path[: N // 3] = np.nan  # the rule's fallback rate for the unrecorded part
        out[k] = path
    return out


def _assert_same(rule: Rule, accounts: list[Account], prices: dict) -> None:
    eq, mm, metric = rule.evaluate_many(accounts, prices, N)
    st = rule.status(metric, eq, mm)
    assert eq.shape == mm.shape == metric.shape == (len(accounts), N)
    for i, a in enumerate(accounts):
        want = [np.broadcast_to(np.asarray(x, dtype=float), (N,)) for x in rule.evaluate(a, prices)]
        for got, w in zip((eq[i], mm[i], metric[i]), want):
            assert np.array_equal(got.view(np.int64), np.ascontiguousarray(w).view(np.int64)), a.id
        assert np.array_equal(st[i], np.broadcast_to(rule.status(want[2], want[0], want[1]), (N,)))


def _perp_accounts(rule_name: str, quote: str, rng: np.random.Generator) -> list[Account]:
    syms = ["BTC/USDT:USDT", "ETH/USDT:USDT"] if quote == "USDT" else ["BTC/USDC:USDC", "ETH/USDC:USDC"]
    out = []
    for i in range(24):
        pos = {}
        for s in syms[: 1 + i % 2] if i % 5 else []:
            p0 = 60_000.0 if "BTC" in s else 3_900.0
            pos[s] = Position(s, float(rng.uniform(-300, 300)), p0 * float(rng.uniform(0.9, 1.1)),
                              margin=float(rng.uniform(1e5, 5e6)) if i % 3 == 0 else None,
                              max_leverage=25.0 if i % 7 == 0 else None)
        out.append(Account(f"a{i}", rule_name, balances={quote: float(rng.uniform(0, 5e6))} if i % 4 else {},
                           positions=pos, weight=float(rng.uniform(0.5, 5000))))
    return out


@pytest.mark.parametrize("rule_name,quote", [("binance_usdm", "USDT"), ("hyperliquid", "USDC")])
def test_perp_rules_packed_equal_scalar(rule_name, quote):
    rng = np.random.default_rng(7)
    rule = make_rule(rule_name, {})
    accounts = _perp_accounts(rule_name, quote, rng)
    _assert_same(rule, accounts, _prices(rule, accounts, rng))


@pytest.mark.parametrize("pricing", ["internal_book", "conversion_rate"])
def test_unified_packed_equal_scalar(pricing):
    rng = np.random.default_rng(11)
    rule = make_rule("binance_unified", {
        "collateral_pricing": pricing,
        "collateral_ratios": {"USDT": 1.0, "USDE": {"bounds": [0, 1e6, 5e6], "rates": [0.95, 0.7, 0.3]},
                              "WBETH": 0.9, "BNSOL": 0.85}})
    accounts = []
    for i in range(12):
        bal = {"USDE": float(rng.uniform(1e6, 3e7)), "WBETH": float(rng.uniform(0, 5e3)) if i % 3 else 0.0,
               "BNSOL": float(rng.uniform(0, 5e4)), "USDT": -float(rng.uniform(1e6, 3e7))}
        if i % 4 == 1:
            bal = {"USDT": bal.pop("USDT"), **bal}  # another insertion order = another summation order
        pos = {"BTC/USDT:USDT": Position("BTC/USDT:USDT", float(rng.uniform(-50, 50)), 60_000.0)} if i % 2 else {}
        accounts.append(Account(f"u{i}", "binance_unified", balances=bal, positions=pos, weight=float(1 + i)))
    _assert_same(rule, accounts, _prices(rule, accounts, rng))


@pytest.mark.parametrize("oracle", ["usdt", "market"])
def test_aave_packed_equal_scalar(oracle):
    rng = np.random.default_rng(3)
    rule = make_rule("aave_v3", {"usde_oracle": oracle})
    accounts = [Account(f"v{i}", "aave_v3", weight=100.0,
                        balances={"USDE": float(rng.uniform(1e8, 4e8)), "SUSDE": float(rng.uniform(0, 1e8)) if i % 2 else 0.0,
                                  "USDT": -float(rng.uniform(1e8, 3e8))}) for i in range(6)]
    prices = _prices(rule, accounts, rng)
    prices[("oracle", "aave", "USDT")][:5] = np.nan  # the oracle's 1.0 default
    _assert_same(rule, accounts, prices)


def test_default_evaluate_packed_loops_evaluate():
    """A rule without its own `evaluate_packed` gets the base loop (same numbers by construction)."""
    rng = np.random.default_rng(5)
    rule = make_rule("binance_usdm", {})
    accounts = _perp_accounts("binance_usdm", "USDT", rng)
    prices = _prices(rule, accounts, rng)
    got = Rule.evaluate_packed(rule, Rule.pack(rule, accounts), prices, N)
    want = rule.evaluate_many(accounts, prices, N)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)
