"""`record` offline: a minute of polling a stand-in Binance (recorded depth/trade JSON through the
real ccxt parsing), once on an injected clock, once in a real process killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from crashlab.ingest.fetch.recorder import RecordConfig, Recorder
from crashlab.ingest.lake import Lake

from test_fetch_ccxt import load, standin_exchange

T0 = datetime(2025, 10, 10, 21, 0, tzinfo=timezone.utc).timestamp()


class FakeClock:
    """Time that passes only when the recorder sleeps (plus a little per request)."""

    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        self.t += 0.001  # each look at the clock costs 1 ms: requests are not free
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def read(lake: Lake, table: str) -> pl.DataFrame:
    files = lake.files(table)
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


def test_one_minute_at_1s_cadence(tmp_path):
    clock = FakeClock(T0)
    ex, fake = standin_exchange("binance", clock=clock)
    lake = Lake.open(tmp_path / "lake")
    cfg = RecordConfig(["BTC/USDT"], every=1.0, duration=60.0, depth=5, batch_every=10.0)
    rep = Recorder(ex, lake, cfg, clock=clock, sleep=clock.sleep).run()
    assert rep.polls == 60 and rep.snapshots == 60 and rep.missed_ticks == 0
    assert rep.batches in (6, 7)  # one per 10 s of polls (+ the final flush of what remains)
    books = read(lake, "book_snapshots")
    snaps = books.select("ts").unique().sort("ts")["ts"]
    assert snaps.len() == 60
    gaps = snaps.diff().drop_nulls().dt.total_milliseconds()
    assert gaps.min() >= 999 and gaps.max() <= 1002  # the requested cadence
    assert books.group_by("ts", "side").len()["len"].unique().to_list() == [5]  # top 5 levels per side
    first = load("binance_api_depth_BTCUSDT.json")[0]
    top = books.filter(pl.col("ts") == snaps[0]).sort("side", "level")
    assert top.filter(pl.col("side") == "bid")["price"].to_list() == [float(b[0]) for b in first["bids"][:5]]
    assert set(books["market"]) == {"spot"} and set(books["native_symbol"]) == {"BTCUSDT"}
    trades = read(lake, "trades")
    assert trades.height == rep.trades == 120  # the whole tape, each trade once
    assert trades["trade_id"].n_unique() == 120
    manifest = lake.manifest()
    assert manifest.height == rep.batches and manifest["rows_quarantined"].sum() == 0
    snaps_per_batch = books.group_by("source_id").agg(pl.col("ts").n_unique())["ts"]
    assert snaps_per_batch.max() <= 11  # a batch holds at most 10 s of 1 s polls: what a kill can lose


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_fetch_ccxt import standin_exchange
    from crashlab.ingest.fetch.recorder import RecordConfig, Recorder
    from crashlab.ingest.lake import Lake
    ex, fake = standin_exchange("binance", clock=time.time)
    polls = open({polls!r}, "a")
    def on_poll(n):
        polls.write(f"{{n}}\\n"); polls.flush()
    cfg = RecordConfig(["BTC/USDT"], every=0.05, duration=60.0, depth=5, batch_every=0.5)
    Recorder(ex, Lake.open({lake!r}), cfg, on_poll=on_poll).run()
    """
)


def test_sigkill_loses_at_most_one_batch(tmp_path):
    lake_dir, polls = tmp_path / "lake", tmp_path / "polls.txt"
    script = CHILD.format(tests=str(Path(__file__).parent), polls=str(polls), lake=str(lake_dir))
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            m = lake_dir / "_manifest"
            if m.exists() and len(list(m.glob("*.parquet"))) >= 3:
                break
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode())
            time.sleep(0.02)
        time.sleep(0.23)  # land somewhere inside the next batch
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    lake = Lake.open(lake_dir)
    with lake.lock():
        lake.recover()
    made = len(polls.read_text().split())
    books = read(lake, "book_snapshots")
    kept = books["ts"].n_unique()
    per_batch = round(0.5 / 0.05)
    assert kept >= 30
    assert 0 <= made - kept <= per_batch + 1, (made, kept)
    m = lake.manifest()
    assert m["rows_read"].sum() == m["rows_written"].sum()  # every committed batch whole
    # every data file left belongs to a committed batch
    committed = set(m["source_id"])
    assert {p.stem for t in ("book_snapshots", "trades") for p in lake.files(t)} <= committed
    # cadence in the real process: median gap 50 ms
    gaps = books.select("ts").unique().sort("ts")["ts"].diff().drop_nulls().dt.total_milliseconds()
    assert 45 <= gaps.median() <= 60
