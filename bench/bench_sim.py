"""Benchmark `crashlab.replay.sim.world.simulate`: scale 1 (what the demo runs) and a big lake.

    .venv/bin/python bench/bench_sim.py --repeat 5            # scale 1, five fresh lakes
    .venv/bin/python bench/bench_sim.py --scale 50 --repeat 1 # benchmark lake (slow, several GB)

Prints wall and CPU seconds per run (model, writing left after the model, total), rows, and the
peak RSS of this process; the machine's load average is printed too, because on a shared machine
wall time says as much about the neighbours as about the code.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from crashlab.ingest.lake import Lake
from crashlab.replay.sim.world import simulate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where the lakes go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the lakes")
    args = ap.parse_args()
    walls, cpus = [], []
    for k in range(args.repeat):
        root = Path(tempfile.mkdtemp(prefix=f"simbench-{args.scale:g}-", dir=args.dir))
        load0 = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        s = simulate(lake=Lake.open(root), scale=args.scale)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        walls.append(wall)
        cpus.append(cpu)
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        print(f"run {k + 1}: scale {args.scale:g}: {s.events:,} rows, {size / 1e6:,.0f} MB; wall {wall:.1f} s "
              f"(model {s.seconds_model:.1f} s + writing left {s.seconds_write:.1f} s), cpu {cpu:.1f} s, "
              f"load avg at start {load0:.1f}", flush=True)
        for t, n in s.rows.items():
            print(f"    {t:16s} {n:>14,}")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wall: min {min(walls):.1f} s, median {statistics.median(walls):.1f} s; "
          f"cpu: min {min(cpus):.1f} s, median {statistics.median(cpus):.1f} s; peak RSS {rss:,.0f} MB; "
          f"{os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
