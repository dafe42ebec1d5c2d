"""`crashlab sql` and `crashlab timeline`: questions to the lake from a terminal."""

from __future__ import annotations

import argparse
import io
import json
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
from rich.console import Console
from rich.table import Table

from .db import DEFAULT_TIMEOUT_S, Limits, QueryError, QueryLimit, SQLRefused, connect, named_queries

SQL_EPILOG = """\
examples:
  crashlab sql --list                                         # the named queries and their parameters
  crashlab sql "SELECT venue, symbol, count(*) FROM trades GROUP BY ALL ORDER BY 3 DESC"
  crashlab sql --query lows --param start=2025-10-10T20:00 --param end=2025-10-10T23:00
  crashlab sql --query cross_venue --param start=2025-10-10T20:00 --param end=2025-10-10T22:00 \\
      --param ref=2025-10-10T20:45 --param asset=AVAX
  crashlab sql --query depth --param symbols=BTCUSDT --param start=2025-10-10T21:00 \\
      --param end=2025-10-10T21:30 --format csv --out depth.csv
  crashlab sql --query depeg --param start=2025-10-10T21:30 --param end=2025-10-10T22:30
  crashlab sql --file my_question.sql --format json

Views: trades, book_snapshots, book_deltas, depth_bands, bars, prices, funding, open_interest,
liquidations, markers, manifest, quarantine (times are UTC). The session is read-only: writes,
COPY, ATTACH, INSTALL/LOAD, SET and files outside the lake are refused. Use --out to save results.
A query stops with a message after --timeout seconds, or when the engine or the result needs more
than --memory-limit (exit code 1).
"""

TIMELINE_EPILOG = """\
examples:
  crashlab timeline --start 2025-10-10T21:10 --end 2025-10-10T21:30
  crashlab timeline --start 2025-10-10T21:15 --end 2025-10-10T21:25 --symbols AVAX,DOT
  crashlab timeline --start 2025-10-10T21:30 --end 2025-10-10T22:00 --symbols USDE --play --speed 0.3
  crashlab timeline --start 2025-10-10T20:45 --end 2025-10-10T22:30 --step 5m --format csv --out tl.csv

Each row is a minute (or --step). Per instrument: price and move (red down, green up), the
minute's wick, quote volume, taker imbalance (-1 all sells .. +1 all buys), depth within 1 % and
liquidations when the lake has them, cumulative move since --start; then the depeg basis of USDe
and the markers of that minute (● event, ▶ window opens, ◀ window closes).
"""


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lake", default=None, help="lake folder (default: $CRASHLAB_LAKE or data/lake)")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("--out", default=None, metavar="FILE", help="write the result to FILE (format from --format)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sql", help="ask the lake in SQL (read-only), or run a named forensic query",
        description="Run read-only DuckDB SQL over the lake, or one of the named forensic queries.",
        epilog=SQL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_output(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("sql", nargs="?", default=None, metavar="QUERY", help="SQL text")
    g.add_argument("--file", default=None, metavar="F", help="read the SQL from file F")
    g.add_argument("--query", default=None, metavar="NAME", help="run the named query NAME (see --list)")
    g.add_argument("--list", action="store_true", help="list the named queries")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="parameter of a named query (repeat)")
    p.add_argument("--max-rows", type=int, default=200, help="rows shown with --format table (default 200)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"stop a query that runs longer (default {DEFAULT_TIMEOUT_S:g}; 0 = no limit)")
    p.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="memory for the query engine and the result, e.g. 4GB (default: half the machine's memory)")
    p.set_defaults(func=cmd_sql)

    t = sub.add_parser(
        "timeline", help="the night minute by minute: prices, moves, depth, depeg, markers",
        description="Print (or --play) the minute-by-minute timeline of a window.",
        epilog=TIMELINE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_output(t)
    t.add_argument("--start", required=True, help="window start, UTC (e.g. 2025-10-10T21:10)")
    t.add_argument("--end", required=True, help="window end, UTC (exclusive)")
    t.add_argument("--step", default="1m", help="row width (default 1m)")
    t.add_argument("--symbols", default=None, help="instruments: symbols, BTCUSDT-style or base assets, comma-separated")
    t.add_argument("--venues", default=None, help="venues, comma-separated")
    t.add_argument("--top", type=int, default=6, help="instruments shown when --symbols is not given (by volume)")
    t.add_argument("--play", action="store_true", help="step through the timeline minute by minute")
    t.add_argument("--speed", type=float, default=0.5, help="seconds per minute with --play (default 0.5)")
    t.set_defaults(func=cmd_timeline)


# ---- output --------------------------------------------------------------------------------------
def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:
            return "NaN"
        a = abs(v)
        if a != 0 and (a >= 1e9 or a < 1e-4):
            return f"{v:.6g}"
        return f"{v:,.6g}" if a >= 1e6 else f"{v:.6g}"
    if isinstance(v, datetime):
        s = v.strftime("%Y-%m-%d %H:%M:%S.%f").rstrip("0").rstrip(".")
        return s
    return str(v)


def print_table(df: pl.DataFrame, console: Console, max_rows: int, title: str = "") -> None:
    t = Table(title=title or None, header_style="bold", show_edge=False, pad_edge=False)
    for name, dtype in df.schema.items():
        t.add_column(name, justify="right" if dtype.is_numeric() else "left", overflow="fold")
    for row in df.head(max_rows).iter_rows():
        t.add_row(*[_fmt(v) for v in row])
    console.print(t)
    more = df.height - max_rows
    if more > 0:
        console.print(f"[dim]... {more} more rows (use --format csv/json/parquet or --out FILE)[/]")
    else:
        console.print(f"[dim]{df.height} rows[/]")


def write(df: pl.DataFrame, fmt: str, out: str | None, console: Console, max_rows: int = 200, title: str = "") -> int:
    """Write `df` as asked; files are written here, by Python, never by DuckDB."""
    if out:
        path = Path(out)
        if fmt == "table":
            fmt = {".csv": "csv", ".json": "json", ".parquet": "parquet"}.get(path.suffix.lower(), "csv")
        if fmt == "csv":
            df.write_csv(path)
        elif fmt == "json":
            path.write_text(json.dumps(df.to_dicts(), default=str, indent=1) + "\n")
        else:
            df.write_parquet(path)
        Console(stderr=True).print(f"[green]wrote[/] {df.height} rows to {path}")
        return 0
    if fmt == "table":
        print_table(df, console, max_rows, title)
    elif fmt == "csv":
        sys.stdout.write(df.write_csv())
    elif fmt == "json":
        sys.stdout.write(json.dumps(df.to_dicts(), default=str, indent=1) + "\n")
    else:
        if sys.stdout.isatty():
            Console(stderr=True).print("[red]error:[/] parquet is binary: use --out FILE or redirect stdout")
            return 2
        buf = io.BytesIO()
        df.write_parquet(buf)
        sys.stdout.buffer.write(buf.getvalue())
    return 0


def _err(msg: str) -> None:
    """One plain line on stderr (no wrapping, no markup), so scripts can match it."""
    sys.stderr.write(msg.replace("\n", " ") + "\n")


def _params(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise QueryError(f"--param {it!r}: use KEY=VALUE")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _list(console: Console) -> int:
    t = Table(title="named queries (crashlab sql --query NAME --param k=v)", header_style="bold", show_lines=True)
    t.add_column("name", style="bold cyan", no_wrap=True)
    t.add_column("question")
    t.add_column("parameters")
    for q in named_queries().values():
        ps = "\n".join(f"{p.name} ({p.type}{', required' if p.default is None else ', ' + p.default})" for p in q.params)
        t.add_row(q.name, q.question, ps)
    console.print(t)
    return 0


# ---- commands ------------------------------------------------------------------------------------
def cmd_sql(args: argparse.Namespace) -> int:
    console = Console()
    err = Console(stderr=True)
    if args.list:
        return _list(console)
    if not (args.sql or args.file or args.query):
        err.print("[red]error:[/] give a QUERY, --file F or --query NAME (or --list)")
        return 2
    try:
        limits = Limits.parse(args.timeout, args.memory_limit)
        with connect(args.lake, limits) as db:
            if args.query:
                df = db.query(args.query, **_params(args.param))
                title = args.query
            else:
                text = Path(args.file).read_text(encoding="utf-8") if args.file else args.sql
                if args.param:
                    raise QueryError("--param is for named queries; in your own SQL write the values")
                df = db.sql(text)
                title = ""
    except SQLRefused as e:
        _err(str(e))
        return 2
    except QueryError as e:
        _err(f"error: {e}")
        return 2
    except QueryLimit as e:
        _err(f"error: {e}")
        return 1
    except duckdb.Error as e:
        _err(f"error: {str(e).splitlines()[0]}")
        return 1
    except OSError as e:
        _err(f"error: {e}")
        return 2
    return write(df, args.format, args.out, console, args.max_rows, title)


def cmd_timeline(args: argparse.Namespace) -> int:
    from . import timeline

    console = Console()
    params = {"start": args.start, "end": args.end, "step": args.step, "top": args.top}
    if args.symbols:
        params["symbols"] = args.symbols
    if args.venues:
        params["venues"] = args.venues
    try:
        with connect(args.lake) as db:
            df = db.query("timeline", **params)
    except QueryError as e:
        _err(f"error: {e}")
        return 2
    except duckdb.Error as e:
        _err(f"error: {str(e).splitlines()[0]}")
        return 1
    title = f"crashlab timeline {args.start} → {args.end} UTC (step {args.step})"
    if args.format != "table" or args.out:
        return write(df, args.format, args.out, console)
    if args.play:
        timeline.play(df, speed=args.speed, console=console, title=title)
    else:
        timeline.render(df, console, title=title)
    return 0
