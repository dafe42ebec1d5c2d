"""Small lakes written through the real pipeline, for the SQL tests (helpers; no tests here).

Every frame goes through `ingest_parsed`, so the lake on disk is exactly what an importer would
write: validated, with event ids, manifest and partitions.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from crashlab.ingest import schema
from crashlab.ingest.formats.base import Parsed
from crashlab.ingest.lake import Lake
from crashlab.ingest.pipeline import ingest_parsed

UTC = timezone.utc
T0 = datetime(2025, 10, 10, 21, 0, tzinfo=UTC)


def ts(minute: float, second: float = 0) -> datetime:
    return T0 + timedelta(minutes=minute, seconds=second)


def _frame(table: str, rows: list[dict]) -> pl.DataFrame:
    cols = [f.name for f in schema.TABLES[table] if f.name not in ("event_id", "source", "source_id")]
    base = pl.DataFrame(schema=pl.Schema(pl.from_arrow(schema.TABLES[table].empty_table()).select(cols).schema))
    df = pl.DataFrame([{c: r.get(c) for c in cols} for r in rows], schema=base.schema)
    return df.with_row_index("_row", offset=2).with_columns(pl.col("_row").cast(pl.Int64))


def add(lake: Lake, table: str, rows: list[dict], name: str = "") -> None:
    """Commit `rows` of `table` as one source (its id is a hash of the content)."""
    df = _frame(table, rows)
    digest = hashlib.sha256((table + name + df.write_csv()).encode()).hexdigest()
    parsed = Parsed(format=f"test.{table}", rows_read=df.height, tables={table: df})
    rep = ingest_parsed(lake, parsed, path=f"test://{table}/{name}", sha256=digest, source="test")
    assert rep.rows_quarantined == 0, rep


def trade(venue: str, market: str, symbol: str, t: datetime, price: float, amount: float, side: str = "buy",
          trade_id: int | None = None, liq: bool | None = None) -> dict:
    return {
        "ts": t, "local_ts": t, "venue": venue, "market": market, "symbol": symbol,
        "native_symbol": symbol.split(":")[0].replace("/", ""),
        "trade_id": None if trade_id is None else str(trade_id), "side": side, "price": price,
        "amount": amount, "quote_amount": price * amount, "is_liquidation": liq,
    }


def tree_checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under root (names relative), to prove a lake did not change."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }
