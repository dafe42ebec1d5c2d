"""Simulated vs target: measure the lake's simulated rows against the scenario's calibration targets.

Why from the lake and not from the model's memory: the targets are facts about what a reader of
the lake sees (lows in trades, depth in depth bands, liquidations in the liquidations table), so
they are measured with the same rows the timeline and attribution read. Each target says where
its value comes from (`source`, in crash_facts.md) and how far off is still acceptable.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from crashlab.ingest.lake import Lake

from .scenario import Scenario, at, load

TIME_METRICS = {"low_time", "first_below", "depth_onset", "liq_peak_minute", "median_low_time"}


class _Lake:
    """Cached reads of the simulated rows a target needs."""

    def __init__(self, lake: Lake, sc: Scenario):
        self.lake, self.sc = lake, sc
        self._cache: dict[str, pl.DataFrame] = {}

    def table(self, name: str, cols: list[str]) -> pl.DataFrame:
        if name not in self._cache:
            files = self.lake.files(name)
            if not files:
                self._cache[name] = pl.DataFrame()
            else:
                self._cache[name] = (pl.scan_parquet([str(f) for f in files])
                                     .filter(pl.col("source") == "simulated").select(cols).collect())
        return self._cache[name]

    def trades(self, venue: str, symbol: str) -> pl.DataFrame:
        df = self.table("trades", ["ts", "venue", "symbol", "price"])
        out = df.filter((pl.col("venue") == venue) & (pl.col("symbol") == symbol)) if df.height else df
        if out.height == 0:
            raise LookupError(f"no simulated trades for {venue} {symbol}")
        return out

    def low(self, venue: str, symbol: str, window: list[str] | None) -> tuple[float, datetime]:
        df = self.trades(venue, symbol)
        if window:
            df = df.filter(pl.col("ts").is_between(at(self.sc, window[0]), at(self.sc, window[1])))
        row = df.sort(["price", "ts"]).row(0, named=True)
        return float(row["price"]), row["ts"]


def _measure(t: dict[str, Any], L: _Lake, done: dict[str, Any]) -> Any:
    m = t["metric"]
    sc = L.sc
    if m == "low":
        return L.low(t["venue"], t["symbol"], t.get("window"))[0]
    if m == "low_time":
        return L.low(t["venue"], t["symbol"], t.get("window"))[1]
    if m == "low_ratio":
        a = L.low(t["a"][0], t["a"][1], t.get("window"))[0]
        b = L.low(t["b"][0], t["b"][1], t.get("window"))[0]
        return (a / b - 1.0) * 100.0
    if m == "median_low_time":
        times = sorted(L.low(v, s, t.get("window"))[1] for v, s in t["instruments"])
        return times[len(times) // 2] if len(times) % 2 else times[len(times) // 2 - 1] + (times[len(times) // 2] - times[len(times) // 2 - 1]) / 2
    if m == "first_below":
        df = L.trades(t["venue"], t["symbol"]).sort("ts")
        if "below_frac" in t:
            base = df.filter(pl.col("ts").is_between(at(sc, t["baseline"][0]), at(sc, t["baseline"][1])))["price"].median()
            level = float(base) * float(t["below_frac"])
        else:
            level = float(t["below"])
        after = at(sc, t.get("after", "20:30:00"))
        hit = df.filter((pl.col("ts") >= after) & (pl.col("price") < level))
        return hit["ts"][0] if hit.height else None
    if m in ("depth_change", "depth_onset"):
        df = L.table("depth_bands", ["ts", "venue", "symbol", "band_pct", "notional"])
        df = df.filter((pl.col("venue") == t["venue"]) & (pl.col("symbol") == t["symbol"])
                       & (pl.col("band_pct") == float(t["band_pct"]))).sort("ts")
        if df.height == 0:
            raise LookupError(f"no simulated depth bands for {t['venue']} {t['symbol']} {t['band_pct']}")
        base = df.filter(pl.col("ts").is_between(at(sc, t["baseline"][0]), at(sc, t["baseline"][1])))["notional"].mean()
        win = df.filter(pl.col("ts").is_between(at(sc, t["window"][0]), at(sc, t["window"][1])))
        if m == "depth_change":
            return (float(win["notional"].min()) / float(base) - 1.0) * 100.0
        hit = win.filter(pl.col("notional") < float(base) * float(t["frac"]))
        return hit["ts"][0] if hit.height else None
    if m == "liq_peak_minute":
        df = L.table("liquidations", ["ts", "venue", "quote_amount"])
        if df.height == 0:
            return None
        per = df.group_by(pl.col("ts").dt.truncate("1m").alias("m")).agg(pl.col("quote_amount").sum()).sort(["quote_amount", "m"], descending=[True, False])
        return per["m"][0] + timedelta(seconds=30)
    if m == "pool_min":
        df = L.table("prices", ["ts", "venue", "symbol", "price_type", "price"])
        p = df.filter((pl.col("price_type") == "pool") & (pl.col("symbol") == t.get("symbol", "USDE/USDT")))
        if p.height == 0:
            raise LookupError("no simulated pool prices")
        return float(p["price"].min())
    if m == "diff_minutes":
        a, b = done.get(t["a"]), done.get(t["b"])
        if not isinstance(a, datetime) or not isinstance(b, datetime):
            return None
        return (a - b).total_seconds() / 60.0
    raise ValueError(f"{sc.path}: target {t['name']!r}: unknown metric {m!r}")


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, datetime):
        return v.strftime("%H:%M:%S")
    return f"{v:.6g}"


def calibration_table(lake: Lake, config_path: Path | None = None) -> pl.DataFrame:
    """One row per target: target, unit, simulated, target_value, tolerance, within, source.

    Times are shown as HH:MM:SS UTC and compared in minutes; `tol_kind = "rel"` tolerances are a
    fraction of the target value. `simulated`/`target_value` are strings so times and numbers share
    a column; `error` is the numeric distance in the tolerance's unit.
    """
    sc = load(config_path)
    L = _Lake(lake, sc)
    rows, done = [], {}
    for t in sc.targets:
        try:
            v = _measure(t, L, done)
        except LookupError as e:
            v, err_msg = None, str(e)
        else:
            err_msg = ""
        done[t["name"]] = v
        tol = float(t["tolerance"])
        if t["metric"] in TIME_METRICS:
            target = at(sc, str(t["value"]))
            err = None if v is None else abs((v - target).total_seconds()) / 60.0
            target_s = target.strftime("%H:%M:%S")
            tol_s = f"±{tol:g} min"
        else:
            target = float(t["value"])
            err = None if v is None else abs(float(v) - target)
            if t.get("tol_kind") == "rel":
                err = None if err is None else err / abs(target)
                tol_s = f"±{tol * 100:g}%"
            else:
                tol_s = f"±{tol:g}"
            target_s = _fmt(target)
        rows.append({
            "target": t["name"], "unit": t["unit"], "simulated": _fmt(v), "target_value": target_s,
            "tolerance": tol_s, "within": bool(err is not None and err <= tol + 1e-12),
            "error": err, "source": t["source"] + (f" [{err_msg}]" if err_msg else ""),
        })
    return pl.DataFrame(rows, schema={"target": pl.String, "unit": pl.String, "simulated": pl.String,
                                      "target_value": pl.String, "tolerance": pl.String, "within": pl.Boolean,
                                      "error": pl.Float64, "source": pl.String})
