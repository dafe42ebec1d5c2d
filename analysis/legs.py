"""Segment a price path into legs with a zig-zag on a percentage threshold.

Method (documented because every leg in the report depends on it): walk the minute bars in time
order, keeping the extreme since the last confirmed pivot. In a down-leg the extreme is the lowest
low; the leg ends (its end pivot is that low) when a later high rises `threshold_pct` above it.
In an up-leg, symmetrically, with the highest high and a fall of `threshold_pct` below it. Using
highs and lows rather than closes is deliberate: crash wicks last seconds and a close-only
zig-zag would cut straight through them. The first pivot is the high (or low) the first move of
`threshold_pct` started from (the first bar's open if that is the extreme); the last leg runs
from the last pivot to the last extreme (marked `complete = False`), and a flat tail after it is
dropped. Legs shorter than `min_minutes` are merged into their neighbour by dropping their pivots.

Parameters: `threshold_pct` (default 2 %: BTC's whole crash leg is about 15 %, alts 50-90 %),
`min_minutes` (default 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

DEFAULT_THRESHOLD_PCT = 2.0

LEG_SCHEMA = {
    "leg_id": pl.Int64,
    "start_ts": pl.Datetime("us", "UTC"),
    "end_ts": pl.Datetime("us", "UTC"),
    "start_price": pl.Float64,
    "end_price": pl.Float64,
    "move_pct": pl.Float64,
    "direction": pl.String,
    "minutes": pl.Float64,
    "complete": pl.Boolean,
}


@dataclass(frozen=True)
class Pivot:
    ts: datetime
    price: float


def zigzag_pivots(
    ts: list[datetime], high: list[float], low: list[float], threshold_pct: float, first: float | None = None
) -> list[Pivot]:
    """Confirmed pivots plus the running extreme of the unfinished last leg."""
    if threshold_pct <= 0:
        raise ValueError(f"threshold_pct must be > 0, got {threshold_pct}")
    if not ts:
        return []
    th = threshold_pct / 100.0
    pivots = [Pivot(ts[0], first if first is not None else (high[0] + low[0]) / 2)]
    direction = 0  # 0 unknown, +1 up-leg, -1 down-leg
    ext_i, ext_p = 0, pivots[0].price
    # Until the first move of `threshold_pct`, track the high and low so far: the first leg starts
    # at the extreme it moved away from (the top before a crash), not at the window's first bar.
    hi_i, hi_p, lo_i, lo_p = 0, pivots[0].price, 0, pivots[0].price
    for i in range(len(ts)):
        h, lo = high[i], low[i]
        if direction == 0:
            up, down = h >= lo_p * (1 + th), lo <= hi_p * (1 - th)
            if up and down:  # one bar spans both ways: follow the bigger move
                up = (h / lo_p - 1) >= (1 - lo / hi_p)
                down = not up
            if up:
                if lo_i > 0:
                    pivots[0] = Pivot(ts[lo_i], lo_p)
                direction, ext_i, ext_p = 1, i, h
            elif down:
                if hi_i > 0:
                    pivots[0] = Pivot(ts[hi_i], hi_p)
                direction, ext_i, ext_p = -1, i, lo
            else:
                if h > hi_p:
                    hi_i, hi_p = i, h
                if lo < lo_p:
                    lo_i, lo_p = i, lo
            continue
        if direction == 1:
            if h > ext_p:
                ext_i, ext_p = i, h
            elif lo <= ext_p * (1 - th):
                pivots.append(Pivot(ts[ext_i], ext_p))
                direction, ext_i, ext_p = -1, i, lo
        else:
            if lo < ext_p:
                ext_i, ext_p = i, lo
            elif h >= ext_p * (1 + th):
                pivots.append(Pivot(ts[ext_i], ext_p))
                direction, ext_i, ext_p = 1, i, h
    if direction != 0 and ts[ext_i] != pivots[-1].ts:
        pivots.append(Pivot(ts[ext_i], ext_p))
    return pivots


def legs_from_bars(bars: pl.DataFrame, threshold_pct: float = DEFAULT_THRESHOLD_PCT, min_minutes: float = 0.0) -> pl.DataFrame:
    """Legs of one instrument from minute bars (`ts, open, high, low, close`), sorted by ts."""
    if bars.height == 0:
        return pl.DataFrame(schema=LEG_SCHEMA)
    b = bars.sort("ts")
    opens = b["open"].to_list() if "open" in b.columns else b["close"].to_list()
    pivots = zigzag_pivots(b["ts"].to_list(), b["high"].to_list(), b["low"].to_list(), threshold_pct, first=opens[0])
    confirmed_last = len(pivots) - 1  # the final pivot is a running extreme, not confirmed
    if min_minutes > 0 and len(pivots) > 2:
        keep = [pivots[0]]
        for p in pivots[1:-1]:
            if (p.ts - keep[-1].ts).total_seconds() / 60 >= min_minutes:
                keep.append(p)
        keep.append(pivots[-1])
        pivots = keep
        confirmed_last = len(pivots) - 1
    rows = []
    for i in range(1, len(pivots)):
        a, z = pivots[i - 1], pivots[i]
        move = (z.price / a.price - 1) * 100
        rows.append(
            {
                "leg_id": i,
                "start_ts": a.ts,
                "end_ts": z.ts,
                "start_price": a.price,
                "end_price": z.price,
                "move_pct": move,
                "direction": "down" if move < 0 else "up",
                "minutes": (z.ts - a.ts).total_seconds() / 60,
                "complete": i < confirmed_last,
            }
        )
    return pl.DataFrame(rows, schema=LEG_SCHEMA)
