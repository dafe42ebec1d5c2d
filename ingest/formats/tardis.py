"""Tardis.dev downloadable CSV files (`{exchange}_{data_type}_{YYYY-MM-DD}_{SYMBOL}.csv.gz`).

Data types and where they land:
  trades                    -> trades (taker side; `unknown` becomes null)
  liquidations              -> liquidations (side of the forced order)
  incremental_book_L2       -> book_deltas
  book_snapshot_25 / _5     -> book_snapshots (one row per level and side; empty levels skipped)
  quotes, book_ticker       -> book_snapshots, level 0 of each side present
  derivative_ticker         -> prices (mark, index, last), funding (rate), open_interest

Why these choices: Tardis timestamps are µs; the unit is still decided per row from its
magnitude and rows in another unit are rejected, so a mixed file never shifts prices by 1000×.
Tardis splits files by `local_timestamp`, so `Parsed.day` is the name's day and the validation's
slack absorbs exchange times a little before midnight. An exchange id without a mapping in
`symbols.TARDIS_EXCHANGES` refuses the whole file (no guess); a symbol that cannot be read, or an
exchange cell that is no exchange id at all (damage), is quarantined row by row. COIN-M (`binance-delivery`) and other inverse amounts are contracts:
base = contracts × size / price, quote_amount = contracts × size (USD).
Trades and liquidations share a header, so the data type comes from the file name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import polars as pl

from . import common as c
from .base import FormatError, Options, Parsed
from .symbols import UnknownExchange, UnknownSymbol, tardis_instrument

FORMAT = "tardis"
SOURCE = "tardis"

_KEY = ["exchange", "symbol", "timestamp", "local_timestamp"]
_TRADES = _KEY + ["id", "side", "price", "amount"]


def _snapshot_cols(n: int) -> list[str]:
    cols = list(_KEY)
    for i in range(n):
        cols += [f"asks[{i}].price", f"asks[{i}].amount", f"bids[{i}].price", f"bids[{i}].amount"]
    return cols


COLUMNS: dict[str, list[str]] = {
    "trades": _TRADES,
    "liquidations": _TRADES,
    "incremental_book_L2": _KEY + ["is_snapshot", "side", "price", "amount"],
    "book_snapshot_25": _snapshot_cols(25),
    "book_snapshot_5": _snapshot_cols(5),
    "quotes": _KEY + ["ask_amount", "ask_price", "bid_price", "bid_amount"],
    "book_ticker": _KEY + ["ask_amount", "ask_price", "bid_price", "bid_amount"],
    "derivative_ticker": _KEY
    + ["funding_timestamp", "funding_rate", "predicted_funding_rate", "open_interest", "last_price", "index_price", "mark_price"],
}

_TEXT = {"exchange", "symbol", "id", "side", "is_snapshot"}


def numeric_columns(columns: list[str]) -> dict[str, pl.DataType]:
    """The columns read as numbers: epoch times as integers, the rest (prices, amounts, rates) as floats."""
    return {n: (pl.Int64 if n.endswith("timestamp") else pl.Float64) for n in columns if n not in _TEXT}


#: Text columns written as read (the others are checked against known values: an exchange or
#: symbol mapping, a side), which the CSV reader must check for a CR or NUL inside a cell.
_VERBATIM = ("id", "is_snapshot")


def read_options(columns: list[str]) -> dict:
    """How `common.read_csv_cells` reads a Tardis CSV: numbers typed, no quoting (Tardis never
    quotes, so a stray quote is one bad cell, not the start of a field running over many lines)."""
    return dict(numeric=numeric_columns(columns), quoted=False, verbatim=[n for n in _VERBATIM if n in columns])


_NAME = re.compile(
    r"^(?P<exchange>[a-z0-9-]+)_(?P<dtype>" + "|".join(sorted(COLUMNS, key=len, reverse=True))
    + r")_(?P<day>\d{4}-\d{2}-\d{2})_(?P<symbol>.+)\.csv(\.gz)?$"
)


_EXCHANGE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")


def sniff(path: Path, head: str) -> bool:
    if _NAME.match(path.name):
        return True
    return head.lstrip("\ufeff").startswith("exchange,symbol,timestamp,local_timestamp,")


def _data_type(path: Path, header: list[str]) -> str:
    m = _NAME.match(path.name)
    if m:
        return m.group("dtype")
    matches = [t for t, cols in COLUMNS.items() if cols == header and t not in ("liquidations", "book_ticker")]
    if header == _TRADES:
        raise FormatError(
            path, "trades and liquidations share one header; name the file as Tardis does "
            "({exchange}_{trades|liquidations}_{YYYY-MM-DD}_{SYMBOL}.csv.gz)", 1,
        )
    if len(matches) == 1:
        return matches[0]
    raise FormatError(path, f"header is not a Tardis data type's: {','.join(header)[:160]!r}", 1)


def _instruments(path: Path, df: pl.DataFrame) -> pl.DataFrame:
    """One row per (exchange, symbol) with its mapping, or the reason it cannot be mapped."""
    ex, sy = df["exchange"], df["symbol"]
    if df.height and ex.null_count() == 0 and sy.null_count() == 0 and (ex == ex[0]).all() and (sy == sy[0]).all():
        pairs = df.select("exchange", "symbol").head(1)  # one instrument per file, as Tardis writes them
    else:
        pairs = df.select("exchange", "symbol").unique().drop_nulls("exchange")
    rows = []
    for ex, sym in pairs.iter_rows():
        if not _EXCHANGE_ID.match(ex):  # damage in a cell, not an exchange Tardis might have
            rows.append((ex, sym, None, None, None, None, None, f"exchange {ex[:40]!r} is not an exchange id"))
            continue
        try:
            ins = tardis_instrument(ex, sym or "")
            rows.append((ex, sym, ins.venue, ins.market, ins.symbol, ins.contract_size, ins.contract_unit, None))
        except UnknownExchange as e:
            first = df.filter(pl.col("exchange") == ex)["_row"].min()
            raise FormatError(path, str(e), first) from None
        except UnknownSymbol as e:
            rows.append((ex, sym, None, None, None, None, None, f"symbol not understood: {e}"))
    return pl.DataFrame(
        rows,
        schema={
            "exchange": pl.String, "symbol": pl.String, "_venue": pl.String, "_market": pl.String,
            "_unified": pl.String, "_size": pl.Float64, "_unit": pl.String, "_sym_err": pl.String,
        },
        orient="row",
    )


def base_amount(amount: pl.Expr, price: pl.Expr) -> pl.Expr:
    """Contracts -> base asset, using the instrument's contract size and unit."""
    return (
        pl.when(pl.col("_unit") == "quote").then(amount * pl.col("_size") / price)
        .when(pl.col("_unit") == "base").then(amount * pl.col("_size"))
        .otherwise(amount)
    )


def quote_amount(amount: pl.Expr, price: pl.Expr) -> pl.Expr:
    return pl.when(pl.col("_unit") == "quote").then(amount * pl.col("_size")).otherwise(price * base_amount(amount, price))


_ID = [
    pl.col("_ts").alias("ts"),
    pl.col("_venue").alias("venue"),
    pl.col("_market").alias("market"),
    pl.col("_unified").alias("symbol"),
    pl.col("symbol").alias("native_symbol"),
]


def _side(col: str) -> pl.Expr:
    """Taker side; `unknown` is null, anything else unexpected is kept so validation names it."""
    return pl.when(pl.col(col).is_in(["unknown", ""])).then(None).otherwise(pl.col(col))


def _trades(df: pl.DataFrame, liquidations: bool) -> dict[str, pl.DataFrame]:
    df = df.with_columns(c.num("price").alias("_p"), c.num("amount").alias("_a"))  # parse text once
    price, amount = pl.col("_p"), pl.col("_a")
    if df.height and df["_unit"].null_count() == df.height:  # spot / linear: amounts are base already
        base: pl.Expr = amount
        quote = price * amount
    else:
        base, quote = base_amount(amount, price), quote_amount(amount, price)
    common = [pl.col("_row"), *_ID, pl.col("_local").alias("local_ts")]
    if liquidations:
        out = df.select(
            *common, _side("side").alias("side"), price.alias("price"), base.alias("amount"),
            quote.alias("quote_amount"), pl.lit(None, dtype=pl.String).alias("account"),
        )
        return {"liquidations": out}
    out = df.select(
        *common, pl.col("id").alias("trade_id"), _side("side").alias("side"), price.alias("price"),
        base.alias("amount"), quote.alias("quote_amount"),
        pl.lit(None, dtype=pl.Boolean).alias("is_liquidation"),
    )
    return {"trades": out}


def _deltas(df: pl.DataFrame) -> dict[str, pl.DataFrame]:
    price, amount = c.num("price"), c.num("amount")
    out = df.select(
        "_row", *_ID, pl.col("_local").alias("local_ts"), c.boolean("is_snapshot").alias("is_snapshot"),
        pl.col("side").alias("side"), price.alias("price"),
        pl.when(amount == 0).then(0.0).otherwise(base_amount(amount, price)).alias("amount"),
    )
    return {"book_deltas": out}


def _levels(df: pl.DataFrame, parts: list[tuple[str, int, str, str]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Book rows from (side, level, price column, amount column); lines with no level are rejected."""
    frames = []
    for side, level, pcol, acol in parts:
        price, amount = c.num(pcol), c.num(acol)
        frames.append(
            df.filter(pl.col(pcol).is_not_null() | pl.col(acol).is_not_null()).select(
                "_row", *_ID, pl.col("_local").alias("local_ts"), pl.lit(side).alias("side"),
                pl.lit(level, dtype=pl.Int32).alias("level"), price.alias("price"),
                base_amount(amount, price).alias("amount"),
            )
        )
    out = pl.concat(frames).sort("_row", "side", "level", maintain_order=True)
    empty = df.join(out.select("_row").unique(), on="_row", how="anti")
    return out, c.rejections(empty, pl.lit(True), "line has no book level")


def _ticker(df: pl.DataFrame) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    key = ["_row", *_ID]
    prices = []
    for col, ptype in (("mark_price", "mark"), ("index_price", "index"), ("last_price", "last")):
        prices.append(
            df.filter(pl.col(col).is_not_null()).select(*key, pl.lit(ptype).alias("price_type"), c.num(col).alias("price"))
        )
    funding = df.filter(pl.col("funding_rate").is_not_null()).select(*key, c.num("funding_rate").alias("rate"))
    ref = pl.coalesce(c.num("mark_price"), c.num("index_price"), c.num("last_price"))
    oi_raw = c.num("open_interest")
    oi = df.filter(pl.col("open_interest").is_not_null()).select(
        *key, base_amount(oi_raw, ref).alias("open_interest"),
        (base_amount(oi_raw, ref) * ref).alias("open_interest_value"),
    )
    tables = {"prices": pl.concat(prices).sort("_row", maintain_order=True), "funding": funding, "open_interest": oi}
    used = pl.concat([t.select("_row") for t in tables.values()]).unique()
    empty = df.join(used, on="_row", how="anti")
    return tables, c.rejections(empty, pl.lit(True), "ticker line carries no value")


def _open(path: Path) -> tuple[str, list[str], dict]:
    """(data type, columns, decisions) from the name and header; '' if the file is empty."""
    data = c.head_bytes(path)
    m = _NAME.match(path.name)
    decisions: dict = {"header": True}
    if not data.strip():
        decisions.update(empty="Tardis writes an empty file when there is no data")
        return "", [m.group("dtype") if m else "trades"], decisions
    header = c.first_line(data).split(",")
    dtype = _data_type(path, header)
    expected = COLUMNS[dtype]
    if header != expected:
        raise FormatError(
            path, f"header does not match Tardis {dtype}: got {','.join(header)[:120]!r}, expected {','.join(expected)[:120]!r}", 1
        )
    decisions.update(data_type=dtype)
    if m:
        decisions["exchange_in_name"] = m.group("exchange")
    return dtype, expected, decisions


def _utc(df: pl.DataFrame, col: str, unit: str | None) -> pl.Expr:
    """µs integers -> timestamps; a plain cast when every value is in µs (the usual file)."""
    if unit == "us" and c.all_in_unit(df, col) == "us":
        return pl.col(col).cast(pl.Datetime("us", "UTC"))
    return c.to_utc_us(col, unit)


def _unit_check(path: Path, unit: str | None, evidence: dict[str, int]) -> None:
    if unit not in (None, "us"):
        raise FormatError(path, f"timestamps are in {c.UNIT_NAMES[unit]} by magnitude ({evidence}); Tardis files are in µs")


def _convert(
    path: Path, chunk: c.CsvChunk, dtype: str, decisions: dict, evidence: dict[str, int] | None
) -> Parsed:
    """Canonical tables from the rows of a whole file (`evidence` None) or of one chunk.

    For a chunk, `evidence` accumulates the per-unit row counts over the chunks so far; rows are
    converted as µs (the only unit a Tardis file may have) and the majority is checked at the end.
    """
    df = chunk.cells
    ins = _instruments(path, df)
    decisions["exchanges"] = sorted(set(decisions.get("exchanges", [])) | set(ins["exchange"].unique().to_list()))
    sizes = {r["symbol"]: f"{r['_size']:g} {r['_unit']}" for r in ins.iter_rows(named=True) if r["_size"] is not None}
    if sizes:
        decisions["contract_size"] = {**decisions.get("contract_size", {}), **sizes}
        decisions["amount"] = "contracts converted to base: contracts × size / price (quote-sized) or × size (base-sized)"
    if ins.height == 1:  # the usual one-instrument file: constants instead of a join
        lits = [pl.lit(v, dtype=ins.schema[k]).alias(k) for k, v in ins.row(0, named=True).items() if k.startswith("_")]
        work = df.with_columns(*lits)
    else:
        work = df.join(ins, on=["exchange", "symbol"], how="left", maintain_order="left")
    # Eager on purpose: a lazy collect hands back columns split into one chunk per thread, and every
    # later step would re-align them (see `common._numbered`).
    work = work.with_columns(c.integer("timestamp").alias("_ts_i"), c.integer("local_timestamp").alias("_local_i"))
    unit, chunk_evidence = c.unit_counts(work, "_ts_i")
    if evidence is None:
        decisions.update(ts_unit=unit, ts_unit_rows=chunk_evidence)
        _unit_check(path, unit, chunk_evidence)
    else:
        for k, v in chunk_evidence.items():
            evidence[k] = evidence.get(k, 0) + v
        ranked = sorted((v, k) for k, v in evidence.items() if k != "none")
        decisions.update(ts_unit=ranked[-1][1] if ranked else None, ts_unit_rows=dict(evidence))
        unit = "us" if ranked else None
    work = work.with_columns(_utc(work, "_ts_i", unit).alias("_ts"), _utc(work, "_local_i", unit).alias("_local"))
    rejected = [
        chunk.malformed,
        c.rejections(work, pl.col("exchange").is_null(), "missing exchange"),
        c.rejections(work, pl.col("_sym_err").is_not_null(), pl.col("_sym_err")),
        c.unit_rejections(work, "_ts_i", unit, "timestamp"),
        c.unit_rejections(work, "_local_i", unit, "local_timestamp"),
    ]
    if dtype in ("trades", "liquidations"):
        tables = _trades(work, dtype == "liquidations")
    elif dtype == "incremental_book_L2":
        tables = _deltas(work)
        rejected.append(c.rejections(work, c.boolean("is_snapshot").is_null(), "is_snapshot is not true/false"))
    elif dtype.startswith("book_snapshot"):
        n = int(dtype.rsplit("_", 1)[1])
        parts = [(s, i, f"{s}s[{i}].price", f"{s}s[{i}].amount") for i in range(n) for s in ("ask", "bid")]
        snaps, none = _levels(work, parts)
        tables, rejected = {"book_snapshots": snaps}, rejected + [none]
    elif dtype in ("quotes", "book_ticker"):
        snaps, none = _levels(work, [("bid", 0, "bid_price", "bid_amount"), ("ask", 0, "ask_price", "ask_amount")])
        tables, rejected = {"book_snapshots": snaps}, rejected + [none]
    else:
        tables, none = _ticker(work)
        rejected.append(none)
    rej = pl.concat(rejected, how="vertical_relaxed").unique("_row", keep="first", maintain_order=True)
    return Parsed(
        format=f"tardis.{dtype}",
        rows_read=chunk.rows_read,
        tables=tables,
        rejected=rej,
        day=c.file_day(path),
        decisions=decisions,
        raw=chunk.text,
        malformed=chunk.malformed_kinds(),
    )


def parse(path: Path, options: Options) -> Parsed:
    dtype, expected, decisions = _open(path)
    if not dtype:
        return Parsed(format=f"tardis.{expected[0]}", rows_read=0, tables={}, day=c.file_day(path), decisions=decisions)
    data = None if path.name.lower().endswith((".gz", ".csv")) else c.read_bytes(path)
    chunk = c.read_csv_cells(path, data, expected, header=True, **read_options(expected))
    return _convert(path, chunk, dtype, decisions, None)


#: Lines of a book-snapshot file make 2 rows per level: fewer lines per chunk keep memory flat.
_FANOUT = {"book_snapshot_25": 50, "book_snapshot_5": 10}


def iter_parse(path: Path, options: Options, chunk_rows: int) -> Iterator[Parsed]:
    """`parse` in chunks of about `chunk_rows` output rows (file order), for files of any size.

    The timestamp unit is checked over the whole file, after the last chunk, exactly as `parse`
    does (the only difference: if the first chunks hold no plausible epoch time at all while later
    ones do, their rows are rejected as 'missing timestamp' rather than 'no epoch unit').
    """
    dtype, expected, decisions = _open(path)
    if not dtype:
        yield Parsed(format=f"tardis.{expected[0]}", rows_read=0, tables={}, day=c.file_day(path), decisions=decisions)
        return
    evidence: dict[str, int] = {}
    lines = max(1, chunk_rows // _FANOUT.get(dtype, 1))
    for chunk in c.iter_csv_cells(path, expected, header=True, chunk_rows=lines, **read_options(expected)):
        yield _convert(path, chunk, dtype, decisions, evidence)
    ranked = sorted((v, k) for k, v in evidence.items() if k != "none")
    _unit_check(path, ranked[-1][1] if ranked else None, evidence)
