"""`crashlab attribute` (tables in the terminal) and `crashlab report` (the offline HTML report)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crashlab.ingest.timeutil import parse_ts

ATTR_EPILOG = """\
examples:
  crashlab attribute --start 2025-10-10T20:00 --end 2025-10-10T23:00
  crashlab attribute --start 2025-10-10T20:00 --end 2025-10-10T23:00 --instrument gemini:spot:BTC/USD --threshold 3
  crashlab attribute --start 2025-10-10T21:00 --end 2025-10-10T23:00 --scenario data/scenarios/oct10.toml --workers 2
  crashlab attribute --start 2025-10-10T20:00 --end 2025-10-10T23:00 --stages my_chain.toml --out tables/

Without --scenario (or --run with --shapley) stage shares are evidence scores: how much of each leg
each stage's signal was above its onset threshold. With a scenario, every subset of the chain's
replay mechanisms is replayed (2^n runs) and each leg's move is split by Shapley values; the
residual (recorded - replayed) is always shown.
"""

REPORT_EPILOG = """\
examples:
  crashlab report --start 2025-10-10T20:00 --end 2025-10-10T23:00 --out report/
  crashlab report --lake /tmp/lake --run data/runs/usde_internal --start 2025-10-10T20:00 --end 2025-10-10T23:00 --out report/
  crashlab report --run data/runs/usde_internal --shapley --start 2025-10-10T21:00 --end 2025-10-10T22:30 --out report/

Writes DIR/index.html (self-contained: opens with no network), DIR/charts/*.png|svg and
DIR/tables/{legs,attribution,narrative,timeline,onsets}.csv.
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lake", default=None, help="lake folder (default: CRASHLAB_LAKE or data/lake)")
    p.add_argument("--start", required=True, help="window start, UTC (e.g. 2025-10-10T20:00)")
    p.add_argument("--end", required=True, help="window end, UTC (exclusive)")
    p.add_argument("--instrument", default=None, help="headline instrument VENUE:MARKET:SYMBOL (default: a BTC market, else the most traded)")
    p.add_argument("--threshold", type=float, default=2.0, help="zig-zag leg threshold in %% (default 2)")
    p.add_argument("--stages", default=None, help="stages file (default data/stages.toml)")
    p.add_argument("--run", default=None, help="replay run folder or id (its replayed forced flow feeds the signals)")
    p.add_argument("--scenario", default=None, help="replay scenario for Shapley attribution (2^n replays)")
    p.add_argument("--shapley", action="store_true", help="with --run: replay its scenario for every mechanism subset")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="parallel replays (default 2)")


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("attribute", help="legs, per-leg attribution by stage and the narrative test (tables)",
                       epilog=ATTR_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(a)
    a.add_argument("--out", default=None, help="also write legs/attribution/narrative/onsets CSVs into this folder")
    a.set_defaults(func=cmd_attribute)
    r = sub.add_parser("report", help="offline HTML report with charts and tables",
                       epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(r)
    r.add_argument("--out", required=True, help="report folder")
    r.set_defaults(func=cmd_report)


def _instrument(text: str | None):
    from .attribution import parse_instrument

    return parse_instrument(text) if text else None


def _scenario(args) -> str | None:
    if args.scenario:
        return args.scenario
    if args.run and args.shapley:
        from .report import load_run

        _, manifest, _, _ = load_run(args.run)
        return (manifest.get("inputs", {}).get("scenario") or {}).get("path")
    return None


def _print_tables(con: Console, att) -> None:
    t = Table(title=f"legs of {att.instrument} ({att.mode})")
    for c in ("leg", "from", "to", "move %", "dominant stage", "method", "confidence", "residual %"):
        t.add_column(c)
    for r in att.legs.iter_rows(named=True):
        t.add_row(str(r["leg_id"]), f"{r['start_ts']:%H:%M}", f"{r['end_ts']:%H:%M}", f"{r['move_pct']:.2f}",
                  r["dominant_stage"], r["dominant_method"], f"{r['confidence']:.2f}", f"{r['residual_pct']:.2f}")
    con.print(t)
    t = Table(title="attribution (shapley = pct points of the move; evidence = share of signal co-occurrence)")
    for c in ("leg", "stage", "method", "contribution %", "share", "evidence"):
        t.add_column(c)
    f = lambda v, n=3: "" if v is None else f"{v:.{n}f}"  # noqa: E731
    for r in att.attribution.iter_rows(named=True):
        t.add_row(str(r["leg_id"]), r["stage"], r["method"], f(r["contribution_pct"]), f(r["share"]), f(r["evidence"], 2))
    con.print(t)
    t = Table(title="narrative test")
    for c in ("cause", "effect", "hops", "lead min", "verdict", "what the data says"):
        t.add_column(c)
    colors = {"supported": "green", "contradicted": "bold red", "not enough data": "dim"}
    for r in att.narrative.iter_rows(named=True):
        lead = "" if r["lead_minutes"] is None else f"{r['lead_minutes']:.0f}"
        t.add_row(r["cause"], r["effect"], str(r["hops"]), lead, f"[{colors[r['verdict']]}]{r['verdict']}[/]", r["says"])
    con.print(t)
    for n in att.notes:
        con.print(f"[yellow]note:[/] {n}")


def cmd_attribute(args) -> int:
    from .attribution import attribute
    from .report import _csv, load_run

    con = Console()
    liq = load_run(args.run)[2] if args.run else None
    scen = _scenario(args)
    with con.status("replaying mechanism subsets..." if scen else "measuring signals..."):
        att = attribute(args.lake, parse_ts(args.start), parse_ts(args.end), instrument=_instrument(args.instrument),
                        threshold_pct=args.threshold, stages_path=args.stages, scenario=scen,
                        replay_liquidations=liq, workers=args.workers)
    _print_tables(con, att)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, df in (("legs", att.legs), ("attribution", att.attribution), ("narrative", att.narrative), ("onsets", att.onsets)):
            _csv(df, out / f"{name}.csv")
        con.print(f"tables written to {out}/")
    return 0


def cmd_report(args) -> int:
    from .report import build

    con = Console()
    with con.status("building report...") as st:
        res = build(args.lake, parse_ts(args.start), parse_ts(args.end), args.out, run=args.run, scenario=_scenario(args),
                    shapley=bool(_scenario(args)), instrument=_instrument(args.instrument), threshold_pct=args.threshold,
                    stages_path=args.stages, workers=args.workers, progress=lambda s: st.update(f"report: {s}"))
    t = Table(title=f"report -> {res.index}")
    t.add_column("chart")
    t.add_column("rows")
    t.add_column("note")
    for name, info in res.charts.items():
        t.add_row(name, str(info["rows"]), f"no data: {info['reason']}" if info["rows"] == 0 else "")
    con.print(t)
    for n in res.attribution.notes if res.attribution else []:
        con.print(f"[yellow]note:[/] {n}")
    return 0
