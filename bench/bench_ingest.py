"""Ingest speed and memory, measured against a bare Polars read+write of the same file in the same run.

1. The largest real Tardis file: `crashlab` ingest (detect, parse, validate, event ids, lake write)
   vs `pl.read_csv(f).write_parquet(...)`, alternating, best of N. Target: ingest ≤ 1.5 × bare.
   A per-stage breakdown (parse / validate / write) shows where the time goes.
2. A synthetic Tardis trades file of `--rows` rows (default 30 M) written as .csv.gz: ingest wall
   time and peak RSS of the ingesting process (target < 4 GB). The child is watched and killed
   above `--limit-gb` so a shared machine is never pushed into swap or the OOM killer.

3. With `--baseline CHECKOUT` (another commit's tree, e.g. `git worktree add /tmp/base main`):
   this code against that one in the same run, alternating: the largest real Tardis file ingested
   in one process (best of a few ingests per child, after a warm-up), and `crashlab ingest` of the
   real Tardis and Binance folders with `--jobs 2` (wall time of the whole command, fresh lake).

Run:  .venv/bin/python bench/bench_ingest.py [--rows 30000000] [--repeat 7] [--limit-gb 10]
      [--skip-real | --skip-synthetic] [--baseline CHECKOUT [--rounds 5]]
Appends a Markdown section to bench/RESULTS_ingest.md.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

from crashlab.ingest.formats import tardis
from crashlab.ingest.formats.base import Options
from crashlab.ingest.lake import Lake
from crashlab.ingest.paths import SHARED_REAL
from crashlab.ingest.pipeline import CHUNK_ROWS, ingest_file, sha256_file
from crashlab.ingest.validate import validate

HERE = Path(__file__).resolve().parent
US = 1_760_054_400_000_000


def machine() -> str:
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, nproc={os.cpu_count()}, RAM={int(mem) / 2**20:.1f} GiB, "
        f"load avg at start {load[0]:.2f}, Python {platform.python_version()}, polars {pl.__version__}"
    )


def cpu_seconds() -> float:
    """CPU time of this process, all threads (Polars and the event-id threads run on every core)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bare(path: Path, out: Path) -> tuple[float, float]:
    c, t = cpu_seconds(), time.perf_counter()
    pl.read_csv(path).write_parquet(out / "bare.parquet")
    return time.perf_counter() - t, cpu_seconds() - c


def ours(path: Path, out: Path) -> tuple[float, float]:
    lake = out / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    c, t = cpu_seconds(), time.perf_counter()
    rep = ingest_file(str(lake), str(path), Options())
    dt, dc = time.perf_counter() - t, cpu_seconds() - c
    assert rep.status == "written", rep.message
    return dt, dc


def stages(path: Path, out: Path, repeat: int) -> dict[str, float]:
    """Best-of-`repeat` time of each stage of the pipeline, run one after the other by hand."""
    from crashlab.ingest.formats import common
    from crashlab.ingest.validate import SeenIds

    lake = Lake.open(out / "lake_stages")
    best: dict[str, float] = {}

    def tm(name: str, fn):
        t = time.perf_counter()
        r = fn()
        best[name] = min(best.get(name, 1e9), time.perf_counter() - t)
        return r

    for _ in range(repeat):
        tm("bare read_csv", lambda: pl.read_csv(path))
        tm("sha256", lambda: sha256_file(path))
        cols = tardis.COLUMNS["trades"]
        tm("read (numbers typed)", lambda: common.read_csv_cells(path, None, cols, header=True, **tardis.read_options(cols)))
        parsed = tm("parse (read + canonical columns)", lambda: tardis.parse(path, Options()))
        good, _ = tm("validate + event ids", lambda: validate(parsed, seen=SeenIds()))
        df = next(iter(good.values())).drop("_row").with_columns(
            pl.lit("tardis").alias("source"), pl.lit("0123456789abcdef").alias("source_id"))
        tm("lake write (Polars Parquet writer)", lambda: lake.write_rows("0123456789abcdef", next(iter(good)), df, None))
    return best


def real_file(repeat: int) -> list[str]:
    files = sorted((SHARED_REAL / "tardis").rglob("*.csv.gz"), key=lambda p: p.stat().st_size)
    if not files:
        return [f"(skipped: no Tardis files under {SHARED_REAL})"]
    big = files[-1]
    rows = sum(1 for _ in gzip.open(big)) - 1
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        bare(big, out), ours(big, out)  # warm-up: imports, page cache
        bw, ow = [], []
        for i in range(repeat):  # alternate, and alternate who goes first, so load spikes hit both
            if i % 2:
                ow.append(ours(big, out))
                bw.append(bare(big, out))
            else:
                bw.append(bare(big, out))
                ow.append(ours(big, out))
        st = stages(big, out, repeat)
    b, o = [w for w, _ in bw], [w for w, _ in ow]
    b_cpu, o_cpu = statistics.median(c for _, c in bw), statistics.median(c for _, c in ow)
    ratio = min(o) / min(b)
    ratio_med = statistics.median(o) / statistics.median(b)
    lines = [
        f"Largest real Tardis file: `{big.name}` ({big.stat().st_size / 1e6:.1f} MB gz, {rows:,} rows)",
        "",
        "| run | best s | median s |",
        "|---|---|---|",
        f"| bare `pl.read_csv(f).write_parquet(...)` | {min(b):.3f} | {statistics.median(b):.3f} |",
        f"| `crashlab` ingest (one file, one process) | {min(o):.3f} | {statistics.median(o):.3f} |",
        f"| ratio | {ratio:.2f}× (best/best) | {ratio_med:.2f}× (median/median) |",
        "",
        f"CPU time, median (all threads): bare {b_cpu:.3f} s, crashlab {o_cpu:.3f} s ({o_cpu / b_cpu:.2f}×). "
        "On 2 cores both runs keep the cores busy, so the CPU ratio is about the floor of the wall ratio.",
        "",
        f"Target ≤ 1.5× the bare time: {'met' if ratio <= 1.5 else 'NOT met'} on best/best, "
        f"{'met' if ratio_med <= 1.5 else 'NOT met'} on median/median ({repeat} alternating repetitions).",
        "",
        f"Stage breakdown (best of {repeat}): " + ", ".join(f"{k} {v:.3f} s" for k, v in st.items()),
    ]
    return lines


def make_synthetic(path: Path, rows: int, chunk: int = 2_000_000) -> None:
    """A Tardis trades file (binance-futures BTCUSDT), deterministic, written chunk by chunk."""
    rng = np.random.default_rng(7)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(b"exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            ts = US + (np.arange(start, start + n, dtype=np.int64) * 86_400_000_000) // rows
            df = pl.DataFrame({
                "exchange": "binance-futures", "symbol": "BTCUSDT", "timestamp": ts,
                "local_timestamp": ts + rng.integers(1_000, 50_000, n), "id": np.arange(start, start + n) + 6_000_000_000,
                "side": np.where(rng.random(n) < 0.5, "buy", "sell"),
                "price": np.round(110_000 + np.cumsum(rng.normal(0, 2, n)), 1),
                "amount": np.round(rng.exponential(0.05, n) + 0.001, 3),
            })
            fh.write(df.write_csv(include_header=False).encode())


_CHILD = """
import sys, time
from crashlab.ingest.pipeline import ingest_file
from crashlab.ingest.formats.base import Options
from crashlab.ingest.lake import Lake
t = time.perf_counter()
r = ingest_file(sys.argv[1], sys.argv[2], Options())
dt = time.perf_counter() - t
parts = len(Lake.open(sys.argv[1]).files("trades"))
print(f"{dt:.3f} {r.status} {r.rows_written} {r.rows_quarantined} {parts} {r.message[:200]!r}")
"""


def _rss(pid: int) -> int:
    """RSS of a process and its children, in bytes."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids]


def synthetic(rows: int, limit_gb: float) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "binance-futures_trades_2025-10-10_BTCUSDT.csv.gz"
        t = time.perf_counter()
        make_synthetic(f, rows)
        gen = time.perf_counter() - t
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(Path(tmp) / "lake"), str(f)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak, killed = 0, False
        while proc.poll() is None:
            peak = max(peak, _rss(proc.pid))
            if peak > limit_gb * 2**30:
                proc.kill()
                killed = True
                break
            time.sleep(0.1)
        out, err = proc.communicate()
        wall = time.perf_counter() - t
        size = f.stat().st_size
    head = f"Synthetic Tardis trades: {rows:,} rows, {size / 1e9:.2f} GB gz (generated in {gen:.0f} s)"
    if killed:
        return [head, "", f"ingest KILLED by the watchdog at {peak / 2**30:.1f} GiB RSS after {wall:.0f} s "
                f"(limit {limit_gb} GiB; target < 4 GB NOT met)"]
    if proc.returncode != 0:
        return [head, "", f"ingest failed (exit {proc.returncode}) after {wall:.0f} s, peak RSS {peak / 2**30:.2f} GiB: "
                f"{err.strip().splitlines()[-1] if err.strip() else ''}"]
    secs, status, written, quarantined, parts, _ = out.split(" ", 5)
    ok = peak < 4 * 2**30
    return [head, "", "| metric | value |", "|---|---|",
            f"| ingest wall time (in child) | {float(secs):.1f} s ({rows / float(secs) / 1e6:.2f} M rows/s) |",
            f"| status / rows written / quarantined | {status} / {int(written):,} / {int(quarantined):,} |",
            f"| part files written (chunks of {CHUNK_ROWS:,} lines) | {int(parts)} |",
            f"| peak RSS of the ingesting process | {peak / 2**30:.2f} GiB (target < 4 GB {'met' if ok else 'NOT met'}) |"]


_AB_CHILD = """
import shutil, sys, time
from crashlab.ingest.pipeline import ingest_file
from crashlab.ingest.formats.base import Options
lake, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = []
for i in range(n + 1):  # the first is a warm-up (imports, page cache)
    shutil.rmtree(lake, ignore_errors=True)
    t = time.perf_counter()
    r = ingest_file(lake, path, Options())
    out.append(time.perf_counter() - t)
    assert r.status == "written", r.message
print(" ".join(f"{x:.4f}" for x in out[1:]))
"""


def _baseline_env(checkout: Path, shim: Path) -> dict[str, str]:
    """An environment in which `import crashlab` is the code of `checkout` (also in spawned workers).

    The package maps `crashlab.ingest` to `ingest/` and so on, so a folder of links gives the same
    layout, and a sitecustomize drops this venv's editable-install finder and puts the links first.
    """
    pkg = shim / "crashlab"
    pkg.mkdir(parents=True)
    for f in (checkout / "crashlab").iterdir():
        (pkg / f.name).symlink_to(f)
    for sub in ("ingest", "replay", "analysis"):
        (pkg / sub).symlink_to(checkout / sub)
    (shim / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        f"sys.path.insert(0, {str(shim)!r})\n"
    )
    return {**os.environ, "PYTHONPATH": str(shim)}


def ab(checkout: Path, rounds: int) -> list[str]:
    """This code vs `checkout`'s, alternating in the same run (see the module docstring, item 3)."""
    files = sorted((SHARED_REAL / "tardis").rglob("*.csv.gz"), key=lambda p: p.stat().st_size)
    if not files:
        return [f"(A/B skipped: no Tardis files under {SHARED_REAL})"]
    big = files[-1]
    folders = [str(SHARED_REAL / "tardis"), str(SHARED_REAL / "binance-vision")]
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        envs = {"this": dict(os.environ), "baseline": _baseline_env(checkout.resolve(), tmpd / "shim")}
        where = {}
        for k, env in envs.items():  # say which code each side runs
            where[k] = subprocess.run([sys.executable, "-c", "import crashlab.ingest.pipeline as p; print(p.__file__)"],
                                      env=env, cwd=tmp, capture_output=True, text=True, check=True).stdout.strip()
        one: dict[str, list[float]] = {"this": [], "baseline": []}
        jobs: dict[str, list[float]] = {"this": [], "baseline": []}
        for i in range(rounds):
            for k in (("this", "baseline") if i % 2 else ("baseline", "this")):
                r = subprocess.run([sys.executable, "-c", _AB_CHILD, str(tmpd / "lake1"), str(big), "3"],
                                   env=envs[k], cwd=tmp, capture_output=True, text=True)
                assert r.returncode == 0, r.stderr
                one[k] += [float(x) for x in r.stdout.split()]
                shutil.rmtree(tmpd / "lakej", ignore_errors=True)
                t = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "crashlab", "ingest", *folders, "--lake", str(tmpd / "lakej"),
                                    "--jobs", "2", "--quiet", "--format", "json"],
                                   env=envs[k], cwd=tmp, capture_output=True, text=True)
                jobs[k].append(time.perf_counter() - t)
                assert r.returncode == 0, r.stderr[-2000:]
    n_files = sum(1 for f in folders for p in Path(f).rglob("*") if p.is_file() and not p.name.endswith((".md", ".CHECKSUM")))

    def row(label: str, d: dict[str, list[float]]) -> str:
        b, t = d["baseline"], d["this"]
        return (f"| {label} | {min(b):.3f} / {statistics.median(b):.3f} | {min(t):.3f} / {statistics.median(t):.3f} | "
                f"{min(t) / min(b):.3f}× / {statistics.median(t) / statistics.median(b):.3f}× |")

    return [
        f"A/B against `{checkout}` ({rounds} alternating rounds; baseline code: `{where['baseline']}`, "
        f"this code: `{where['this']}`)",
        "",
        "| run | baseline best / median s | this best / median s | this ÷ baseline (best / median) |",
        "|---|---|---|---|",
        row(f"`{big.name}` ({big.stat().st_size / 1e6:.1f} MB gz), one process, {3 * rounds} ingests each", one),
        row(f"`crashlab ingest tardis binance-vision --jobs 2` ({n_files} files, whole command), {rounds} runs each", jobs),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=30_000_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--limit-gb", type=float, default=10.0)
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--baseline", type=Path, help="another checkout of crashlab to compare with, in the same run")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of the --baseline comparison")
    args = ap.parse_args()
    if args.baseline is not None and not (args.baseline / "ingest" / "pipeline.py").is_file():
        ap.error(f"--baseline {args.baseline}: not a crashlab checkout (no ingest/pipeline.py there)")
    lines = [f"## Ingest benchmark ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "", f"Machine: {machine()}", ""]
    if not args.skip_real:
        lines += real_file(args.repeat)
    if not args.skip_synthetic:
        lines += [""] + synthetic(args.rows, args.limit_gb)
    if args.baseline is not None:
        lines += [""] + ab(args.baseline, args.rounds)
    text = "\n".join(lines) + "\n"
    print(text)
    with open(HERE / "RESULTS_ingest.md", "a") as fh:
        fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
