"""`fetch ccxt` offline: recorded Binance JSON served through the real ccxt parsing.

`BinanceStandIn` replaces `exchange.fetch` (ccxt's single HTTP entry point, see data_formats.md
§1.7): it answers each URL from recorded responses in Binance's own JSON shape, applying Binance's
query semantics (fromId, startTime/endTime, limit) so paging is exercised for real, and it can
raise ccxt errors (RateLimitExceeded, NetworkError) or a "kill" at chosen calls.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import ccxt
import polars as pl
import pytest

from crashlab.ingest.fetch import ccxt_pull
from crashlab.ingest.fetch.ccxt_pull import FetchError, Puller, Stream
from crashlab.ingest.lake import Lake

FIX = Path(__file__).parent / "fixtures" / "ccxt"


def load(name: str):
    return json.loads((FIX / name).read_text())


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


class Killed(Exception):
    """Stands for the process dying between two requests."""


class BinanceStandIn:
    """A recorded Binance: exchangeInfo, aggTrades, klines, fundingRate and depth by URL path."""

    def __init__(self, clock=None):
        self.info = {
            "/api/v3/exchangeInfo": load("binance_exchangeInfo_spot.json"),
            "/fapi/v1/exchangeInfo": load("binance_exchangeInfo_fapi.json"),
            "/dapi/v1/exchangeInfo": load("binance_exchangeInfo_dapi.json"),
        }
        self.agg = {"/fapi/v1/aggTrades": load("binance_fapi_aggTrades_BTCUSDT.json")}
        self.klines = {"/fapi/v1/markPriceKlines": load("binance_fapi_markPriceKlines_BTCUSDT_1m.json")}
        self.funding = load("binance_fapi_fundingRate_BTCUSDT.json")
        self.depth = load("binance_api_depth_BTCUSDT.json")
        self.tape = load("binance_api_aggTrades_BTCUSDT_tape.json")
        self.clock = clock
        self.calls: list[str] = []  # data calls (exchangeInfo excluded)
        self.faults: dict[int, BaseException] = {}  # 1-based data-call number -> error to raise
        self.n_depth = 0
        self.revealed = 0

    def __call__(self, url, method="GET", headers=None, body=None):
        u = urlparse(url)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        if u.path in self.info:
            return self.info[u.path]
        self.calls.append(url)
        fault = self.faults.pop(len(self.calls), None)
        if fault is not None:
            raise fault
        limit = int(q.get("limit", 500))
        if u.path in self.agg:
            rows = self.agg[u.path]
            if "fromId" in q:
                rows = [r for r in rows if r["a"] >= int(q["fromId"])]
            elif "startTime" in q:
                rows = [r for r in rows if int(q["startTime"]) <= r["T"] <= int(q["endTime"])]
            else:
                return rows[-limit:]
            return rows[:limit]
        if u.path in self.klines:
            rows = [r for r in self.klines[u.path] if r[0] >= int(q.get("startTime", 0))]
            if "endTime" in q:
                rows = [r for r in rows if r[0] <= int(q["endTime"])]
            return rows[:limit]
        if u.path == "/fapi/v1/fundingRate":
            rows = [r for r in self.funding if r["fundingTime"] >= int(q.get("startTime", 0))]
            return rows[:limit]
        if u.path == "/api/v3/depth":
            snap = self.depth[self.n_depth % len(self.depth)]
            self.n_depth += 1
            return {**snap, "bids": snap["bids"][:limit], "asks": snap["asks"][:limit]}
        if u.path == "/api/v3/aggTrades":  # live tape: two more trades become visible per call
            now = int(self.clock() * 1000)
            for r in self.tape[self.revealed : self.revealed + 2]:
                r["T"] = now
            self.revealed = min(len(self.tape), self.revealed + 2)
            return self.tape[: self.revealed][-limit:]
        if u.path == "/fapi/v1/ticker/price":
            return {"symbol": q.get("symbol"), "price": "1", "time": 0}
        raise ccxt.BadRequest(f"stand-in has no recording for {url}")


def standin_exchange(exchange_id: str = "binance", clock=None) -> tuple[ccxt.Exchange, BinanceStandIn]:
    ex = getattr(ccxt, exchange_id)({"enableRateLimit": False})
    fake = BinanceStandIn(clock)
    ex.fetch = fake
    return ex, fake


START, END = ms("2025-10-10T20:00:00"), ms("2025-10-10T23:00:00")
EXPECTED_IDS = {str(r["a"]) for r in load("binance_fapi_aggTrades_BTCUSDT.json") if START <= r["T"] < END}


def lake_trades(lake: Lake) -> pl.DataFrame:
    files = lake.files("trades")
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


def test_fixture_is_what_the_test_needs():
    assert len(EXPECTED_IDS) == 70  # 8 more trades after END must be left out


def test_trades_pages_by_fromid_with_rate_limit_kill_and_resume(tmp_path):
    lake = Lake.open(tmp_path / "lake")
    stream = Stream("binance", "trades", "BTC/USDT:USDT")
    ex, fake = standin_exchange()
    sleeps: list[float] = []
    fake.faults = {4: ccxt.RateLimitExceeded("binance 429 Too Many Requests"), 7: Killed("SIGKILL")}
    p = Puller(ex, lake, limit=10, sleep=sleeps.append, backoff=0.5)
    with pytest.raises(Killed):
        p.pull(stream, START, END)
    assert sleeps == [1.0]  # one rate-limit backoff (2 x 0.5 s), then the retry went through
    before = lake_trades(lake)
    assert 0 < before.height < 70
    # the first request finds the first trade with a one-hour window; every later one pages by fromId
    assert "startTime" in fake.calls[0] and all("fromId" in c and "startTime" not in c for c in fake.calls[2:])

    ex2, fake2 = standin_exchange()
    rep = Puller(ex2, lake, limit=10, sleep=sleeps.append).pull(stream, START, END)
    assert rep.resumed_from is not None and rep.resumed_from["last_id"] == int(before["trade_id"].cast(pl.Int64).max())
    assert "fromId" in fake2.calls[0]  # resumed from the cursor, no new search
    after = lake_trades(lake)
    assert after.height == 70
    assert set(after["trade_id"]) == EXPECTED_IDS
    assert after["trade_id"].n_unique() == 70 and after["event_id"].n_unique() == 70
    assert set(after["market"]) == {"perp"} and set(after["native_symbol"]) == {"BTCUSDT"}
    assert set(after["symbol"]) == {"BTC/USDT:USDT"} and set(after["source"]) == {"ccxt:binance"}
    # rows are the responses' rows: price/amount/side exactly as recorded
    rec = {str(r["a"]): r for r in load("binance_fapi_aggTrades_BTCUSDT.json")}
    for row in after.iter_rows(named=True):
        r = rec[row["trade_id"]]
        assert row["price"] == float(r["p"]) and row["amount"] == float(r["q"])
        assert row["side"] == ("sell" if r["m"] else "buy")
        assert row["ts"] == datetime.fromtimestamp(r["T"] / 1000, tz=timezone.utc)
    m = lake.manifest()
    assert m.height == rep.pages + (before.height + 9) // 10 and (m["rows_written"].sum() == 70)

    # a third run finds the stream complete: one request past the end, nothing written
    ex3, fake3 = standin_exchange()
    rep3 = Puller(ex3, lake, limit=10).pull(stream, START, END)
    assert rep3.rows_written == 0 and lake_trades(lake).height == 70 and len(fake3.calls) == 1


def test_refetching_committed_pages_writes_nothing(tmp_path):
    lake = Lake.open(tmp_path / "lake")
    stream = Stream("binance", "trades", "BTC/USDT:USDT")
    ex, _ = standin_exchange()
    p = Puller(ex, lake, limit=25)
    first = p.pull(stream, START, END)
    assert first.rows_written == 70 and first.pages == 3
    rep = ccxt_pull.PullReport(stream)
    p._binance_trades(stream, p.market(stream.symbol), START, END, None, rep)  # ignore the cursor
    assert rep.pages == 3 and rep.already == 3 and rep.rows_written == 0
    assert lake_trades(lake).height == 70


def test_mark_klines_and_funding_pages(tmp_path):
    lake = Lake.open(tmp_path / "lake")
    ex, fake = standin_exchange()
    p = Puller(ex, lake, limit=20)
    rep = p.pull(Stream("binance", "mark", "BTC/USDT:USDT", "1m"), ms("2025-10-10T21:00:00"), ms("2025-10-10T21:40:00"))
    assert rep.rows_written == 40 and rep.pages == 2
    assert all("markPriceKlines" in c for c in fake.calls)
    bars = pl.concat([pl.read_parquet(f) for f in lake.files("bars")])
    assert bars.height == 40 and set(bars["price_type"]) == {"mark"} and set(bars["interval"]) == {"1m"}
    kl = load("binance_fapi_markPriceKlines_BTCUSDT_1m.json")
    assert bars.sort("ts")["close"].to_list() == [float(k[4]) for k in kl[:40]]

    rep = p.pull(Stream("binance", "funding", "BTC/USDT:USDT"), ms("2025-10-09T00:00:00"), ms("2025-10-12T00:00:00"))
    assert rep.rows_written == 9
    f = pl.concat([pl.read_parquet(x) for x in lake.files("funding")]).sort("ts")
    assert f["rate"].to_list() == [float(r["fundingRate"]) for r in load("binance_fapi_fundingRate_BTCUSDT.json")]
    # again: resumes past the last row, writes nothing
    again = p.pull(Stream("binance", "funding", "BTC/USDT:USDT"), ms("2025-10-09T00:00:00"), ms("2025-10-12T00:00:00"))
    assert again.rows_written == 0 and again.resumed_from is not None


def test_liquidations_are_said_to_be_unavailable(tmp_path):
    ex, fake = standin_exchange()
    rep = Puller(ex, Lake.open(tmp_path)).pull(Stream("binance", "liquidations", "BTC/USDT:USDT"), START, END)
    assert rep.status == "unsupported"
    assert "fetchLiquidations" in rep.message and "Binance has no public liquidation history" in rep.message
    assert fake.calls == []


def test_bad_symbol_is_a_clear_error(tmp_path):
    ex, fake = standin_exchange()
    p = Puller(ex, Lake.open(tmp_path))
    with pytest.raises(FetchError, match=r"no market 'BTC/USDX:USDT'; did you mean BTC/USDT:USDT"):
        p.pull(Stream("binance", "trades", "BTC/USDX:USDT"), START, END)
    with pytest.raises(FetchError, match="native id; use the ccxt symbol"):
        p.pull(Stream("binance", "trades", "BTCUSD_PERP"), START, END)
    fake.faults = {1: ccxt.BadSymbol("binance {\"code\":-1121,\"msg\":\"Invalid symbol.\"}")}
    with pytest.raises(FetchError, match="bad symbol for trades.*Invalid symbol"):
        p.pull(Stream("binance", "trades", "BTC/USDT:USDT"), START, END)


def test_network_errors_exhaust_retries_and_say_how_to_resume(tmp_path):
    ex, fake = standin_exchange()
    fake.faults = {i: ccxt.NetworkError("connection reset") for i in range(1, 10)}
    p = Puller(ex, Lake.open(tmp_path), retries=3, sleep=lambda s: None)
    with pytest.raises(FetchError, match="network error 4 times in a row.*rerun the same command to resume"):
        p.pull(Stream("binance", "trades", "BTC/USDT:USDT"), START, END)


def test_cli_fetch_ccxt(tmp_path, monkeypatch, capsys):
    from crashlab.cli import main

    made = []

    def fake_make(exchange_id, config=None):
        ex, fake = standin_exchange(exchange_id)
        made.append(fake)
        return ex

    monkeypatch.setattr(ccxt_pull, "make_exchange", fake_make)
    rc = main(["fetch", "ccxt", "--exchange", "binance", "--symbols", "BTC/USDT:USDT", "--start", "2025-10-10T20:00",
               "--end", "2025-10-10T23:00", "--what", "trades,liquidations", "--limit", "10",
               "--lake", str(tmp_path / "lake"), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out
    assert "Binance has no public liquidation history" in out.err + out.out
    assert lake_trades(Lake.open(tmp_path / "lake")).height == 70


def test_since_paging_dedupes_the_boundary_millisecond(tmp_path):
    """Venues without id paging are paged on an inclusive `since`; trades sharing the boundary ms
    (the fixture has two at one ms, split by the page size) are written once each."""
    lake = Lake.open(tmp_path / "lake")
    stream = Stream("binance", "trades", "BTC/USDT:USDT")
    ex, fake = standin_exchange()
    p = Puller(ex, lake, limit=11)
    rep = ccxt_pull.PullReport(stream)
    start = ms("2025-10-10T21:05:00")
    p._since_pages(stream, p.market(stream.symbol), start, END, None, rep)
    got = lake_trades(lake)
    assert got.height == 70 and got["trade_id"].n_unique() == 70 and rep.rows_quarantined == 0
    assert all("startTime" in c and "fromId" not in c for c in fake.calls)
