"""`crashlab demo`: the whole product on a simulated night, offline, from the repository alone.

simulate (calibrated to crash_facts.md, labelled source='simulated') -> lake -> markers ->
calibration table -> timeline -> replay under `internal_book` and `conversion_rate` -> compare ->
Shapley attribution over the causal stages -> self-contained report. Everything goes under
`--out` (default data/demo/); the lake inside it is rebuilt on every run, so two runs with the same
seed give the same lake checksums and the same attribution table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crashlab.ingest.lake import Lake
from crashlab.ingest.paths import DATA
from crashlab.ingest.pipeline import ingest_paths

START = datetime(2025, 10, 10, 20, 30, tzinfo=timezone.utc)
END = datetime(2025, 10, 10, 22, 30, tzinfo=timezone.utc)
SCENARIO = DATA / "scenarios" / "oct10.toml"
SIM_CONFIG = DATA / "scenarios" / "sim_oct10.toml"
RULE = "binance_unified.collateral_pricing"

EPILOG = """\
examples:
  crashlab demo                       # about a minute; report in data/demo/report/index.html
  crashlab demo --out /tmp/demo       # somewhere else
  crashlab demo --scale 50 --no-report   # a ~50x denser lake for the benchmarks

Everything the demo shows is SIMULATED: an agent-based model of 20:30-22:30 UTC on 2025-10-10,
calibrated to published facts (see the calibration table), never recorded market data.
"""


@dataclass
class DemoResult:
    out: Path
    lake: Path
    report: Path | None
    calibration: pl.DataFrame
    compare: dict
    attribution: pl.DataFrame | None
    legs: pl.DataFrame | None
    seconds: dict[str, float] = field(default_factory=dict)
    events: int = 0  # rows the simulation wrote into the lake


def _fresh_lake(path: Path) -> Lake:
    """The demo owns DIR/lake: it is removed and rebuilt, but only if it looks like a crashlab lake."""
    if path.exists():
        if any(path.iterdir()) and not (path / "_manifest").exists():
            raise SystemExit(f"crashlab demo: {path} exists and is not a crashlab lake; choose another --out")
        shutil.rmtree(path)
    return Lake.open(path)


def run_demo(out: Path, *, scale: float = 1.0, seed: int = 20251010, workers: int = 2, report: bool = True,
             console: Console | None = None) -> DemoResult:
    from crashlab.analysis.db import connect
    from crashlab.replay.compare import compare_runs
    from crashlab.replay.engine import run_replay
    from crashlab.replay.sim.calibrate import calibration_table
    from crashlab.replay.sim.world import simulate

    console = console or Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    lake = _fresh_lake(out / "lake")
    secs: dict[str, float] = {}
    steps = 5 if report else 4
    with Progress(
        TextColumn("[bold]{task.fields[stage]:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console, transient=True,
    ) as bar:
        overall = bar.add_task("", total=steps, stage="demo")
        sub = bar.add_task("", total=1, stage="")

        def stage(name: str, desc: str = "") -> float:
            bar.update(sub, stage=name, description=desc, completed=0, total=1)
            return time.perf_counter()

        def done(name: str, t: float) -> None:
            secs[name] = round(time.perf_counter() - t, 2)
            bar.update(overall, advance=1)

        t = stage("simulate", "agent model 20:30-22:30 UTC")
        summary = simulate(SIM_CONFIG, lake=lake, seed=seed, scale=scale,
                           progress=lambda s, d, n: bar.update(sub, stage=s, completed=d, total=max(n, 1)))
        ingest_paths([DATA / "markers.csv"], lake)
        done("simulate", t)

        t = stage("calibrate", "simulated vs published facts")
        cal = calibration_table(lake, SIM_CONFIG)
        cal.write_csv(out / "calibration.csv")
        done("calibrate", t)

        t = stage("timeline", "minute by minute")
        with connect(lake) as db:
            timeline = db.query("timeline", start=START.isoformat(), end=END.isoformat(), step="1m", top=6)
        timeline.write_csv(out / "timeline.csv")
        done("timeline", t)

        t = stage("replay", "internal_book and conversion_rate")
        for rule in ("internal_book", "conversion_rate"):
            run_replay(lake, SCENARIO, START, END, rules={RULE: rule}, out_dir=out / "runs" / rule, run_id=f"demo-{rule}")
        cmp = compare_runs(out / "runs" / "internal_book", out / "runs" / "conversion_rate")
        (out / "compare.json").write_text(json.dumps(cmp, indent=2, default=str))
        done("replay", t)

        rep = None
        att = None
        if report:
            from crashlab.analysis import report as report_mod

            t = stage("report", "Shapley attribution (64 replays) and charts")
            rep = report_mod.build(
                lake, START, END, out / "report", run=out / "runs" / "internal_book", scenario=SCENARIO,
                shapley=True, workers=workers, calibration=cal,
                banner="SIMULATED DATA: an agent-based model of 20:30-22:30 UTC on 2025-10-10 calibrated to "
                       "published facts (calibration table below), not recorded market data.",
                progress=lambda s: bar.update(sub, description=s),
            )
            att = rep.attribution
            done("report", t)
    return DemoResult(
        out=out, lake=lake.root, report=rep.index if rep else None, calibration=cal, compare=cmp,
        attribution=att.attribution if att else None, legs=att.legs if att else None, seconds=secs,
        events=summary.events,
    )


def _print_summary(res: DemoResult, console: Console) -> None:
    cal = res.calibration
    ok = int(cal["within"].sum()) if cal.height else 0
    console.print(f"[bold]simulated lake[/]: {res.events:,} events (source='simulated'; not recorded market data)")
    console.print(f"[bold]calibration[/]: {ok}/{cal.height} targets within tolerance (SIMULATED data; table in {res.out / 'calibration.csv'})")
    if res.legs is not None and res.legs.height:
        legs = res.legs.with_columns(pl.col("move_pct").abs().alias("_abs")).sort("_abs", descending=True).head(5)
        t = Table(title="largest legs and their dominant stage")
        for c in ("leg", "start", "end", "move %", "dominant stage", "confidence"):
            t.add_column(c)
        for r in legs.iter_rows(named=True):
            t.add_row(str(r.get("leg_id")), str(r.get("start_ts"))[11:16], str(r.get("end_ts"))[11:16],
                      f"{r.get('move_pct', 0):+.2f}", str(r.get("dominant_stage")), str(r.get("confidence")))
        console.print(t)
    tot = res.compare.get("total", {})
    console.print(
        "[bold]conversion_rate vs internal_book[/]: "
        f"{tot.get('liquidations_avoided', 0)} liquidations avoided "
        f"({tot.get('accounts_avoided', 0):,.0f} accounts), forced notional avoided "
        f"{tot.get('forced_notional_avoided', 0):,.0f} USD"
    )
    console.print(f"timings (s): {res.seconds}")
    if res.report:
        console.print(f"[bold green]report[/]: {res.report}")


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else DATA / "demo"
    console = Console()
    t = time.perf_counter()
    res = run_demo(out, scale=args.scale, seed=args.seed, workers=args.workers, report=not args.no_report)
    _print_summary(res, console)
    console.print(f"demo finished in {time.perf_counter() - t:.1f} s; lake: {res.lake}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="simulate the crash offline and run the whole pipeline to a report", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", help="output folder (default data/demo/)")
    p.add_argument("--scale", type=float, default=1.0, help="event density multiplier (benchmark lakes)")
    p.add_argument("--seed", type=int, default=20251010)
    p.add_argument("--workers", type=int, default=2, help="processes for the attribution replays")
    p.add_argument("--no-report", action="store_true", help="stop after the replays (large --scale runs)")
    p.set_defaults(func=cmd_demo)
