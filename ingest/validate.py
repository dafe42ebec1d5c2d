"""The validation every source gets, whatever its format: one set of rules, one place.

A source unit (see `formats.base`) is rejected, with the first reason found, when any table row
made from it has: a missing or non-numeric timestamp, price or amount; NaN or infinity; a
non-positive price or amount (zero amounts are legal only as book-delta deletions); a timestamp
more than `DAY_SLACK` outside the file's day; an unknown side; a duplicate `event_id` (the later
unit is rejected); or, in a book snapshot, a best bid at or above the best ask.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone

import polars as pl

from .event_id import event_ids
from .formats.base import Parsed

#: Tardis splits files by arrival time, so exchange timestamps may fall a little before the day.
DAY_SLACK = timedelta(minutes=15)

_POSITIVE = {
    "trades": ["price", "amount"],
    "book_snapshots": ["price", "amount"],
    "liquidations": ["price", "amount"],
    "bars": ["open", "high", "low", "close"],
    "prices": ["price"],
}
_NON_NEGATIVE = {
    "book_deltas": ["price", "amount"],
    "depth_bands": ["depth", "notional"],
    "bars": ["volume"],
    "open_interest": ["open_interest"],
}
_FINITE = {"funding": ["rate"], "depth_bands": ["band_pct"]}
_SIDES = {
    "trades": ["buy", "sell"],
    "liquidations": ["buy", "sell"],
    "book_snapshots": ["bid", "ask"],
    "book_deltas": ["bid", "ask"],
}
_NOT_IN_ID = {"event_id", "source", "source_id", "local_ts", "symbol", "_row"}


def _reason_expr(table: str, df: pl.DataFrame, day_bounds: tuple[datetime, datetime] | None) -> pl.Expr:
    """An expression giving each row's first failure, or null."""
    checks: list[tuple[pl.Expr, str]] = [(pl.col("ts").is_null(), "missing or unreadable timestamp")]
    if day_bounds is not None:
        lo, hi = day_bounds
        checks.append(
            ((pl.col("ts") < lo) | (pl.col("ts") >= hi), "timestamp outside the file's day")
        )
    for c in _POSITIVE.get(table, []) + _NON_NEGATIVE.get(table, []) + _FINITE.get(table, []):
        if c not in df.columns:
            continue
        checks.append((pl.col(c).is_null(), f"missing or non-numeric {c}"))
        checks.append((pl.col(c).is_nan() | pl.col(c).is_infinite(), f"{c} is NaN or infinite"))
    for c in _POSITIVE.get(table, []):
        if c in df.columns:
            checks.append((pl.col(c) <= 0, f"non-positive {c}"))
    for c in _NON_NEGATIVE.get(table, []):
        if c in df.columns:
            checks.append((pl.col(c) < 0, f"negative {c}"))
    if table in _SIDES and "side" in df.columns:
        ok = pl.col("side").is_in(_SIDES[table])
        if table in ("trades", "liquidations"):
            ok = ok | pl.col("side").is_null()
        checks.append((~ok, "unknown side"))
    expr: pl.Expr = pl.lit(None, dtype=pl.String)
    for cond, reason in reversed(checks):
        expr = pl.when(cond.fill_null(False)).then(pl.lit(reason)).otherwise(expr)
    return expr


def _crossed_snapshots(df: pl.DataFrame) -> pl.DataFrame:
    keys = ["_row", "native_symbol", "ts"]
    best = df.group_by(keys).agg(
        pl.col("price").filter(pl.col("side") == "bid").max().alias("bid"),
        pl.col("price").filter(pl.col("side") == "ask").min().alias("ask"),
    )
    return best.filter(pl.col("bid") >= pl.col("ask")).select(
        "_row", pl.lit("crossed book: best bid at or above best ask").alias("reason")
    )


def validate(parsed: Parsed, namespace_source: str = "") -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    """Split a parsed source into rows to write (with `event_id`) and rejected units (`_row`, `reason`)."""
    day_bounds = None
    if parsed.day is not None:
        start = datetime.combine(parsed.day, time(0), tzinfo=timezone.utc)
        day_bounds = (start - DAY_SLACK, start + timedelta(days=1) + DAY_SLACK)
    bad_parts: list[pl.DataFrame] = [parsed.rejected.select("_row", "reason")]
    tables: dict[str, pl.DataFrame] = {}
    for table, df in parsed.tables.items():
        if df.height == 0:
            continue
        id_cols = parsed.id_columns.get(table) or [c for c in df.columns if c not in _NOT_IN_ID]
        df = df.with_columns(event_ids(df, id_cols, table), _reason_expr(table, df, day_bounds).alias("_reason"))
        bad_parts.append(df.filter(pl.col("_reason").is_not_null()).select("_row", pl.col("_reason").alias("reason")))
        if table == "book_snapshots":
            bad_parts.append(_crossed_snapshots(df.filter(pl.col("_reason").is_null())))
        tables[table] = df.drop("_reason")
    bad = pl.concat(bad_parts, how="vertical_relaxed").unique("_row", keep="first", maintain_order=True)
    # Duplicates: the first unit carrying an event_id keeps it, later units are rejected.
    dup_parts = []
    for table, df in tables.items():
        ok = df.join(bad.select("_row"), on="_row", how="anti")
        firsts = ok.group_by("event_id").agg(pl.col("_row").min().alias("_first"))
        dups = ok.join(firsts, on="event_id").filter(pl.col("_row") != pl.col("_first"))
        if dups.height:
            dup_parts.append(
                dups.group_by("_row").agg(pl.col("_first").min()).select(
                    "_row",
                    pl.format("duplicate event_id (same row as line {})", pl.col("_first")).alias("reason"),
                )
            )
    if dup_parts:
        bad = pl.concat([bad, *dup_parts], how="vertical_relaxed").unique("_row", keep="first", maintain_order=True)
    good = {t: df.join(bad.select("_row"), on="_row", how="anti") for t, df in tables.items()}
    return good, bad.sort("_row")
