"""`crashlab fetch {binance-archive, ccxt, tardis, hyperliquid}` and `crashlab record`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..lake import Lake
from ..paths import DATA
from ..pipeline import FileReport, ingest_paths
from ..timeutil import parse_date, parse_duration, parse_ts
from .http import RetryPolicy

DEFAULT_CACHE = DATA / "downloads"

FETCH_EPILOG = """\
examples:
  crashlab fetch binance-archive --preset oct10 --dry-run          # what the crash study needs, and its size
  crashlab fetch binance-archive --preset oct10 --jobs 6
  crashlab fetch binance-archive --market um --type markPriceKlines --interval 1m \\
      --symbols BTCUSDT ETHUSDT --start 2025-10-10 --end 2025-10-11
  crashlab fetch ccxt --exchange binance --symbols BTC/USDT:USDT --what trades,mark,funding \\
      --start 2025-10-10T21:00 --end 2025-10-10T21:30
  TARDIS_API_KEY=... crashlab fetch tardis --exchange coinbase --type trades --symbols BTC-USD --dates 2025-10-10
  crashlab fetch hyperliquid --kind fills --dates 2025-10-10 --hours 20-23 --dry-run

Downloads go to data/downloads/ (--cache), partial files as *.part that the next run resumes.
Only complete, verified files are ingested; rerunning a command skips what is done.
"""

RECORD_EPILOG = """\
examples:
  crashlab record --exchange binance --symbols BTC/USDT ETH/USDT --every 1s --duration 10m
  crashlab record --exchange binanceusdm --symbols BTC/USDT:USDT --every 500ms --depth 50 --batch 5s

Writes book_snapshots (top --depth levels per side) and trades to the lake every --batch seconds;
a kill loses at most the last batch. Polling is REST (ccxt); a slow venue makes missed ticks, reported.
"""


def _symbols(values: list[str]) -> list[str]:
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def _policy(args: argparse.Namespace) -> RetryPolicy:
    return RetryPolicy(attempts=args.retries + 1, timeout=args.timeout)


def _print_ingest(console: Console, reports: list[FileReport]) -> int:
    bad = 0
    t = Table(title="ingest")
    for col in ("file", "status", "rows written", "quarantined"):
        t.add_column(col)
    for r in reports:
        if r.status == "error":
            bad += 1
        t.add_row(Path(r.path).name, r.status, str(r.rows_written), str(r.rows_quarantined))
    console.print(t)
    for r in reports:
        if r.status == "error":
            console.print(f"[red]error:[/] {r.message}")
    return bad


def _common(p: argparse.ArgumentParser, cache: bool = True) -> None:
    p.add_argument("--lake", default=None, help="lake folder (default: $CRASHLAB_LAKE or data/lake)")
    if cache:
        p.add_argument("--cache", default=str(DEFAULT_CACHE), help="download folder (default: data/downloads)")
        p.add_argument("--jobs", type=int, default=4, help="downloads at once (default 4)")
        p.add_argument("--retries", type=int, default=5, help="retries per file (default 5)")
        p.add_argument("--timeout", type=float, default=30.0, help="socket timeout in seconds (default 30)")
        p.add_argument("--no-ingest", action="store_true", help="download and verify only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")


# ---- binance-archive ---------------------------------------------------------------------------

def cmd_binance_archive(args: argparse.Namespace) -> int:
    from . import binance_archive as ba
    from .presets import PRESETS

    console = Console(stderr=True, soft_wrap=True)
    try:
        if args.preset:
            preset = PRESETS[args.preset]
            files = preset.files()
            console.print(f"preset [bold]{preset.name}[/]: {preset.description}")
        else:
            missing = [n for n in ("market", "type", "symbols", "start") if not getattr(args, n)]
            if missing:
                console.print(f"[red]error:[/] need --{', --'.join(missing)} (or --preset)")
                return 2
            files = ba.plan(args.market, args.type, _symbols(args.symbols), parse_date(args.start),
                            parse_date(args.end or args.start), args.interval)
    except (ba.PlanError, ValueError) as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    policy = _policy(args)
    console.print(f"{len(files)} files planned from {args.base_url}")
    if args.preset or args.dry_run:
        total, absent = ba.estimate(files, args.base_url, policy=policy, jobs=max(args.jobs, 8))
        console.print(
            f"download size: [bold]{total / 1e6:,.1f} MB[/] in {len(files) - len(absent)} files"
            + (f"; {len(absent)} not on the server (not published?)" if absent else "")
        )
        for f in absent[:10]:
            console.print(f"  not on server: {f.url_path}")
        if args.dry_run:
            return 0
    res = ba.fetch_files(files, args.base_url, Path(args.cache), jobs=args.jobs, verify=not args.no_verify,
                         policy=policy, show_progress=not args.no_progress, log=lambda s: console.print(f"  {s}"))
    console.print(f"downloaded {len(res.downloaded)}, cached {len(res.cached)}, not published {len(res.missing)}, "
                  f"failed {len(res.failed)} ({res.bytes / 1e6:,.1f} MB)")
    for f, msg in res.missing:
        console.print(f"[yellow]missing:[/] {msg}")
    for f, msg in res.failed:
        console.print(f"[red]failed:[/] {msg}")
    bad = len(res.failed)
    if not args.no_ingest and res.ready:
        bad += _print_ingest(console, ba.ingest_ready(res.ready, Lake.open(args.lake)))
    return 1 if bad else 0


# ---- ccxt ----------------------------------------------------------------------------------------

def cmd_ccxt(args: argparse.Namespace) -> int:
    from . import ccxt_pull

    console = Console(stderr=True, soft_wrap=True)
    whats = [w.strip() for w in args.what.split(",") if w.strip()]
    bad = [w for w in whats if w not in ccxt_pull.WHAT]
    if bad:
        console.print(f"[red]error:[/] unknown --what {bad}; use {','.join(ccxt_pull.WHAT)}")
        return 2
    try:
        start, end = parse_ts(args.start), parse_ts(args.end)
        ex = ccxt_pull.make_exchange(args.exchange)
        lake = Lake.open(args.lake)

        def on_page(rep: ccxt_pull.PullReport) -> None:
            if not args.no_progress:
                console.print(f"  {rep.stream.what} {rep.stream.symbol}: page {rep.pages}, {rep.rows_written} rows")

        puller = ccxt_pull.Puller(ex, lake, limit=args.limit, retries=args.retries, on_page=on_page,
                                  log=lambda s: console.print(f"  [yellow]{s}[/]"))
    except (ccxt_pull.FetchError, ValueError) as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    s_ms, e_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    failed = unsupported = ok = 0
    t = Table(title=f"ccxt {args.exchange} {start:%Y-%m-%d %H:%M}–{end:%Y-%m-%d %H:%M} UTC")
    for col in ("what", "symbol", "pages", "rows written", "status"):
        t.add_column(col)
    for sym in _symbols(args.symbols):
        for what in whats:
            tf = args.timeframe if what in ("ohlcv", "mark", "index") else (args.oi_period if what == "open_interest" else None)
            stream = ccxt_pull.Stream(ex.id, what, sym, tf)
            try:
                rep = puller.pull(stream, s_ms, e_ms)
            except ccxt_pull.FetchError as e:
                failed += 1
                console.print(f"[red]error:[/] {e}")
                t.add_row(what, sym, "", "", "error")
                continue
            if rep.status == "unsupported":
                unsupported += 1
                console.print(f"[yellow]not available:[/] {rep.message}")
            else:
                ok += 1
                if rep.resumed_from:
                    console.print(f"  {what} {sym}: resumed after a committed page ending {rep.resumed_from['pos']}")
            t.add_row(what, sym, str(rep.pages), str(rep.rows_written), rep.status)
    console.print(t)
    return 1 if failed or not ok else 0


# ---- tardis ----------------------------------------------------------------------------------------

def cmd_tardis(args: argparse.Namespace) -> int:
    from . import tardis

    console = Console(stderr=True, soft_wrap=True)
    try:
        days = tardis.parse_dates(args.dates)
        files = tardis.plan(args.exchange, _symbols(args.type), _symbols(args.symbols), days)
        key = os.environ.get(args.api_key_env) or None
        tardis.check_access(files, key)
    except (tardis.PlanError, ValueError) as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    if not key:
        console.print("no API key: fetching free first-of-month files only")
    res = tardis.fetch_files(files, args.base_url, Path(args.cache), api_key=key, jobs=args.jobs, policy=_policy(args),
                             show_progress=not args.no_progress, log=lambda s: console.print(f"  {s}"))
    console.print(f"downloaded {len(res.downloaded)}, cached {len(res.cached)}, missing {len(res.missing)}, failed {len(res.failed)}")
    for _, msg in res.missing + res.failed:
        console.print(f"[red]failed:[/] {msg}")
    bad = len(res.failed) + len(res.missing)
    if not args.no_ingest and res.ready:
        bad += _print_ingest(console, ingest_paths([p for _, p in res.ready], Lake.open(args.lake)))
    return 1 if bad else 0


# ---- hyperliquid --------------------------------------------------------------------------------------

def cmd_hyperliquid(args: argparse.Namespace) -> int:
    from . import hyperliquid_s3 as hl
    from .tardis import parse_dates

    console = Console(stderr=True, soft_wrap=True)
    try:
        objs = hl.plan(args.kind, parse_dates(args.dates), hl.parse_hours(args.hours), _symbols(args.coins or []))
    except ValueError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    cache = Path(args.cache)
    if args.dry_run:
        console.print(f"{len(objs)} objects (requester-pays: billed to your AWS account):")
        for o in objs:
            print(" ".join(hl.command(o, hl.local_path(cache, o))))
        return 0
    try:
        aws = hl.check(objs, cache)
    except hl.S3Unavailable as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    done, failed = hl.fetch(objs, cache, aws=aws, log=None if args.no_progress else (lambda s: console.print(f"  {s}")))
    for _, msg in failed:
        console.print(f"[red]failed:[/] {msg}")
    bad = len(failed)
    if not args.no_ingest and done:
        bad += _print_ingest(console, ingest_paths([p for _, p in done], Lake.open(args.lake)))
    return 1 if bad else 0


# ---- record ---------------------------------------------------------------------------------------------

def cmd_record(args: argparse.Namespace) -> int:
    import ccxt

    from .ccxt_pull import FetchError, make_exchange
    from .recorder import RecordConfig, Recorder

    console = Console(stderr=True, soft_wrap=True)
    try:
        cfg = RecordConfig(
            symbols=_symbols(args.symbols), every=parse_duration(args.every).total_seconds(),
            duration=parse_duration(args.duration).total_seconds(), depth=args.depth,
            batch_every=parse_duration(args.batch).total_seconds(), trades=not args.no_trades,
        )
        ex = make_exchange(args.exchange)
        rec = Recorder(ex, Lake.open(args.lake), cfg, log=lambda s: console.print(f"  [yellow]{s}[/]"))
        console.print(f"recording {', '.join(cfg.symbols)} on {ex.id} every {cfg.every:g}s for {cfg.duration:g}s "
                      f"(batches of {cfg.batch_every:g}s); Ctrl-C stops after writing what is buffered")
        try:
            rep = rec.run()
        except KeyboardInterrupt:
            from .recorder import RecordReport

            rep = RecordReport()
            with rec.lake.lock():
                rec.flush(rep)
    except (FetchError, ValueError, ccxt.BadSymbol) as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    console.print(f"{rep.polls} polls, {rep.snapshots} snapshots, {rep.trades} trades in {rep.batches} batches; "
                  f"{rep.missed_ticks} missed ticks, {len(rep.errors)} errors")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    fetch = sub.add_parser("fetch", help="download archives / pull histories into the lake",
                           description="Acquire real data over the network, resumably, verified, into the lake.",
                           epilog=FETCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = fetch.add_subparsers(dest="source", metavar="SOURCE", required=True)

    from .binance_archive import DEFAULT_BASE_URL as BINANCE_URL, INTERVALS, TYPES
    from .presets import PRESETS

    p = fsub.add_parser("binance-archive", help="Binance public data zips (data.binance.vision), checksummed",
                        epilog=FETCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named plan (oct10: the 10-11 Oct 2025 crash)")
    p.add_argument("--market", choices=["spot", "um", "cm"], help="spot, um (USDⓈ-M) or cm (COIN-M)")
    p.add_argument("--type", choices=TYPES, help="archive data type")
    p.add_argument("--interval", choices=INTERVALS, help="for klines and *PriceKlines")
    p.add_argument("--symbols", nargs="+", default=[], help="Binance symbols: BTCUSDT BTCUSD_PERP (or comma list)")
    p.add_argument("--start", help="first day, YYYY-MM-DD (UTC)")
    p.add_argument("--end", help="last day, inclusive (default: --start)")
    p.add_argument("--base-url", default=BINANCE_URL, help=f"archive root (default {BINANCE_URL})")
    p.add_argument("--no-verify", action="store_true", help="accept files without a .CHECKSUM (not recommended)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its download size, fetch nothing")
    _common(p)
    p.set_defaults(func=cmd_binance_archive)

    from .ccxt_pull import WHAT

    p = fsub.add_parser("ccxt", help="histories through ccxt, paged per venue, resumable",
                        epilog=FETCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exchange", required=True, help="ccxt id: binance, binanceusdm, okx, bybit, ...")
    p.add_argument("--symbols", nargs="+", required=True, help="ccxt symbols: BTC/USDT BTC/USDT:USDT")
    p.add_argument("--start", required=True, help="UTC, e.g. 2025-10-10T21:00")
    p.add_argument("--end", required=True, help="UTC, exclusive")
    p.add_argument("--what", default="trades", help=f"comma list of {','.join(WHAT)} (default trades)")
    p.add_argument("--timeframe", default="1m", help="candle interval for ohlcv/mark/index (default 1m)")
    p.add_argument("--oi-period", default="5m", help="open interest period (default 5m)")
    p.add_argument("--limit", type=int, default=1000, help="rows per request (default 1000)")
    p.add_argument("--retries", type=int, default=5, help="retries on rate limits / network errors (default 5)")
    _common(p, cache=False)
    p.set_defaults(func=cmd_ccxt)

    from .tardis import DATA_TYPES, DEFAULT_BASE_URL as TARDIS_URL, KEY_ENV

    p = fsub.add_parser("tardis", help="Tardis.dev CSV datasets (key in $TARDIS_API_KEY; else 1st-of-month only)",
                        epilog=FETCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exchange", required=True, help="Tardis id: binance, binance-futures, binance-delivery, coinbase...")
    p.add_argument("--type", nargs="+", required=True, help=f"data types: {', '.join(DATA_TYPES)}")
    p.add_argument("--symbols", nargs="+", required=True, help="e.g. BTCUSDT BTC-USD")
    p.add_argument("--dates", nargs="+", required=True, help="days: 2025-10-10, 2025-10-09..2025-10-11, comma lists")
    p.add_argument("--base-url", default=TARDIS_URL, help=f"default {TARDIS_URL}")
    p.add_argument("--api-key-env", default=KEY_ENV, help=f"environment variable holding the key (default {KEY_ENV})")
    _common(p)
    p.set_defaults(func=cmd_tardis)

    p = fsub.add_parser("hyperliquid", help="Hyperliquid S3 archives (requester-pays: needs your AWS credentials)",
                        epilog=FETCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=["fills", "l2book"], default="fills", help="node_fills_by_block or l2Book")
    p.add_argument("--dates", nargs="+", required=True, help="days: 2025-10-10 or 2025-10-10..2025-10-11")
    p.add_argument("--hours", default="all", help="UTC hours: all, 20-23, 21 (default all)")
    p.add_argument("--coins", nargs="+", help="for l2book: BTC ETH SOL")
    p.add_argument("--dry-run", action="store_true", help="print the aws commands, fetch nothing")
    _common(p)
    p.set_defaults(func=cmd_hyperliquid)

    r = sub.add_parser("record", help="record live order books and trades into the lake",
                       description="Poll order-book snapshots and trades through ccxt at a fixed cadence.",
                       epilog=RECORD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--exchange", required=True, help="ccxt id")
    r.add_argument("--symbols", nargs="+", required=True, help="ccxt symbols")
    r.add_argument("--every", default="1s", help="poll cadence (default 1s)")
    r.add_argument("--duration", default="10m", help="how long (default 10m)")
    r.add_argument("--depth", type=int, default=20, help="book levels per side (default 20)")
    r.add_argument("--batch", default="10s", help="commit every (default 10s): the most a kill loses")
    r.add_argument("--no-trades", action="store_true", help="books only")
    _common(r, cache=False)
    r.set_defaults(func=cmd_record)
