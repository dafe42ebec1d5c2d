"""Calibration targets measured straight from the model's records (no lake), for tuning by hand.

Why: writing a lake and reading it back costs more than the model itself, and tuning means many
runs. `measure()` approximates `calibrate.calibration_table` from `Records` (lows from the sweeps'
extreme prices, liquidations with Binance's one-per-second stream thinning); the lake table stays
the judge. Overrides vary the scenario in memory, e.g.

    python -m crashlab.replay.sim.tune instrument.binance-spot-ENA.macro=6 perp_collateral.delay_s=1200
    python -m crashlab.replay.sim.tune --sweep instrument_class.thin.ladder_depth=0.5,1,2
"""

from __future__ import annotations

import argparse
import copy
import time
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from .calibrate import TIME_METRICS
from .market import Market, Records
from .scenario import Scenario, at, from_raw, load
from .world import run_model


def override(sc: Scenario, assignments: list[str]) -> Scenario:
    """`section.key=value`, `instrument.<id>.key=value`, `perp_cohort.<instrument>.key=value`,
    `loan_cohort.<instrument>.key=value`, `mm_account.<id>.key=value`, `instrument_class.<c>.key=value`."""
    raw = copy.deepcopy(sc.raw)
    for a in assignments:
        path, _, val = a.partition("=")
        try:
            v: Any = eval(val, {})  # numbers and lists typed on a command line
        except Exception:
            v = val
        parts = path.split(".")
        if parts[0] in ("instrument", "perp_cohort", "loan_cohort", "mm_account", "arb") and len(parts) == 3:
            key = "id" if parts[0] in ("instrument", "mm_account") else ("a" if parts[0] == "arb" else "instrument")
            hits = [e for e in raw[parts[0]] if e.get(key) == parts[1]]
            if not hits:
                raise KeyError(f"{path}: no {parts[0]} with {key} = {parts[1]!r}")
            for e in hits:
                e[parts[2]] = v
        else:
            d = raw
            for p in parts[:-1]:
                d = d.setdefault(p, {})
            d[parts[-1]] = v
    return from_raw(raw, sc.path, sc.sha256)


def _step_time(sc: Scenario, m: Market, step: float) -> datetime:
    return sc.start + timedelta(seconds=float(step) * m.dt)


def _series(sc: Scenario, m: Market, rec: Records, venue: str, symbol: str) -> tuple[int, np.ndarray]:
    i = next(k for k, x in enumerate(sc.instruments) if x.venue == venue and x.symbol == symbol)
    lo = np.where(np.isfinite(rec.low[:, i]), rec.low[:, i], np.inf)
    return i, np.minimum(lo, np.minimum(rec.mid[:-1, i], rec.mid[1:, i]))


def _low(sc, m, rec, venue, symbol, window):
    i, s = _series(sc, m, rec, venue, symbol)
    if window:
        a = int((at(sc, window[0]) - sc.start).total_seconds() / m.dt)
        b = int((at(sc, window[1]) - sc.start).total_seconds() / m.dt)
        s = np.where((np.arange(len(s)) >= a) & (np.arange(len(s)) <= b), s, np.inf)
    k = int(np.argmin(s))
    return float(s[k]), _step_time(sc, m, k + 0.5)


def measure(sc: Scenario, m: Market, rec: Records) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in sc.targets:
        mt = t["metric"]
        v: Any = None
        if mt == "low":
            v = _low(sc, m, rec, t["venue"], t["symbol"], t.get("window"))[0]
        elif mt == "low_time":
            v = _low(sc, m, rec, t["venue"], t["symbol"], t.get("window"))[1]
        elif mt == "low_ratio":
            a = _low(sc, m, rec, *t["a"], t.get("window"))[0]
            b = _low(sc, m, rec, *t["b"], t.get("window"))[0]
            v = (a / b - 1) * 100
        elif mt == "median_low_time":
            ts = sorted(_low(sc, m, rec, vv, s, t.get("window"))[1] for vv, s in t["instruments"])
            k = len(ts) // 2
            v = ts[k] if len(ts) % 2 else ts[k - 1] + (ts[k] - ts[k - 1]) / 2
        elif mt == "first_below":
            i, s = _series(sc, m, rec, t["venue"], t["symbol"])
            if "below_frac" in t:
                a = int((at(sc, t["baseline"][0]) - sc.start).total_seconds() / m.dt)
                b = int((at(sc, t["baseline"][1]) - sc.start).total_seconds() / m.dt)
                level = float(np.median(rec.mid[a:b, i])) * float(t["below_frac"])
            else:
                level = float(t["below"])
            a = int((at(sc, t.get("after", "20:30:00")) - sc.start).total_seconds() / m.dt)
            hit = np.flatnonzero(s[a:] < level)
            v = _step_time(sc, m, a + hit[0] + 0.5) if hit.size else None
        elif mt in ("depth_change", "depth_onset"):
            i = next(k for k, x in enumerate(sc.instruments) if x.venue == t["venue"] and x.symbol == t["symbol"])
            band = float(t["band_pct"])
            j = int(np.flatnonzero(np.isclose(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), abs(band)))[0])
            dep = (rec.depth_bid if band < 0 else rec.depth_ask)[:, i, j]
            every = float(sc.raw.get("writer", {}).get("band_s", 30.0))
            times = np.arange(0, sc.seconds, every)
            d = dep[np.minimum((times / m.dt / rec.snap_every).astype(int), len(dep) - 1)]
            tsec = lambda hh: (at(sc, hh) - sc.start).total_seconds()  # noqa: E731
            base = d[(times >= tsec(t["baseline"][0])) & (times <= tsec(t["baseline"][1]))].mean()
            win = (times >= tsec(t["window"][0])) & (times <= tsec(t["window"][1]))
            if mt == "depth_change":
                v = (d[win].min() / base - 1) * 100
            else:
                hit = np.flatnonzero(win & (d < base * float(t["frac"])))
                v = sc.start + timedelta(seconds=float(times[hit[0]])) if hit.size else None
        elif mt == "liq_peak_minute":
            per: dict[int, float] = {}
            seen: set[tuple[int, int]] = set()
            for st, i, _side, q, px, _acct in rec.liquidations:
                if sc.instruments[i].venue == "binance":  # forceOrder: <= 1 per symbol per second
                    k = (st, i)
                    if k in seen:
                        continue
                    seen.add(k)
                minute = int(st * m.dt // 60)
                per[minute] = per.get(minute, 0.0) + q * px * (2 if sc.instruments[i].venue == "binance" else 1)
            if per:
                mm = max(per, key=lambda k: (per[k], -k))
                v = sc.start + timedelta(seconds=mm * 60 + 30)
        elif mt == "pool_min":
            v = float(rec.pool.min())
        elif mt == "diff_minutes":
            a, b = out.get(t["a"]), out.get(t["b"])
            v = (a - b).total_seconds() / 60 if isinstance(a, datetime) and isinstance(b, datetime) else None
        out[t["name"]] = v
    return out


def judge(sc: Scenario, values: dict[str, Any]) -> list[tuple[str, Any, Any, float | None, float, bool]]:
    """(name, simulated, target, error, tolerance, within) per target, as calibrate judges them."""
    rows = []
    for t in sc.targets:
        v = values[t["name"]]
        tol = float(t["tolerance"])
        if t["metric"] in TIME_METRICS:
            target: Any = at(sc, str(t["value"]))
            err = None if v is None else abs((v - target).total_seconds()) / 60
        else:
            target = float(t["value"])
            err = None if v is None else abs(float(v) - target) / (abs(target) if t.get("tol_kind") == "rel" else 1.0)
        rows.append((t["name"], v, target, err, tol, err is not None and err <= tol + 1e-12))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, datetime):
        return v.strftime("%H:%M:%S")
    return "—" if v is None else f"{v:.5g}"


def report(sc: Scenario, values: dict[str, Any]) -> int:
    rows = judge(sc, values)
    for name, v, target, err, tol, ok in rows:
        print(f"{'ok ' if ok else 'XX '} {name[:62]:62s} {_fmt(v):>10s} {_fmt(target):>10s}  "
              f"err {_fmt(err):>7s} / {tol:g}")
    n = sum(r[-1] for r in rows)
    print(f"{n}/{len(rows)} within tolerance")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set", nargs="*", help="overrides section.key=value")
    ap.add_argument("--sweep", default=None, help="one override with comma-separated values to try")
    ap.add_argument("--seed", type=int, default=20251010)
    ap.add_argument("--config", default=None)
    args = ap.parse_args(argv)
    base = load(args.config)
    runs = [args.set]
    if args.sweep:
        k, _, vals = args.sweep.partition("=")
        runs = [args.set + [f"{k}={v}"] for v in vals.split(",")]
    for sets in runs:
        sc = override(base, sets) if sets else base
        t0 = time.process_time()
        m, rec = run_model(sc, args.seed)
        print(f"== {' '.join(sets)}  (model cpu {time.process_time() - t0:.1f} s)")
        report(sc, measure(sc, m, rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
