"""The forward simulation: agents trade against the books one second at a time.

Every price path comes out of flows meeting liquidity; nothing draws a path. Per second:

1. market makers' risk systems set their quote sizes from realised volatility (bids are pulled
   faster and deeper than asks: the liquidity vacuum); on the headline, MMs of some books widen
   their bids (keep the touch, move the rest 1.5-5 % down) until the volatility pull takes over;
2. agents send taker flow: noise traders, the macro sellers after the tariff post, forced orders
   from liquidations (perp longs closed at the mark by `binance_usdm`/`hyperliquid`; collateral
   of loan/loop accounts and of market makers' unified accounts sold by the liquidation engine,
   by `binance_unified` under its collateral pricing rule), arbitrageurs between venues (who stop
   when withdrawals halt and their inventory runs out) and value buyers below a slow anchor;
3. each book's net flow sweeps it (`book.Books`), organic limit orders arrive and are cancelled;
4. index, mark and oracle prices are computed the venues' way from the new mids, and every
   account is checked by its venue rule.

`Records` keeps what the event writer needs; it holds per-second arrays, never per-event rows.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .agents import Cohort, LiquidationEngine, MMAccount, loan_cohort, perp_cohort, rule
from .book import MM_LEVELS, Books
from .scenario import Scenario
from crashlab.replay.rules.base import STATUS, Account

BAND_PCTS = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
SNAP_LEVELS = 10
LADDER_EVERY = 5


@dataclass
class Records:
    T: int
    n: int
    mid: np.ndarray = None  # (T+1, n) mid at each step boundary (row t = before step t)
    low: np.ndarray = None  # (T, n)
    high: np.ndarray = None
    buys: np.ndarray = None  # taker buy quote notional
    sells: np.ndarray = None
    forced: np.ndarray = None  # part of `sells` that is forced (liquidation) flow
    depth_bid: np.ndarray = None  # (S, n, 5) at snapshot steps
    depth_ask: np.ndarray = None
    snap_every: int = 2
    snap_bid_px: np.ndarray = None  # (T // snap_every, n, L)
    snap_bid_amt: np.ndarray = None
    snap_ask_px: np.ndarray = None
    snap_ask_amt: np.ndarray = None
    ref: dict[str, np.ndarray] = field(default_factory=dict)  # (inst_id, price_type) -> (T,)
    pool: np.ndarray = None  # (T,) on-chain USDe/USDT pool price
    liquidations: list[tuple] = field(default_factory=list)  # (step, inst, side, qty, price, account)
    mm_events: list[dict[str, Any]] = field(default_factory=list)
    engine_events: list[tuple] = field(default_factory=list)  # (step, cohort, chunks, notional)
    dt: float = 1.0
    oi: dict[int, np.ndarray] = field(default_factory=dict)  # perp inst -> (T,) open long notional

    def alloc(self, snap_every: int) -> None:
        T, n = self.T, self.n
        self.mid = np.zeros((T + 1, n))
        for name in ("low", "high"):
            setattr(self, name, np.full((T, n), np.nan))
        for name in ("buys", "sells", "forced"):
            setattr(self, name, np.zeros((T, n)))
        self.snap_every = snap_every
        S = (T + snap_every - 1) // snap_every
        self.depth_bid = np.zeros((S, n, len(BAND_PCTS)))
        self.depth_ask = np.zeros((S, n, len(BAND_PCTS)))
        for name in ("snap_bid_px", "snap_bid_amt", "snap_ask_px", "snap_ask_amt"):
            setattr(self, name, np.full((S, n, SNAP_LEVELS), np.nan))
        self.pool = np.ones(T)


def _arr(sc: Scenario, key: str) -> np.ndarray:
    return np.array([float(i.get(key)) for i in sc.instruments])


def _gamma_kernel(t: np.ndarray, tau: float) -> np.ndarray:
    """Gamma(k=2) shape with mode at tau, integrating to 1 over t ≥ 0."""
    t = np.maximum(t, 0.0)
    return t / tau**2 * np.exp(-t / tau)


class Market:
    def __init__(self, sc: Scenario, seed: int, scale: float = 1.0):
        self.sc = sc
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
        self.scale = scale
        ins = sc.instruments
        self.n = n = len(ins)
        m = sc.section("model")
        self.p0 = _arr(sc, "p0")
        self.d1 = _arr(sc, "depth")
        self.mm_share = _arr(sc, "mm_share")
        self.hs = _arr(sc, "half_spread_bp") * 1e-4
        self.dt = dt = float(m.get("dt_s", 1.0))
        self.noise = _arr(sc, "noise") * self.d1 * np.sqrt(dt)  # per step
        self.floor_bid = _arr(sc, "bid_floor")
        self.floor_ask = _arr(sc, "ask_floor")
        self.books = Books(self.p0, float(m["h"]), int(m["k_down"]), int(m["k_up"]), int(m["window"]))
        prof = np.asarray(m["mm_profile"], dtype=float)
        self.mm_profile = prof / prof.sum()
        R, L = int(m["organic_levels"]), float(m["organic_decay_levels"])
        op = np.exp(-np.arange(1, R + 1) / L)
        within1 = max(1, int(round(0.01 / float(m["h"]))))  # levels within 1 % of the mid
        self.org_profile = op / op[:within1].sum()
        self.cancel = np.full(n, 1 - (1 - float(m["cancel_rate"])) ** dt)
        self.add0 = (1 - self.mm_share) * self.d1 * self.cancel
        # initial resting book = steady state of arrivals and cancels near the mid, plus latent
        # liquidity far from it (orders resting for days), which nobody replenishes in the window
        Rf, Lf = int(m["far_levels"]), float(m["far_decay_levels"])
        fp = np.exp(-np.arange(1, Rf + 1) / Lf)
        fp = fp / fp.sum() * float(m["far_depth"])  # in units of the 1 % depth
        self.books.replenish(self.d1 * (1 - self.mm_share), self.d1 * (1 - self.mm_share), self.org_profile, np.ones(n))
        self.books.replenish(self.d1, self.d1, fp, np.zeros(n))
        for i, inst in enumerate(ins):
            for pct, usd in inst.params.get("stale_bids", []):
                self.books.add_resting(i, "bid", inst.p0 * (1 - pct / 100.0), float(usd))
        # market-maker risk systems
        r = sc.section("mm_risk")
        self.vol_a = 1 - 0.5 ** (dt / float(r["vol_half_life_s"]))
        hl_steps = float(r["vol_half_life_s"]) / dt
        # calm level of the signed-return EWMA: noise-only returns averaged over ~2 half-lives
        self.base_vol = self.noise / self.d1 * 0.01 / np.sqrt(2.9 * hl_steps) * float(r["base_vol_mult"])
        self.k_down = 1 - np.exp(-dt / float(r["tau_down_s"]))
        self.k_up = 1 - np.exp(-dt / float(r["tau_up_s"]))
        self.vol = np.zeros(n)
        self.eff_depth = self.d1.copy()
        self.f_bid = np.ones(n)
        self.f_ask = np.ones(n)
        self.leader = sc.index(r["leader"])
        self.r = r
        # risk limits cut on the headline itself, before prices move much (crash_facts C8)
        self.head_cut = _arr(sc, "headline_cut")  # per book: share of MM quotes pulled on the headline
        self.head_ramp = float(r.get("headline_ramp_s", 300.0)) / dt
        # ... or widened: a share `headline_widen` of a book's MM bid quotes near the mid is moved
        # out to rest `widen_levels` bins below it (MMs quote wider on the headline: the book near
        # the mid thins while depth further out is kept; crash_facts C8, 'appeared empty')
        self.widen = _arr(sc, "headline_widen")
        self.widen_ramp = float(r.get("widen_ramp_s", r.get("headline_ramp_s", 300.0))) / dt
        self.widen_levels = tuple(int(v) for v in r.get("widen_levels", [15, 50]))
        self.widen_rest = float(r.get("widen_rest", 1.0))
        self.widen_rows = np.flatnonzero(self.widen > 0)
        # the touch (first `widen_keep` levels) stays: what a small taker meets does not change
        self.widen_mask = (np.arange(len(self.mm_profile)) >= int(r.get("widen_keep", 2))).astype(float)
        self.widen_share = float((self.mm_profile * self.widen_mask).sum())
        # once the volatility pull has taken the quotes down below `widen_release` of normal, the
        # headline regime is over: widened quotes come back within `widen_back_s` (default tau_up_s)
        self.widen_release = float(r.get("widen_release", 0.0))
        self.w_now = np.zeros(n)
        self.widen_back = 1 - np.exp(-dt / float(r.get("widen_back_s", r["tau_up_s"])))
        self.released = np.zeros(n, dtype=bool)
        # other traders' new orders widen by this share of the MMs' widening
        self.widen_org = float(r.get("widen_organic", 0.0))
        self.org_mask = (np.arange(1, len(self.org_profile) + 1) > int(r.get("widen_keep", 2))).astype(float)
        self.is_bspot = np.array([i.venue == "binance" and i.market == "spot" for i in ins])
        # books whose MM fills stay in the MM's unified account (alts, collateral tokens); majors are
        # assumed delta-hedged on perps, so their fills do not change the account's risk
        self.mm_books = self.is_bspot & np.array([bool(i.get("mm_inventory")) for i in ins])
        # agents
        self.rules = {name: rule(name) for name in ("binance_usdm", "hyperliquid", "binance_unified")}
        self.cohorts: list[Cohort] = []
        self._build_cohorts()
        eng = sc.section("engine")
        self.engine = LiquidationEngine(n, _arr(sc, "engine_rate") * self.d1 * float(eng.get("rate_mult", 1.0)) * dt)
        self.mms = self._build_mms()
        self.pending: list[tuple[int, float, str, str]] = []  # perp forced orders for next step
        self.arbs = self._build_arbs()
        deg = np.bincount(self.arbs["a"], minlength=n) + np.bincount(self.arbs["b"][self.arbs["b"] >= 0], minlength=n)
        self.arb_links = np.maximum(deg[self.arbs["a"]], np.where(self.arbs["b"] >= 0, deg[np.maximum(self.arbs["b"], 0)], 1))
        v = sc.section("value")
        self.val_thr = _arr(sc, "value_thr_pct") / 100
        self.val_width = _arr(sc, "value_width_pct") / 100
        self.val_cap = _arr(sc, "value_cap") * self.d1 * dt
        self.lad_disc = np.asarray(v["ladder_pct"], dtype=float) / 100
        self.lad_target = _arr(sc, "ladder_depth") * self.d1 / len(self.lad_disc)
        #: ladders are topped up every LADDER_EVERY steps (they refill over minutes; saves time)
        self.lad_rate = 1 - np.exp(-dt * LADDER_EVERY / float(v["ladder_refill_s"]))
        self.lad_scale = _arr(sc, "ladder_stretch")  # >1 puts a book's ladder further from the anchor
        self.anchor_a = 1 - 0.5 ** (dt / float(v["anchor_half_life_s"]))
        self.assets = sorted({i.asset for i in ins})
        self.asset_of = np.array([self.assets.index(i.asset) for i in ins])
        self.cons_w = np.array([float(i.get("consensus_weight")) for i in ins])
        self.anchor = None
        self.fair = {k: (str(a), float(rate)) for k, (a, rate) in sc.raw.get("fair", {}).items()}
        mac = sc.section("macro")
        self.t_post = sc.step_of(sc.events["tariff_post"]) / dt
        self.macro_tau = float(mac["tau_s"]) / dt
        self.macro_lag = float(mac.get("lag_s", 0.0)) / dt
        self.impulse_share = float(mac.get("impulse_share", 0.0))
        self.impulse_len = float(mac.get("impulse_s", 120.0)) / dt
        self.macro = _arr(sc, "macro") * self.d1
        self.halt = (int(sc.step_of(sc.events["withdrawals_halt"]) / dt), int(sc.step_of(sc.events["withdrawals_resume"]) / dt))
        pool = sc.section("pool")
        self.pool_y = 0.0
        self.pool_depth = float(pool["depth_1pct"])
        self.pool_revert = 1 - (1 - float(pool["revert_per_s"])) ** dt
        self.pool_noise = float(pool["noise_bp"]) * 1e-4 * np.sqrt(dt)
        self.usde = sc.index(pool["cex_instrument"])
        self.perps = [i for i, x in enumerate(ins) if x.market == "perp"]

    # ---- set-up ---------------------------------------------------------------------------
    def _build_cohorts(self) -> None:
        sc, rng = self.sc, np.random.default_rng(np.random.SeedSequence([0, 7]))
        chunks = max(8, int(round(float(sc.section("model")["cohort_chunks"]) * max(1.0, self.scale) ** 0.5)))
        for c in sc.raw.get("perp_cohort", []):
            i = sc.index(c["instrument"])
            inst = sc.instruments[i]
            rl = self.rules["hyperliquid" if inst.venue == "hyperliquid" else "binance_usdm"]
            self.cohorts.append(perp_cohort(
                f"{inst.venue}-{inst.asset}-longs", rl, i, inst.symbol, inst.venue, inst.p0,
                float(c["size"]) * inst.depth, c["leverage"], c["entry_pct"], float(c["rep_notional"]), chunks, rng))
        for c in sc.raw.get("loan_cohort", []):
            i = sc.index(c["instrument"])
            inst = sc.instruments[i]
            self.cohorts.append(loan_cohort(
                f"binance-{inst.asset}-loans", self.rules["binance_unified"], i, inst.asset, inst.p0,
                float(c["size"]) * inst.depth, c["leverage"], float(c["rep_notional"]), chunks, rng))
        self.coll_share = {k: float(v) for k, v in sc.raw.get("perp_collateral", {}).get("assets", {}).items()}
        self.coll_frac = float(sc.raw.get("perp_collateral", {}).get("fraction", 0.0))
        self.coll_delay = int(float(sc.raw.get("perp_collateral", {}).get("delay_s", 0.0)) / float(sc.section("model").get("dt_s", 1.0)))

    def _build_mms(self) -> list[MMAccount]:
        out = []
        for a in self.sc.raw.get("mm_account", []):
            acct = Account(a["id"], "binance_unified", cohort="market_makers", stage="mm_unified",
                           balances={k: float(v) for k, v in a["balances"].items()})
            out.append(MMAccount(acct, float(a["share"])))
        return out

    def _build_arbs(self) -> dict[str, np.ndarray]:
        a_idx, b_idx, thr, k, cap, halts, budget0 = [], [], [], [], [], [], []
        for a in self.sc.raw.get("arb", []):
            ia = self.sc.index(a["a"])
            ib = -1 if a["b"] == "pool" else self.sc.index(a["b"])
            dep = self.d1[ia] if ib < 0 else min(self.d1[ia], self.d1[ib])
            a_idx.append(ia)
            b_idx.append(ib)
            thr.append(float(a["thr_pct"]) / 100)
            k.append(float(a["strength"]) * dep * 100 * self.dt)
            cap.append(float(a["cap"]) * dep * self.dt)
            halts.append(bool(a["halts"]))
            budget0.append(float(a.get("halt_budget", 0.0)) * dep)
        f = lambda v, t=float: np.asarray(v, dtype=t)  # noqa: E731
        return {"a": f(a_idx, np.int64), "b": f(b_idx, np.int64), "thr": f(thr), "k": f(k), "cap": f(cap),
                "halts": f(halts, bool), "budget0": f(budget0), "budget": np.zeros(len(a_idx))}

    # ---- helpers --------------------------------------------------------------------------
    def consensus(self, logmid: np.ndarray) -> np.ndarray:
        """Per asset: weighted mean log price over the venues that define the broad market."""
        w = self.cons_w
        num = np.bincount(self.asset_of, weights=w * logmid, minlength=len(self.assets))
        den = np.bincount(self.asset_of, weights=w, minlength=len(self.assets))
        return np.where(den > 0, num / np.maximum(den, 1e-12), np.nan)

    def spot_price(self, asset: str) -> float:
        i = self.sc.find("binance", "spot", asset)
        return float(self.books.mid[i])

    # ---- the run --------------------------------------------------------------------------
    def run(self, rec: Records, progress: Callable[[int, int], None] | None = None,
            done: Callable[[int], None] | None = None) -> Records:
        """Step the market through `rec.T` steps. `done(k)` is told every 50 steps (and at the end)
        that steps [0, k) are final in `rec`, so a writer can turn them into rows meanwhile."""
        T, n, books, rng = rec.T, self.n, self.books, self.rng
        ins = self.sc.instruments
        r = self.r
        tt = np.arange(T, dtype=float)
        kern = _gamma_kernel(tt - self.t_post - self.macro_lag, self.macro_tau)
        kern = kern / max(kern.sum(), 1e-12)
        # the headline itself: a share of the selling lands in the first minutes after the post
        imp = ((tt >= self.t_post) & (tt < self.t_post + self.impulse_len)).astype(float)
        if imp.sum() > 0:
            kern = (1 - self.impulse_share) * kern + self.impulse_share * imp / imp.sum()
        arb = self.arbs
        has_b = arb["b"] >= 0
        b_idx = np.where(has_b, arb["b"], 0)
        snap = 0
        mm_share_alive = 1.0
        logmid = np.log(books.mid)
        cons = self.consensus(logmid)
        self.anchor = cons.copy()
        x_prev = books.x.copy()
        idx_keys = {}
        self._ref_arrays, self._bperp = {}, {}
        for i in self.perps:
            a = ins[i].asset
            idx_keys[i] = [j for j, x in enumerate(ins) if x.asset == a and x.market == "spot"]
            kinds = ("index", "mark", "basis") if ins[i].venue == "binance" else ("oracle", "mark", "basis")
            self._ref_arrays[i] = {k: rec.ref.setdefault((ins[i].id, k), np.zeros(T)) for k in kinds}
            self._bperp[i] = self.sc.find("binance", "perp", a)
        logp0 = np.log(self.p0)
        lad_groups = [(float(st), self.lad_scale == st, bool((self.lad_scale == st).all()))
                      for st in np.unique(self.lad_scale)]
        perp_cohorts = [c for c in self.cohorts if c.kind == "perp_long"]
        for c in perp_cohorts:
            rec.oi.setdefault(c.inst, np.zeros(T))
        # open notional of chunks [k:] for every k, so open interest is one lookup per step
        oi_tail = [np.concatenate([np.cumsum(c.notional[::-1])[::-1], [0.0]]) for c in perp_cohorts]
        for t in range(T):
            rec.mid[t] = books.mid
            # 1. market makers' risk systems ------------------------------------------------
            # stress = directional move (EWMA of signed log returns, so noise averages out) in
            # units of its calm level, at least `firm_wide` x the leader's
            ret = books.x - x_prev
            x_prev = books.x.copy()
            self.vol += self.vol_a * (ret - self.vol)
            stress = np.abs(self.vol) / self.base_vol
            stress = np.maximum(stress, float(r["firm_wide"]) * stress[self.leader])
            ex = np.maximum(stress - float(r["stress0"]), 0.0)
            head = 1.0 - self.head_cut * (1.0 - math.exp(-(t - self.t_post) / self.head_ramp)) \
                if t >= self.t_post else 1.0
            tb = np.maximum(self.floor_bid, head * np.exp(-float(r["alpha_bid"]) * ex))
            ta = np.maximum(self.floor_ask, head * np.exp(-float(r["alpha_ask"]) * ex))
            for f, tgt in ((self.f_bid, tb), (self.f_ask, ta)):
                f += (tgt - f) * np.where(tgt < f, self.k_down, self.k_up)
            of = float(r["organic_floor"])
            wide = t >= self.t_post and self.widen_rows.size > 0
            if wide:
                self.released |= self.f_bid < self.widen_release
                target = self.widen * (1.0 - math.exp(-(t - self.t_post) / self.widen_ramp))
                self.w_now = np.where(self.released, self.w_now * (1.0 - self.widen_back), target)
            wd = self.w_now
            # depth per unit log price a taker meets now (last observed book, thinner side), for
            # agents that size their orders to close a gap without overshooting it
            eff = self.eff_depth * 100
            mm_alive = np.where(self.is_bspot, mm_share_alive, 1.0)
            mm_bid = self.d1 * self.mm_share * self.f_bid * mm_alive
            prof = self.mm_profile
            if wide:
                cut = np.concatenate([wd, np.zeros(n)])[:, None] * self.widen_mask[None, :]
                prof = self.mm_profile[None, :] * (1.0 - cut)
            mm_ask = self.d1 * self.mm_share * self.f_ask * mm_alive
            # 2. taker flow -------------------------------------------------------------------
            mid = books.mid
            logmid = np.log(mid)
            noise = rng.normal(0.0, 1.0, n) * self.noise
            buys = np.maximum(noise, 0) + 0.5 * np.abs(rng.normal(0, 1, n)) * self.noise
            sells = np.maximum(-noise, 0) + 0.5 * np.abs(rng.normal(0, 1, n)) * self.noise
            sells += self.macro * kern[t]
            forced = np.zeros(n)
            for (i, qty, acct, kind) in self.pending:
                forced[i] += qty * mid[i]
            eng_base = self.engine.take(mid, t)
            forced += eng_base * mid
            sells += forced
            # arbitrage between venues (those who rebalance by withdrawals stop when their budget is gone)
            halted = self.halt[0] <= t < self.halt[1]
            if t == self.halt[0]:
                arb["budget"][:] = arb["budget0"]
            xb = np.where(has_b, logmid[b_idx], self.pool_y)
            gap = logmid[arb["a"]] - xb
            # close at most half the gap per step given both books' current depth (no overshoot)
            ea = eff[arb["a"]]
            eb = np.where(has_b, eff[b_idx], self.pool_depth * 100)
            closing = 0.3 / (1 / ea + 1 / eb) / self.arb_links  # links sharing a book share the gap
            size = np.minimum(arb["cap"], np.minimum(arb["k"], closing) * np.maximum(np.abs(gap) - arb["thr"], 0.0))
            if halted:
                lim = arb["halts"]
                size = np.where(lim, np.minimum(size, np.maximum(arb["budget"], 0.0)), size)
                arb["budget"] -= np.where(lim, size, 0.0)
            up = gap > 0
            sells += np.bincount(arb["a"], weights=size * up, minlength=n)
            buys += np.bincount(arb["a"], weights=size * ~up, minlength=n)
            buys += np.bincount(b_idx, weights=size * up * has_b, minlength=n)
            sells += np.bincount(b_idx, weights=size * ~up * has_b, minlength=n)
            arb_pool_sell = float((size * ~up * ~has_b).sum())
            # value buyers below their anchor
            cons = self.consensus(logmid)
            self.anchor += self.anchor_a * (cons - self.anchor)
            anchor = self.anchor[self.asset_of].copy()
            for asset, (under, rate) in self.fair.items():
                k = self.assets.index(asset)
                if under == "pool":
                    fair = self.pool_y
                else:
                    fair = self.anchor[self.assets.index(under)] + np.log(rate)
                anchor[self.asset_of == k] = fair
            gapv = anchor - logmid - self.val_thr
            # a few buy at market below the anchor (never more than closes half the gap) ...
            buys += np.minimum(self.val_cap * np.minimum(np.maximum(gapv / self.val_width, 0.0), 1.0),
                               0.5 * eff * np.maximum(gapv, 0.0))
            self._anchor_now = anchor
            net = buys - sells
            # 3. the sweep --------------------------------------------------------------------
            res = books.sweep(net, mm_bid, mm_ask, prof, self.hs)
            rec.low[t], rec.high[t] = res.low, res.high
            rec.buys[t], rec.sells[t], rec.forced[t] = buys, sells, forced
            new_mid = books.mid
            for (i, qty, acct, kind) in self.pending:
                px = 0.5 * (mid[i] + (res.low[i] if np.isfinite(res.low[i]) else new_mid[i]))
                rec.liquidations.append((t, i, "sell", qty, px, acct))
            self.pending = []
            if self.mms:
                alive = [mm for mm in self.mms if mm.alive]
                tot = sum(mm.share for mm in alive)
                for mm in alive:
                    w = mm.share / tot if tot > 0 else 0.0
                    for i in np.flatnonzero(self.mm_books & (res.mm_base != 0)):
                        a = ins[i].asset
                        b = mm.account.balances
                        b[a] = b.get(a, 0.0) + w * res.mm_base[i]
                        b["USDT"] = b.get("USDT", 0.0) - w * res.mm_quote[i]
            # 4. limit orders: value traders' ladders around the anchor, organic flow near the mid
            x_anchor = self._anchor_now - logp0
            for st, rows, allrows in (lad_groups if t % LADDER_EVERY == 0 else ()):
                if allrows:
                    books.top_up(x_anchor, self.lad_disc * st, self.lad_target, self.lad_rate)
                else:
                    books.top_up(np.where(rows, x_anchor, -50.0), self.lad_disc * st,
                                 np.where(rows, self.lad_target, 0.0), self.lad_rate)
            # other traders' limit orders are pulled less than MM quotes
            oprof = self.org_profile
            if wide and self.widen_org > 0:
                ocut = np.concatenate([self.widen_org * wd, np.zeros(n)])[:, None] * self.org_mask[None, :]
                oprof = self.org_profile[None, :] * (1.0 - ocut)
            books.replenish(self.add0 * np.maximum(self.f_bid, of), self.add0 * np.maximum(self.f_ask, of),
                            oprof, self.cancel)
            if wide and self.widen_rest > 0:  # widened MM bids rest further down, cancelled like the others
                wr = self.widen_rows
                books.add_band(wr, (self.widen_rest * self.widen_share * wd * self.d1 * self.mm_share * self.f_bid * self.cancel)[wr],
                               *self.widen_levels)
            if t % rec.snap_every == 0:
                (db, lb), (da, la) = books.observe(BAND_PCTS, SNAP_LEVELS, mm_bid, mm_ask, prof, self.hs)
                self.eff_depth = np.maximum(np.minimum(db[:, 0], da[:, 0]), 1e-6 * self.d1)
                rec.depth_bid[snap], rec.depth_ask[snap] = db, da
                rec.snap_bid_px[snap], rec.snap_bid_amt[snap] = lb
                rec.snap_ask_px[snap], rec.snap_ask_amt[snap] = la
                snap += 1
            # 5. reference prices -----------------------------------------------------------------
            mid = new_mid
            logmid = np.log(mid)
            self.pool_y += -self.pool_revert * self.pool_y - arb_pool_sell / (self.pool_depth * 100) \
                + rng.normal(0, self.pool_noise)
            rec.pool[t] = np.exp(self.pool_y)
            marks = self._reference_prices(t, mid, idx_keys, rec)
            # 6. margin checks ----------------------------------------------------------------
            for c in self.cohorts:
                price = marks[c.inst] if c.kind == "perp_long" else mid[c.inst]
                s = c.due(price)
                if s.stop <= s.start:
                    continue
                if c.kind == "perp_long":
                    for k in range(s.start, s.stop):
                        self.pending.append((c.exec_inst, float(c.qty[k]), c.accounts[k], c.kind))
                    if ins[c.inst].venue == "binance" and self.coll_frac > 0:
                        coll = self.coll_frac * float(c.margin[s].sum())
                        for asset, share in self.coll_share.items():
                            j = self.sc.find("binance", "spot", asset)
                            self.engine.add(j, coll * share / mid[j], t + self.coll_delay)
                else:  # spot collateral: the engine sells it; Binance publishes no such stream
                    self.engine.add(c.exec_inst, float(c.qty[s].sum()))
                    rec.engine_events.append((t, c.name, s.stop - s.start, float(c.notional[s].sum())))
            for c, tail in zip(perp_cohorts, oi_tail):
                rec.oi[c.inst][t] += tail[c.pointer]
            if self.mms and t % 5 == 0:  # every 5 steps
                mm_share_alive = self._check_mms(t, mid, rec)
            if progress and (t + 1) % 300 == 0:
                progress(t + 1, T)
            if done and (t + 1) % 50 == 0:
                done(t + 1)
        rec.mid[T] = books.mid
        if done:
            done(T + 1)
        return rec

    def _reference_prices(self, t: int, mid: np.ndarray, idx_keys: dict, rec: Records) -> np.ndarray:
        """Index, mark and oracle prices, each venue's way (crash_facts.md B2, B3)."""
        ins = self.sc.instruments
        marks = mid.copy()
        m = mid.tolist()
        a300 = 1 - 0.5 ** (self.dt / 300)
        a150 = 1 - 0.5 ** (self.dt / 150)
        for i in self.perps:
            inst = ins[i]
            spots = idx_keys[i]
            ref = self._ref_arrays[i]
            if inst.venue == "binance":
                vals = [math.log(m[j]) for j in spots] or [math.log(m[i])]
                med = statistics.median(vals)
                ok = [v for v in vals if abs(v - med) <= 0.05]  # sources >5 % off the median: weight 0
                index = math.exp(sum(ok) / len(ok)) if ok else math.exp(med)
                b = ref["basis"]
                prev = b[t - 1] if t > 0 else 0.0
                b[t] = prev + a300 * ((m[i] - index) - prev)  # moving average of the basis
                mark = sorted((index, index + b[t], m[i]))[1]
                ref["index"][t] = index
            else:  # hyperliquid: oracle = weighted median of spot mids; mark = median of three
                srcs = [(m[j], 3.0 if ins[j].venue == "binance" else 2.0) for j in spots]
                bperp = self._bperp[i]
                if bperp is not None:
                    srcs.append((m[bperp], 2.0))
                srcs = sorted(srcs) or [(m[i], 1.0)]
                half = sum(w for _, w in srcs) / 2
                acc = 0.0
                oracle = srcs[-1][0]
                for v, w in srcs:
                    acc += w
                    if acc >= half:
                        oracle = v
                        break
                b = ref["basis"]
                prev = b[t - 1] if t > 0 else 0.0
                b[t] = prev + a150 * ((m[i] - oracle) - prev)  # 150 s EMA of (mid - oracle)
                third = m[bperp] if bperp is not None else m[i]
                mark = sorted((oracle + b[t], m[i], third))[1]
                ref["oracle"][t] = oracle
            ref["mark"][t] = mark
            marks[i] = mark
        return marks

    def _check_mms(self, t: int, mid: np.ndarray, rec: Records) -> float:
        """Evaluate each market maker's unified account with `binance_unified`; liquidate breaches."""
        rl = self.rules["binance_unified"]
        for mm in self.mms:
            if not mm.alive:
                continue
            acct = mm.account
            prices = {}
            for a in acct.balances:
                j = self.sc.find("binance", "spot", a)
                if j is not None:
                    prices[("spot", "binance", a)] = float(mid[j])
            chk = rl.check(acct, prices)
            mm.history.append((t, float(chk.metric)))
            if chk.status >= STATUS["liquidate"]:
                mm.alive = False
                mm.liquidated_at = t
                plan = rl.liquidation_plan(acct, prices)
                for o in plan:
                    j = self.sc.find("binance", "spot", o.asset)
                    if j is not None and o.qty > 0:
                        self.engine.add(j, o.qty)
                rec.mm_events.append({"step": t, "account": acct.id, "uniMMR": float(chk.metric),
                                      "sold": {o.asset: o.qty for o in plan}})
        alive = sum(mm.share for mm in self.mms if mm.alive)
        total = sum(mm.share for mm in self.mms)
        return 1.0 - (total - alive)
