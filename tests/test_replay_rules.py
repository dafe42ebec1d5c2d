"""Venue rules against worked examples computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

from crashlab.replay.rules.base import STATUS, Account, Position, piecewise_cum
from crashlab.replay.rules.registry import make_rule

B = "binance"


def test_unimmr_crosses_105():
    # 1,000,000 USDE at CR 0.9, borrowed 800,000 USDT, loan MMR 5 %:
    #   MM = 0.05 * 800,000 = 40,000;  adjEq(P) = 900,000 * P - 800,000
    #   uniMMR = 1.05  <=>  P = (1.05 * 40,000 + 800,000) / 900,000 = 0.935555...
    r = make_rule("binance_unified", {"collateral_ratios": {"USDE": 0.9, "USDT": 1.0}, "loan_mmr": 0.05})
    a = Account("a", "binance_unified", balances={"USDE": 1_000_000, "USDT": -800_000})
    above = r.check(a, {("spot", B, "USDE"): 0.936})  # (842,400 - 800,000) / 40,000 = 1.06
    below = r.check(a, {("spot", B, "USDE"): 0.935})  # (841,500 - 800,000) / 40,000 = 1.0375
    assert above.metric == pytest.approx(1.06)
    assert above.status == STATUS["reduce_only"]  # 1.05 <= 1.06 < 1.20
    assert below.metric == pytest.approx(1.0375)
    assert below.status == STATUS["liquidate"]
    assert above.maintenance == pytest.approx(40_000)


def test_unimmr_conversion_rate_and_floor():
    # Same account; under conversion_rate USDE counts at max(book, floor 0.97):
    #   (0.9 * 970,000 - 800,000) / 40,000 = 1.825 although the book says 0.65
    r = make_rule("binance_unified", {"collateral_ratios": {"USDE": 0.9}, "collateral_pricing": "conversion_rate",
                                      "usde_floor": 0.97})
    a = Account("a", "binance_unified", balances={"USDE": 1_000_000, "USDT": -800_000})
    assert r.check(a, {("spot", B, "USDE"): 0.65}).metric == pytest.approx(1.825)
    # WBETH = ETH x rate: 100 WBETH, ETH 4,000, rate 1.08, CR 0.9 -> 0.9 * 432,000 = 388,800
    r2 = make_rule("binance_unified", {"collateral_ratios": {"WBETH": 0.9}, "collateral_pricing": "conversion_rate"})
    w = Account("w", "binance_unified", balances={"WBETH": 100})
    eq, _, _ = r2.evaluate(w, {("spot", B, "ETH"): 4000.0, ("conversion_rate", B, "WBETH"): 1.08})
    assert eq == pytest.approx(388_800)
    assert ("spot", B, "ETH") in r2.price_keys(w) and ("spot", B, "WBETH") not in r2.price_keys(w)


def test_tiered_collateral_ratio():
    # ADA tiers: 0-1M 100 %, 1-2M 95 %, 2-5M 75 %, >5M 60 %. 6M of ADA counts
    #   1,000,000 + 950,000 + 2,250,000 + 600,000 = 4,800,000
    tiers = {"bounds": [0, 1e6, 2e6, 5e6], "rates": [1.0, 0.95, 0.75, 0.6]}
    r = make_rule("binance_unified", {"collateral_ratios": {"ADA": tiers}})
    assert r.collateral_value("ADA", 6e6) == pytest.approx(4_800_000)
    assert r.collateral_value("ADA", -6e6) == pytest.approx(-6e6)  # a loan counts at full value


def test_maintenance_tier_boundary():
    # Brackets 0-50k 0.40 %, 50k-250k 0.50 %. Binance: MM = notional * MMR - cum, cum(tier 2) = 50.
    #   MM(50,000) = 200;  MM(60,000) = 60,000 * 0.005 - 50 = 250 = 200 + 10,000 * 0.005
    r = make_rule("binance_usdm")
    assert r.bracket_mm("BTC/USDT:USDT", 50_000) == pytest.approx(200)
    assert r.bracket_mm("BTC/USDT:USDT", 60_000) == pytest.approx(60_000 * 0.005 - 50)
    assert r.bracket_mm("BTC/USDT:USDT", 250_000) == pytest.approx(250_000 * 0.005 - 50)
    # continuous at the boundary
    assert r.bracket_mm("X", 50_000 + 1e-6) - r.bracket_mm("X", 50_000 - 1e-6) == pytest.approx(0, abs=1e-6)
    # Isolated long: 600 contracts at 100 (60k notional, tier 2), margin 3,000.
    #   mark 95.40: equity 3,000 - 2,760 = 240; notional 57,240 -> MM 286.2 - 50 = 236.2 -> 1.016 (kept)
    #   mark 95.39: equity 234; notional 57,234 -> MM 236.17 -> 0.9908 (liquidated)
    a = Account("u", "binance_usdm", positions={"BTC/USDT:USDT": Position("BTC/USDT:USDT", 600, 100.0, 3000.0)})
    keep = r.check(a, {("mark", B, "BTC/USDT:USDT"): 95.40})
    liq = r.check(a, {("mark", B, "BTC/USDT:USDT"): 95.39})
    assert keep.metric == pytest.approx(240 / 236.2)
    assert keep.status == STATUS["margin_call"]
    assert liq.metric == pytest.approx(234 / 236.17)
    assert liq.status == STATUS["liquidate"]
    assert [o.side for o in r.liquidation_plan(a, {("mark", B, "BTC/USDT:USDT"): 95.39})] == ["sell"]


def test_hyperliquid_backstop():
    # 1 BTC long at 100,000, max leverage 40 -> MM = notional / 80; cross balance 2,500 USDC.
    #   mark 99,000: equity 1,500 vs MM 1,237.5         -> ok
    #   mark 98,500: equity 1,000 vs MM 1,231.25 (2/3: 820.8) -> liquidate into the book
    #   mark 98,000: equity   500 vs MM 1,225 (2/3: 816.7)    -> backstop
    r = make_rule("hyperliquid")
    a = Account("h", "hyperliquid", balances={"USDC": 2500},
                positions={"BTC/USDC:USDC": Position("BTC/USDC:USDC", 1.0, 100_000.0)})
    k = ("mark", "hyperliquid", "BTC/USDC:USDC")
    assert r.check(a, {k: 99_000}).status == STATUS["ok"]
    c = r.check(a, {k: 98_500})
    assert c.maintenance == pytest.approx(1231.25) and c.status == STATUS["liquidate"]
    assert r.check(a, {k: 98_000}).status == STATUS["backstop"]
    # ADL rank (mark/entry) * (notional / account value): short 2 BTC from 110,000, value 50,000, mark 98,000
    s = Account("s", "hyperliquid", positions={"BTC/USDC:USDC": Position("BTC/USDC:USDC", -2.0, 110_000.0)})
    assert r.adl_rank(s, "BTC/USDC:USDC", 98_000, 50_000) == pytest.approx((110_000 / 98_000) * 196_000 / 50_000)


def test_aave_health_factor_below_one():
    # 10 ETH (LT 0.83), debt 16,000 USDT:
    #   ETH 2,000: HF = 16,600 / 16,000 = 1.0375
    #   ETH 1,900: HF = 15,770 / 16,000 = 0.985625 -> liquidatable, close factor 50 %:
    #              repay 8,000, seize 8,000 * 1.05 / 1,900 = 4.42105 ETH
    #   ETH 1,800: HF = 14,940 / 16,000 = 0.93375 < 0.95 -> close factor 100 %: seize 16,800 / 1,800
    r = make_rule("aave_v3")
    a = Account("v", "aave_v3", balances={"ETH": 10.0, "USDT": -16_000.0})
    k = ("spot", "binance", "ETH")
    assert r.check(a, {k: 2000.0}).metric == pytest.approx(1.0375)
    c = r.check(a, {k: 1900.0})
    assert c.metric == pytest.approx(0.985625) and c.status == STATUS["liquidate"]
    plan = r.liquidation_plan(a, {k: 1900.0})
    assert plan[0].qty == pytest.approx(8000 * 1.05 / 1900)
    assert r.liquidation_plan(a, {k: 1800.0})[0].qty == pytest.approx(16_800 / 1800)
    repaid, bad = r.settle_seizure(a, plan[0], {k: 1900.0})
    assert repaid == pytest.approx(8000) and bad == 0
    assert a.balances["USDT"] == pytest.approx(-8000)


def test_aave_usde_priced_from_usdt_oracle():
    # 100,000 USDE (LT 0.92) against 90,000 USDT debt: HF = 92,000 / 90,000 = 1.0222 whatever
    # Binance's book says (0.65), because the oracle is USDT/USD; with usde_oracle = market it is 0.664
    a = Account("l", "aave_v3", balances={"USDE": 100_000.0, "USDT": -90_000.0})
    prices = {("oracle", "aave", "USDT"): 1.0, ("spot", "binance", "USDE"): 0.65}
    assert make_rule("aave_v3").check(a, prices).metric == pytest.approx(92_000 / 90_000)
    m = make_rule("aave_v3", {"usde_oracle": "market"}).check(a, prices).metric
    assert m == pytest.approx(0.65 * 92_000 / 90_000) and m < 1


def test_piecewise_cum_vectorised():
    import numpy as np
    v = np.array([0.0, 25.0, 100.0, 300.0])
    out = piecewise_cum(v, [0, 50, 200], [0.1, 0.2, 0.5])
    assert out.tolist() == pytest.approx([0, 2.5, 5 + 10, 5 + 30 + 50])


def test_unknown_parameter_is_an_error():
    with pytest.raises(KeyError, match="usde_flor"):
        make_rule("binance_unified", {"usde_flor": 0.9})


def test_brackets_apply_per_real_account_not_to_the_cohort_total():
    """1,000 accounts of 15k USDT each sit in bracket 1 (0.4 %), whatever their total is."""
    from crashlab.replay.rules.binance_usdm import BinanceUsdm

    r = BinanceUsdm()
    assert r.bracket_mm("BTC/USDT:USDT", 15_000_000, weight=1000) == pytest.approx(1000 * 15_000 * 0.004)
    # one account of the same total size is deep in the brackets (by hand: 200 + 1,000 + 7,500
    # + 225,000 + 250,000 over the 0-50k, -250k, -1M, -10M and -15M brackets)
    assert r.bracket_mm("BTC/USDT:USDT", 15_000_000) == pytest.approx(483_700)
