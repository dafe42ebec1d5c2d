"""User SQL is read-only: every write, escape or setting change is refused and the lake is unchanged."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crashlab.analysis.db import SQLRefused, check_statement, connect
from crashlab.ingest.lake import Lake
from test_sql_fixtures import add, trade, tree_checksums, ts


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    lk = Lake.open(tmp_path_factory.mktemp("safelake"))
    add(lk, "trades", [trade("binance", "spot", "BTC/USDT", ts(i), 100.0 + i, 1.0, trade_id=i) for i in range(5)], "t")
    return lk


def _one_trade_file(lake: Lake) -> str:
    return str(lake.files("trades")[0])


ATTACKS = [
    ("DROP VIEW trades", "DROP"),
    ("DROP TABLE trades", "DROP"),
    ("DELETE FROM trades", "DELETE"),
    ("UPDATE trades SET price = 0", "UPDATE"),
    ("INSERT INTO trades SELECT * FROM trades", "INSERT"),
    ("CREATE TABLE x AS SELECT 1", "CREATE"),
    ("COPY (SELECT 1) TO '{lake}/trades/evil.parquet' (FORMAT parquet)", "COPY"),
    ("COPY trades TO '/tmp/crashlab-evil.csv'", "COPY"),
    ("EXPORT DATABASE '{lake}/dump'", "EXPORT"),
    ("ATTACH '{lake}/evil.duckdb' AS evil", "ATTACH"),
    ("INSTALL httpfs", "INSTALL"),
    ("LOAD httpfs", "LOAD"),
    ("SET enable_external_access = true", "SET"),
    ("RESET lock_configuration", "RESET"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("CALL checkpoint()", "CALL"),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{lake}/x.csv'", "EXPLAIN COPY"),
    ("SELECT 1; DROP VIEW trades", "DROP"),
    ("SELECT * FROM read_csv('/etc/passwd')", "/etc/passwd"),
    ("SELECT * FROM read_text('{lake}/../../../../etc/passwd')", "passwd"),
    ("SELECT * FROM glob('/etc/*')", "/etc"),
    ("SELECT * FROM read_parquet('https://example.com/x.parquet')", "https"),
]


@pytest.mark.parametrize("stmt,word", ATTACKS, ids=[a[1] + ":" + a[0][:30] for a in ATTACKS])
def test_refused_and_lake_unchanged(lake, stmt, word):
    before = tree_checksums(lake.root)
    with connect(lake) as db:
        with pytest.raises(SQLRefused) as exc:
            db.sql(stmt.format(lake=lake.root))
        msg = str(exc.value)
        assert msg.startswith("refused: ") and "\n" not in msg and word in msg
        # the session still works and still sees the same data
        assert db.sql("SELECT count(*) AS n FROM trades")["n"][0] == 5
    assert tree_checksums(lake.root) == before


def test_reads_inside_the_lake_are_allowed(lake):
    with connect(lake) as db:
        n = db.sql(f"SELECT count(*) AS n FROM read_parquet('{_one_trade_file(lake)}')")["n"][0]
        assert n == 5
        assert db.sql("DESCRIBE trades").height > 5
        assert db.sql("SHOW TABLES").height >= 12
        assert db.sql("EXPLAIN SELECT * FROM trades").height >= 1
        assert db.sql("PRAGMA version").height == 1
        assert db.sql("WITH a AS (SELECT 1 AS x) SELECT * FROM a")["x"][0] == 1


def test_the_connection_is_locked_even_past_the_parser(lake):
    """The second layer: DuckDB itself refuses, should a statement ever slip past the parser check."""
    with connect(lake) as db:
        import duckdb

        for raw in ("SET enable_external_access = true", "SELECT * FROM read_csv('/etc/passwd')", "INSTALL httpfs"):
            with pytest.raises(duckdb.Error):
                db.con.execute(raw)
        assert db.con.sql("SELECT current_setting('TimeZone')").fetchall()[0][0] == "UTC"


def test_check_statement_allows_reads_only():
    check_statement("SELECT 1")
    check_statement("FROM trades")
    check_statement("SUMMARIZE trades")
    with pytest.raises(SQLRefused):
        check_statement("VACUUM")


def test_cli_refusal_is_one_line_and_lake_unchanged(lake):
    before = tree_checksums(lake.root)
    for stmt in ("DROP VIEW trades", "DELETE FROM trades", f"COPY trades TO '{lake.root}/x.csv'",
                 f"ATTACH '{lake.root}/x.db'", "INSTALL httpfs", "SELECT * FROM read_csv('/etc/passwd')"):
        r = subprocess.run([sys.executable, "-m", "crashlab", "sql", "--lake", str(lake.root), stmt],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (stmt, r.stdout, r.stderr)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("refused: "), (stmt, r.stderr)
    assert tree_checksums(lake.root) == before


def test_cli_out_writes_only_where_asked(lake, tmp_path):
    out = tmp_path / "bars.csv"
    before = tree_checksums(lake.root)
    r = subprocess.run([sys.executable, "-m", "crashlab", "sql", "--lake", str(lake.root), "--query", "bars",
                        "--format", "csv", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert out.read_text().splitlines()[0].startswith("ts,venue,market,symbol,interval,open")
    assert len(out.read_text().splitlines()) == 6
    assert tree_checksums(lake.root) == before
