"""Row-group size and Parquet writer, measured on the queries users run (not a proxy query).

Takes a lake built by `bench/bench_sql.py` (30 M synthetic trades through the real pipeline),
rewrites copies of its `trades` files with each writer / row-group size, and times crashlab's named
10-minute window queries (`bars`, `lows`, `timeline`) and full-day 1-minute bars on every copy,
alternating the copies in each repetition so that load hits them alike. Medians are reported and
appended to bench/RESULTS_sql.md.

Run:  .venv/bin/python bench/bench_sql.py            # builds /tmp/crashlab-bench-sql/rows30000000
      .venv/bin/python bench/bench_rowgroups.py --lake /tmp/crashlab-bench-sql/rows30000000 [--repeat 11]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from crashlab.analysis.db import connect
from crashlab.ingest import schema
from crashlab.ingest.lake import Lake

HERE = Path(__file__).resolve().parent
WINDOW = {"start": "2025-10-10T21:15", "end": "2025-10-10T21:25"}


def _polars(rows: int):
    def write(path: Path) -> None:
        df = pl.read_parquet(path)
        df.write_parquet(path, compression="zstd", compression_level=1, statistics=True,
                         row_group_size=rows, arrow_schema=schema.TABLES["trades"])
    return write


def _pyarrow(rows: int):
    def write(path: Path) -> None:
        t = pq.read_table(path).cast(schema.TABLES["trades"])
        pq.write_table(t, path, compression="zstd", row_group_size=rows, write_statistics=True,
                       use_dictionary=Lake._dict_columns(t.schema))
    return write


VARIANTS = {
    "pyarrow, 128 Ki rows": _pyarrow(128 * 1024),
    "Polars, 128 Ki rows": _polars(128 * 1024),
    "Polars, 64 Ki rows": _polars(64 * 1024),
    "Polars, 32 Ki rows": _polars(32 * 1024),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lake", required=True, help="a lake made by bench/bench_sql.py")
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--full-day-repeat", type=int, default=3)
    args = ap.parse_args()
    src = Path(args.lake)
    if not Lake.open(src).files("trades"):
        raise SystemExit(f"no trades in {src}: build it with bench/bench_sql.py first")
    root = Path(tempfile.mkdtemp(prefix="crashlab-rowgroups-"))
    try:
        dbs = {}
        for name, write in VARIANTS.items():
            dst = root / name.replace(" ", "_").replace(",", "")
            shutil.copytree(src, dst)
            for f in Lake.open(dst).files("trades"):
                write(f)
            dbs[name] = connect(dst)
        times: dict[str, dict[str, list[float]]] = {n: {"bars": [], "lows": [], "timeline": [], "day": []} for n in dbs}
        names = list(dbs)
        for i in range(args.repeat):
            for n in (names if i % 2 else names[::-1]):
                d = dbs[n]
                for q, extra in (("bars", {}), ("lows", {}), ("timeline", {"top": 4})):
                    t = time.perf_counter()
                    d.query(q, **WINDOW, **extra)
                    times[n][q].append(time.perf_counter() - t)
                if i < args.full_day_repeat:
                    t = time.perf_counter()
                    d.query("bars", interval="1m")
                    times[n]["day"].append(time.perf_counter() - t)
        for d in dbs.values():
            d.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    load = os.getloadavg()[0]
    lines = [
        f"## Row groups and writer (`bench/bench_rowgroups.py`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Lake `{src}` rewritten per variant; medians of {args.repeat} alternating runs "
        f"(full day: {args.full_day_repeat}); load average at the end {load:.2f}.",
        "",
        "| trades files written by | `bars` window | `lows` window | `timeline` window | full-day bars |",
        "|---|---:|---:|---:|---:|",
    ]
    for n, v in times.items():
        lines.append(f"| {n} | {med(v['bars']) * 1000:.0f} ms | {med(v['lows']) * 1000:.0f} ms | "
                     f"{med(v['timeline']) * 1000:.0f} ms | {med(v['day']):.2f} s |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(HERE / "RESULTS_sql.md", "a") as fh:
        fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
