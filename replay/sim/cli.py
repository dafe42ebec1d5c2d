"""`crashlab simulate` and `crashlab calibrate`: the offline crash, and how close it is to the facts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crashlab.ingest.lake import Lake

SIM_EPILOG = """\
examples:
  crashlab simulate --lake /tmp/simlake            # 20:30-22:30 UTC, ~1.8 M events, seed 20251010
  crashlab simulate --lake /tmp/big --scale 50     # benchmark lake: 50x event density
  crashlab simulate --seed 7 --config my_scenario.toml

The output is SIMULATED data calibrated to ../shared/reference/crash_facts.md (source='simulated'),
never recorded market data. Same scenario + seed + scale -> byte-identical data files.
"""

CAL_EPILOG = """\
examples:
  crashlab calibrate --lake /tmp/simlake           # simulated vs target, exit 1 if any is off
  crashlab calibrate --lake /tmp/simlake --json    # machine-readable
"""


def _progress_bar():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), transient=False)


def cmd_simulate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .world import simulate

    lake = Lake.open(args.lake)
    console = Console(stderr=True)
    tasks: dict[str, int] = {}
    with _progress_bar() as bar:
        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        s = simulate(args.config, lake=lake, seed=args.seed, scale=args.scale, progress=progress)
    console.print(f"[bold]SIMULATED[/] {s.scenario} seed={s.seed} scale={s.scale:g}: {s.events:,} rows in "
                  f"{s.sources} sources -> {lake.root} (model {s.seconds_model:.1f} s, write {s.seconds_write:.1f} s)")
    for t, n in s.rows.items():
        console.print(f"  {t:16s} {n:>12,}")
    for e in s.mm_liquidations:
        console.print(f"  market maker {e['account']} liquidated at {e['ts'][11:19]} (uniMMR {e['uniMMR']:.3f})")
    console.print(f"  [dim]{s.note}[/]")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .calibrate import calibration_table

    lake = Lake.open(args.lake)
    df = calibration_table(lake, args.config)
    ok = bool(df["within"].all())
    if args.json:
        print(json.dumps(df.to_dicts(), indent=1, default=str))
        return 0 if ok else 1
    t = Table(title="SIMULATED vs target (calibration; facts from crash_facts.md)")
    for c in ("target", "simulated", "target_value", "tolerance", "unit", "", "source"):
        t.add_column(c, overflow="fold")
    for r in df.iter_rows(named=True):
        t.add_row(r["target"], r["simulated"], r["target_value"], r["tolerance"], r["unit"],
                  "[green]✓[/]" if r["within"] else "[red]✗[/]", r["source"])
    Console().print(t)
    n_ok = int(df["within"].sum())
    print(f"{n_ok}/{df.height} targets within tolerance")
    return 0 if ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate the 10 Oct 2025 crash into the lake (offline, seeded)",
                       description="Agent-based forward simulation of 20:30-22:30 UTC on 2025-10-10, written "
                                   "into the lake as source 'simulated'.",
                       epilog=SIM_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lake", type=Path, default=None, help="lake directory (default: $CRASHLAB_LAKE or data/lake)")
    p.add_argument("--config", type=Path, default=None, help="scenario TOML (default: data/scenarios/sim_oct10.toml)")
    p.add_argument("--seed", type=int, default=20251010)
    p.add_argument("--scale", type=float, default=1.0, help="event density multiplier (benchmarks)")
    p.set_defaults(func=cmd_simulate)

    c = sub.add_parser("calibrate", help="simulated vs target table; exit 1 if any target is out of tolerance",
                       description="Measure the lake's simulated rows against the scenario's calibration targets.",
                       epilog=CAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--lake", type=Path, default=None, help="lake directory (default: $CRASHLAB_LAKE or data/lake)")
    c.add_argument("--config", type=Path, default=None, help="scenario TOML with [[target]] entries")
    c.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    c.set_defaults(func=cmd_calibrate)
