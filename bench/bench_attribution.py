"""Benchmark: full Shapley attribution over the chain's 6 mechanisms (64 replays) for a 2-hour window.

    python bench/bench_attribution.py --lake /tmp/simlake          # after: crashlab simulate --lake /tmp/simlake
    python bench/bench_attribution.py --lake /tmp/simlake --workers 1 --repeat 2

Target (issue 5): < 60 s on 2 cores. Results go to bench/RESULTS_attribution.md and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from crashlab.analysis.attribution import attribute
from crashlab.ingest.paths import DATA
from crashlab.ingest.timeutil import parse_ts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lake", required=True)
    p.add_argument("--scenario", default=str(DATA / "scenarios" / "oct10.toml"))
    p.add_argument("--start", default="2025-10-10T20:30")
    p.add_argument("--end", default="2025-10-10T22:30")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args(argv)
    done = []
    for i in range(a.repeat):
        n = [0]
        t = time.perf_counter()
        att = attribute(a.lake, parse_ts(a.start), parse_ts(a.end), scenario=a.scenario, workers=a.workers,
                        progress=lambda s: n.__setitem__(0, n[0] + 1))
        dt = time.perf_counter() - t
        sh = att.shapley
        assert sh is not None
        gap = float(abs(sh.efficiency_gap()).max()) if att.legs.height else 0.0
        done.append(dt)
        print(f"run {i + 1}: {dt:.1f} s wall, {sh.evaluations} replays in a pool of {a.workers}, "
              f"{att.legs.height} legs of {att.instrument}, max efficiency gap {gap:.2e}")
        print(att.legs.select("leg_id", "start_ts", "end_ts", "move_pct", "dominant_stage", "confidence", "residual_pct"))
    print(f"best {min(done):.1f} s; workers={a.workers}; cpus={os.cpu_count()}; {platform.processor() or platform.machine()}; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
