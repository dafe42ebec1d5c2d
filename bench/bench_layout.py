"""Why the lake's files look the way they do: row-group size and sort order, measured.

Writes the same synthetic day of trades (default 30 M rows, 24 instruments) with several
row-group sizes, sorted by ts or not, then times with DuckDB (best of 3):
  - a 10-minute window query for one instrument (what `timeline` and `replay` do),
  - full-day 1-minute bars for every instrument (what `bars` does),
and reports file sizes. Run:  .venv/bin/python bench/bench_layout.py [--rows 30000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

T0 = 1760054400_000000  # 2025-10-10 00:00 UTC, µs


def make(rows: int, n_sym: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(T0, T0 + 86_400_000_000, rows))
    sym = rng.integers(0, n_sym, rows)
    price = 100 * np.exp(rng.standard_normal(rows).cumsum() * 1e-4)
    return pa.table(
        {
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "symbol": pa.array([f"S{i}/USDT" for i in range(n_sym)]).take(pa.array(sym)),
            "price": price,
            "amount": rng.exponential(1, rows),
        }
    )


def best(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=30_000_000)
    ap.add_argument("--symbols", type=int, default=24)
    args = ap.parse_args()
    tbl = make(args.rows, args.symbols)
    by_symbol = tbl.sort_by([("symbol", "ascending"), ("ts", "ascending")])
    root = Path(tempfile.mkdtemp(prefix="crashlab-layout-"))
    print(f"rows={args.rows:,} symbols={args.symbols} cores={os.cpu_count()}")
    print(f"{'layout':34} {'MB':>7} {'window 10m (s)':>15} {'day bars (s)':>13}")
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    try:
        for name, data, rg in [
            ("sorted by ts, 32Ki row groups", tbl, 32 * 1024),
            ("sorted by ts, 64Ki row groups", tbl, 64 * 1024),
            ("sorted by ts, 128Ki row groups", tbl, 128 * 1024),
            ("sorted by ts, 1Mi row groups", tbl, 1024 * 1024),
            ("sorted by symbol,ts, 128Ki", by_symbol, 128 * 1024),
        ]:
            d = root / name.replace(" ", "_").replace(",", "")
            d.mkdir()
            # 8 files, as 8 sources of one day would give
            step = (data.num_rows + 7) // 8
            for i in range(8):
                pq.write_table(data.slice(i * step, step), d / f"{i}.parquet", compression="zstd", row_group_size=rg)
            glob = str(d / "*.parquet")
            mb = sum(f.stat().st_size for f in d.iterdir()) / 1e6
            window = best(lambda: con.execute(
                f"SELECT count(*), min(price) FROM read_parquet('{glob}') WHERE symbol = 'S3/USDT' "
                "AND ts >= TIMESTAMPTZ '2025-10-10 21:10:00+00' AND ts < TIMESTAMPTZ '2025-10-10 21:20:00+00'").fetchall())
            bars = best(lambda: con.execute(
                f"SELECT symbol, time_bucket(INTERVAL '1 minute', ts) m, arg_min(price, ts), max(price), min(price), "
                f"arg_max(price, ts), sum(amount) FROM read_parquet('{glob}') GROUP BY ALL").fetchall(), 2)
            print(f"{name:34} {mb:7.1f} {window:15.4f} {bars:13.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
