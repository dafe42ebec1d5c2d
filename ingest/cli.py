"""`crashlab ingest` and `crashlab catalog`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .catalog import catalog
from .detect import expand_paths
from .formats.base import MAX_MALFORMED, Options, check_max_malformed
from .lake import Lake
from .pipeline import ingest_paths, report_dict

INGEST_EPILOG = """\
examples:
  crashlab ingest ../shared/data/real/tardis                  # every Tardis CSV in a folder
  crashlab ingest ../shared/data/real --jobs 2                # everything, two processes
  crashlab ingest ../shared/data/real/binance-vision/futures-um-price-klines-5m --price-type mark
  crashlab ingest ../shared/data/real/usde/usde_minute_binance.parquet \\
      --venue binance --market spot --symbol USDE/USDT --price-type trade --interval 1m
  crashlab ingest odd.csv.gz --max-malformed 0.9              # keep a badly damaged file's good lines

Formats are detected from the file name and first line (Tardis CSV, Binance public-data archives,
Hyperliquid lz4, Uniswap pool Parquet, generic OHLCV with --venue/--market/--symbol). A file that
was ingested before (same sha256) is skipped.

For every file, rows read = rows written + rows quarantined, or the file is refused with its cause
and nothing of it is written. Rows that fail validation, and malformed lines (an extra field,
undecodable bytes, a stray carriage return, NUL bytes), go to the `quarantine` table with their
file line (header = line 1) and a reason: `crashlab sql "SELECT * FROM quarantine"`. Each source
is listed in the `manifest` table. A file whose malformed lines are more than half of its lines
(--max-malformed, default 0.5) is refused as a whole, as is a file that is not what its name says
(0 bytes, a .gz that is not gzip, a .zip that is not a zip, a truncated archive). Exit status is
1 if any file was refused or failed.

--jobs N ingests N files at once in worker processes; they hold this process's lock on the lake
and die with it, so an ingest killed at any moment leaves nothing a reader sees, and running it
again leaves exactly the lake an uninterrupted run leaves.
"""

CATALOG_EPILOG = """\
examples:
  crashlab catalog
  crashlab catalog --format json > catalog.json
  crashlab catalog --table trades --gap 10m
"""


def _share(text: str) -> float:
    """`--max-malformed`, checked where it enters (argparse prints the message and exits 2)."""
    try:
        return check_max_malformed(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a share from 0 to 1 (e.g. 0.5: refuse a file when more than half of its lines are "
            "malformed; 0 refuses any malformed line, 1 never refuses)"
        ) from None


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes (a whole number, 1 or more)")
    return n


def _lake(args: argparse.Namespace) -> Lake:
    return Lake.open(args.lake)


def cmd_ingest(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    lake = _lake(args)
    options = Options(
        price_type=args.price_type, venue=args.venue, market=args.market, symbol=args.symbol,
        interval=args.interval, verify_checksum=not args.no_checksum, max_malformed=args.max_malformed,
    )
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        console.print(f"[red]error:[/] no such file or folder: {', '.join(missing)}")
        return 2
    files = expand_paths([Path(p) for p in args.paths])
    if not files:
        console.print("[yellow]nothing to ingest[/] (no data files under the given paths)")
        return 0
    with Progress(
        TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console, transient=True, disable=args.quiet,
    ) as bar:
        task = bar.add_task("", total=len(files))

        def tick(rep):
            bar.update(task, advance=1, description=Path(rep.path).name)

        def rows(path: str, n: int) -> None:
            bar.update(task, description=f"{Path(path).name}: {n:,} rows read")

        reports = ingest_paths(files, lake, options, jobs=args.jobs, progress=tick, rows_progress=rows)
    if args.format == "json":
        print(json.dumps([report_dict(r) for r in reports], indent=2))
    else:
        t = Table(title=f"ingest into {lake.root}", show_lines=False)
        cols = [("file", "left"), ("status", "left"), ("format", "left"), ("read", "right"), ("written", "right"),
                ("quarantined", "right"), ("first ts", "left"), ("last ts", "left")]
        refused = [r for r in reports if r.status == "error"]
        for col, just in cols + ([("why refused", "left")] if refused else []):
            t.add_column(col, justify=just, overflow="fold", max_width=44 if col == "why refused" else None,  # type: ignore[arg-type]
                         no_wrap=col in ("first ts", "last ts", "read", "written", "quarantined", "status"))
        for r in reports:
            style = {"written": "green", "already ingested": "dim", "error": "red"}.get(r.status, "")
            t.add_row(
                Path(r.path).name, f"[{style}]{_STATUS.get(r.status, r.status)}[/]", r.format,
                f"{r.rows_read:,}", f"{r.rows_written:,}",
                f"[yellow]{r.rows_quarantined:,}[/]" if r.rows_quarantined else "0",
                r.first_ts.strftime("%Y-%m-%d %H:%M:%S") if r.first_ts else "",
                r.last_ts.strftime("%Y-%m-%d %H:%M:%S") if r.last_ts else "",
                *([_cause(r)] if refused else []),
            )
        _console().print(t)
        n = {s: sum(r.status == s for r in reports) for s in ("written", "already ingested", "error")}
        q = sum(r.rows_quarantined for r in reports)
        console.print(
            f"{n['written']} written, {n['already ingested']} already ingested, {n['error']} refused "
            f"(nothing of a refused file is written); "
            f"{sum(r.rows_written for r in reports):,} rows written, {q:,} quarantined"
            + (" (see `crashlab sql \"SELECT * FROM quarantine\"`)" if q else "")
        )
    for r in reports:
        if r.status == "error":
            console.print(f"[red]refused:[/] {r.message}")
    return 1 if any(r.status == "error" for r in reports) else 0


#: How a report's status reads in the summary table (`error` stays the status in JSON).
_STATUS = {"error": "refused"}


def _cause(r) -> str:
    """The cause of a refusal in short: its first clause, without the file's path (the table's first
    column names the file; the whole message follows the table)."""
    if r.status != "error":
        return ""
    msg = r.message.splitlines()[0] if r.message else ""
    msg = msg[len(r.path) + 2:] if msg.startswith(r.path) else msg
    return msg.split(": ")[0]


def cmd_catalog(args: argparse.Namespace) -> int:
    from .timeutil import parse_duration

    lake = _lake(args)
    df = catalog(lake, gap=parse_duration(args.gap))
    if args.table:
        df = df.filter(pl.col("table") == args.table)
    if args.format == "json":
        print(df.with_columns(pl.col("first_ts", "last_ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")).write_json())
        return 0
    if args.format == "csv":
        sys.stdout.write(df.write_csv())
        return 0
    if df.height == 0:
        Console().print(f"the lake at {lake.root} is empty: try `crashlab ingest PATH` or `crashlab demo`")
        return 0
    t = Table(title=f"lake {lake.root}", caption="gaps: stretches with no row inside an instrument's span; compare with its usual spacing")
    for col in ["table", "venue", "market", "symbol", "rows", "first ts", "last ts", f"gaps >{args.gap}", "longest gap", "spacing"]:
        t.add_column(col, no_wrap=True, justify="right" if col in ("rows", "longest gap", "spacing") or col.startswith("gaps") else "left")
    for r in df.iter_rows(named=True):
        t.add_row(
            r["table"], r["venue"], r["market"], r["symbol"], f"{r['rows']:,}",
            r["first_ts"].strftime("%Y-%m-%d %H:%M"), r["last_ts"].strftime("%Y-%m-%d %H:%M"),
            f"[yellow]{r['gaps']}[/]" if r["gaps"] else "0", _dur(r["longest_gap_s"]), _dur(r["median_spacing_s"]),
        )
    _console().print(t)
    return 0


def _console() -> Console:
    """Tables stay readable when piped: no narrower than 140 columns."""
    c = Console()
    return c if c.is_terminal else Console(width=max(c.width, 140))


def _dur(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f}h"
    if s >= 60:
        return f"{s / 60:.1f}m"
    return f"{s:.3g}s"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest", help="ingest files or folders into the lake", epilog=INGEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    p.add_argument("--lake", help="lake folder (default: $CRASHLAB_LAKE or data/lake)")
    p.add_argument("--jobs", type=_jobs, default=1, metavar="N",
                   help="files ingested in parallel, in worker processes that die with this one (default 1)")
    p.add_argument("--price-type", choices=["trade", "mark", "index", "premium"], help="what a kline/bar file's prices are")
    p.add_argument("--venue", help="venue of a generic bars/prices file (e.g. binance)")
    p.add_argument("--market", help="market of a generic file: spot, perp, future, option")
    p.add_argument("--symbol", help="ccxt unified symbol of a generic file (e.g. USDE/USDT)")
    p.add_argument("--interval", help="bar interval of a generic bars file (e.g. 1m)")
    p.add_argument("--no-checksum", action="store_true", help="do not verify .CHECKSUM files beside zips")
    p.add_argument(
        "--max-malformed", type=_share, default=MAX_MALFORMED, metavar="SHARE",
        help=f"refuse a file whose malformed lines (extra field, undecodable bytes, stray CR, NUL bytes) are more "
        f"than this share of its lines, 0 to 1 (default {MAX_MALFORMED}: more than half; 0 refuses any, 1 none); "
        "below it they are quarantined and the rest is ingested",
    )
    p.add_argument("--format", choices=["table", "json"], default="table", help="summary format")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    c = sub.add_parser(
        "catalog", help="rows, time coverage and gaps per table and instrument", epilog=CATALOG_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--lake", help="lake folder (default: $CRASHLAB_LAKE or data/lake)")
    c.add_argument("--format", choices=["table", "json", "csv"], default="table")
    c.add_argument("--table", help="only this table")
    c.add_argument("--gap", default="5m", help="report gaps longer than this (default 5m)")
    c.set_defaults(func=cmd_catalog)
