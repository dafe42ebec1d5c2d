"""One read path: a data file left by a killed ingest (no manifest entry) is invisible to every reader.

The leftover is a copy of a committed trades file under another source id with every price
halved, so any reader that saw it would give a different answer (a lower low, more rows, other
reference prices). SQL, the timeline, the catalog, the replay and the report must give the same
answers on the lake with the leftover as on the same lake without it.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import polars as pl
import pyarrow.parquet as pq

from crashlab.analysis.db import connect
from crashlab.analysis.report import build
from crashlab.ingest.catalog import catalog
from crashlab.ingest.lake import Lake
from crashlab.replay.engine import run_replay
from crashlab.replay.scenario import parse_scenario

from test_sql_fixtures import T0, add, trade, ts

SCENARIO = {
    "scenario": {"name": "read_path", "step": "1s"},
    "account": [{
        "id": "long", "rule": "binance_usdm", "balances": {"USDT": 0},
        "position": [{"symbol": "BTC/USDT:USDT", "notional": 1_000_000, "margin": 60_000, "entry": "start"}],
    }],
}


def _lake(root) -> Lake:
    lake = Lake.open(root)
    rows = []
    for m in range(30):
        px = 100_000 * (1 - 0.004 * m)  # -11.6 % over 30 minutes: the long is liquidated
        rows.append(trade("binance", "perp", "BTC/USDT:USDT", ts(m, 1), px, 2.0, "sell", trade_id=m))
    add(lake, "trades", rows, "btc")
    return lake


def _plant_leftover(lake: Lake) -> None:
    """What a kill between a data file's rename and the manifest commit leaves behind."""
    src = lake.files("trades")[0]
    t = pq.read_table(src)
    df = pl.from_arrow(t).with_columns(pl.col("price") / 2, (pl.col("event_id") + 1), pl.lit("deadbeefdeadbeef").alias("source_id"))
    dst = src.with_name("deadbeefdeadbeef.parquet")
    pq.write_table(df.to_arrow().cast(t.schema), dst)


def _answers(lake: Lake, tmp):
    with connect(lake) as db:
        sql = db.sql("SELECT count(*) AS n, min(price) AS lo, sum(amount) AS amt FROM trades")
        bars = db.query("bars", start=T0.isoformat(), end=(T0 + timedelta(minutes=30)).isoformat(), interval="1m")
        tl = db.query("timeline", start=T0.isoformat(), end=(T0 + timedelta(minutes=30)).isoformat(), step="1m", top=4)
    cat = catalog(lake).drop("longest_gap_s", "median_spacing_s")
    sc = parse_scenario(SCENARIO)
    run = run_replay(lake, sc, T0, T0 + timedelta(minutes=30), run_id="read-path")
    rep = build(lake, T0, T0 + timedelta(minutes=30), tmp / "rep", images=False)
    tables = {n: (tmp / "rep" / "tables" / f"{n}.csv").read_text() for n in ("legs", "attribution", "timeline", "onsets")}
    return sql, bars, tl, cat, run, tables


def test_uncommitted_leftover_is_invisible_to_every_reader(tmp_path):
    clean = _lake(tmp_path / "clean")
    dirty = Lake.open(tmp_path / "dirty")
    shutil.copytree(clean.root, dirty.root)
    _plant_leftover(dirty)
    assert len(dirty.stored_files("trades")) == len(clean.stored_files("trades")) + 1
    assert dirty.files("trades") == [dirty.root / f.relative_to(clean.root) for f in clean.files("trades")]
    assert dirty.fingerprint() == clean.fingerprint()

    a = _answers(clean, tmp_path / "a")
    b = _answers(dirty, tmp_path / "b")
    assert a[0]["n"][0] == 30
    for x, y in zip(a[:4], b[:4]):
        assert x.equals(y)
    ra, rb = a[4], b[4]
    assert ra.liquidations.height == 1  # the scenario does liquidate: the replay has something to differ on
    assert ra.events.equals(rb.events) and ra.price_path.equals(rb.price_path)
    assert ra.manifest["tape"] == rb.manifest["tape"]
    assert a[5] == b[5]


def test_recover_still_removes_the_leftover(tmp_path):
    lake = _lake(tmp_path / "lake")
    _plant_leftover(lake)
    with lake.lock():
        removed = lake.recover()
    assert [p.name for p in removed] == ["deadbeefdeadbeef.parquet"]
    assert lake.stored_files("trades") == lake.files("trades")
