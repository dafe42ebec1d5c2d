"""`fetch tardis` against a local server (Bearer key, free first-of-month rule, gzip integrity) and
`fetch hyperliquid` with a stand-in `aws` CLI on PATH (requester-pays commands, clear errors)."""

from __future__ import annotations

import gzip
import json
import os
import stat
from datetime import date

import lz4.frame
import polars as pl
import pytest

from crashlab.ingest.fetch import hyperliquid_s3 as hl
from crashlab.ingest.fetch import tardis
from crashlab.ingest.fetch.http import RetryPolicy
from crashlab.ingest.lake import Lake
from crashlab.ingest.paths import SHARED_REAL

from test_fetch_http import ArchiveServer

REAL_TARDIS = SHARED_REAL / "tardis" / "gemini" / "gemini_trades_2025-10-10_FILUSD.csv.gz"
POLICY = RetryPolicy(attempts=4, backoff=0.01, max_backoff=0.02, timeout=1.0)
PATH_1010 = "/v1/gemini/trades/2025/10/10/FILUSD.csv.gz"


def table(lake: Lake, name: str) -> pl.DataFrame:
    files = lake.files(name)
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


# ---- tardis --------------------------------------------------------------------------------------

def test_tardis_urls_and_names():
    f = tardis.plan("binance-futures", ["trades"], ["btc/usdt:usdt"], [date(2025, 10, 10)])[0]
    assert f.url_path == "v1/binance-futures/trades/2025/10/10/BTC-USDT-USDT.csv.gz"
    assert f.name == "binance-futures_trades_2025-10-10_BTC-USDT-USDT.csv.gz"
    assert tardis.parse_dates(["2025-10-09..2025-10-11,2025-10-01"]) == [
        date(2025, 10, 1), date(2025, 10, 9), date(2025, 10, 10), date(2025, 10, 11)]


def test_tardis_without_key_only_first_of_month(tmp_path, capsys, monkeypatch):
    from crashlab.cli import main

    monkeypatch.delenv("TARDIS_API_KEY", raising=False)
    rc = main(["fetch", "tardis", "--exchange", "gemini", "--type", "trades", "--symbols", "FILUSD", "--dates",
               "2025-10-01,2025-10-10", "--base-url", "http://127.0.0.1:9", "--cache", str(tmp_path)])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2
    assert "no Tardis API key: set TARDIS_API_KEY" in err and "only the first day of each month is free" in err
    assert "2025-10-10" in err and "2025-10-01," not in err


def test_tardis_free_day_downloads_without_key(tmp_path):
    body = gzip.compress(b"exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n")
    with ArchiveServer({"/v1/gemini/trades/2025/10/01/FILUSD.csv.gz": body}) as s:
        files = tardis.plan("gemini", ["trades"], ["FILUSD"], [date(2025, 10, 1)])
        res = tardis.fetch_files(files, s.url, tmp_path, api_key="", policy=POLICY, show_progress=False)
    assert len(res.downloaded) == 1 and res.downloaded[0][1].read_bytes() == body


@pytest.mark.skipif(not REAL_TARDIS.exists(), reason=f"real Tardis file not found at {REAL_TARDIS}")
def test_tardis_with_key_faults_and_exact_rows(tmp_path, capsys, monkeypatch):
    from crashlab.cli import main

    monkeypatch.setenv("TARDIS_API_KEY", "k-test-123")
    with ArchiveServer({PATH_1010: REAL_TARDIS}, require_auth="Bearer k-test-123") as s:
        s.faults[PATH_1010] = ["truncate", "429"]
        rc = main(["fetch", "tardis", "--exchange", "gemini", "--type", "trades", "--symbols", "FILUSD",
                   "--dates", "2025-10-10", "--base-url", s.url, "--cache", str(tmp_path / "cache"),
                   "--lake", str(tmp_path / "lake"), "--no-progress", "--timeout", "2"])
        assert rc == 0, capsys.readouterr().err
    expected = len(gzip.decompress(REAL_TARDIS.read_bytes()).decode().strip().splitlines()) - 1
    lake = Lake.open(tmp_path / "lake")
    trades = table(lake, "trades")
    m = lake.manifest()
    assert trades.height + int(m["rows_quarantined"].sum()) == expected
    assert set(trades["venue"]) == {"gemini"}
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_tardis_wrong_key_and_corrupt_gzip_are_clear(tmp_path):
    good = gzip.compress(b"exchange,symbol,timestamp,local_timestamp,id,side,price,amount\n" * 50)
    broken = good[:-12] + b"\x00" * 12  # same length, bad CRC/length trailer
    files = tardis.plan("gemini", ["trades"], ["FILUSD"], [date(2025, 10, 10)])
    with ArchiveServer({PATH_1010: broken}, require_auth="Bearer right") as s:
        res = tardis.fetch_files(files, s.url, tmp_path, api_key="wrong", policy=POLICY, show_progress=False)
        assert "HTTP 401" in res.failed[0][1] and "API key" in res.failed[0][1]
        res = tardis.fetch_files(files, s.url, tmp_path, api_key="right", policy=POLICY, show_progress=False)
    msg = res.failed[0][1]
    assert "gemini_trades_2025-10-10_FILUSD.csv.gz" in msg and "not a whole gzip file" in msg
    assert list(tmp_path.rglob("*.csv.gz*")) == []


# ---- hyperliquid ------------------------------------------------------------------------------------

def test_hyperliquid_plan_and_hours():
    objs = hl.plan("fills", [date(2025, 10, 10)], hl.parse_hours("20-21"))
    assert [o.uri for o in objs] == ["s3://hl-mainnet-node-data/node_fills_by_block/hourly/20251010/20.lz4",
                                    "s3://hl-mainnet-node-data/node_fills_by_block/hourly/20251010/21.lz4"]
    books = hl.plan("l2book", [date(2025, 10, 10)], [21], ["btc", "ETH"])
    assert books[0].uri == "s3://hyperliquid-archive/market_data/20251010/21/l2Book/BTC.lz4"
    with pytest.raises(ValueError, match="starts 2025-07-27"):
        hl.plan("fills", [date(2025, 7, 1)], [0])


def test_hyperliquid_without_aws_says_what_is_needed(tmp_path):
    objs = hl.plan("fills", [date(2025, 10, 10)], [21])
    env = {"PATH": str(tmp_path / "empty-bin"), "HOME": str(tmp_path / "home")}
    with pytest.raises(hl.S3Unavailable) as e:
        hl.check(objs, tmp_path / "cache", env=env)
    msg = str(e.value)
    assert "AWS CLI (`aws`) is not installed" in msg and "requester-pays" in msg and "aws configure" in msg
    assert ("aws s3 cp --request-payer requester --only-show-errors "
            "s3://hl-mainnet-node-data/node_fills_by_block/hourly/20251010/21.lz4") in msg


def _fill(tid, px, sz, side, crossed, user, t, liq=None):
    f = {"coin": "BTC", "px": px, "sz": sz, "side": side, "time": t, "startPosition": "0", "dir": "Open Long",
         "closedPnl": "0.0", "hash": f"0x{tid:064x}", "oid": tid * 10 + crossed, "crossed": crossed, "fee": "0.01",
         "tid": tid, "feeToken": "USDC"}
    if liq:
        f["liquidation"] = liq
    return [user, f]


def _fills_lz4() -> bytes:
    t = 1760131080000  # 2025-10-10T21:18:00Z
    blocks = [
        {"local_time": "2025-10-10T21:18:00.1", "block_time": "2025-10-10T21:18:00.05", "block_number": 1,
         "events": [_fill(1, "112000.0", "0.01", "B", True, "0xa", t), _fill(1, "112000.0", "0.01", "A", False, "0xb", t)]},
        {"local_time": "2025-10-10T21:18:01.1", "block_time": "2025-10-10T21:18:01.05", "block_number": 2,
         "events": [_fill(2, "111500.0", "0.5", "A", True, "0xc", t + 1000,
                          {"liquidatedUser": "0xc", "markPx": "111600.0", "method": "market"}),
                    _fill(2, "111500.0", "0.5", "B", False, "0xd", t + 1000)]},
    ]
    return lz4.frame.compress("\n".join(json.dumps(b) for b in blocks).encode() + b"\n")


def test_hyperliquid_fetch_with_stand_in_aws_cli(tmp_path, capsys, monkeypatch):
    from crashlab.cli import main

    bucket = tmp_path / "s3"
    obj = bucket / "hl-mainnet-node-data" / "node_fills_by_block" / "hourly" / "20251010" / "21.lz4"
    obj.parent.mkdir(parents=True)
    obj.write_bytes(_fills_lz4())
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "aws-calls.txt"
    aws = bindir / "aws"
    # a stand-in for the AWS CLI: logs its arguments and copies from a local folder laid out like S3
    aws.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{log}"\n'
        'for a in "$@"; do case "$a" in s3://*) src="$a";; esac; done\n'
        'for last in "$@"; do :; done\n'
        f'path="{bucket}/${{src#s3://}}"\n'
        '[ -f "$path" ] || { echo "fatal error: An error occurred (404) when calling the HeadObject operation" >&2; exit 1; }\n'
        'cp "$path" "$last"\n'
    )
    aws.chmod(aws.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-TEST-ONLY")
    rc = main(["fetch", "hyperliquid", "--kind", "fills", "--dates", "2025-10-10", "--hours", "21-22",
               "--cache", str(tmp_path / "cache"), "--lake", str(tmp_path / "lake"), "--no-progress"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 1  # hour 22 is not in the stand-in bucket: reported, hour 21 still ingested
    assert "node_fills_by_block/hourly/20251010/22.lz4: aws s3 cp exited 1" in err
    calls = log.read_text().splitlines()
    assert all("--request-payer requester" in c for c in calls) and len(calls) == 2
    lake = Lake.open(tmp_path / "lake")
    trades = table(lake, "trades")
    if not lake.files("trades"):
        pytest.skip("hyperliquid importer did not ingest fills: " + err)
    assert trades.height == 2 and set(trades["venue"]) == {"hyperliquid"}
    assert trades.filter(pl.col("trade_id") == "2")["is_liquidation"].to_list() == [True]
    assert not list((tmp_path / "cache").rglob("*.part"))
