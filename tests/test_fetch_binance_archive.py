"""`fetch binance-archive` against a local stand-in for data.binance.vision serving the real zips.

The real files in ../shared/data/real/binance-vision are mapped into Binance's URL layout (the 5m
USDⓈ-M price klines served as markPriceKlines, COIN-M 1m BTCUSD_PERP likewise, spot aggTrades
BTCUSDC, the bookDepth CSV zipped as Binance ships it), with .CHECKSUM files computed from the
bytes, and faults injected: 500, 429 + Retry-After, truncated body, connection reset, slow
response, corrupt body, wrong checksum. The fetch must end with exactly the files' rows, or fail
naming the file, and the lake must never hold a partial file.
"""

from __future__ import annotations

import importlib.util
import io
import zipfile
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from crashlab.ingest.fetch import binance_archive as ba
from crashlab.ingest.fetch.http import RetryPolicy
from crashlab.ingest.fetch.presets import OCT10
from crashlab.ingest.lake import Lake
from crashlab.ingest.paths import SHARED_REAL

from test_fetch_http import ArchiveServer

REAL = SHARED_REAL / "binance-vision"
POLICY = RetryPolicy(attempts=5, backoff=0.01, max_backoff=0.05, timeout=0.4, max_retry_after=0.05)
HAVE_IMPORTER = importlib.util.find_spec("crashlab.ingest.formats.binance_vision") is not None

needs_real = pytest.mark.skipif(not REAL.exists(), reason=f"real Binance archive files not found at {REAL}")
needs_importer = pytest.mark.skipif(not HAVE_IMPORTER, reason="ingest/formats/binance_vision.py not written yet")

UM = "/data/futures/um/daily/markPriceKlines/BTCUSDT/5m/BTCUSDT-5m-{d}.zip"
CM = "/data/futures/cm/daily/markPriceKlines/BTCUSD_PERP/1m/BTCUSD_PERP-1m-{d}.zip"
SPOT = "/data/spot/daily/aggTrades/BTCUSDC/BTCUSDC-aggTrades-{d}.zip"
DEPTH = "/data/futures/um/daily/bookDepth/BTCUSDT/BTCUSDT-bookDepth-2025-10-10.zip"


def _zip_csv(path: Path) -> bytes:
    """The bookDepth CSV packed as Binance ships it (one CSV in a zip), deterministically."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(path.name, date_time=(2025, 10, 11, 6, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def real_files() -> dict[str, bytes | Path]:
    files: dict[str, bytes | Path] = {}
    for p in sorted((REAL / "futures-um-price-klines-5m").glob("BTCUSDT-5m-2025-10-*.zip")):
        files[UM.format(d=p.stem.split("-5m-")[1])] = p
    for p in sorted((REAL / "futures-cm-price-klines-1m").glob("*.zip")):
        files[CM.format(d=p.stem.split("-1m-")[1])] = p
    for p in sorted((REAL / "spot-aggTrades").glob("*.zip")):
        files[SPOT.format(d=p.stem.split("-aggTrades-")[1])] = p
    files[DEPTH] = _zip_csv(REAL / "futures-um-bookDepth" / "BTCUSDT-bookDepth-2025-10-10.csv")
    return files


def csv_rows(zip_bytes: bytes) -> int:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        text = zf.read(zf.namelist()[0]).decode()
    lines = [line for line in text.splitlines() if line.strip()]
    return len(lines) - (1 if lines and not lines[0][0].isdigit() else 0)


@pytest.fixture()
def server():
    if not REAL.exists():
        pytest.skip(f"real Binance archive files not found at {REAL}")
    with ArchiveServer(real_files()) as s:
        yield s


def table(lake: Lake, name: str) -> pl.DataFrame:
    files = lake.files(name)
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


def fetch(server, tmp_path, files, sleeps=None):
    return ba.fetch_files(files, server.url, tmp_path / "cache", jobs=3, policy=POLICY,
                          sleep=(sleeps.append if sleeps is not None else (lambda s: None)), show_progress=False)


def no_partials(root: Path) -> None:
    leftovers = [p for p in root.rglob("*") if p.name.endswith((".part", ".tmp"))]
    assert leftovers == []


# ---- planning ---------------------------------------------------------------------------------

def test_plan_urls_follow_binance_layout():
    fs = ba.plan("um", "markPriceKlines", ["btcusdt"], date(2025, 10, 10), date(2025, 10, 11), "5m")
    assert [f.url_path for f in fs] == [UM.format(d="2025-10-10")[1:], UM.format(d="2025-10-11")[1:]]
    assert ba.plan("spot", "aggTrades", ["BTCUSDC"], date(2025, 10, 4), date(2025, 10, 4))[0].url_path == SPOT.format(d="2025-10-04")[1:]
    funding = ba.plan("um", "fundingRate", ["BTCUSDT"], date(2025, 9, 30), date(2025, 10, 11))
    assert [f.url_path.rsplit("/", 1)[1] for f in funding] == ["BTCUSDT-fundingRate-2025-09.zip", "BTCUSDT-fundingRate-2025-10.zip"]
    with pytest.raises(ba.PlanError, match="futures only"):
        ba.plan("spot", "bookDepth", ["BTCUSDT"], date(2025, 10, 10), date(2025, 10, 10))
    with pytest.raises(ba.PlanError, match="needs --interval"):
        ba.plan("um", "klines", ["BTCUSDT"], date(2025, 10, 10), date(2025, 10, 10))


def test_oct10_preset_plan_and_size_estimate():
    files = OCT10.files()
    names = {f.url_path for f in files}
    assert len(files) == len(names)  # no file twice
    assert {f.period for f in files} == {"2025-10-10", "2025-10-11"}
    syms = {f.symbol for f in files}
    for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "USDEUSDT", "WBETHETH", "BNSOLSOL", "ATOMUSDT",
              "IOTXUSDT", "ENJUSDT", "SUIUSDT", "BTCUSD_PERP"):
        assert s in syms
    assert {f.type for f in files} >= {"trades", "bookDepth", "markPriceKlines", "indexPriceKlines", "metrics", "klines"}
    # size estimate by HEAD against a local server that has all but three of the files
    body = {f"/{f.url_path}": b"z" * (1000 + i) for i, f in enumerate(files)}
    gone = sorted(body)[:3]
    for k in gone:
        del body[k]
    with ArchiveServer(body) as s:
        total, absent = ba.estimate(files, s.url, policy=POLICY, jobs=8)
        assert total == sum(len(v) for v in body.values())
        assert sorted(f"/{f.url_path}" for f in absent) == gone
        assert {m for m, _, _ in s.requests} == {"HEAD"}  # nothing downloaded to estimate


def test_cli_preset_dry_run_says_size_before_anything(tmp_path, capsys):
    from crashlab.cli import main

    files = OCT10.files()
    with ArchiveServer({f"/{f.url_path}": b"z" * 2_000_000 for f in files[:10]}) as s:
        rc = main(["fetch", "binance-archive", "--preset", "oct10", "--dry-run", "--base-url", s.url,
                   "--cache", str(tmp_path / "c"), "--lake", str(tmp_path / "l"), "--retries", "0", "--timeout", "2"])
        assert {m for m, _, _ in s.requests} == {"HEAD"}
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 0
    assert f"{len(files)} files planned" in err
    assert "download size: 20.0 MB in 10 files" in err and f"{len(files) - 10} not on the server" in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "l").exists()


# ---- downloading with faults ----------------------------------------------------------------------

@needs_real
def test_faults_recovered_exact_files(server, tmp_path):
    d9, d10, d11 = (UM.format(d=f"2025-10-{x}") for x in ("09", "10", "11"))
    server.faults = {d9: ["500", "429"], d10: ["truncate", "reset"], d11: ["slow", "corrupt"]}
    server.faults[d10 + ".CHECKSUM"] = ["500"]
    files = ba.plan("um", "markPriceKlines", ["BTCUSDT"], date(2025, 10, 9), date(2025, 10, 11), "5m")
    sleeps: list[float] = []
    res = fetch(server, tmp_path, files, sleeps)
    assert res.failed == [] and res.missing == [] and len(res.downloaded) == 3
    for f, path in res.downloaded:
        assert path.read_bytes() == server.body("/" + f.url_path)  # byte-exact
        assert path.with_name(path.name + ".CHECKSUM").exists()
    assert server.gets(d10)[1] is not None and server.gets(d10)[1].startswith("bytes=")  # truncated -> resumed
    assert len(server.gets(d11)) == 3  # slow (timeout), corrupt (sha256 mismatch), then good
    assert len(sleeps) == 6
    no_partials(tmp_path)
    # a second run uses the cache: checksums only, no zip downloaded again
    before = len(server.requests)
    res2 = fetch(server, tmp_path, files)
    assert len(res2.cached) == 3 and all(p.endswith(".CHECKSUM") for _, p, _ in server.requests[before:])


@needs_real
def test_wrong_checksum_fails_naming_file_and_writes_nothing(server, tmp_path):
    bad = UM.format(d="2025-10-10")
    server.bad_checksums.add(bad + ".CHECKSUM")
    files = ba.plan("um", "markPriceKlines", ["BTCUSDT"], date(2025, 10, 10), date(2025, 10, 11), "5m")
    res = fetch(server, tmp_path, files)
    assert [f.name for f, _ in res.failed] == ["BTCUSDT-5m-2025-10-10.zip"]
    msg = res.failed[0][1]
    assert "BTCUSDT-5m-2025-10-10.zip" in msg and "sha256 mismatch" in msg
    assert len(res.downloaded) == 1
    assert not ba.cache_path(tmp_path / "cache", files[0]).exists()
    no_partials(tmp_path)


@needs_real
def test_missing_day_is_reported_not_fatal(server, tmp_path):
    files = ba.plan("um", "markPriceKlines", ["BTCUSDT"], date(2025, 10, 3), date(2025, 10, 5), "5m")
    res = fetch(server, tmp_path, files)  # the real set has no 2025-10-04
    assert [f.period for f, _ in res.missing] == ["2025-10-04"]
    assert "BTCUSDT-5m-2025-10-04.zip: 404" in res.missing[0][1]
    assert len(res.ready) == 2


# ---- end to end into the lake -----------------------------------------------------------------------

@needs_real
@needs_importer
def test_cli_end_to_end_exact_rows(server, tmp_path, capsys):
    from crashlab.cli import main

    server.faults = {UM.format(d="2025-10-10"): ["truncate", "500"], CM.format(d="2025-10-10"): ["reset"]}
    lake_dir = tmp_path / "lake"
    args = ["--base-url", server.url, "--cache", str(tmp_path / "cache"), "--lake", str(lake_dir), "--no-progress",
            "--timeout", "0.4", "--retries", "4"]
    rc = main(["fetch", "binance-archive", "--market", "um", "--type", "markPriceKlines", "--interval", "5m",
               "--symbols", "BTCUSDT", "--start", "2025-10-09", "--end", "2025-10-11", *args])
    assert rc == 0, capsys.readouterr().err
    rc = main(["fetch", "binance-archive", "--market", "cm", "--type", "markPriceKlines", "--interval", "1m",
               "--symbols", "BTCUSD_PERP", "--start", "2025-10-10", *args])
    assert rc == 0, capsys.readouterr().err
    lake = Lake.open(lake_dir)
    bars = table(lake, "bars")
    um = bars.filter(pl.col("native_symbol") == "BTCUSDT")
    cm = bars.filter(pl.col("native_symbol") == "BTCUSD_PERP")
    expect_um = sum(csv_rows(server.body(UM.format(d=f"2025-10-{x}"))) for x in ("09", "10", "11"))
    assert um.height == expect_um == 3 * 288
    assert cm.height == csv_rows(server.body(CM.format(d="2025-10-10"))) == 1440
    assert set(bars["price_type"]) == {"mark"}
    assert set(um["market"]) == {"perp"} and set(cm["symbol"]) == {"BTC/USD:BTC"}
    assert um["event_id"].n_unique() == um.height
    m = lake.manifest()
    assert m.height == 4 and (m["rows_read"] == m["rows_written"] + m["rows_quarantined"]).all()
    # the same command again: cached, already ingested, nothing new
    rc = main(["fetch", "binance-archive", "--market", "um", "--type", "markPriceKlines", "--interval", "5m",
               "--symbols", "BTCUSDT", "--start", "2025-10-09", "--end", "2025-10-11", *args])
    assert rc == 0 and table(lake, "bars").height == bars.height
    assert "already ingested" in capsys.readouterr().err
    no_partials(tmp_path)


@needs_real
@needs_importer
def test_spot_aggtrades_and_bookdepth_end_to_end(server, tmp_path):
    server.faults = {SPOT.format(d="2025-10-04"): ["reset", "truncate"]}
    lake = Lake.open(tmp_path / "lake")
    files = ba.plan("spot", "aggTrades", ["BTCUSDC"], date(2025, 10, 4), date(2025, 10, 4)) + ba.plan(
        "um", "bookDepth", ["BTCUSDT"], date(2025, 10, 10), date(2025, 10, 10))
    res = fetch(server, tmp_path, files)
    assert res.failed == [] and len(res.ready) == 2
    reports = ba.ingest_ready(res.ready, lake)
    assert [r.status for r in reports] == ["written", "written"], [r.message for r in reports]
    trades = table(lake, "trades")
    assert trades.height + reports[0].rows_quarantined == csv_rows(server.body(SPOT.format(d="2025-10-04")))
    assert trades["trade_id"].n_unique() == trades.height and set(trades["market"]) == {"spot"}
    bands = table(lake, "depth_bands")
    assert bands.height + reports[1].rows_quarantined == csv_rows(server.body(DEPTH))


@needs_real
def test_wrong_checksum_never_reaches_the_lake(server, tmp_path, capsys):
    from crashlab.cli import main

    server.bad_checksums.add(CM.format(d="2025-10-10") + ".CHECKSUM")
    lake_dir = tmp_path / "lake"
    rc = main(["fetch", "binance-archive", "--market", "cm", "--type", "markPriceKlines", "--interval", "1m",
               "--symbols", "BTCUSD_PERP", "--start", "2025-10-10", "--base-url", server.url, "--cache",
               str(tmp_path / "cache"), "--lake", str(lake_dir), "--no-progress", "--timeout", "1", "--retries", "1"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 1
    assert "BTCUSD_PERP-1m-2025-10-10.zip" in err and "sha256 mismatch" in err
    assert not lake_dir.exists() or Lake.open(lake_dir).files("bars") == []
    no_partials(tmp_path)
