"""The simulation's margin-bearing agents, judged by the replay's own venue rules.

Why through `crashlab.replay.rules`: the simulator is a forward run of the same venue rules the
replay re-runs backwards; a leveraged long is liquidated here exactly when `binance_usdm` or
`hyperliquid` says so, a market maker's unified account when `binance_unified` (with its collateral
pricing rule) says so. No margin formula is written twice.

Cohorts are many similar accounts: each *chunk* is one representative account (`Account.weight`
real ones) with its own entry price. A chunk's liquidation price is found once, at set-up, by
evaluating the rule over a grid of prices (rules broadcast over arrays), so the per-second loop
only compares prices with a sorted threshold array.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from crashlab.ingest.paths import DATA
from crashlab.replay.rules.base import STATUS, Account, Position, Rule
from crashlab.replay.rules.registry import make_rule

VENUE_PARAMS = DATA / "venue_params.toml"


@lru_cache(maxsize=None)
def _params_file() -> dict[str, Any]:
    return tomllib.loads(VENUE_PARAMS.read_text()) if VENUE_PARAMS.exists() else {}


def rule(name: str, **override: Any) -> Rule:
    """A venue rule with `data/venue_params.toml`'s values (each entry's `value`), then overrides."""
    section = _params_file().get(name, {})
    params: dict[str, Any] = {}
    for k, v in section.items():
        if isinstance(v, dict) and "value" in v:
            params[k] = v["value"]
    params.update(override)
    return make_rule(name, {k: v for k, v in params.items() if k in make_rule(name).DEFAULTS})


def liquidation_threshold(rl: Rule, account: Account, key: tuple[str, str, str], ref: float,
                          lo: float = 0.02, n: int = 4000, fixed: dict | None = None) -> float:
    """Highest price of `key` (on a grid from lo·ref to ref) at which `rl` liquidates `account`.

    Returns 0 if the account survives the whole grid, and `ref` if it is already liquidatable.
    """
    grid = ref * np.linspace(lo, 1.0, n)
    prices = dict(fixed or {})
    prices[key] = grid
    eq, mm, metric = rl.evaluate(account, prices)
    code = np.asarray(rl.status(metric, eq, mm))
    bad = np.flatnonzero(code >= STATUS["liquidate"])
    if bad.size == 0:
        return 0.0
    return float(grid[bad.max()])


@dataclass
class Cohort:
    """Chunks of similar accounts on one instrument: sorted by liquidation price, highest first."""

    name: str
    inst: int  # instrument whose price triggers (mark for perps, spot for collateral)
    exec_inst: int  # instrument where the forced order executes
    kind: str  # perp_long | collateral_loan
    liq_price: np.ndarray
    qty: np.ndarray  # base quantity sold when the chunk is liquidated (all weights included)
    notional: np.ndarray  # at entry, quote
    margin: np.ndarray  # quote margin (perps) or equity (loans) at entry
    accounts: list[str]
    pointer: int = 0  # chunks [0, pointer) are liquidated

    def due(self, price: float) -> slice:
        """Chunks newly liquidated at `price` (their threshold is at or above it)."""
        if self.pointer >= len(self.liq_price) or price > self.liq_price[self.pointer]:
            return slice(self.pointer, self.pointer)
        n = int(np.searchsorted(-self.liq_price, -price, side="right"))
        s = slice(self.pointer, max(n, self.pointer))
        self.pointer = max(n, self.pointer)
        return s


def _entries(rng: np.random.Generator, p0: float, lo_pct: float, hi_pct: float, n: int) -> np.ndarray:
    u = (np.arange(n) + rng.uniform(0.2, 0.8, n)) / n
    return p0 * np.exp(np.log1p(lo_pct / 100) + u * (np.log1p(hi_pct / 100) - np.log1p(lo_pct / 100)))


def _sorted_cohort(name: str, inst: int, kind: str, rows: list[tuple[float, float, float, float, str]]) -> Cohort:
    """A cohort from (liquidation price, qty, notional, margin, account) rows, highest price first."""
    liq = np.asarray([r[0] for r in rows], dtype=float)
    order = np.argsort(-liq, kind="stable")
    col = [np.asarray([r[i] for r in rows], dtype=float)[order] for i in (1, 2, 3)]
    return Cohort(name, inst, inst, kind, liq[order], col[0], col[1], col[2], [rows[i][4] for i in order])


def perp_cohort(name: str, rl: Rule, inst: int, symbol: str, venue: str, p0: float, total: float,
                levs: list[list[float]], entry_pct: list[float], rep_notional: float, chunks: int,
                rng: np.random.Generator) -> Cohort:
    """Leveraged longs by leverage bucket, isolated margin, entries spread over `entry_pct` of p0."""
    rows: list[tuple[float, float, float, float, str]] = []
    for lev, share in levs:
        entries = _entries(rng, p0, entry_pct[0], entry_pct[1], chunks)
        chunk_notional = total * share / chunks
        for k, e in enumerate(entries):
            rep_q = rep_notional / e
            acct = Account(f"{name}-{int(lev)}x-{k:04d}", rl.name, cohort=name,
                           positions={symbol: Position(symbol, rep_q, float(e), margin=rep_notional / lev)},
                           weight=chunk_notional / rep_notional)
            lp = liquidation_threshold(rl, acct, ("mark", venue, symbol), float(e))
            if lp >= p0 * 0.995:  # would have been liquidated before the window opens
                continue
            rows.append((lp, chunk_notional / e, chunk_notional, chunk_notional / lev, acct.id))
    return _sorted_cohort(name, inst, "perp_long", rows)


def loan_cohort(name: str, rl: Rule, inst: int, asset: str, p0: float, total: float,
                levs: list[list[float]], rep_notional: float, chunks: int, rng: np.random.Generator) -> Cohort:
    """Accounts holding `asset` as collateral against a USDT loan (loops), by leverage bucket.

    Leverage L means collateral worth L × equity at p0, loan (L − 1) × equity. Equity spreads a
    little within a bucket (jitter on L) so thresholds do not coincide.
    """
    rows: list[tuple[float, float, float, float, str]] = []
    for lev, share in levs:
        ls = lev * (1 + rng.uniform(-0.06, 0.06, chunks))
        chunk_value = total * share / chunks
        for k, L in enumerate(ls):
            q_rep = rep_notional / p0
            loan = rep_notional * (L - 1) / L
            acct = Account(f"{name}-{lev:g}x-{k:04d}", rl.name, cohort=name,
                           balances={asset: q_rep, "USDT": -loan}, weight=chunk_value / rep_notional)
            lp = liquidation_threshold(rl, acct, ("spot", "binance", asset), p0 * 1.2, lo=0.01)
            if lp >= p0 * 0.995:
                continue
            rows.append((lp, chunk_value / p0, chunk_value, chunk_value / L, acct.id))
    return _sorted_cohort(name, inst, "collateral_loan", rows)


@dataclass
class MMAccount:
    """A market maker's unified account: quotes a share of Binance spot books, margined by uniMMR."""

    account: Account
    share: float
    alive: bool = True
    liquidated_at: int | None = None
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, uniMMR)


class LiquidationEngine:
    """Binance's liquidation engine for spot collateral: queued base amounts sold at a capped rate.

    The cap (quote per second per book) is why a burst of breaches becomes minutes of selling,
    and why selling outlasts the breaches that caused it.
    """

    def __init__(self, n: int, rate: np.ndarray):
        self.queue = np.zeros(n)  # base units waiting
        self.rate = rate  # quote notional per step
        self.later: dict[int, np.ndarray] = {}  # release step -> base units per instrument

    def add(self, inst: int, base: float, release: int | None = None) -> None:
        if release is None:
            self.queue[inst] += base
        else:
            self.later.setdefault(release, np.zeros_like(self.queue))[inst] += base

    def take(self, mid: np.ndarray, step: int = 0) -> np.ndarray:
        """Base amounts to sell this step (and remove from the queue)."""
        if self.later:
            for rel in [r for r in self.later if r <= step]:
                self.queue += self.later.pop(rel)
        cap = self.rate / mid
        out = np.minimum(self.queue, cap)
        self.queue -= out
        return out
