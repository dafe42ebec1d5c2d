"""The impact model: what a forced order does to the price, and how the price recovers.

Model (one state per instrument; `books.py` builds the ladders it walks):

1. A forced sell of notional Q at step t walks the *bid ladder* of that step (the recorded book;
   with `liquidity_withdrawal` off, the pre-shock reference ladder), starting past the depth that
   earlier forced sells already consumed (`c_bid`). With d(u) = distance from the mid at which
   cumulative depth u is reached, the walk runs from d0 = d(c) to d1 = d(c + Q):
       fill price  = P_now · (1 − avg d) / (1 − d0)       avg d = ∫ d(u) du / Q over the walk
       Δ log price = log((1 − d1) / (1 − d0))
   (buys mirror this on the ask ladder). P_now is the current margin price (recorded × overlay).
2. Of each Δ, a fraction φ (`permanent_fraction`) is permanent; the rest is transient and decays,
   together with the consumed depth c, with half-life h (`resilience_half_life_s`): resting
   liquidity comes back, as it does after a liquidation wick.
       log impact L(t) = perm + trans · 2^(−(t − t_last)/h)
3. Two such states run side by side: `forced` (liquidations, ADL, backstops: the replay's own
   forced flow) gives the *margin price* = recorded × exp(L_forced), which is what every account's
   margin is checked on — the feedback loop; `model` (every active mechanism's flow, the macro
   shock's exogenous selling included) gives the *model price* = p0 × exp(L_model), the price the
   attribution takes Shapley values of. The macro flow is not in the margin price because the
   recorded price already contains the real macro selling.
Depth with no book and no depth bands comes from traded notional (books.ladder_from_trades), else
from `default_depth_1pct_usd`; the source is reported in the run's manifest per instrument.
Known limits: the replayed forced flow comes on top of recorded prices that already contain the
real night's liquidations (so the margin price double-counts whatever the scenario re-creates);
impact does not spill across venues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .books import walk


@dataclass
class _State:
    c_bid: float = 0.0
    c_ask: float = 0.0
    perm: float = 0.0
    trans: float = 0.0
    t: float = 0.0  # seconds since the window start of the last update


@dataclass
class ImpactState:
    half_life_s: float = 60.0
    permanent_fraction: float = 0.3
    max_walk_pct: float = 0.99
    states: dict[int, _State] = field(default_factory=dict)
    log: list[tuple[int, float, float, float]] = field(default_factory=list)  # (inst, t_s, d_perm, d_trans)

    def _decay(self, st: _State, t: float) -> None:
        if t > st.t:
            f = 0.5 ** ((t - st.t) / self.half_life_s) if self.half_life_s > 0 else 0.0
            st.c_bid *= f
            st.c_ask *= f
            st.trans *= f
            st.t = t

    def level(self, inst: int, t: float) -> float:
        """Log impact now (no state change)."""
        st = self.states.get(inst)
        if st is None:
            return 0.0
        f = 0.5 ** (max(t - st.t, 0.0) / self.half_life_s) if self.half_life_s > 0 else 0.0
        return st.perm + st.trans * f

    def series(self, inst: int, t: np.ndarray) -> np.ndarray:
        """Log impact over future times `t` (s), assuming no new flow until then."""
        st = self.states.get(inst)
        if st is None:
            return np.zeros(len(t))
        f = np.power(0.5, np.maximum(t - st.t, 0.0) / self.half_life_s) if self.half_life_s > 0 else 0.0
        return st.perm + st.trans * f

    def execute(self, inst: int, t: float, side: str, notional: float, ladder: np.ndarray) -> tuple[float, float]:
        """Walk `notional` (quote) of a `side` order; returns (fill price factor vs the current
        price, Δ log price). The factor multiplies P_now (margin price) to give the fill price."""
        st = self.states.setdefault(inst, _State(t=t))
        self._decay(st, t)
        sell = side == "sell"
        consumed = st.c_bid if sell else st.c_ask
        d0, _ = walk(ladder, consumed, 0.0, self.max_walk_pct)
        avg, d1 = walk(ladder, consumed, notional, self.max_walk_pct)
        if sell:
            factor = (1 - avg) / (1 - d0)
            dlog = math.log((1 - d1) / (1 - d0))
            st.c_bid += notional
        else:
            factor = (1 + avg) / (1 + d0)
            dlog = math.log((1 + d1) / (1 + d0))
            st.c_ask += notional
        dp, dt = self.permanent_fraction * dlog, (1 - self.permanent_fraction) * dlog
        st.perm += dp
        st.trans += dt
        self.log.append((inst, t, dp, dt))
        return factor, dlog

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
