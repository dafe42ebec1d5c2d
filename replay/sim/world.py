"""`simulate()`: run the calibrated crash simulation and write it into a lake as source 'simulated'.

The one entry point the demo and the CLI call. Same (scenario file, seed, scale) -> the same data
files, byte for byte: all randomness comes from seeded generators, rows are written sorted, and
the only wall-clock value anywhere is `ingested_at` in the manifest.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np

from crashlab.ingest.lake import Lake

from .market import Market, Records
from .scenario import Scenario, load
from .writer import write_lake

Progress = Callable[[str, int, int], None]


@dataclass
class SimSummary:
    scenario: str
    seed: int
    scale: float
    sources: int
    rows: dict[str, int]
    seconds_model: float  # the model (the writer runs alongside it, in a second thread)
    seconds_write: float  # writing still left once the model had finished
    mm_liquidations: list[dict[str, Any]] = field(default_factory=list)
    engine_liquidations: int = 0
    note: str = "SIMULATED data, calibrated to crash_facts.md; not recorded market data"

    @property
    def events(self) -> int:
        return sum(self.rows.values())


def run_model(sc: Scenario, seed: int, scale: float = 1.0, progress: Callable[[int, int], None] | None = None) -> tuple[Market, Records]:
    """Run the agent model only (no lake): what the calibration tuner and tests iterate on."""
    m = Market(sc, seed, scale)
    steps = int(round(sc.seconds / m.dt))
    rec = Records(steps, m.n, dt=m.dt)
    rec.alloc(snap_every=2)
    m.run(rec, progress)
    return m, rec


def simulate(config_path: Path | None = None, *, lake: Lake, seed: int = 20251010, scale: float = 1.0,
             progress: Progress | None = None) -> SimSummary:
    """Simulate 20:30-22:30 UTC on 2025-10-10 and write every event into `lake` (source='simulated').

    `scale` multiplies event density (trades, snapshots, reference prices) for benchmark lakes; the
    market dynamics, and so the calibration, do not depend on it. `progress(stage, done, total)`.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    sc = load(config_path)
    t0 = time.perf_counter()
    m = Market(sc, seed, scale)
    rec = Records(int(round(sc.seconds / m.dt)), m.n, dt=m.dt)
    rec.alloc(snap_every=2)
    for c in m.cohorts:  # arrays the writer holds on to must exist before the model starts
        if c.kind == "perp_long":
            rec.oi.setdefault(c.inst, np.zeros(rec.T))
    # The writer runs in a second thread, one time chunk behind the model: parquet encoding and
    # polars release the GIL, so on two cores most of the writing hides behind the model.
    cond = threading.Condition()
    state = {"done": 0, "failed": False}

    def done(k: int) -> None:
        with cond:
            state["done"] = k
            cond.notify_all()

    def wait(k: int) -> None:
        with cond:
            cond.wait_for(lambda: state["done"] >= k or state["failed"])
            if state["failed"]:
                raise RuntimeError("simulation model failed; nothing more to write")

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sim-writer") as pool:
        fut = pool.submit(write_lake, lake, sc, rec, seed=seed, scale=scale, dt=m.dt, oi=rec.oi,
                          progress=(lambda d, t: progress("write", d, t)) if progress else None, wait=wait)
        try:
            m.run(rec, (lambda d, t: progress("simulate", d, t)) if progress else None, done)
        except BaseException:
            with cond:
                state["failed"] = True
                cond.notify_all()
            raise
        t1 = time.perf_counter()
        reports = fut.result()
    t2 = time.perf_counter()
    rows: dict[str, int] = {}
    for r in reports:
        if r.status == "error":
            raise RuntimeError(r.message)
        for k, v in r.tables.items():
            rows[k] = rows.get(k, 0) + v
    mm = []
    for e in rec.mm_events:
        ts = sc.start + timedelta(seconds=e["step"] * m.dt)
        mm.append({"account": e["account"], "ts": ts.isoformat(), "uniMMR": round(e["uniMMR"], 4), "sold": e["sold"]})
    return SimSummary(sc.path.name, seed, scale, len(reports), dict(sorted(rows.items())), t1 - t0, t2 - t1, mm,
                      len(rec.engine_events))
