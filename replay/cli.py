"""`crashlab replay`: run a scenario over the lake, or compare two runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """\
examples:
  crashlab replay --scenario data/scenarios/usde_collateral.toml \\
      --start 2025-10-10T21:00 --end 2025-10-10T22:30 --out data/runs/usde_internal
  crashlab replay --scenario data/scenarios/usde_collateral.toml \\
      --start 2025-10-10T21:00 --end 2025-10-10T22:30 \\
      --rule binance_unified.collateral_pricing=conversion_rate --out data/runs/usde_conversion
  crashlab replay --compare data/runs/usde_internal data/runs/usde_conversion
  crashlab replay --scenario data/scenarios/oct10.toml --start 2025-10-10T20:30 --end 2025-10-10T22:30 \\
      --mechanisms leverage_flush,mm_unified_liquidation --rule impact.resilience_half_life_s=120

A run folder holds events.parquet (margin_call, liquidation, forced_order, fill, adl, bad_debt, each
with run_id, rule, causal stage and the event_id of its cause), liquidations.parquet,
price_path.parquet (recorded, margin and model price per minute), accounts.parquet (metric per
minute per account) and manifest.json (inputs, parameters with sources, code hash, file hashes).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay venue liquidation rules over the lake (or --compare two runs)",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lake", default=None, help="lake folder (default: $CRASHLAB_LAKE or data/lake)")
    p.add_argument("--scenario", help="scenario TOML (data/scenarios/*.toml)")
    p.add_argument("--start", help="window start, UTC (e.g. 2025-10-10T21:00)")
    p.add_argument("--end", help="window end, UTC")
    p.add_argument("--rule", action="append", default=[], metavar="RULE.PARAM=VALUE",
                   help="override a venue parameter (repeatable), e.g. binance_unified.usde_floor=0.95")
    p.add_argument("--mechanisms", default=None, help="comma-separated causal stages to keep on (default: all)")
    p.add_argument("--out", default=None, help="run folder (default data/runs/<run_id>)")
    p.add_argument("--run-id", default=None, help="name the run (default: a hash of its inputs)")
    p.add_argument("--quiet", action="store_true", help="no live view")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="compare two run folders")
    p.add_argument("--format", choices=("table", "json"), default="table", help="--compare output format")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=False)
    if args.compare:
        return _compare(args, console)
    missing = [f for f in ("scenario", "start", "end") if not getattr(args, f)]
    if missing:
        print(f"crashlab replay: missing --{', --'.join(missing)} (or use --compare RUN_A RUN_B)", file=sys.stderr)
        return 2
    from crashlab.ingest.lake import Lake
    from crashlab.ingest.paths import DATA

    from .engine import MECHANISMS, parse_override, run_replay
    from .scenario import ScenarioError

    try:
        rules = {}
        for r in args.rule:
            rule, param, _ = parse_override(r)
            rules[f"{rule}.{param}"] = r.split("=", 1)[1]
        mech = None
        if args.mechanisms is not None:
            mech = frozenset(m.strip() for m in args.mechanisms.split(",") if m.strip())
        lake = Lake.open(args.lake)
        view = _LiveView(console, quiet=args.quiet)
        with view:
            res = run_replay(lake, args.scenario, args.start, args.end, rules=rules, mechanisms=mech,
                             out_dir=None, progress=view.update, run_id=args.run_id)
        out = Path(args.out) if args.out else DATA / "runs" / res.run_id
        from .engine import write_run
        write_run(out, res.manifest, res.events, res.liquidations, res.price_path, res.accounts)
    except (ScenarioError, ValueError, KeyError, LookupError, FileNotFoundError) as e:
        print(f"crashlab replay: {e}", file=sys.stderr)
        return 2
    _summary(console, res, out)
    return 0


class _LiveView:
    """Minute-by-minute view: accounts at risk, liquidations, forced notional, simulated vs recorded price."""

    def __init__(self, console, quiet: bool = False):
        self.console, self.quiet = console, quiet
        self.rows: list[tuple] = []
        self.live = None

    def __enter__(self):
        if not self.quiet:
            from rich.live import Live
            self.live = Live(self._table(), console=self.console, refresh_per_second=8, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)

    def _table(self):
        from rich.table import Table
        t = Table(title="replay (last 15 minutes)", expand=False)
        for c in ("minute (UTC)", "at risk", "liquidations", "forced notional", "recorded -> margin price"):
            t.add_column(c, justify="right" if c != "recorded -> margin price" else "left")
        for r in self.rows[-15:]:
            t.add_row(*r)
        return t

    def update(self, info: dict) -> None:
        prices = "  ".join(f"{k} {a:.6g}->{b:.6g}" for k, (a, b) in info["prices"].items())
        self.rows.append((info["ts"].strftime("%H:%M"), f"{info['at_risk']}/{info['accounts']}",
                          str(info["liquidations"]), f"{info['forced_notional']:,.0f}", prices))
        if self.live is not None:
            self.live.update(self._table())


def _summary(console, res, out: Path) -> None:
    from rich.table import Table

    s = res.manifest["summary"]
    t = Table(title=f"run {res.run_id} -> {out}")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("liquidations", str(s["liquidations"]))
    t.add_row("real accounts liquidated", f"{s['accounts_liquidated']:,.0f}")
    t.add_row("forced notional (USD)", f"{s['forced_notional']:,.0f}")
    t.add_row("ADL events", str(s["adl"]))
    t.add_row("bad debt (USD)", f"{s['bad_debt']:,.0f}")
    t.add_row("first liquidation", str(s["first_liquidation"]))
    for k, v in s.get("by_cohort", {}).items():
        t.add_row(f"  cohort {k}", str(v))
    for k, v in s.get("max_impact_pct", {}).items():
        t.add_row(f"  max impact {k}", f"{v:.3f} %")
    console.print(t)
    for n in res.manifest.get("price_notes", []):
        console.print(f"[yellow]note:[/] {n}")


def _compare(args, console) -> int:
    from .compare import compare_runs

    try:
        c = compare_runs(Path(args.compare[0]), Path(args.compare[1]))
    except FileNotFoundError as e:
        print(f"crashlab replay --compare: {e}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(c, indent=2, sort_keys=True, default=str))
        return 0
    from rich.table import Table

    tot = c["total"]
    t = Table(title=f"avoided: {c['run_a']} (A) -> {c['run_b']} (B)")
    t.add_column("measure")
    t.add_column("A - B", justify="right")
    t.add_row("liquidations avoided", str(tot["liquidations_avoided"]))
    t.add_row("real accounts avoided", f"{tot['accounts_avoided']:,.0f}")
    t.add_row("forced notional avoided (USD)", f"{tot['forced_notional_avoided']:,.0f}")
    for k, v in tot["max_price_impact_avoided_pct"].items():
        t.add_row(f"max price impact avoided {k}", f"{v:.3f} pp")
    t.add_row("first liquidation A / B", f"{tot['first_liquidation_a']} / {tot['first_liquidation_b']}")
    console.print(t)
    for name, key in (("by_cohort", "cohort"), ("by_minute", "minute")):
        rows = [r for r in c[name] if r["liquidations_avoided"] or r["forced_notional_avoided"]]
        if not rows:
            continue
        tt = Table(title=name.replace("_", " "))
        for col in (key, "liquidations_avoided", "accounts_avoided", "forced_notional_avoided"):
            tt.add_column(col, justify="right")
        for r in rows:
            tt.add_row(str(r[key]), str(r["liquidations_avoided"]), f"{r['accounts_avoided']:,.0f}",
                       f"{r['forced_notional_avoided']:,.0f}")
        console.print(tt)
    return 0
