"""A live recorder: order-book snapshots (top N levels) and trades, polled through ccxt into the lake.

The next crash will not be in any archive for a day, and order books are never archived by most
venues at all, so the toolkit must be able to record them itself. Polls are buffered and written
in batches through `ingest_parsed` (one manifest row per symbol per batch, atomic): a kill loses
at most the batch in memory, never corrupts the lake. Trades are deduped against the last trade
id committed (kept in the batch's cursor), so a restarted recorder does not write a trade twice.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import polars as pl

from ..formats.base import Parsed
from ..lake import Lake
from ..pipeline import ingest_parsed
from . import ccxt_frames as cf


@dataclass(frozen=True)
class RecordConfig:
    symbols: list[str]
    every: float = 1.0  # seconds between polls of one symbol
    duration: float = 600.0  # seconds in all
    depth: int = 20  # book levels per side kept
    batch_every: float = 10.0  # seconds of polls per committed batch (the most a kill can lose)
    trades: bool = True
    trade_limit: int = 1000


@dataclass
class RecordReport:
    polls: int = 0
    snapshots: int = 0
    trades: int = 0
    batches: int = 0
    missed_ticks: int = 0  # polls skipped because the venue answered slower than the cadence
    errors: list[str] = field(default_factory=list)


class Recorder:
    """Polls `fetch_order_book` (and `fetch_trades`) per symbol at a fixed cadence."""

    def __init__(
        self,
        ex: Any,
        lake: Lake,
        cfg: RecordConfig,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] | None = None,
        on_poll: Callable[[int], None] | None = None,
    ):
        self.ex, self.lake, self.cfg = ex, lake, cfg
        self.clock, self.sleep = clock, sleep
        self.log = log or (lambda s: None)
        self.on_poll = on_poll
        self.venue = cf.venue_of(ex.id)
        self.source = f"ccxt:{ex.id}"
        self.books: dict[str, list[tuple[dict, datetime]]] = {s: [] for s in cfg.symbols}
        self.new_trades: dict[str, list[dict]] = {s: [] for s in cfg.symbols}
        self.trade_received: dict[str, list[datetime]] = {s: [] for s in cfg.symbols}
        self.last_trade_id: dict[str, int | None] = {s: None for s in cfg.symbols}
        self.last_book_ts: dict[str, Any] = {}
        self.batch_no = 0

    def _stream(self, symbol: str) -> dict:
        return {"exchange": self.ex.id, "what": "record", "symbol": symbol, "timeframe": None}

    def _restore(self) -> None:
        """Pick up the last committed trade id per symbol, so a restart does not repeat trades."""
        m = self.lake.manifest()
        if m.height == 0:
            return
        for c in m.filter(pl.col("format") == "ccxt.record")["cursor"].drop_nulls().to_list():
            cur = json.loads(c)
            st = cur.get("stream", {})
            if st.get("exchange") == self.ex.id and st.get("symbol") in self.last_trade_id:
                lid, sym = cur.get("last_trade_id"), st["symbol"]
                if lid is not None and (self.last_trade_id[sym] is None or lid > self.last_trade_id[sym]):
                    self.last_trade_id[sym] = lid
                self.batch_no = max(self.batch_no, int(cur.get("batch", 0)))

    def poll(self, symbol: str, rep: RecordReport) -> None:
        import ccxt

        try:
            ob = self.ex.fetch_order_book(symbol, self.cfg.depth)
            received = datetime.fromtimestamp(self.clock(), tz=timezone.utc)
            stamp = (ob.get("timestamp"), ob.get("nonce"))
            if ob.get("timestamp") is None or self.last_book_ts.get(symbol) != stamp:
                self.books[symbol].append((ob, received))
                self.last_book_ts[symbol] = stamp
            if self.cfg.trades:
                trades = self.ex.fetch_trades(symbol, None, self.cfg.trade_limit)
                last = self.last_trade_id[symbol]
                fresh = [t for t in trades if t.get("id") is not None and (last is None or int(t["id"]) > last)]
                if fresh:
                    got = datetime.fromtimestamp(self.clock(), tz=timezone.utc)
                    self.new_trades[symbol].extend(fresh)
                    self.trade_received[symbol].extend([got] * len(fresh))
                    self.last_trade_id[symbol] = max(int(t["id"]) for t in fresh)
        except (ccxt.NetworkError, ccxt.ExchangeNotAvailable) as e:  # keep recording; say so
            rep.errors.append(f"{symbol}: {type(e).__name__}: {e}")
            self.log(f"{symbol}: {type(e).__name__}: {e} (poll skipped)")
        rep.polls += 1
        if self.on_poll:
            self.on_poll(rep.polls)

    def flush(self, rep: RecordReport) -> None:
        """Commit everything buffered: one atomic source per symbol."""
        self.batch_no += 1
        for symbol in self.cfg.symbols:
            books, trades = self.books[symbol], self.new_trades[symbol]
            if not books and not trades:
                continue
            market = self.ex.market(symbol)
            tables: dict[str, pl.DataFrame] = {}
            if books:
                tables["book_snapshots"] = cf.book_frame(self.venue, market, books, self.cfg.depth)
            if trades:
                tf = cf.trades_frame(self.venue, market, trades)
                tables["trades"] = tf.with_columns(
                    pl.col("_row") + len(books),
                    pl.Series("local_ts", self.trade_received[symbol], dtype=pl.Datetime("us", "UTC")),
                )
            first = books[0][1] if books else None
            ident = {"stream": self._stream(symbol), "batch": self.batch_no,
                     "first_poll": first.isoformat() if first else None}
            parsed = Parsed(
                format="ccxt.record", rows_read=len(books) + len(trades), tables=tables,
                raw=cf.raw_frame([{"nonce": b.get("nonce"), "timestamp": b.get("timestamp")} for b, _ in books] + trades),
                decisions={"source": self.source, "depth": self.cfg.depth, "every_s": self.cfg.every,
                           "book_ts": "venue timestamp if given, else local receipt time"},
            )
            cursor = {"stream": self._stream(symbol), "batch": self.batch_no,
                      "pos": int(books[-1][1].timestamp() * 1000) if books else None,
                      "last_trade_id": self.last_trade_id[symbol]}
            sha = cf.content_sha256(ident, tables)
            r = ingest_parsed(self.lake, parsed, path=f"ccxt-live://{self.ex.id}/{symbol}?batch={self.batch_no}",
                              sha256=sha, source=self.source, cursor=cursor)
            rep.snapshots += len(books)
            rep.trades += len(trades)
            self.books[symbol], self.new_trades[symbol], self.trade_received[symbol] = [], [], []
            if r.rows_quarantined:
                self.log(f"{symbol}: batch {self.batch_no}: {r.rows_quarantined} units quarantined")
        rep.batches += 1

    def run(self) -> RecordReport:
        rep = RecordReport()
        if not self.ex.markets:
            self.ex.load_markets()
        for s in self.cfg.symbols:
            self.ex.market(s)  # raises BadSymbol before any recording starts
        with self.lake.lock():
            self.lake.recover()  # a batch cut off by a kill is removed, never half-kept
        self._restore()
        t0 = self.clock()
        next_tick, last_flush = t0, t0
        while True:
            now = self.clock()
            if now - t0 >= self.cfg.duration:
                break
            for s in self.cfg.symbols:
                self.poll(s, rep)
            if self.clock() - last_flush >= self.cfg.batch_every:
                with self.lake.lock():
                    self.flush(rep)
                last_flush = self.clock()
            next_tick += self.cfg.every
            now = self.clock()
            if now > next_tick:  # fell behind: skip the ticks we cannot make, keep the cadence
                skipped = int((now - next_tick) // self.cfg.every) + 1
                rep.missed_ticks += skipped
                next_tick += skipped * self.cfg.every
            self.sleep(max(0.0, next_tick - self.clock()))
        with self.lake.lock():
            self.flush(rep)
        return rep
