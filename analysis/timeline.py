"""The minute-by-minute timeline in a terminal: one row per minute, one column per instrument.

The SQL (`sql/timeline.sql`) returns a long table (minute x instrument); this module folds it into
what a person reads: each instrument's price with its move coloured (red down, green up, bold for
big moves), the minute's wick, volume and taker imbalance, depth within the band and
liquidations when known, then the depeg basis and the markers of that minute. `play` reveals it
one minute at a time, like watching the night unfold.
"""

from __future__ import annotations

import time
from datetime import datetime

import polars as pl
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

COL_WIDTH = 30


def _num(v: float | None) -> str:
    """Compact human number: 1.23B, 45.6M, 7.8k, or a price with sensible digits."""
    if v is None:
        return "-"
    a = abs(v)
    for unit, n in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if a >= n:
            return f"{v / n:.3g}{unit}"
    return f"{v:.3g}" if a >= 1 else f"{v:.4g}"


def _price(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.1f}"
    if a >= 1:
        return f"{v:,.4g}" if a < 100 else f"{v:,.2f}"
    return f"{v:.5g}"


def _move_style(pct: float | None) -> str:
    if pct is None or abs(pct) < 0.005:
        return "dim"
    colour = "red" if pct < 0 else "green"
    if abs(pct) >= 5:
        return f"bold white on {'red3' if pct < 0 else 'green4'}"
    if abs(pct) >= 1:
        return f"bold {colour}"
    return colour


def _pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:+.{digits}f}%"


def instrument_key(row: dict) -> tuple[str, str, str]:
    return (row["venue"] or "", row["market"] or "", row["symbol"] or "")


def _cell(r: dict) -> Text:
    t = Text()
    t.append(_price(r["price"]), style="bold" if r.get("source") else "dim")
    t.append(" ")
    t.append(_pct(r["ret_pct"]), style=_move_style(r["ret_pct"]))
    if r["low_pct"] is not None and r["low_pct"] <= -2 and (r["ret_pct"] is None or r["low_pct"] < r["ret_pct"] - 1):
        t.append(f" wick {r['low_pct']:+.1f}%", style=_move_style(r["low_pct"]))
    extra = []
    if r["quote_volume"]:
        extra.append(("vol " + _num(r["quote_volume"]), "dim"))
    if r["imbalance"] is not None:
        extra.append((f"imb {r['imbalance']:+.2f}", "red" if r["imbalance"] < -0.3 else "green" if r["imbalance"] > 0.3 else "dim"))
    if r["bid_depth"] is not None or r["ask_depth"] is not None or r["depth_flag"]:
        bid = "stale?" if r["bid_depth"] is None and r["depth_flag"] else _num(r["bid_depth"])
        extra.append((f"depth b {bid} a {_num(r['ask_depth'])}", "cyan"))
    if r["liq_quote"]:
        extra.append(("liq " + _num(r["liq_quote"]), "magenta"))
    if r["cum_ret_pct"] is not None:
        extra.append((f"cum {_pct(r['cum_ret_pct'], 1)}", _move_style(r["cum_ret_pct"])))
    if extra:
        t.append("\n")
        for i, (s, style) in enumerate(extra):
            if i:
                t.append("  ")
            t.append(s, style=style)
    return t


def instruments(df: pl.DataFrame) -> list[tuple[str, str, str]]:
    keys = df.filter(pl.col("symbol").is_not_null()).select("venue", "market", "symbol").unique()
    return [tuple(r) for r in keys.sort("venue", "market", "symbol").iter_rows()]  # type: ignore[misc]


def build_table(df: pl.DataFrame, title: str = "", upto: int | None = None, last: int | None = None) -> Table:
    """The wide table: minutes as rows. `upto` shows only the first n minutes, `last` the last n of those."""
    insts = instruments(df)
    minutes = df.select("ts").unique().sort("ts")["ts"].to_list()
    if upto is not None:
        minutes = minutes[:upto]
    if last is not None:
        minutes = minutes[-last:]
    has_depeg = df["depeg_pct"].drop_nulls().len() > 0
    table = Table(title=title or None, show_lines=True, header_style="bold", expand=False, pad_edge=False)
    table.add_column("UTC", style="bold", no_wrap=True)
    for venue, market, symbol in insts:
        table.add_column(f"{symbol}\n[dim]{venue} {market}[/]", justify="left", no_wrap=True, min_width=COL_WIDTH)
    if has_depeg:
        table.add_column("depeg\n[dim]vs 1 / vs pool[/]", justify="right", no_wrap=True, min_width=13)
    table.add_column("markers", overflow="fold", min_width=30, max_width=60)
    by_min: dict[datetime, dict[tuple[str, str, str], dict]] = {}
    meta: dict[datetime, dict] = {}
    for r in df.iter_rows(named=True):
        by_min.setdefault(r["ts"], {})[instrument_key(r)] = r
        meta[r["ts"]] = r
    for m in minutes:
        cells: list[Text | str] = [m.strftime("%H:%M") if m.second == 0 else m.strftime("%H:%M:%S")]
        for k in insts:
            r = by_min.get(m, {}).get(k)
            cells.append(_cell(r) if r else Text("-", style="dim"))
        g = meta[m]
        if has_depeg:
            dt = Text()
            dt.append(_pct(g["depeg_pct"]), style=_move_style(g["depeg_pct"]))
            if g["depeg_low_pct"] is not None and g["depeg_low_pct"] < (g["depeg_pct"] or 0) - 0.5:
                dt.append(f"\nlow {_pct(g['depeg_low_pct'], 1)}", style=_move_style(g["depeg_low_pct"]))
            if g["depeg_vs_pool_pct"] is not None:
                dt.append(f"\npool {_pct(g['depeg_vs_pool_pct'])}", style="dim")
            cells.append(dt)
        cells.append(Text(g["markers"] or "", style="yellow"))
        table.add_row(*cells)
    return table


def width_needed(df: pl.DataFrame) -> int:
    """Columns this wide keep every instrument readable; narrower terminals wrap the lines."""
    return 8 + (COL_WIDTH + 3) * len(instruments(df)) + 16 + 62


def fit(console: Console | None, df: pl.DataFrame) -> Console:
    console = console or Console()
    need = width_needed(df)
    if console.width < need:
        return Console(width=need, force_terminal=console.is_terminal, color_system=console.color_system or None)
    return console


def render(df: pl.DataFrame, console: Console | None = None, title: str = "") -> None:
    console = fit(console, df)
    if df.height == 0:
        console.print("[yellow]no rows[/] (is the window inside the lake's data? try `crashlab catalog`)")
        return
    console.print(build_table(df, title=title))


def play(df: pl.DataFrame, speed: float = 0.5, console: Console | None = None, title: str = "", rows: int | None = None) -> None:
    """Reveal the timeline minute by minute; `speed` seconds per minute; keeps the last `rows` minutes on screen."""
    console = fit(console, df)
    n = df.select("ts").n_unique()
    if n == 0:
        render(df, console, title)
        return
    keep = rows or max(3, (console.size.height - 8) // 4)
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        for i in range(1, n + 1):
            live.update(Group(build_table(df, title=f"{title}  [{i}/{n}]", upto=i, last=keep)))
            if i < n:
                time.sleep(speed)
