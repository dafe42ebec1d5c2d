"""`crashlab catalog`: rows, coverage and gaps per instrument, from a lake built here."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timedelta, timezone

import polars as pl

from crashlab.cli import main
from crashlab.ingest.catalog import catalog, gap_list
from crashlab.ingest.formats.base import Parsed
from crashlab.ingest.lake import Lake
from crashlab.ingest.pipeline import ingest_parsed

T0 = datetime(2025, 10, 10, 21, 0, tzinfo=timezone.utc)


def _lake(tmp_path) -> Lake:
    lake = Lake.open(tmp_path)
    # one trade a minute 21:00-21:09, then nothing until 21:30 (a 21-minute hole), then 21:30-21:34
    minutes = list(range(10)) + list(range(30, 35))
    n = len(minutes)
    df = pl.DataFrame(
        {
            "_row": list(range(2, n + 2)),
            "ts": [T0 + timedelta(minutes=m) for m in minutes],
            "venue": ["gemini"] * n, "market": ["spot"] * n, "symbol": ["BTC/USD"] * n, "native_symbol": ["BTCUSD"] * n,
            "local_ts": [T0 + timedelta(minutes=m) for m in minutes],
            "trade_id": [str(i) for i in range(n)], "side": ["buy"] * n,
            "price": [100.0] * n, "amount": [1.0] * n, "quote_amount": [100.0] * n, "is_liquidation": [None] * n,
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC"), "local_ts": pl.Datetime("us", "UTC"), "is_liquidation": pl.Boolean},
    )
    ingest_parsed(lake, Parsed("t", n, {"trades": df}, day=date(2025, 10, 10)), path="t", sha256=hashlib.sha256(b"t").hexdigest(), source="test")
    return lake


def test_catalog_counts_rows_span_and_gaps(tmp_path):
    lake = _lake(tmp_path)
    cat = catalog(lake)
    row = cat.row(0, named=True)
    assert (row["table"], row["venue"], row["symbol"], row["rows"], row["gaps"]) == ("trades", "gemini", "BTC/USD", 15, 1)
    assert row["first_ts"] == T0 and row["last_ts"] == T0 + timedelta(minutes=34)
    assert row["longest_gap_s"] == 21 * 60
    gaps = gap_list(lake, "trades")
    assert gaps.height == 1 and gaps["gap_start"][0] == T0 + timedelta(minutes=9)


def test_catalog_cli_json(tmp_path, capsys):
    _lake(tmp_path)
    assert main(["catalog", "--lake", str(tmp_path), "--format", "json", "--gap", "30m"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["rows"] == 15 and out[0]["gaps"] == 0
