"""What the lake holds: rows and time coverage per table and instrument, and the holes in it.

A gap is a stretch longer than `gap` with no row inside an instrument's covered span; sparse
tables (funding every 8 h, 5-minute metrics) naturally have them, so the catalog reports each
table's typical spacing beside its gaps rather than calling every gap a defect.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb
import polars as pl

from . import schema
from .lake import Lake


def catalog(lake: Lake, gap: timedelta = timedelta(minutes=5)) -> pl.DataFrame:
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    parts: list[pl.DataFrame] = []
    gap_us = int(gap.total_seconds() * 1_000_000)
    for table in schema.TABLES:
        files = lake.files(table)
        if not files:
            continue
        paths = [str(f) for f in files]
        keys = "venue, market, symbol" if table != "markers" else "'-' AS venue, '-' AS market, '-' AS symbol"
        q = f"""
        WITH src AS (SELECT {keys}, ts FROM read_parquet($paths)),
        d AS (
          SELECT venue, market, symbol, ts,
                 epoch_us(ts) - epoch_us(lag(ts) OVER (PARTITION BY venue, market, symbol ORDER BY ts)) AS dt
          FROM src
        )
        SELECT '{table}' AS "table", venue, market, symbol, count(*) AS rows,
               min(ts) AS first_ts, max(ts) AS last_ts,
               count(*) FILTER (WHERE dt > {gap_us}) AS gaps,
               coalesce(max(dt) / 1e6, 0) AS longest_gap_s,
               coalesce(median(dt) / 1e6, 0) AS median_spacing_s
        FROM d GROUP BY venue, market, symbol ORDER BY venue, market, symbol
        """
        parts.append(pl.from_arrow(con.sql(q, params={"paths": paths}).to_arrow_table()))
    con.close()
    if not parts:
        return pl.DataFrame(
            schema={
                "table": pl.String, "venue": pl.String, "market": pl.String, "symbol": pl.String,
                "rows": pl.Int64, "first_ts": pl.Datetime("us", "UTC"), "last_ts": pl.Datetime("us", "UTC"),
                "gaps": pl.Int64, "longest_gap_s": pl.Float64, "median_spacing_s": pl.Float64,
            }
        )
    return pl.concat(parts, how="vertical_relaxed")


def gap_list(lake: Lake, table: str, gap: timedelta = timedelta(minutes=5)) -> pl.DataFrame:
    """Each gap longer than `gap`: where it starts and ends, per instrument."""
    files = [str(f) for f in lake.files(table)]
    if not files:
        return pl.DataFrame()
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    gap_us = int(gap.total_seconds() * 1_000_000)
    df = con.sql(
        f"""
        SELECT venue, market, symbol, prev_ts AS gap_start, ts AS gap_end,
               (epoch_us(ts) - epoch_us(prev_ts)) / 1e6 AS seconds
        FROM (SELECT venue, market, symbol, ts,
                     lag(ts) OVER (PARTITION BY venue, market, symbol ORDER BY ts) AS prev_ts
              FROM read_parquet($paths))
        WHERE epoch_us(ts) - epoch_us(prev_ts) > {gap_us}
        ORDER BY venue, market, symbol, gap_start
        """,
        params={"paths": files},
    ).to_arrow_table()
    df = pl.from_arrow(df)
    con.close()
    return df
