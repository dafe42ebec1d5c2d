"""User SQL has limits: a runaway query stops with a message naming the limit, the session lives on."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from crashlab.analysis.db import Limits, QueryError, QueryLimit, connect, parse_size
from crashlab.ingest.lake import Lake
from test_sql_fixtures import add, trade, ts


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    lk = Lake.open(tmp_path_factory.mktemp("limitlake"))
    add(lk, "trades", [trade("binance", "spot", "BTC/USDT", ts(0, i / 10), 100.0 + i % 7, 1.0, trade_id=i)
                       for i in range(3000)], "t")
    return lk


def test_self_cross_join_stops_at_the_time_limit_and_the_session_goes_on(lake):
    with connect(lake, Limits(timeout_s=1.0)) as db:
        t = time.perf_counter()
        with pytest.raises(QueryLimit, match=r"stopped after 1 s \(the time limit\).*--timeout"):
            db.sql("SELECT count(*) FROM trades a, trades b, trades c")  # 2.7e10 rows
        assert time.perf_counter() - t < 10
        # the connection is still usable, and a later query is not hit by a stale interrupt
        time.sleep(1.2)
        assert db.sql("SELECT count(*) AS n FROM trades")["n"][0] == 3000


def test_a_result_larger_than_the_memory_limit_stops(lake):
    with connect(lake, Limits(timeout_s=None, memory_bytes=32 * 2**20)) as db:
        with pytest.raises(QueryLimit, match=r"result is larger than the memory limit \(32.0MiB\).*--memory-limit"):
            db.sql("SELECT a.*, b.price AS p2 FROM trades a, trades b")  # 9 M rows, ~1 GB
        assert db.sql("SELECT count(*) AS n FROM trades a, trades b")["n"][0] == 9_000_000


def test_limits_are_checked_where_they_enter():
    assert parse_size("4GB") == 4 * 10**9 and parse_size("512MiB") == 512 * 2**20 and parse_size("2.5 GiB") == int(2.5 * 2**30)
    for bad in ("lots", "-1GB", "4 parsecs", "1KB"):
        with pytest.raises(QueryError, match="memory limit"):
            parse_size(bad)
    with pytest.raises(QueryError, match="time limit"):
        Limits(timeout_s=-3)
    assert Limits.parse(0, None).timeout_s is None


def test_cli_timeout_is_exit_1_with_one_line(lake):
    r = subprocess.run([sys.executable, "-m", "crashlab", "sql", "--lake", str(lake.root), "--timeout", "1",
                        "SELECT count(*) FROM trades a, trades b, trades c"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "time limit" in lines[0] and "--timeout" in lines[0], r.stderr
    r = subprocess.run([sys.executable, "-m", "crashlab", "sql", "--lake", str(lake.root), "--memory-limit", "a lot",
                        "SELECT 1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "memory limit 'a lot'" in r.stderr, r.stderr
