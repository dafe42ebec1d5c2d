"""Limit order books of every simulated instrument at once, as numpy arrays on a log-price grid.

Why a grid and not a list of orders: the simulator steps 7,200 seconds over ~25 books, and the
crash story lives in the *shape* of the books (bids pulled near the mid, stale orders left far
below), not in individual order ids. A grid of resting amounts per instrument (bins of `h` in log
price, fixed in absolute price so that a resting order stays where it was placed) keeps both
properties and lets one step sweep all books with a handful of vectorised operations.

Two kinds of liquidity:
- resting orders (organic and stale) live in the grid; a taker sweep consumes them; new organic
  orders arrive around the mid each step and old ones near the mid are cancelled;
- market makers' quotes are a layer re-quoted around the current mid every step, sized by each
  book's MM quote factor (their risk systems shrink it under stress). What a sweep takes from the
  MM layer becomes MM inventory (`mm_fill_base`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: MM quote profile over the first levels (j = 0 is the touch at mid·(1 ∓ half spread)).
MM_LEVELS = 10


@dataclass
class SweepResult:
    low: np.ndarray  # deepest price reached by the step's net sell (nan if none)
    high: np.ndarray  # highest price reached by the step's net buy (nan if none)
    mm_base: np.ndarray  # base amount the MM layer bought (+) or sold (-)
    mm_quote: np.ndarray  # quote amount the MM layer paid (+) or received (-)
    unfilled: np.ndarray  # notional that found no liquidity at all (book exhausted)


class Books:
    """Bid and ask grids for `n` instruments; `x` is each mid's log price relative to `p0`.

    Both sides live in one (2n, K) array, rows [0, n) bids and [n, 2n) asks, so a step handles
    every side of every book with the same few numpy calls.
    """

    def __init__(self, p0: np.ndarray, h: float, k_down: int, k_up: int, window: int):
        self.n = n = len(p0)
        self.p0 = np.asarray(p0, dtype=float)
        self.h = h
        self.k_down, self.k_up = k_down, k_up
        self.K = k_down + k_up + 1
        self.window = window
        self.grid = np.zeros((2 * n, self.K))
        self.x = np.full(n, 0.5 * h)  # mid sits in the middle of bin 0 at start
        self.rows = np.arange(2 * n)[:, None]
        self.sign = np.concatenate([-np.ones(n, dtype=np.int64), np.ones(n, dtype=np.int64)])
        self.j = np.arange(window)[None, :]
        p2 = np.concatenate([self.p0, self.p0])
        #: price of every grid bin (bin centre), gathered instead of recomputed each step
        self.pgrid = p2[:, None] * np.exp((np.arange(self.K)[None, :] - k_down + 0.5) * h)

    @property
    def bids(self) -> np.ndarray:
        return self.grid[: self.n]

    @property
    def asks(self) -> np.ndarray:
        return self.grid[self.n:]

    # ---- geometry -------------------------------------------------------------------------
    def bin_of(self, x: np.ndarray) -> np.ndarray:
        """Grid column of the bin containing log price x (column 0 = the deepest bin)."""
        c = np.floor(x / self.h).astype(np.int64) + self.k_down
        return np.minimum(np.maximum(c, 1), self.K - 2)

    def bin_price(self, col: np.ndarray, row: int) -> np.ndarray:
        return self.pgrid[row, col]

    @property
    def mid(self) -> np.ndarray:
        return self.p0 * np.exp(self.x)

    # ---- the window next to the mid ------------------------------------------------------
    def window_view(self, mm_bid: np.ndarray, mm_ask: np.ndarray, mm_profile: np.ndarray, half_spread: np.ndarray,
                    rows: np.ndarray | None = None):
        """(mid bin, columns, prices, resting base, MM base) for the `window` levels next to the
        mid of every side (2n rows, or only the side-rows `rows`). Level 0 is the touch (MM only,
        at mid·(1 ∓ half spread)); level j ≥ 1 is grid bin c ∓ j. `mm_profile` is one MM profile
        for every side (L,) or one per side-row (2n, L), for books whose MMs widened their quotes."""
        c = self.bin_of(self.x)
        c2 = np.concatenate([c, c])
        sign = self.sign
        mid = self.mid
        mid2 = np.concatenate([mid * (1 - half_spread), mid * (1 + half_spread)])
        mm_n = np.concatenate([mm_bid, mm_ask])
        r = self.rows
        if rows is not None:
            c2, sign, mid2, mm_n, r = c2[rows], sign[rows], mid2[rows], mm_n[rows], rows[:, None]
        cols = np.minimum(np.maximum(c2[:, None] + sign[:, None] * self.j, 0), self.K - 1)
        prices = self.pgrid[r, cols]
        prices[:, 0] = mid2
        rest = self.grid[r, cols]
        rest[:, 0] = 0.0
        mm = np.zeros_like(rest)
        if mm_profile.ndim == 1:
            prof = mm_profile[None, :]
        else:
            prof = mm_profile if rows is None else mm_profile[rows]
        L = prof.shape[1]
        mm[:, :L] = (mm_n[:, None] * prof) / prices[:, :L]
        return c2, cols, prices, rest, mm

    # ---- the taker sweep -----------------------------------------------------------------
    def sweep(self, net: np.ndarray, mm_bid: np.ndarray, mm_ask: np.ndarray, mm_profile: np.ndarray,
              half_spread: np.ndarray) -> SweepResult:
        """Execute each book's net taker flow (quote notional; + buys, − sells) against it."""
        n = self.n
        res = SweepResult(np.full(n, np.nan), np.full(n, np.nan), np.zeros(n), np.zeros(n), np.zeros(n))
        q = np.concatenate([np.maximum(-net, 0.0), np.maximum(net, 0.0)])
        act_rows = np.flatnonzero(q > 0)
        if act_rows.size == 0:
            return res
        # only the side-rows that trade this step (one side of each book at most)
        c, cols, prices, rest, mm = self.window_view(mm_bid, mm_ask, mm_profile, half_spread, act_rows)
        qa = q[act_rows]
        notional = (rest + mm) * prices
        cum = np.cumsum(notional, axis=1)
        enough = cum[:, -1] >= qa
        for li in np.flatnonzero(~enough):  # rare: a sweep deeper than the window
            self._deep_sweep(int(act_rows[li]), qa[li], prices[li], rest[li], mm[li], cols[li], res)
        loc = np.flatnonzero(enough)
        if loc.size == 0:
            return res
        rows = act_rows[loc]
        cr = cum[loc]
        qr = qa[loc]
        js = np.argmax(cr >= qr[:, None], axis=1)
        ar = np.arange(rows.size)
        before = np.where(js > 0, cr[ar, np.maximum(js - 1, 0)], 0.0)
        level_notional = notional[loc, js]
        frac = np.minimum(np.maximum((qr - before) / np.maximum(level_notional, 1e-300), 0.0), 1.0)
        taken = (self.j < js[:, None]) + (self.j == js[:, None]) * frac[:, None]  # (r, W)
        mm_taken = mm[loc] * taken
        self.grid[rows[:, None], cols[loc, 1:]] = (rest[loc] * (1.0 - taken))[:, 1:]
        sgn = -self.sign[rows]  # MM buys (+) on the bid side, sells on the ask side
        inst = rows % n
        res.mm_base[inst] += sgn * mm_taken.sum(axis=1)
        res.mm_quote[inst] += sgn * (mm_taken * prices[loc]).sum(axis=1)
        px = prices[loc, js]
        is_bid = rows < n
        res.low[inst[is_bid]] = px[is_bid]
        res.high[inst[~is_bid]] = px[~is_bid]
        # the new mid: for a small sweep, part way to the next level; else just beyond the last level hit
        h = self.h
        base = (c[loc] - self.k_down).astype(float) * h
        x = self.x[inst]
        # within the touch the mid moves the consumed fraction of the way to the next level
        inner = np.where(is_bid, x - frac * (x - (base - 0.5 * h)), x + frac * (base + 1.5 * h - x))
        outer = np.where(is_bid, base - (js - 1) * h + 0.5 * h * (1.0 - frac),
                         base + js * h - 0.5 * h * (1.0 - frac) - 1e-6 * h)
        self.x[inst] = np.where(js == 0, inner, outer)
        return res

    def _deep_sweep(self, r, q, wprices, wrest, wmm, wcols, res) -> None:
        """A sweep that exhausts the window: walk the whole remaining grid of side-row r."""
        n, h = self.n, self.h
        i, bid = r % n, r < n
        mm_base = float(wmm.sum())
        mm_quote = float((wmm * wprices).sum())
        q_left = q - float(((wrest + wmm) * wprices).sum())
        last = int(wcols[-1])
        self.grid[r, wcols[1:]] = 0.0
        cols = np.arange(last - 1, -1, -1) if bid else np.arange(last + 1, self.K)
        prices = self.pgrid[r, cols]
        notional = self.grid[r, cols] * prices
        cum = np.cumsum(notional)
        if cols.size and cum[-1] >= q_left:
            js = int(np.argmax(cum >= q_left))
            before = cum[js - 1] if js > 0 else 0.0
            frac = (q_left - before) / max(notional[js], 1e-300)
            self.grid[r, cols[:js]] = 0.0
            self.grid[r, cols[js]] *= 1.0 - frac
            end_col = int(cols[js])
            px = float(prices[js])
        else:  # the whole side is gone: the price stops at the grid edge, the rest is unfilled
            self.grid[r, cols] = 0.0
            end_col = 0 if bid else self.K - 1
            px = float(self.pgrid[r, end_col])
            res.unfilled[i] += q_left - (cum[-1] if cols.size else 0.0)
            frac = 1.0
        if bid:
            self.x[i] = (end_col + 1 - self.k_down) * h + 0.5 * h * (1.0 - frac)
            res.low[i] = px
            res.mm_base[i] += mm_base
            res.mm_quote[i] += mm_quote
        else:
            self.x[i] = (end_col - self.k_down) * h - 0.5 * h * (1.0 - frac) - 1e-6 * h
            res.high[i] = px
            res.mm_base[i] -= mm_base
            res.mm_quote[i] -= mm_quote

    # ---- organic flow of limit orders ----------------------------------------------------
    def replenish(self, add_bid: np.ndarray, add_ask: np.ndarray, profile: np.ndarray, cancel: np.ndarray) -> None:
        """New resting orders near the mid (`add_*` quote notional per step, spread by `profile`
        over levels 1..R) and cancellation of a fraction `cancel` of resting orders within R."""
        R = profile.shape[-1]
        c = self.bin_of(self.x)
        c2 = np.concatenate([c, c])
        cols = np.minimum(np.maximum(c2[:, None] + self.sign[:, None] * np.arange(1, R + 1)[None, :], 0), self.K - 1)
        keep = np.concatenate([1.0 - cancel, 1.0 - cancel])[:, None]
        add = np.concatenate([add_bid, add_ask])[:, None]
        prices = self.pgrid[self.rows, cols]
        prof = profile[None, :] if profile.ndim == 1 else profile  # one profile, or one per side-row
        self.grid[self.rows, cols] = self.grid[self.rows, cols] * keep + add * prof / prices

    def add_band(self, rows: np.ndarray, quote: np.ndarray, lo: int, hi: int) -> None:
        """Resting bids worth `quote` per book row in `rows`, spread evenly over the bins `lo..hi`
        levels below the mid: quotes a market maker moved out of the inner book rest there."""
        c = self.bin_of(self.x[rows])
        cols = np.maximum(c[:, None] - np.arange(lo, hi + 1)[None, :], 0)
        r = rows[:, None]
        self.grid[r, cols] += (quote[:, None] / (hi + 1 - lo)) / self.pgrid[r, cols]

    def top_up(self, anchor_x: np.ndarray, disc: np.ndarray, target: np.ndarray, rate: float) -> None:
        """Value traders' resting ladders: bids at anchor·(1 − d) and asks at anchor·(1 + d) for
        each discount d in `disc`, topped up a fraction `rate` of the way to `target` (quote per
        level, per book) each step. Levels on the wrong side of the mid are left alone."""
        n = self.n
        c = self.bin_of(self.x)
        for sign, rows in ((-1, np.arange(n)), (1, np.arange(n, 2 * n))):
            lx = anchor_x[:, None] + np.log1p(sign * disc)[None, :]
            cols = self.bin_of(lx.ravel()).reshape(n, -1)
            ok = (cols < c[:, None]) if sign < 0 else (cols > c[:, None])
            r = rows[:, None]
            have = self.grid[r, cols]
            want = target[:, None] / self.pgrid[r, cols]
            self.grid[r, cols] = np.where(ok & (have < want), have + rate * (want - have), have)

    def add_resting(self, i: int, side: str, price: float, quote: float) -> None:
        r = i if side == "bid" else i + self.n
        col = int(self.bin_of(np.array([np.log(price / self.p0[i])]))[0])
        self.grid[r, col] += quote / self.pgrid[r, col]

    def observe(self, pcts: np.ndarray, n_levels: int, mm_bid, mm_ask, mm_profile, half_spread):
        """Per side: quote notional within each of `pcts` percent of the mid (n, len(pcts)) and,
        if `n_levels`, the best non-empty levels' prices and base amounts (n, L), nan-padded."""
        n = self.n
        _, _, prices, rest, mm = self.window_view(mm_bid, mm_ask, mm_profile, half_spread)
        amt = rest + mm
        cum = np.cumsum(amt * prices, axis=1)
        mid = np.concatenate([self.mid, self.mid])[:, None]
        dist = np.abs(prices / mid - 1.0) * 100.0  # increasing along the window
        k = np.stack([(dist <= p).sum(axis=1) for p in pcts], axis=1)
        depth = np.where(k > 0, np.take_along_axis(cum, np.maximum(k - 1, 0), axis=1), 0.0)
        levels = None
        if n_levels:
            nz = amt > 1e-12
            order = np.argsort(~nz, axis=1, kind="stable")[:, :n_levels]
            p = np.take_along_axis(prices, order, axis=1)
            a = np.take_along_axis(amt, order, axis=1)
            ok = np.take_along_axis(nz, order, axis=1)
            levels = (np.where(ok, p, np.nan), np.where(ok, a, np.nan))
            return (depth[:n], (levels[0][:n], levels[1][:n])), (depth[n:], (levels[0][n:], levels[1][n:]))
        return (depth[:n], None), (depth[n:], None)
