"""SIGKILL `crashlab ingest` at random moments, re-run it: the lake equals an uninterrupted run's."""

from __future__ import annotations

import gzip
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("crashlab.ingest.formats.tardis", reason="Tardis importer not built yet")

N_FILES = 10
ROWS = 120_000


def _write_tardis_trades(folder: Path) -> None:
    rng = np.random.default_rng(7)
    t0 = 1760054400_000000  # 2025-10-10 00:00 UTC in µs
    for i in range(N_FILES):
        sym = f"ALT{i}USDT"
        ts = np.sort(rng.integers(t0, t0 + 86_400_000_000, ROWS))
        df = pl.DataFrame(
            {
                "exchange": ["binance"] * ROWS,
                "symbol": [sym] * ROWS,
                "timestamp": ts,
                "local_timestamp": ts + 1500,
                "id": np.arange(ROWS) + 1000,
                "side": rng.choice(["buy", "sell"], ROWS),
                "price": np.round(10 + rng.standard_normal(ROWS).cumsum() * 0.001, 4),
                "amount": np.round(rng.exponential(5, ROWS), 3) + 0.001,
            }
        )
        with gzip.open(folder / f"binance_trades_2025-10-10_{sym}.csv.gz", "wb", compresslevel=1) as fh:
            fh.write(df.write_csv().encode())


def _snapshot(lake: Path) -> dict[str, object]:
    """Every data and quarantine file's bytes, and the manifest without its wall-clock column."""
    out: dict[str, object] = {}
    for p in sorted(lake.rglob("*")):
        if p.is_file() and p.name != ".lock":
            rel = str(p.relative_to(lake))
            assert not p.name.endswith(".tmp"), f"temp file left behind: {rel}"
            if rel.startswith("_manifest"):
                out[rel] = pl.read_parquet(p).drop("ingested_at").to_dicts()
            else:
                out[rel] = p.read_bytes()
    return out


def _run(src: Path, lake: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crashlab", "ingest", str(src), "--lake", str(lake), "--quiet", "--format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write_tardis_trades(src)
    clean = tmp_path / "clean"
    t = time.monotonic()
    p = _run(src, clean)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    duration = time.monotonic() - t
    expected = _snapshot(clean)
    assert len([k for k in expected if k.startswith("trades/")]) == N_FILES

    rng = random.Random(11)
    lake = tmp_path / "killed"
    kills = 0
    for _ in range(6):
        if kills == 3:
            break
        p = _run(src, lake)
        # Each round runs at most 0.4 of a whole ingest, so the work cannot finish in fewer than
        # three rounds even on a quiet machine; the moment inside the round is random.
        time.sleep(rng.uniform(0.1, 0.4) * duration)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
        # Whatever the kill left must be readable: no half files under a data name.
        for f in lake.rglob("*.parquet"):
            pl.read_parquet_schema(f)
    assert kills >= 2, "the ingest finished before it could be killed; make the input bigger"
    p = _run(src, lake)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    assert _snapshot(lake) == expected
