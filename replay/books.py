"""Order books and the depth *ladder* every impact computation walks.

A ladder is the cumulative quote notional resting within each distance of the mid (`GRID`, as a
fraction: 0.001 = 0.1 %), per side. It is built, best source first, from:

1. an L2 book (`book_snapshots` replace it, `book_deltas` update levels; amount 0 deletes);
2. `depth_bands` (Binance `bookDepth`: notional within ±1..±5 %), interpolated linearly in the
   distance and extended past the widest band at the same average density (a coarse ladder);
3. traded notional alone (last resort, flagged as such): depth within 1 % = k × the traded
   notional of the last 5 minutes, growing linearly with distance (`impact.trades_depth_k`).

Two book implementations with the same semantics: `Book` (dicts {price: amount}, one
`dict.update` per batch; the plain reference) and `ArrayBook` (numpy arrays, what the fold uses).
`ArrayBook` keeps the levels in the dict's insertion order, last write per price wins, new prices
are appended in order of first appearance, and tombstones are compacted at the same moments, so
the ladder sums its levels in exactly the same order and both give bit-identical ladders. The
order matters: the ladder's per-bin sums are floating point, and "same inputs -> same bytes" is a
contract of the replay. A batch of updates costs one sort of the batch and one `searchsorted`
into the book instead of a Python float object per update.
"""

from __future__ import annotations

import numpy as np

GRID = np.array([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 0.99])
P = len(GRID)


class Book:
    """One instrument's L2 book."""

    __slots__ = ("bids", "asks", "snap_ts")

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.snap_ts = -1

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()

    def apply(self, side: np.ndarray, price: np.ndarray, amount: np.ndarray) -> None:
        """Apply level updates in order (last write wins); zeros stay as tombstones until `compact`."""
        b = side > 0
        if b.any():
            self.bids.update(zip(price[b].tolist(), amount[b].tolist()))
        a = ~b
        if a.any():
            self.asks.update(zip(price[a].tolist(), amount[a].tolist()))

    @staticmethod
    def _arrays(d: dict[float, float]) -> tuple[np.ndarray, np.ndarray]:
        n = len(d)
        p = np.fromiter(d.keys(), dtype=float, count=n)
        a = np.fromiter(d.values(), dtype=float, count=n)
        live = a > 0
        if live.sum() * 2 < n and n > 64:  # compact tombstones
            for k in p[~live].tolist():
                d.pop(k, None)
        return p[live], a[live]

    def ladder(self) -> tuple[float, np.ndarray, np.ndarray] | None:
        """(mid, cum bid notional[P], cum ask notional[P]) or None if a side is empty."""
        bp, ba = self._arrays(self.bids)
        ap, aa = self._arrays(self.asks)
        return _ladder(bp, ba, ap, aa)


def _ladder(bp: np.ndarray, ba: np.ndarray, ap: np.ndarray, aa: np.ndarray) -> tuple[float, np.ndarray, np.ndarray] | None:
    if not len(bp) or not len(ap):
        return None
    bb, bo = bp.max(), ap.min()
    mid = 0.5 * (bb + bo) if bb < bo else (bb if bb > 0 else bo)
    return mid, _cum(np.maximum(mid - bp, 0.0) / mid, bp * ba), _cum(np.maximum(ap - mid, 0.0) / mid, ap * aa)


_EMPTY_F = np.empty(0, dtype=float)
_EMPTY_I = np.empty(0, dtype=np.intp)
_ZERO = np.zeros(1, dtype=np.intp)


class _Side:
    """One side as arrays in dict insertion order (`p`, `a`), plus `order`, the permutation that
    sorts `p`, and `ps` = p[order] (lookups are a `searchsorted` into `ps`)."""

    __slots__ = ("p", "a", "order", "ps")

    def __init__(self) -> None:
        self.p, self.a, self.order, self.ps = _EMPTY_F, _EMPTY_F, _EMPTY_I, _EMPTY_F

    def update(self, up: np.ndarray, ua: np.ndarray) -> None:
        """`dict.update(zip(up, ua))`: last value per price wins; unseen prices are appended in order
        of first appearance; NaN prices never match anything (each NaN row is a new level, as in a
        dict fed with fresh float objects); -0.0 and 0.0 are the same level."""
        n = len(up)
        if not n:
            return
        if n == 1:
            o = _ZERO
            u, v, first = up, ua, _ZERO
        else:
            o = np.argsort(up)  # not stable: the first/last row of a price is the min/max row index
            s = up[o]
            brk = np.empty(n, dtype=bool)
            brk[0] = True
            np.not_equal(s[1:], s[:-1], out=brk[1:])
            starts = np.flatnonzero(brk)
            if len(starts) == n:  # all prices distinct
                first = last = o
            else:
                first = np.minimum.reduceat(o, starts)
                last = np.maximum.reduceat(o, starts)
            u, v = up[first], ua[last]  # sorted (== s[starts]); up[first] keeps the first key's -0.0/0.0
        m = len(self.p)
        if m:
            pos = np.searchsorted(self.ps, u)
            found = pos < m
            found[found] = self.ps[pos[found]] == u[found]
            nf = int(np.count_nonzero(found))
            if nf == len(u):
                self.a[self.order[pos]] = v
                return
            if nf:
                self.a[self.order[pos[found]]] = v[found]
                new = ~found
                u, v, first, pos = u[new], v[new], first[new], pos[new]
        else:
            pos = np.zeros(len(u), dtype=np.intp)
        k = np.argsort(first, kind="stable") if len(u) > 1 else _ZERO[: len(u)]
        idx = np.empty(len(u), dtype=np.intp)
        idx[k] = m + np.arange(len(u))
        self.p = np.concatenate([self.p, u[k]])
        self.a = np.concatenate([self.a, v[k]])
        # u is sorted and pos nondecreasing: inserting keeps ps sorted (NaNs stay last)
        self.ps = np.insert(self.ps, pos, u)
        self.order = np.insert(self.order, pos, idx)

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """Levels with amount > 0, in insertion order; compacts tombstones like `Book._arrays`."""
        p, a = self.p, self.a
        n = len(p)
        live = a > 0
        lp, la = p[live], a[live]
        if len(lp) * 2 < n and n > 64:
            keep = live | np.isnan(p)  # a dict cannot pop a NaN key with a fresh NaN object
            self.p, self.a = p[keep], a[keep]
            self.order = np.argsort(self.p, kind="stable")
            self.ps = self.p[self.order]
        return lp, la


class ArrayBook:
    """`Book` on numpy arrays: same results bit for bit, without a Python object per update."""

    __slots__ = ("bid", "ask", "snap_ts")

    def __init__(self) -> None:
        self.bid, self.ask = _Side(), _Side()
        self.snap_ts = -1

    def clear(self) -> None:
        self.bid, self.ask = _Side(), _Side()

    def apply(self, side: np.ndarray, price: np.ndarray, amount: np.ndarray) -> None:
        """`Book.apply`: rows with side > 0 update the bids, all others the asks."""
        b = side > 0
        nb = int(np.count_nonzero(b))
        if nb == len(b):
            self.bid.update(price, amount)
        elif nb == 0:
            self.ask.update(price, amount)
        else:
            self.bid.update(price[b], amount[b])
            a = ~b
            self.ask.update(price[a], amount[a])

    def ladder(self) -> tuple[float, np.ndarray, np.ndarray] | None:
        bp, ba = self.bid.live()
        ap, aa = self.ask.live()
        return _ladder(bp, ba, ap, aa)

    def levels(self) -> tuple[dict[float, float], dict[float, float]]:
        """The book as the dicts `Book` would hold (for tests and debugging)."""
        return (dict(zip(self.bid.p.tolist(), self.bid.a.tolist())), dict(zip(self.ask.p.tolist(), self.ask.a.tolist())))


def _cum(dist: np.ndarray, notional: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(GRID, dist, side="left")
    return np.cumsum(np.bincount(idx, weights=notional, minlength=P + 1)[:P])


def ladder_from_bands(band_pct: np.ndarray, notional: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative bid/ask ladders from one depth_bands snapshot (band_pct signed, in percent)."""
    out = []
    for sign in (-1, 1):
        m = np.sign(band_pct) == sign
        if not m.any():
            out.append(np.full(P, np.nan))
            continue
        x = np.abs(band_pct[m]) / 100.0
        y = notional[m]
        o = np.argsort(x)
        x, y = np.concatenate([[0.0], x[o]]), np.concatenate([[0.0], np.maximum.accumulate(y[o])])
        lad = np.interp(GRID, x, y)
        far = GRID > x[-1]
        lad[far] = y[-1] * GRID[far] / x[-1]  # same average density beyond the widest band
        out.append(lad)
    return out[0], out[1]


def ladder_from_trades(notional_5m: float, k: float) -> np.ndarray:
    """The last-resort ladder: depth within 1 % = k × recent traded notional, linear in distance."""
    return np.maximum(notional_5m, 0.0) * k * (GRID / 0.01)


def walk(ladder: np.ndarray, consumed: float, qty_notional: float, max_pct: float = 0.99) -> tuple[float, float]:
    """Walk `qty_notional` of a side whose first `consumed` notional is already gone.

    Returns (average distance of the fill from the mid, distance at the end of the walk), both as
    fractions. Depth between grid points is spread evenly; beyond the ladder's end the walk stops
    at `max_pct` (a sell never prints below 1 % of the mid).
    """
    x = np.concatenate([[0.0], GRID])
    y = np.concatenate([[0.0], np.maximum.accumulate(np.nan_to_num(ladder))])
    total = y[-1]
    if total <= 0:
        return max_pct, max_pct

    def dist(u: float) -> float:
        return float(np.interp(u, y, x)) if u < total else max_pct

    d0, d1 = dist(consumed), dist(consumed + qty_notional)
    if qty_notional <= 0:
        return d0, d0
    # average distance = ∫ dist(u) du / Q over [consumed, consumed + Q], piecewise linear in u
    us = np.concatenate([[consumed], y[(y > consumed) & (y < consumed + qty_notional)], [consumed + qty_notional]])
    ds = np.array([dist(u) for u in us])
    avg = float(np.trapezoid(ds, us) / qty_notional) if hasattr(np, "trapezoid") else float(np.trapz(ds, us) / qty_notional)
    return min(avg, max_pct), min(d1, max_pct)
