"""Attribution on constructed cases whose answer is known (no lake, no replay needed)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crashlab.analysis.attribution import attribution_rows, model_moves
from crashlab.analysis.legs import legs_from_bars
from crashlab.analysis.shapley import all_subsets, shapley
from crashlab.analysis.stages import load_chain

T0 = datetime(2025, 10, 10, 21, 0, tzinfo=timezone.utc)
MECHS = ("macro_shock", "collateral_depeg", "onchain_loops", "mm_unified_liquidation", "liquidity_withdrawal", "leverage_flush")


def one_on(subset: frozenset[str]) -> float:
    """Only leverage_flush moves the price: -12 % when on."""
    return -12.0 if "leverage_flush" in subset else 0.0


def symmetric(subset: frozenset[str]) -> float:
    """Two interchangeable mechanisms with an interaction term (a spiral): order must not matter."""
    a, b = "liquidity_withdrawal" in subset, "leverage_flush" in subset
    return -4.0 * a - 4.0 * b - 6.0 * (a and b)


def price_model(subset: frozenset[str]) -> np.ndarray:
    """A toy replay: each mechanism sells a fixed flow into a book, price = exp(-impact * cum flow).

    Returns the model move of two legs (minutes 0-30 and 30-60), like a real replay value function.
    """
    flows = {"macro_shock": 1.0, "leverage_flush": 3.0, "liquidity_withdrawal": 0.0, "collateral_depeg": 0.5}
    depth = 0.5 if "liquidity_withdrawal" in subset else 1.0  # a vacuum doubles the impact of any flow
    t = np.arange(61)
    cum = sum(flows.get(m, 0.0) * np.minimum(t, 30 if m == "macro_shock" else 60) / 60 for m in subset) if subset else np.zeros(61)
    px = 100 * np.exp(-0.05 * cum / depth)
    return np.array([(px[30] / px[0] - 1) * 100, (px[60] / px[30] - 1) * 100])


def test_one_mechanism_gets_the_whole_move():
    r = shapley(MECHS, one_on)
    assert r.evaluations == 64
    assert r.values["leverage_flush"] == pytest.approx(-12.0)
    for m in MECHS:
        if m != "leverage_flush":
            assert r.values[m] == pytest.approx(0.0, abs=1e-12)


def test_two_symmetric_mechanisms_share_equally():
    r = shapley(MECHS, symmetric)
    assert r.values["liquidity_withdrawal"] == pytest.approx(r.values["leverage_flush"])
    assert r.values["leverage_flush"] == pytest.approx(-7.0)  # -4 own + half of the -6 interaction
    assert float(r.efficiency_gap()) == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=16, max_size=16))
def test_efficiency_for_any_value_function(vals):
    players = ("a", "b", "c", "d")
    table = dict(zip(all_subsets(players), vals))
    r = shapley(players, table.__getitem__)
    assert sum(r.values.values()) == pytest.approx(table[frozenset(players)] - table[frozenset()], abs=1e-9)


def test_vector_values_parallel_equal_serial_and_memoised():
    serial = shapley(MECHS, price_model)
    cache: dict = {}
    par = shapley(MECHS, price_model, workers=2, cache=cache)
    for m in MECHS:
        np.testing.assert_allclose(serial.values[m], par.values[m], rtol=0, atol=1e-12)
    np.testing.assert_allclose(par.efficiency_gap(), 0.0, atol=1e-9)
    again = shapley(MECHS, price_model, cache=cache)
    assert again.evaluations == 0  # every subset came from the memo
    # Mechanisms that sell nothing and change nothing get nothing.
    np.testing.assert_allclose(par.values["onchain_loops"], 0.0, atol=1e-12)
    # macro_shock sells only in the first leg: it explains nothing of the second.
    assert par.values["macro_shock"][0] < 0
    assert par.values["macro_shock"][1] == pytest.approx(0.0, abs=1e-12)
    # The vacuum sells nothing itself but amplifies the others: it gets a share of the move.
    assert par.values["liquidity_withdrawal"][1] < 0


def _legs(moves: list[float]) -> pl.DataFrame:
    rows, p, t = [], 100.0, T0
    for i, m in enumerate(moves, 1):
        q = p * (1 + m / 100)
        rows.append({"leg_id": i, "start_ts": t, "end_ts": t + timedelta(minutes=10), "start_price": p, "end_price": q,
                     "move_pct": m, "direction": "down" if m < 0 else "up", "minutes": 10.0, "complete": True})
        p, t = q, t + timedelta(minutes=10)
    return pl.DataFrame(rows)


def test_rows_one_mechanism_is_100_percent_and_residual_shown():
    chain = load_chain()
    r = shapley(chain.mechanisms, lambda s: np.array([one_on(s), one_on(s) * 0.5]))
    legs = _legs([-12.0, -8.0])  # the model explains the first leg fully, half of the second
    ev = {s.name: [0.0, 0.0] for s in chain.stages}
    attr, out = attribution_rows("x:spot:X/USD", legs, chain, ev, r.values, np.asarray(r.v_empty), np.asarray(r.v_full))
    l1 = attr.filter(pl.col("leg_id") == 1)
    share = dict(zip(l1["stage"], l1["share"]))
    assert share["leverage_flush"] == pytest.approx(1.0)
    assert share["residual"] == pytest.approx(0.0, abs=1e-12)
    l2 = attr.filter(pl.col("leg_id") == 2)
    r2 = dict(zip(l2["stage"], l2["contribution_pct"]))
    assert r2["residual"] == pytest.approx(-2.0)  # recorded -8, replayed -6
    # rows with a contribution add up to the recorded move (efficiency + residual)
    assert l2["contribution_pct"].drop_nulls().sum() == pytest.approx(-8.0)
    assert out["dominant_stage"].to_list() == ["leverage_flush", "leverage_flush"]
    assert out["confidence"][0] == pytest.approx(1.0)
    assert out["confidence"][1] == pytest.approx(0.75)
    # risk_off has no mechanism: it appears as evidence, marked so
    ro = l1.filter(pl.col("stage") == "risk_off")
    assert ro["method"].to_list() == ["evidence"]


def test_rows_symmetric_mechanisms_equal_shares():
    chain = load_chain()
    r = shapley(chain.mechanisms, symmetric)
    legs = _legs([-14.0])
    ev = {s.name: [None] for s in chain.stages}
    attr, out = attribution_rows("x", legs, chain, ev, {k: np.array([v]) for k, v in r.values.items()},
                                 np.array([r.v_empty]), np.array([r.v_full]))
    share = dict(zip(attr["stage"], attr["share"]))
    assert share["liquidity_withdrawal"] == pytest.approx(0.5)
    assert share["leverage_flush"] == pytest.approx(0.5)
    assert out["confidence"][0] == pytest.approx(0.5)  # a tie: fully explained, no margin


def test_evidence_only_mode_is_labelled_and_residual_is_the_move():
    chain = load_chain()
    legs = _legs([-10.0])
    ev = {s.name: [None] for s in chain.stages}
    ev["liquidity_withdrawal"] = [0.8]
    ev["risk_off"] = [0.2]
    attr, out = attribution_rows("x", legs, chain, ev)
    assert set(attr.filter(pl.col("stage") != "residual")["method"]) == {"evidence"}
    share = dict(zip(attr["stage"], attr["share"]))
    assert share["liquidity_withdrawal"] == pytest.approx(0.8)
    assert dict(zip(attr["stage"], attr["contribution_pct"]))["residual"] == pytest.approx(-10.0)
    assert out["dominant_stage"][0] == "liquidity_withdrawal"
    assert out["dominant_method"][0] == "evidence"
    assert out["confidence"][0] == pytest.approx(0.5 * 0.8 * 0.6)


def test_model_moves_reads_model_price_at_leg_minutes():
    ts = [T0 + timedelta(minutes=i) for i in range(5)]
    pp = pl.DataFrame({"ts": ts, "model_price": [100.0, 90.0, 80.0, 85.0, 85.0]})
    mv = model_moves(pp, [(ts[0], ts[2] + timedelta(seconds=40)), (ts[2], ts[4])])
    np.testing.assert_allclose(mv, [-20.0, 6.25])
