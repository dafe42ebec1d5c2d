"""The impact model: what a forced order does to the price, and how the price recovers.

Why it looks like this: a replay pushes billions of forced notional into books that, on the
night, held tens of millions within 1 % of the mid. A linear walk that stops at the ladder's last
level either sends the price to zero (the old behaviour: BTC at 5,685) or, clipped, says nothing.
So the walk is done in *log* price, the ladder is extended past its last observed level at a
bounded, data-derived density, the impact decays as liquidity refills, and the level is capped.

1. Ladder (`extend`). A ladder is the cumulative quote notional within each distance d of the
   mid (books.GRID). Its *observed extent* d_x is the last grid point where depth still grows
   from data (a ladder built from depth bands is continued linearly by books.py: that synthetic
   tail is recognised and dropped, down to 1 %, so are the linear ladders made from traded
   notional or the default depth, which say "depth within 1 %" and nothing further). Beyond d_x
   depth grows at the far density
       ρ_far = min(ρ_last, far_density_ratio · D1 / 1 %)      [quote per unit of log price]
   where D1 is the depth within 1 % (for a ladder ending closer, its average density carried to
   1 %) and ρ_last the density of the last observed segment: never denser than what was seen at
   the edge, and a fixed fraction of the near-mid density (`far_density_ratio`, derived from
   Binance's BTCUSDT bookDepth: the depth added per 1 % between ±1 % and ±5 % is ~0.09–0.17 × the
   depth within 1 %, flat in distance). An empty ladder has no depth: the walk goes to the cap.
2. Walk in log price. Distance d on the grid is the log distance ℓ = −ln(1−d) for sells and
   ln(1+d) for buys, so no price can reach zero; a forced sell of notional Q walks from the
   edge of the depth still missing on that side, ℓ0 = the transient impact not yet refilled
   (c = depth within ℓ0 is consumed), to ℓ1 = ℓ(c + Q), capped at `max_log_walk`:
       Δ log price = −(ℓ1 − ℓ0)                        (buys: +)
       fill price  = P_now · mean over the walk of exp(−(ℓ(u) − ℓ0))
   P_now is the current margin price (recorded × overlay), so the walk is relative to it.
3. Resilience. A fraction φ (`permanent_fraction`) of each Δ is permanent (it moves the mid,
   and the ladder is relative to the mid); the rest, and with it the consumed depth, decays with
   half-life h (`resilience_half_life_s`) as resting liquidity
   comes back:  L(t) = perm + trans · 2^(−(t − t_last)/h).
4. Floor. |L| never exceeds `max_log_impact` (a price is at least exp(−cap) of the recorded one):
   the part of a Δ that would cross the cap is dropped and reported (`capped`).

Two such states run side by side (engine.py): `forced` (the replay's own liquidations, ADL,
backstops) gives the margin price = recorded × exp(L_forced), the feedback loop every account is
checked on; `model` (all active mechanisms' flow, the macro shock's exogenous selling included)
gives the model price = p0 × exp(L_model), the price the attribution decomposes.
Depth with no book and no bands comes from traded notional (books.ladder_from_trades), else from
`default_depth_1pct_usd`; the source is in the run's manifest per instrument.
Known limits: the replayed forced flow comes on top of recorded prices that already contain the
night's real liquidations (the margin price double-counts what the scenario re-creates); impact
does not spill across venues; the permanent share is an assumption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .books import GRID

_X = np.concatenate([[0.0], GRID])
_LOG_SELL = -np.log1p(-np.minimum(_X, 0.999))  # ℓ(d) for a sell
_LOG_BUY = np.log1p(_X)
_NSUB = 24
_ONE_PCT = int(np.flatnonzero(GRID == 0.01)[0])  # ladders from bands/trades/defaults hold data to >= 1 %  # sub-steps of the far (linear) segment when averaging exp(−ℓ) over a walk

DEFAULTS: dict[str, float] = {
    "resilience_half_life_s": 120.0,
    "permanent_fraction": 0.3,
    "far_density_ratio": 0.12,
    "max_log_walk": 2.0,
    "max_log_impact": 3.0,
}


@dataclass(frozen=True)
class Ladder:
    """An extended ladder: log distances `l` and depth `y` at the observed points, then ρ_far."""

    l: np.ndarray  # log distance of each observed point (starts at 0)
    y: np.ndarray  # cumulative depth at those points (starts at 0, strictly increasing after)
    rho_far: float  # depth per unit log distance beyond the last observed point
    extent: float  # observed extent as a grid distance (fraction)

    def depth_at(self, l: float) -> float:
        """Cumulative depth within log distance `l` (inverse of `dist`)."""
        if l <= 0:
            return 0.0
        if l <= self.l[-1] and len(self.l) > 1:
            return float(np.interp(l, self.l, self.y))
        return float(self.y[-1] + (l - self.l[-1]) * self.rho_far)

    def dist(self, u: float) -> float:
        """Log distance at which cumulative depth `u` is reached."""
        if u <= 0:
            return 0.0
        top = self.y[-1]
        if u <= top and len(self.y) > 1:
            return float(np.interp(u, self.y, self.l))
        if self.rho_far <= 0:
            return math.inf
        return float(self.l[-1] + (u - top) / self.rho_far)


def observed_extent(ladder: np.ndarray) -> int:
    """Index (into books.GRID) of the last point where the ladder's depth comes from data; -1 if
    the ladder is empty. A ladder continued linearly past its widest band (books.ladder_from_bands:
    y ∝ distance) ends where that proportional tail begins."""
    y = np.maximum.accumulate(np.nan_to_num(np.asarray(ladder, dtype=float), nan=0.0))
    if not len(y) or y[-1] <= 0:
        return -1
    up = np.flatnonzero(np.diff(np.concatenate([[0.0], y])) > 0)
    j = int(up[-1])
    ratio = y / GRID
    while j > _ONE_PCT and y[j - 1] > 0 and math.isclose(ratio[j], ratio[j - 1], rel_tol=1e-9):
        j -= 1
    return j


def extend(ladder: np.ndarray, side: str, far_density_ratio: float) -> Ladder:
    """The ladder as the walk sees it (see the module docstring, point 1)."""
    y = np.maximum.accumulate(np.nan_to_num(np.asarray(ladder, dtype=float), nan=0.0))
    j = observed_extent(y)
    lg = _LOG_SELL if side == "sell" else _LOG_BUY
    if j < 0:
        return Ladder(np.zeros(1), np.zeros(1), 0.0, 0.0)
    ys = np.concatenate([[0.0], y[: j + 1]])
    ls = lg[: j + 2].copy()
    keep = np.concatenate([[True], np.diff(ys) > 0])  # drop flat steps (no depth between points)
    ys, ls = ys[keep], ls[keep]
    # depth within 1 % (read off the ladder, or the observed average density carried to 1 %)
    d1 = float(y[_ONE_PCT]) if j >= _ONE_PCT else ys[-1] / GRID[j] * 0.01
    last = (ys[-1] - ys[-2]) / (ls[-1] - ls[-2]) if len(ys) > 1 else d1 / 0.01
    return Ladder(ls, ys, float(max(min(last, far_density_ratio * d1 / 0.01), 0.0)), float(GRID[j]))


def walk_log(lad: Ladder, consumed: float, notional: float, max_log_walk: float) -> tuple[float, float, float]:
    """Walk `notional` past `consumed`: (ℓ0, ℓ1, mean of exp(−(ℓ−ℓ0)) over the walk), ℓ capped."""
    l0 = min(lad.dist(consumed), max_log_walk)
    if notional <= 0:
        return l0, l0, 1.0
    u0, u1 = consumed, consumed + notional
    l1 = min(lad.dist(u1), max_log_walk)
    inner = lad.y[(lad.y > u0) & (lad.y < u1)]
    far_lo = max(u0, float(lad.y[-1]))
    far = np.linspace(far_lo, u1, _NSUB + 1) if u1 > far_lo else np.empty(0)
    us = np.unique(np.concatenate([[u0, u1], inner, far]))
    ls = np.minimum(np.array([lad.dist(u) for u in us]), max_log_walk)
    e = np.exp(-(ls - l0))
    mean = float(np.sum((e[1:] + e[:-1]) * 0.5 * np.diff(us)) / (u1 - u0))
    return l0, l1, mean


@dataclass
class _State:
    perm: float = 0.0
    trans: float = 0.0  # signed transient log impact (sells < 0) at time t
    t: float = 0.0  # seconds since the window start of the last update


@dataclass
class ImpactState:
    half_life_s: float = DEFAULTS["resilience_half_life_s"]
    permanent_fraction: float = DEFAULTS["permanent_fraction"]
    max_walk_pct: float = 0.99  # kept for callers of the old signature; max_log_walk rules
    far_density_ratio: float = DEFAULTS["far_density_ratio"]
    max_log_walk: float = DEFAULTS["max_log_walk"]
    max_log_impact: float = DEFAULTS["max_log_impact"]
    states: dict[int, _State] = field(default_factory=dict)
    log: list[tuple[int, float, float, float]] = field(default_factory=list)  # (inst, t_s, d_perm, d_trans)
    capped: int = 0  # walks whose Δ was cut by max_log_impact or max_log_walk

    @classmethod
    def from_params(cls, impact: Mapping[str, Any]) -> "ImpactState":
        """From the [impact] section of venue_params (values only), defaults where absent."""
        p = {k: float(impact.get(k, v)) for k, v in DEFAULTS.items()}
        return cls(p["resilience_half_life_s"], p["permanent_fraction"], 0.99, p["far_density_ratio"],
                   p["max_log_walk"], p["max_log_impact"])

    def _f(self, dt: float | np.ndarray):
        return np.power(0.5, np.maximum(dt, 0.0) / self.half_life_s) if self.half_life_s > 0 else 0.0 * dt

    def _decay(self, st: _State, t: float) -> None:
        if t > st.t:
            st.trans *= float(self._f(t - st.t))
            st.t = t

    def level(self, inst: int, t: float) -> float:
        """Log impact now (no state change)."""
        st = self.states.get(inst)
        if st is None:
            return 0.0
        return st.perm + st.trans * float(self._f(t - st.t))

    def series(self, inst: int, t: np.ndarray) -> np.ndarray:
        """Log impact over future times `t` (s), assuming no new flow until then."""
        st = self.states.get(inst)
        if st is None:
            return np.zeros(len(t))
        return st.perm + st.trans * self._f(t - st.t)

    def execute(self, inst: int, t: float, side: str, notional: float, ladder: np.ndarray) -> tuple[float, float]:
        """Walk `notional` (quote) of a `side` order; returns (fill price factor vs the current
        price, Δ log price). The factor multiplies P_now (margin price) to give the fill price.

        The walk starts at the depth still missing from that side: the transient impact not yet
        refilled (the permanent part moved the mid, and the ladder is relative to the mid)."""
        st = self.states.setdefault(inst, _State(t=t))
        self._decay(st, t)
        sell = side == "sell"
        lad = extend(ladder, "sell" if sell else "buy", self.far_density_ratio)
        edge = max(-st.trans, 0.0) if sell else max(st.trans, 0.0)
        consumed = lad.depth_at(edge)
        l0, l1, mean = walk_log(lad, consumed, max(notional, 0.0), self.max_log_walk)
        dlog = -(l1 - l0) if sell else (l1 - l0)
        factor = mean if sell else self._buy_factor(lad, consumed, notional, l0)
        level = st.perm + st.trans
        # the floor/ceiling: |L| <= max_log_impact (a sell never lifts the price, nor a buy lowers it)
        capped = min(0.0, max(dlog, -self.max_log_impact - level)) if sell else \
            max(0.0, min(dlog, self.max_log_impact - level))
        if capped != dlog or l1 >= self.max_log_walk:
            self.capped += 1
        dlog = capped
        dp, dt = self.permanent_fraction * dlog, (1 - self.permanent_fraction) * dlog
        st.perm += dp
        st.trans += dt
        self.log.append((inst, t, dp, dt))
        return factor, dlog

    def _buy_factor(self, lad: Ladder, consumed: float, notional: float, l0: float) -> float:
        if notional <= 0:
            return 1.0
        u0, u1 = consumed, consumed + notional
        us = np.linspace(u0, u1, _NSUB + 1)
        ls = np.minimum(np.array([lad.dist(u) for u in us]), self.max_log_walk)
        e = np.exp(ls - l0)
        return float(np.sum((e[1:] + e[:-1]) * 0.5 * np.diff(us)) / (u1 - u0))

    def replay_series(self, inst: int, t: np.ndarray) -> np.ndarray:
        """L(t) over a whole run from the log (for the price path), exactly as the run saw it."""
        out = np.zeros(len(t))
        for i, te, dp, dt in self.log:
            if i != inst:
                continue
            after = t >= te
            out[after] += dp
            if self.half_life_s > 0:
                out[after] += dt * np.power(0.5, (t[after] - te) / self.half_life_s)
        return out
