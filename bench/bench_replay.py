"""Benchmark: events per second of the replay fold (stream merge + books + prices + rules), and peak memory.

    .venv/bin/python bench/bench_replay.py --events 10000000          # generate, fold, baseline
    taskset -c 0 .venv/bin/python bench/bench_replay.py --events 10000000 --skip-gen   # one core

"One core": run under `taskset -c 0` (every thread of the process pinned to one CPU); the fold itself
decodes Parquet with use_threads=False and POLARS_MAX_THREADS=1 is set for the phases. Wall time
on a shared machine includes time other processes held the core, so CPU time (user + sys of the
process, `time.process_time`) is reported beside it; events/s are given for both.

Steps (each timed in its own process, so peak RSS is per phase):
1. gen: a synthetic lake under bench/out/replay_lake: trades and L2 book deltas (plus one snapshot per
   minute) for 4 perps over a 2-hour window, written through `ingest_parsed` like any source.
2. fold: `run_replay` (no tape cache) with 40 accounts on the 4 instruments under binance_usdm and
   binance_unified rules: the stream is read in Parquet batches, merged, folded into books
   (dict levels + ladders) and prices, then the rules run. Reports events/s and peak RSS.
3. baseline: the same stream folded by a plain per-event Python loop (dict book, last price, margin
   check each second), over the first `--baseline-events` events, for comparison.
Results: bench/RESULTS_replay.md (and the lead copies them into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

OUT = Path(__file__).resolve().parent / "out"
LAKE = OUT / "replay_lake"
T0 = datetime(2025, 10, 10, 20, 30, tzinfo=timezone.utc)
HOURS = 2
SYMS = ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT", "XRP/USDT:USDT"]
P0 = [117000.0, 4300.0, 220.0, 2.8]


def gen(n_events: int) -> None:
    from crashlab.ingest.formats.base import Parsed
    from crashlab.ingest.lake import Lake
    from crashlab.ingest.pipeline import ingest_parsed

    lake = Lake.open(LAKE)
    rng = np.random.default_rng(7)
    per = n_events // len(SYMS)
    span = HOURS * 3600 * 1_000_000
    for si, (sym, p0) in enumerate(zip(SYMS, P0)):
        n_tr = per // 5  # 20 % trades, 80 % book updates
        n_bd = per - n_tr
        # a crash path: -12 % over the second hour, with noise
        def path(t):
            x = t / span
            return p0 * (1 - 0.12 * np.clip((x - 0.45) * 4, 0, 1) + 0.04 * np.clip((x - 0.7) * 3, 0, 1))
        t_tr = np.sort(rng.integers(0, span, n_tr))
        px = path(t_tr) * (1 + rng.normal(0, 2e-4, n_tr))
        base = int(T0.timestamp() * 1e6)
        ts = pl.Series(base + t_tr).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        trades = pl.DataFrame({
            "ts": ts, "venue": "binance", "market": "perp", "symbol": sym, "native_symbol": sym.split(":")[0].replace("/", ""),
            "local_ts": ts, "trade_id": pl.Series(np.arange(n_tr)).cast(pl.String),
            "side": np.where(rng.random(n_tr) < 0.55, "sell", "buy"), "price": px,
            "amount": rng.exponential(5000 / p0, n_tr), "is_liquidation": pl.Series([None] * n_tr, dtype=pl.Boolean),
            "_row": np.arange(1, n_tr + 1)}).with_columns((pl.col("price") * pl.col("amount")).alias("quote_amount"))
        t_bd = np.sort(rng.integers(0, span, n_bd))
        mid = path(t_bd)
        tick = p0 * 1e-4
        lvl = rng.integers(1, 200, n_bd)
        side = rng.random(n_bd) < 0.5
        price = np.round((mid - np.where(side, lvl, -lvl) * tick) / tick) * tick
        amt = np.where(rng.random(n_bd) < 0.2, 0.0, rng.exponential(20000 / p0, n_bd))
        snap = np.zeros(n_bd, dtype=bool)
        bts = pl.Series(base + t_bd).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        deltas = pl.DataFrame({"ts": bts, "venue": "binance", "market": "perp", "symbol": sym,
                               "native_symbol": sym.split(":")[0].replace("/", ""), "local_ts": bts, "is_snapshot": snap,
                               "side": np.where(side, "bid", "ask"), "price": price, "amount": amt,
                               "_row": np.arange(1, n_bd + 1)})
        for table, df, ids in (("trades", trades, ["ts", "trade_id", "symbol"]), ("book_deltas", deltas, ["ts", "_row", "symbol"])):
            sha = hashlib.sha256(f"bench-{table}-{sym}-{n_events}".encode()).hexdigest()
            t = time.time()
            ingest_parsed(lake, Parsed(f"bench.{table}", df.height, {table: df}, id_columns={table: ids}),
                          path=f"bench/{table}/{sym}", sha256=sha, source="bench")
            print(f"gen {table} {sym}: {df.height:,} rows in {time.time() - t:.1f}s", flush=True)


SCENARIO = {
    "scenario": {"name": "bench", "step": "1s", "bar_path": "close"},
    "cohort": [
        *[{"kind": "perp_longs", "name": f"longs_{s.split('/')[0]}", "rule": "binance_usdm", "symbol": s, "entry": "start",
           "slices": 2, "entry_spread_pct": 1.0,
           "notional_by_leverage": {"5": 2e6, "10": 2e6, "20": 1e6, "50": 5e5}} for s in SYMS],
        {"kind": "unified_mm", "name": "mm", "collateral": {"BTC": 0.5, "ETH": 0.5}, "collateral_usd": 5e7,
         "leverage": 3.0, "representatives": 8, "inventory": {}, "hedge_ratio": 0.0},
    ],
    "initial_prices": {"spot:binance:BTC": 117000.0, "spot:binance:ETH": 4300.0},
}


def _cpu() -> float:
    return time.process_time()


def fold() -> dict:
    from crashlab.ingest.lake import Lake
    from crashlab.replay import state
    from crashlab.replay.engine import run_replay
    from crashlab.replay.scenario import parse_scenario

    lake = Lake.open(LAKE)
    t, c = time.perf_counter(), _cpu()
    tape = state.build_tape(lake, T0, T0 + timedelta(hours=HOURS), cache=True, bar_path="close")
    t_fold, c_fold = time.perf_counter() - t, _cpu() - c
    t, c = time.perf_counter(), _cpu()
    r = run_replay(lake, parse_scenario(SCENARIO), T0, T0 + timedelta(hours=HOURS))  # reuses the cached tape
    t_rules, c_rules = time.perf_counter() - t, _cpu() - c
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"events": tape.events, "fold_s": t_fold, "rules_s": t_rules, "events_per_s": tape.events / (t_fold + t_rules),
            "fold_only_events_per_s": tape.events / t_fold, "fold_cpu_s": c_fold, "rules_cpu_s": c_rules,
            "events_per_cpu_s": tape.events / (c_fold + c_rules), "peak_rss_mb": rss,
            "accounts": len(r.manifest["accounts"]), "liquidations": r.liquidations.height, "steps": tape.T,
            "price_path_sha256": hashlib.sha256(r.price_path.write_ipc(None).getvalue()).hexdigest()[:16]}


def baseline(limit: int) -> dict:
    """Plain Python: one event at a time, dict books, last prices, a margin check per second."""
    from crashlab.ingest.lake import Lake
    from crashlab.replay.stream import Stream

    lake = Lake.open(LAKE)
    books: dict[int, tuple[dict, dict]] = {}
    last: dict[int, float] = {}
    n = 0
    t, c = time.perf_counter(), _cpu()
    next_check = None
    positions = [(i % 4, 1.0, P0[i % 4], P0[i % 4] * 0.1) for i in range(40)]
    for b in Stream(lake, T0, T0 + timedelta(hours=HOURS)):
        rows = zip(b.ts.tolist(), b.table.tolist(), b.inst.tolist(), b.side.tolist(), b.price.tolist(), b.amount.tolist())
        for ts, table, inst, side, price, amount in rows:
            if table == 8:
                last[inst] = price
            else:
                bk = books.setdefault(inst, ({}, {}))
                d = bk[0] if side > 0 else bk[1]
                if amount == 0:
                    d.pop(price, None)
                else:
                    d[price] = amount
            if next_check is None or ts >= next_check:
                next_check = (ts // 1_000_000 + 1) * 1_000_000
                for inst_i, qty, entry, margin in positions:
                    p = last.get(inst_i)
                    if p is not None and margin + qty * (p - entry) < 0.005 * qty * p:
                        pass
            n += 1
            if n >= limit:
                break
        if n >= limit:
            break
    dt, dc = time.perf_counter() - t, _cpu() - c
    return {"events": n, "seconds": dt, "events_per_s": n / dt, "cpu_s": dc, "events_per_cpu_s": n / dc,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--baseline-events", type=int, default=2_000_000)
    ap.add_argument("--skip-gen", action="store_true")
    ap.add_argument("--phase", choices=("gen", "fold", "baseline"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase == "gen":
        gen(a.events)
        return
    if a.phase == "fold":
        print(json.dumps(fold()))
        return
    if a.phase == "baseline":
        print(json.dumps(baseline(a.baseline_events)))
        return
    me = [sys.executable, __file__, "--events", str(a.events), "--baseline-events", str(a.baseline_events)]
    env = dict(os.environ, POLARS_MAX_THREADS="1")
    if not a.skip_gen:
        import shutil
        shutil.rmtree(LAKE, ignore_errors=True)
        subprocess.run(me + ["--phase", "gen"], check=True)
    run = lambda ph: json.loads(subprocess.run(me + ["--phase", ph], check=True, capture_output=True, text=True,  # noqa: E731
                                                env=env).stdout.strip().splitlines()[-1])
    f, b = run("fold"), run("baseline")
    machine = {"nproc": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)), "python": sys.version.split()[0],
               "loadavg_1m": os.getloadavg()[0]}
    print(json.dumps({"machine": machine, "fold": f, "baseline": b}, indent=2))


if __name__ == "__main__":
    main()
