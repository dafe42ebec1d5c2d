"""The lake's canonical tables: one Arrow schema per table, defined here and nowhere else.

Every importer, the simulator and the replay's derived tables build their output against these
schemas, so a column means the same thing wherever it is read. See `../shared/DESIGN.md`
("The lake: tables") for the contract; columns added beyond it are marked below.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
#: Text is Arrow `large_string`: what Polars, the lake's writer, stores (see `lake.py`). DuckDB and
#: Polars read it as plain text; pyarrow readers get `large_string`, which casts to `string` freely.
TEXT = pa.large_string()

#: Venues the lake accepts. A venue becomes a directory name, so it must be one of these
#: (no free text from a file ever reaches the file system).
VENUES = frozenset(
    {
        "binance", "coinbase", "gemini", "hyperliquid", "okx", "bybit", "kraken", "deribit",
        "bitfinex", "gate", "htx", "bitget", "uniswap", "curve", "aave", "ethena", "onchain",
        "simulated-venue",
    }
)
MARKETS = frozenset({"spot", "perp", "future", "option", "pool", "index"})

# Columns every market-data table starts with. `source_id` (not in DESIGN.md's list) is the first
# 16 hex digits of the source file's sha256: it ties each row to its `manifest` entry.
_KEY = [
    ("event_id", pa.int64()),
    ("ts", TS),
    ("venue", TEXT),
    ("market", TEXT),
    ("symbol", TEXT),
    ("native_symbol", TEXT),
]
_TAIL = [("source", TEXT), ("source_id", TEXT)]


def _schema(*cols: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(n, t) for n, t in [*_KEY, *cols, *_TAIL]])


TABLES: dict[str, pa.Schema] = {
    "trades": _schema(
        ("local_ts", TS),
        ("trade_id", TEXT),
        ("side", TEXT),  # taker side: buy | sell | null (unknown)
        ("price", pa.float64()),
        ("amount", pa.float64()),  # base asset
        ("quote_amount", pa.float64()),  # price * amount (USD notional for inverse contracts)
        ("is_liquidation", pa.bool_()),  # null = the source does not say
    ),
    "book_snapshots": _schema(
        ("local_ts", TS),
        ("side", TEXT),  # bid | ask
        ("level", pa.int32()),  # 0 = best
        ("price", pa.float64()),
        ("amount", pa.float64()),
    ),
    "book_deltas": _schema(
        ("local_ts", TS),
        ("is_snapshot", pa.bool_()),
        ("side", TEXT),
        ("price", pa.float64()),
        ("amount", pa.float64()),  # 0 deletes the level
    ),
    "depth_bands": _schema(
        ("band_pct", pa.float64()),  # signed: -1 = bids within 1 % below the mid
        ("depth", pa.float64()),  # base
        ("notional", pa.float64()),  # quote
    ),
    "bars": _schema(
        ("interval", TEXT),
        ("price_type", TEXT),  # trade | mark | index | premium
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
        ("quote_volume", pa.float64()),
        ("trade_count", pa.int64()),
        ("taker_buy_volume", pa.float64()),
    ),
    "prices": _schema(
        ("price_type", TEXT),  # mark | index | oracle | pool | conversion_rate | last ...
        ("price", pa.float64()),
    ),
    "funding": _schema(("rate", pa.float64())),
    "open_interest": _schema(
        ("open_interest", pa.float64()),
        ("open_interest_value", pa.float64()),
    ),
    "liquidations": _schema(
        ("local_ts", TS),
        ("side", TEXT),  # side of the forced order: sell closes a long
        ("price", pa.float64()),
        ("amount", pa.float64()),
        ("quote_amount", pa.float64()),
        ("account", TEXT),
    ),
    # Markers carry no venue/market/symbol. `end_ts` (beyond DESIGN.md) closes a window marker
    # such as Binance's compensation window 21:36-22:16; null for point events.
    "markers": pa.schema(
        [
            pa.field("event_id", pa.int64()),
            pa.field("ts", TS),
            pa.field("end_ts", TS),
            pa.field("label", TEXT),
            pa.field("kind", TEXT),
            pa.field("source_url", TEXT),
            pa.field("source", TEXT),
            pa.field("source_id", TEXT),
        ]
    ),
}

#: Order of tables at equal timestamps in a replay stream: state that prices depend on
#: (books, reference prices) is applied before the trades and liquidations that happen at that ts.
TABLE_PRIORITY: dict[str, int] = {
    "markers": 0,
    "book_snapshots": 1,
    "book_deltas": 2,
    "depth_bands": 3,
    "prices": 4,
    "bars": 5,
    "funding": 6,
    "open_interest": 7,
    "trades": 8,
    "liquidations": 9,
}

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("source_id", TEXT),
        pa.field("sha256", TEXT),
        pa.field("path", TEXT),  # path or URL as given
        pa.field("format", TEXT),  # detected format, e.g. tardis.trades
        pa.field("decisions", TEXT),  # JSON: what was decided (ts unit, price type, venue...)
        pa.field("tables", TEXT),  # comma-separated tables written
        pa.field("rows_read", pa.int64()),
        pa.field("rows_written", pa.int64()),
        pa.field("rows_quarantined", pa.int64()),
        pa.field("first_ts", TS),
        pa.field("last_ts", TS),
        pa.field("ingested_at", TS),
        pa.field("tool_version", TEXT),
        pa.field("cursor", TEXT),  # resumable fetches keep their position here (JSON)
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_id", TEXT),
        pa.field("path", TEXT),
        pa.field("line", pa.int64()),  # 1-based line in the source file (header counts), null if n/a
        pa.field("reason", TEXT),
        pa.field("raw", TEXT),  # the row as read, for a human to look at
    ]
)


def empty(table: str) -> pa.Table:
    """An empty table with the canonical schema, for sources that yield no rows of a kind."""
    return TABLES[table].empty_table()


def _polars_schema(table: str) -> pl.Schema:
    return pl.from_arrow(TABLES[table].empty_table()).schema  # type: ignore[union-attr]


POLARS: dict[str, pl.Schema] = {t: _polars_schema(t) for t in TABLES}


def conform_frame(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """Reorder and cast a Polars frame to the canonical schema; a missing or extra column is a bug."""
    target = POLARS[table]
    missing = [n for n in target if n not in df.columns]
    extra = [c for c in df.columns if c not in target]
    if missing or extra:
        raise ValueError(f"{table}: columns missing {missing}, unexpected {extra}")
    return df.select(pl.col(n).cast(t) if df.schema[n] != t else pl.col(n) for n, t in target.items())
