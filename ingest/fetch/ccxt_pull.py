"""History through ccxt, page by page, each page one resumable commit.

Why our own loops rather than ccxt's `paginate=True`: Binance trades must be paged by aggregate id
(`fromId`); ccxt's forward mode sends one-hour `startTime/endTime` windows and, with `until`, an
`endTime` that Binance refuses (-1127), and it stops at the first quiet hour (see
../shared/reference/data_formats.md §1.1). A page is committed with `ingest_parsed` together with
a cursor (the next `fromId` or `since`) in the manifest; a rerun of the same command reads the
cursors back and continues after the last committed page, so an interrupted pull neither loses
nor repeats rows. Network trouble (RateLimitExceeded, NetworkError) is retried with backoff; an
unknown symbol is a clear error; a history the venue cannot give is said plainly, not faked.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import polars as pl

from ..formats.base import Parsed
from ..lake import Lake
from ..pipeline import FileReport, ingest_parsed
from . import ccxt_frames as cf

WHAT = ("trades", "ohlcv", "mark", "index", "funding", "open_interest", "liquidations")
HAS = {
    "trades": "fetchTrades",
    "ohlcv": "fetchOHLCV",
    "mark": "fetchMarkOHLCV",
    "index": "fetchIndexOHLCV",
    "funding": "fetchFundingRateHistory",
    "open_interest": "fetchOpenInterestHistory",
    "liquidations": "fetchLiquidations",
}
#: what to do instead, when a venue cannot give a history
INSTEAD = {
    "liquidations": (
        "Binance has no public liquidation history (its REST forceOrders endpoint is private and its "
        "forceOrder stream keeps one event per symbol per second, live only); use Tardis "
        "'liquidations' files (`crashlab fetch tardis --type liquidations`) or record live with "
        "`crashlab record`"
    ),
    "open_interest": "Binance serves ~30 days of openInterestHist; for older days use the archive's "
    "`metrics` files (`crashlab fetch binance-archive --type metrics`)",
}
BINANCE_IDS = {"binance", "binanceusdm", "binancecoinm", "binanceus"}


class FetchError(Exception):
    """A pull that cannot go on; the message says what and, if it can be resumed, how."""


class Unsupported(FetchError):
    """The venue does not offer this history through ccxt."""


@dataclass(frozen=True)
class Stream:
    """One history: (exchange, what, symbol[, timeframe]). Its cursors are found by this key."""

    exchange: str
    what: str
    symbol: str
    timeframe: str | None = None

    def key(self) -> dict[str, Any]:
        return {"exchange": self.exchange, "what": self.what, "symbol": self.symbol, "timeframe": self.timeframe}

    @property
    def format(self) -> str:
        return f"ccxt.{self.what}"


@dataclass
class PullReport:
    stream: Stream
    pages: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    already: int = 0  # pages found committed already
    resumed_from: dict | None = None
    status: str = "done"  # done | unsupported | error
    message: str = ""
    reports: list[FileReport] = field(default_factory=list)


def _tf_ms(ex: Any, timeframe: str) -> int:
    return int(ex.parse_timeframe(timeframe) * 1000)


class Puller:
    """Pulls streams from one ccxt exchange into one lake."""

    def __init__(
        self,
        ex: Any,
        lake: Lake,
        *,
        limit: int = 1000,
        retries: int = 5,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] | None = None,
        on_page: Callable[[PullReport], None] | None = None,
    ):
        import ccxt  # noqa: F401  (ensures the dependency is importable before any work)

        self.ex, self.lake, self.limit = ex, lake, limit
        self.retries, self.backoff, self.sleep = retries, backoff, sleep
        self.log = log or (lambda s: None)
        self.on_page = on_page
        self.venue = cf.venue_of(ex.id)
        self.source = f"ccxt:{ex.id}"

    # ---- calls with retries ----------------------------------------------------------------
    def call(self, what: str, fn: Callable, *args: Any, **kw: Any) -> Any:
        import ccxt

        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kw)
            except ccxt.BadSymbol as e:
                raise FetchError(f"{self.ex.id}: bad symbol for {what}: {e}") from None
            except (ccxt.RateLimitExceeded, ccxt.DDoSProtection) as e:
                kind, err = "rate limited", e
            except ccxt.NetworkError as e:  # timeouts, resets, exchange not available
                kind, err = "network error", e
            if attempt == self.retries:
                raise FetchError(
                    f"{self.ex.id} {what}: {kind} {self.retries + 1} times in a row ({type(err).__name__}: {err}); "
                    "committed pages are kept: rerun the same command to resume from the cursor"
                )
            wait = self.backoff * 2**attempt * (2 if kind == "rate limited" else 1)
            self.log(f"{self.ex.id} {what}: {kind} ({type(err).__name__}); retry {attempt + 1}/{self.retries} in {wait:.2f}s")
            self.sleep(wait)
        raise AssertionError("unreachable")

    def market(self, symbol: str) -> dict:
        if not self.ex.markets:
            self.call("load_markets", self.ex.load_markets)
        if symbol not in self.ex.markets:
            if symbol in getattr(self.ex, "markets_by_id", {}) or {}:
                real = self.ex.markets_by_id[symbol][0]["symbol"]
                raise FetchError(f"{self.ex.id}: {symbol!r} is a native id; use the ccxt symbol {real!r}")
            close = difflib.get_close_matches(symbol, list(self.ex.markets), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise FetchError(f"{self.ex.id}: no market {symbol!r}{hint}")
        return self.ex.markets[symbol]

    # ---- cursors -----------------------------------------------------------------------------
    def cursors(self, stream: Stream) -> list[dict]:
        """Cursors of committed pages of this stream, oldest position first."""
        m = self.lake.manifest()
        if m.height == 0:
            return []
        m = m.filter(pl.col("format") == stream.format).filter(pl.col("cursor").is_not_null())
        out = []
        for c in m["cursor"].to_list():
            cur = json.loads(c)
            if cur.get("stream") == stream.key():
                out.append(cur)
        return sorted(out, key=lambda c: (c["pos"], c.get("last_id") or 0))

    def resume_point(self, stream: Stream, start: int) -> dict | None:
        """The cursor to continue from: follow committed runs that cover `start` to their end."""
        curs = self.cursors(stream)
        best = None
        point = start
        moved = True
        while moved:
            moved = False
            for c in curs:
                if c["run_start"] <= point <= c["pos"] + 1 and (best is None or c["pos"] > best["pos"]
                                                               or (c["pos"] == best["pos"] and (c.get("last_id") or 0) > (best.get("last_id") or 0))):
                    best, point, moved = c, c["pos"], True
        return best

    # ---- commit --------------------------------------------------------------------------------
    def commit(self, stream: Stream, table: str, frame: pl.DataFrame, items: list, request: dict, cursor: dict,
               rep: PullReport) -> None:
        ident = {"stream": stream.key(), "request": request}
        sha = cf.content_sha256(ident, {table: frame})
        parsed = Parsed(
            format=stream.format, rows_read=frame["_row"].n_unique() if frame.height else 0,
            tables={table: frame}, raw=cf.raw_frame(items),
            decisions={"source": self.source, "venue": self.venue, "request": request,
                       "amounts": "base asset (ccxt contracts converted with contractSize)"},
        )
        q = "&".join(f"{k}={v}" for k, v in request.items())
        path = f"ccxt://{self.ex.id}/{stream.what}/{stream.symbol}" + (f"/{stream.timeframe}" if stream.timeframe else "") + f"?{q}"
        with self.lake.lock():
            r = ingest_parsed(self.lake, parsed, path=path, sha256=sha, source=self.source,
                              cursor={"stream": stream.key(), **cursor})
        rep.reports.append(r)
        rep.pages += 1
        if r.status == "already ingested":
            rep.already += 1
        rep.rows_written += r.rows_written
        rep.rows_quarantined += r.rows_quarantined
        if self.on_page:
            self.on_page(rep)

    # ---- streams -------------------------------------------------------------------------------
    def pull(self, stream: Stream, start: int, end: int) -> PullReport:
        """Pull [start, end) (ms since epoch) of one stream, resuming from its cursor."""
        rep = PullReport(stream)
        has = self.ex.has.get(HAS[stream.what])
        if not has:
            rep.status = "unsupported"
            extra = INSTEAD.get(stream.what, "") if self.ex.id in BINANCE_IDS or stream.what == "liquidations" else ""
            rep.message = (f"{self.ex.id} cannot give {stream.what}: ccxt exchange.has['{HAS[stream.what]}'] "
                           f"is {has!r}" + (f". {extra}" if extra else ""))
            return rep
        market = self.market(stream.symbol)
        with self.lake.lock():
            self.lake.recover()  # drop files of a page whose commit a kill cut off
        if stream.what in ("mark", "index", "funding", "open_interest") and not market.get("contract"):
            rep.status = "unsupported"
            rep.message = f"{stream.symbol} is a spot market: it has no {stream.what} history"
            return rep
        resume = self.resume_point(stream, start)
        rep.resumed_from = resume
        if stream.what == "trades" and self.ex.id in BINANCE_IDS:
            self._binance_trades(stream, market, start, end, resume, rep)
        else:
            self._since_pages(stream, market, start, end, resume, rep)
        return rep

    def _binance_trades(self, stream: Stream, market: dict, start: int, end: int, resume: dict | None,
                        rep: PullReport) -> None:
        """Page aggTrades by `fromId`: deterministic, gap-free and resumable (one id after another)."""
        run_start = resume["run_start"] if resume else start
        from_id = resume.get("next_from_id") if resume else None
        last_id = resume.get("last_id") if resume else None
        if from_id is None:
            # Find the first trade at or after `start`: one-hour windows (Binance's limit) until one has trades.
            since = resume["pos"] + 1 if resume else start
            while since < end:
                req = {"startTime": since, "endTime": min(since + 3_600_000, end) - 1}
                page = self.call("trades", self.ex.fetch_trades, stream.symbol, since, self.limit,
                                 {"until": req["endTime"]})
                page = [t for t in page if since <= t["timestamp"] < end]
                if page:
                    self._commit_trades(stream, market, page, req, run_start, end, rep)
                    last_id = int(page[-1]["id"])
                    from_id = last_id + 1
                    break
                since += 3_600_000
            else:
                return
        while True:
            req = {"fromId": from_id, "limit": self.limit}
            page = self.call("trades", self.ex.fetch_trades, stream.symbol, None, self.limit, {"fromId": from_id})
            page = [t for t in page if last_id is None or int(t["id"]) > last_id]  # never a row twice
            inside = [t for t in page if t["timestamp"] < end]
            if inside:
                self._commit_trades(stream, market, inside, req, run_start, end, rep)
                last_id = int(inside[-1]["id"])
                from_id = last_id + 1
            if not page or len(inside) < len(page):
                return  # reached the present, or passed the end of the window

    def _commit_trades(self, stream: Stream, market: dict, page: list[dict], req: dict, run_start: int, end: int,
                       rep: PullReport) -> None:
        page = sorted(page, key=lambda t: (t["timestamp"], int(t["id"])))
        frame = cf.trades_frame(self.venue, market, page)
        last = page[-1]
        cursor = {"run_start": run_start, "pos": last["timestamp"], "last_id": int(last["id"]),
                  "next_from_id": int(last["id"]) + 1, "end": end}
        self.commit(stream, "trades", frame, page, req, cursor, rep)

    def _since_pages(self, stream: Stream, market: dict, start: int, end: int, resume: dict | None,
                     rep: PullReport) -> None:
        """Forward paging on `since` for everything else; rows at the boundary ms are deduped by key."""
        run_start = resume["run_start"] if resume else start
        since = resume["next_since"] if resume else start
        seen: set[str] = set(resume.get("seen_at_pos", [])) if resume else set()
        step = _tf_ms(self.ex, stream.timeframe) if stream.what in ("ohlcv", "mark", "index") else 0
        while since < end:
            page, req = self._page(stream, since)
            if not page:
                return
            fresh = [x for x in page if start <= x["_ts"] < end and x["_key"] not in seen]
            if not fresh:
                if len(page) >= self.limit and page[-1]["_ts"] == since:
                    since, seen = since + 1, set()  # a full page inside one ms: step past it
                    continue
                return
            pos = fresh[-1]["_ts"]
            if step:
                next_since, seen_now = pos + step, set()
            else:  # `since` is inclusive on most venues: ask again from `pos`, skip what we have
                next_since = pos
                seen_now = {x["_key"] for x in fresh if x["_ts"] == pos} | (seen if pos == since else set())
            table, frame = self._frame(stream, market, fresh)
            cursor = {"run_start": run_start, "pos": pos, "next_since": next_since,
                      "seen_at_pos": sorted(seen_now), "end": end}
            self.commit(stream, table, frame, [x["_raw"] for x in fresh], req, cursor, rep)
            if page[-1]["_ts"] >= end:
                return
            since, seen = next_since, seen_now

    def _page(self, stream: Stream, since: int) -> tuple[list[dict], dict]:
        """One page from `since`, items tagged with `_ts`, `_key` (dedupe) and `_raw`, in time order."""
        ex, sym, what = self.ex, stream.symbol, stream.what
        req = {"since": since, "limit": self.limit}
        if what in ("ohlcv", "mark", "index"):
            params = {} if what == "ohlcv" else {"price": what}
            raw = self.call(what, ex.fetch_ohlcv, sym, stream.timeframe, since, self.limit, params)
            items = [{"_ts": c[0], "_key": str(c[0]), "_raw": c} for c in raw]
        elif what == "funding":
            raw = self.call(what, ex.fetch_funding_rate_history, sym, since, self.limit)
            items = [{"_ts": x["timestamp"], "_key": str(x["timestamp"]), "_raw": x} for x in raw]
        elif what == "open_interest":
            tf = stream.timeframe or "5m"
            raw = self.call(what, ex.fetch_open_interest_history, sym, tf, since, self.limit)
            items = [{"_ts": x["timestamp"], "_key": str(x["timestamp"]), "_raw": x} for x in raw]
        elif what == "liquidations":
            raw = self.call(what, ex.fetch_liquidations, sym, since, self.limit)
            items = [{"_ts": x["timestamp"], "_raw": x,
                      "_key": json.dumps([x["timestamp"], x.get("price"), x.get("contracts"), x.get("side")])}
                     for x in raw]
        else:  # trades on venues without id paging
            raw = self.call(what, ex.fetch_trades, sym, since, self.limit)
            items = [{"_ts": x["timestamp"], "_raw": x,
                      "_key": str(x.get("id") or json.dumps([x["timestamp"], x["price"], x["amount"]]))} for x in raw]
        items = [x for x in items if x["_ts"] is not None]
        items.sort(key=lambda x: (x["_ts"], x["_key"]))
        return items, req

    def _frame(self, stream: Stream, market: dict, items: list[dict]) -> tuple[str, pl.DataFrame]:
        raw = [x["_raw"] for x in items]
        w = stream.what
        if w == "trades":
            return "trades", cf.trades_frame(self.venue, market, raw)
        if w in ("ohlcv", "mark", "index"):
            pt = {"ohlcv": "trade", "mark": "mark", "index": "index"}[w]
            return "bars", cf.ohlcv_frame(self.venue, market, raw, str(stream.timeframe), pt)
        if w == "funding":
            return "funding", cf.funding_frame(self.venue, market, raw)
        if w == "open_interest":
            return "open_interest", cf.open_interest_frame(self.venue, market, raw)
        return "liquidations", cf.liquidations_frame(self.venue, market, raw)


def make_exchange(exchange_id: str, config: dict | None = None) -> Any:
    """A sync ccxt exchange (requests-based), rate limiting on."""
    import ccxt

    if exchange_id not in ccxt.exchanges:
        close = difflib.get_close_matches(exchange_id, ccxt.exchanges, n=3)
        raise FetchError(f"ccxt has no exchange {exchange_id!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    return getattr(ccxt, exchange_id)({"enableRateLimit": True, **(config or {})})
