"""The lake's tables for a window and a set of instruments, merged into one ordered event stream.

Order is `(ts, table priority, sequence)`: `TABLE_PRIORITY` puts books and reference prices before
the trades at the same microsecond, and `sequence` is (file rank, row in file), with files ranked by
(table priority, path), so two runs over the same lake read the same stream, byte for byte.

Memory is bounded by one Arrow batch per open file: every lake file is sorted by ts (lake.py writes
it so), so a k-way merge can emit every row older than the smallest "next possible ts" of the open
files. Nothing reads a whole table. Rows come out as `EventBatch`: flat numpy columns shared by all
tables (the fold in state.py is numpy, not per-row Python).

Bars are expanded into a path of four ticks inside the bar (open at the bar's start; high and low
at 1/3 and 2/3, low first on a down bar; close at its end) when `bar_path="ohlc"`, or one tick at
the bar's end with `bar_path="close"` (causal: a bar's close is only known when it ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crashlab.ingest.lake import Lake
from crashlab.ingest.schema import TABLE_PRIORITY

#: Tables the fold reads (markers are read separately by the engine: they carry no instrument).
STATE_TABLES = ("book_snapshots", "book_deltas", "depth_bands", "prices", "bars", "trades")

PTYPES = {"trade": 0, "mark": 1, "index": 2, "oracle": 3, "conversion_rate": 4, "pool": 5, "premium": 6,
          "other": 7, "book_mid": 8}
TABLE_CODE = {t: TABLE_PRIORITY[t] for t in STATE_TABLES}

Instrument = tuple[str, str, str]  # venue, market, symbol

_COLS = {
    "trades": ["event_id", "ts", "venue", "market", "symbol", "side", "price", "amount", "is_liquidation"],
    "book_snapshots": ["event_id", "ts", "venue", "market", "symbol", "side", "level", "price", "amount"],
    "book_deltas": ["event_id", "ts", "venue", "market", "symbol", "is_snapshot", "side", "price", "amount"],
    "depth_bands": ["event_id", "ts", "venue", "market", "symbol", "band_pct", "depth", "notional"],
    "prices": ["event_id", "ts", "venue", "market", "symbol", "price_type", "price"],
    "bars": ["event_id", "ts", "venue", "market", "symbol", "interval", "price_type", "open", "high", "low",
             "close", "quote_volume", "volume"],
}
_INTERVAL_US = {"1s": 1_000_000, "1m": 60_000_000, "3m": 180_000_000, "5m": 300_000_000, "15m": 900_000_000,
                "30m": 1_800_000_000, "1h": 3_600_000_000, "4h": 14_400_000_000, "1d": 86_400_000_000}


@dataclass
class EventBatch:
    """Flat columns of merged events (all numpy, same length)."""

    ts: np.ndarray  # int64 µs since epoch
    table: np.ndarray  # int8 TABLE_PRIORITY code
    seq: np.ndarray  # int64
    inst: np.ndarray  # int32 index into Stream.instruments
    side: np.ndarray  # int8: +1 bid/buy, -1 ask/sell, 0 n/a
    price: np.ndarray  # float64 (depth_bands: band_pct)
    amount: np.ndarray  # float64 base (depth_bands: quote notional; bars: quote volume share)
    aux: np.ndarray  # float64: trades is_liquidation (1/0/nan); deltas is_snapshot; snapshots level
    ptype: np.ndarray  # int8 PTYPES code (price-carrying rows)
    event_id: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.ts)

    @staticmethod
    def concat(parts: list["EventBatch"]) -> "EventBatch":
        return EventBatch(*[np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS])

    def slice(self, a: int, b: int) -> "EventBatch":
        return EventBatch(*[getattr(self, f)[a:b] for f in _FIELDS])

    def take(self, idx: np.ndarray) -> "EventBatch":
        return EventBatch(*[getattr(self, f)[idx] for f in _FIELDS])


_FIELDS = ("ts", "table", "seq", "inst", "side", "price", "amount", "aux", "ptype", "event_id")


def _us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000) if t.tzinfo else int(t.replace(tzinfo=None).timestamp() * 1e6)


def _side(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    s = pc.fill_null(col, "")
    buy = pc.or_(pc.equal(s, "buy"), pc.equal(s, "bid")).to_numpy(zero_copy_only=False)
    sell = pc.or_(pc.equal(s, "sell"), pc.equal(s, "ask")).to_numpy(zero_copy_only=False)
    return (buy.astype(np.int8) - sell.astype(np.int8))


def _f64(col) -> np.ndarray:
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)


class Stream:
    """Iterate merged `EventBatch`es; `instruments` grows as new (venue, market, symbol) appear."""

    def __init__(
        self,
        lake: Lake,
        start: datetime,
        end: datetime,
        instruments: set[Instrument] | None = None,
        tables: tuple[str, ...] = STATE_TABLES,
        batch_rows: int = 131_072,
        bar_path: str = "ohlc",
    ):
        if bar_path not in ("ohlc", "close"):
            raise ValueError(f"bar_path must be ohlc or close, not {bar_path!r}")
        self.lake, self.start, self.end = lake, start, end
        self.start_us, self.end_us = _us(start), _us(end)
        self.want = instruments
        self.tables = tables
        self.batch_rows = batch_rows
        self.bar_path = bar_path
        self.instruments: list[Instrument] = []
        self._inst_index: dict[Instrument, int] = {}
        self.files: list[tuple[str, Path]] = sorted(
            ((t, f) for t in tables for f in lake.files(t)), key=lambda x: (TABLE_PRIORITY[x[0]], str(x[1]))
        )
        self.rows_read = 0

    # ---- per file ----------------------------------------------------------------------------
    def _codes(self, venue, market, symbol) -> np.ndarray:
        """Instrument codes for a batch; rows not wanted get -1."""
        keys = pa.Table.from_arrays([venue, market, symbol], names=["v", "m", "s"])
        uniq = keys.group_by(["v", "m", "s"]).aggregate([]).to_pylist()
        lookup: dict[Instrument, int] = {}
        for r in uniq:
            k = (r["v"], r["m"], r["s"])
            if self.want is not None and k not in self.want:
                lookup[k] = -1
                continue
            if k not in self._inst_index:
                self._inst_index[k] = len(self.instruments)
                self.instruments.append(k)
            lookup[k] = self._inst_index[k]
        if len(lookup) == 1:
            return np.full(len(venue), next(iter(lookup.values())), dtype=np.int32)
        joined = pc.binary_join_element_wise(venue, market, symbol, "\x1f").to_pylist()
        m = {"\x1f".join(k): v for k, v in lookup.items()}
        return np.fromiter((m[x] for x in joined), dtype=np.int32, count=len(joined))

    def _convert(self, table: str, rb: pa.RecordBatch, file_rank: int, row0: int) -> EventBatch:
        n = rb.num_rows
        col = rb.column
        names = rb.schema.names
        g = lambda c: col(names.index(c))  # noqa: E731
        ts = pc.cast(g("ts"), pa.int64()).to_numpy(zero_copy_only=False)
        inst = self._codes(g("venue"), g("market"), g("symbol"))
        seq = (np.int64(file_rank) << np.int64(40)) + row0 + np.arange(n, dtype=np.int64)
        eid = g("event_id").to_numpy(zero_copy_only=False).astype(np.int64)
        code = np.int8(TABLE_CODE[table])
        nanv = np.full(n, np.nan)
        zeros8 = np.zeros(n, dtype=np.int8)
        if table == "trades":
            liq = g("is_liquidation")
            aux = np.where(pc.is_null(liq).to_numpy(zero_copy_only=False), np.nan,
                           pc.fill_null(liq, False).to_numpy(zero_copy_only=False).astype(float))
            b = EventBatch(ts, np.full(n, code), seq, inst, _side(g("side")), _f64(g("price")), _f64(g("amount")),
                           aux, zeros8, eid)
        elif table == "book_snapshots":
            b = EventBatch(ts, np.full(n, code), seq, inst, _side(g("side")), _f64(g("price")), _f64(g("amount")),
                           _f64(g("level")), zeros8, eid)
        elif table == "book_deltas":
            snap = pc.fill_null(g("is_snapshot"), False).to_numpy(zero_copy_only=False).astype(float)
            b = EventBatch(ts, np.full(n, code), seq, inst, _side(g("side")), _f64(g("price")), _f64(g("amount")),
                           snap, zeros8, eid)
        elif table == "depth_bands":
            band = _f64(g("band_pct"))
            b = EventBatch(ts, np.full(n, code), seq, inst, np.sign(band).astype(np.int8), band,
                           _f64(g("notional")), _f64(g("depth")), zeros8, eid)
        elif table == "prices":
            pt = np.array([PTYPES.get(x, 7) for x in pc.fill_null(g("price_type"), "other").to_pylist()], dtype=np.int8)
            b = EventBatch(ts, np.full(n, code), seq, inst, zeros8, _f64(g("price")), nanv.copy(), nanv, pt, eid)
        elif table == "bars":
            b = self._bars(g, ts, inst, seq, eid, n, code)
        else:  # pragma: no cover - guarded by STATE_TABLES
            raise ValueError(table)
        keep = b.inst >= 0
        return b if keep.all() else b.take(np.nonzero(keep)[0])

    def _bars(self, g, ts, inst, seq, eid, n, code) -> EventBatch:
        iv = np.array([_INTERVAL_US.get(x, 60_000_000) for x in pc.fill_null(g("interval"), "1m").to_pylist()],
                      dtype=np.int64)
        pt = np.array([PTYPES.get(x, 7) for x in pc.fill_null(g("price_type"), "trade").to_pylist()], dtype=np.int8)
        o, h, lo, c = (_f64(g(x)) for x in ("open", "high", "low", "close"))
        qv = _f64(g("quote_volume"))
        vol = _f64(g("volume"))
        qv = np.where(np.isnan(qv), vol * c, qv)
        if self.bar_path == "close":
            t = ts + iv - 1
            return EventBatch(t, np.full(n, code), seq, inst, np.zeros(n, np.int8), c, qv, np.full(n, np.nan), pt, eid)
        down = c < o
        first = np.where(down, h, lo)
        second = np.where(down, lo, h)
        t = np.stack([ts, ts + iv // 3, ts + 2 * iv // 3, ts + iv - 1], axis=1).ravel()
        p = np.stack([o, first, second, c], axis=1).ravel()
        q = np.repeat(np.nan_to_num(qv) / 4.0, 4)
        s = (np.repeat(seq, 4) << np.int64(2)) + np.tile(np.arange(4, dtype=np.int64), n)
        return EventBatch(t, np.full(4 * n, code), s, np.repeat(inst, 4), np.zeros(4 * n, np.int8), p, q,
                          np.full(4 * n, np.nan), np.repeat(pt, 4), np.repeat(eid, 4))

    def _row_batches(self, table: str, path: Path) -> Iterator[pa.RecordBatch]:
        """Row groups of a file that overlap the window (by their ts statistics), filtered, one
        row group at a time: memory stays at one row group per open file."""
        pf = pq.ParquetFile(str(path))
        names = pf.schema_arrow.names
        cols = [c for c in _COLS[table] if c in names]
        ts_idx = names.index("ts")
        lo = pa.scalar(self.start_us, pa.timestamp("us", tz="UTC"))
        hi = pa.scalar(self.end_us, pa.timestamp("us", tz="UTC"))
        syms = pa.array(sorted({s for _, _, s in self.want})) if self.want is not None else None
        groups = []
        for rg in range(pf.num_row_groups):
            st = pf.metadata.row_group(rg).column(ts_idx).statistics
            if st is not None and st.has_min_max:
                mn, mx = st.min, st.max
                mn_us = int(mn.timestamp() * 1e6) if hasattr(mn, "timestamp") else int(mn)
                mx_us = int(mx.timestamp() * 1e6) if hasattr(mx, "timestamp") else int(mx)
                if mx_us < self.start_us or mn_us >= self.end_us:
                    continue
            groups.append(rg)
        if not groups:
            return
        for rb in pf.iter_batches(batch_size=self.batch_rows, row_groups=groups, columns=cols):
            ts = rb.column(cols.index("ts"))
            mask = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
            if syms is not None:
                mask = pc.and_(mask, pc.is_in(rb.column(cols.index("symbol")), value_set=syms))
            if not pc.all(mask).as_py():
                rb = rb.filter(mask)
            yield rb

    def _file_iter(self, table: str, path: Path, rank: int) -> Iterator[tuple[EventBatch, int]]:
        """(batch, safe_ts): every later row of this file has raw ts >= safe_ts."""
        row0 = 0
        for rb in self._row_batches(table, path):
            if rb.num_rows == 0:
                continue
            self.rows_read += rb.num_rows
            b = self._convert(table, rb, rank, row0)
            row0 += rb.num_rows
            raw_ts = pc.cast(rb.column(rb.schema.names.index("ts")), pa.int64()).to_numpy(zero_copy_only=False)
            if len(raw_ts) > 1 and (np.diff(raw_ts) < 0).any():
                raise ValueError(f"{path}: rows are not sorted by ts; the lake writer sorts every file "
                                 f"(re-ingest this source)")
            if len(b):
                order = np.argsort(b.ts, kind="stable")
                b = b.take(order)
            yield b, int(raw_ts[-1])

    # ---- the merge ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[EventBatch]:
        iters = [self._file_iter(t, p, r) for r, (t, p) in enumerate(self.files)]
        bufs: list[EventBatch | None] = [None] * len(iters)
        safe: list[int] = [self.start_us] * len(iters)
        alive = [True] * len(iters)

        def pull(i: int) -> None:
            try:
                b, s = next(iters[i])
            except StopIteration:
                alive[i] = False
                safe[i] = 2**62
                return
            if bufs[i] is None or not len(bufs[i]):
                bufs[i] = b
            else:  # expanded bar ticks can reach past the next raw rows: keep the buffer sorted
                cat = EventBatch.concat([bufs[i], b])
                bufs[i] = cat.take(np.lexsort((cat.seq, cat.ts)))
            safe[i] = s

        for i in range(len(iters)):
            pull(i)
        while True:
            for i in range(len(iters)):  # a file whose buffer is empty must show its next rows first
                while alive[i] and (bufs[i] is None or not len(bufs[i])):
                    pull(i)
            horizon = min(safe) if any(alive) else 2**62
            parts = []
            for i, b in enumerate(bufs):
                if b is None or not len(b):
                    continue
                cut = int(np.searchsorted(b.ts, horizon, side="left"))
                if cut:
                    parts.append(b.slice(0, cut))
                    bufs[i] = b.slice(cut, len(b))
            if parts:
                out = EventBatch.concat(parts)
                order = np.lexsort((out.seq, out.table, out.ts))
                yield out.take(order)
            if not any(alive) and all(b is None or not len(b) for b in bufs):
                return
            if not parts:
                # nothing below the horizon yet: read more from the file holding it back
                i = int(np.argmin(safe))
                if alive[i]:
                    pull(i)
