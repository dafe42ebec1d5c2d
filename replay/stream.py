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


def merge_parts(parts: list[EventBatch]) -> EventBatch:
    """Merge parts given in file-rank order, each sorted by (ts, seq), into (ts, table, seq) order."""
    if len(parts) == 1:
        return parts[0]
    out = EventBatch.concat(parts)
    if len(out) > 1 and (out.ts[1:] < out.ts[:-1]).any():
        out = out.take(np.argsort(out.ts, kind="stable"))
    return out


def _us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000) if t.tzinfo else int(t.replace(tzinfo=None).timestamp() * 1e6)


#: String columns read dictionary-encoded: decoding a few distinct values once per batch instead of
#: one string per row is most of what reading the lake costs.
_DICT_COLS = ("venue", "market", "symbol", "side", "price_type", "interval")
_SIDE_CODE = {"buy": 1, "bid": 1, "sell": -1, "ask": -1}


def _dict(col: pa.Array) -> tuple[list, np.ndarray]:
    """(distinct values + [None], index per row with nulls pointing at the trailing None)."""
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    vals = col.dictionary.to_pylist() + [None]
    idx = col.indices
    if idx.null_count:
        idx = pc.fill_null(idx, len(vals) - 1)
    return vals, idx.to_numpy(zero_copy_only=False)


def _lut(col: pa.Array, table: dict, default, dtype, null=None) -> np.ndarray:
    """Map a string column through `table` (unknown -> default, null -> `null` or default) one
    distinct value at a time."""
    vals, idx = _dict(col)
    null = default if null is None else null
    lut = np.array([table.get(v, default) if v is not None else null for v in vals], dtype=dtype)
    return lut[idx]


def _side(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return _lut(col, _SIDE_CODE, 0, np.int8)


def _i64(col) -> np.ndarray:
    """int64 µs of a timestamp column (zero-copy when it has no nulls; nulls -> the minimum int64)."""
    if col.null_count:
        col = pc.fill_null(pc.cast(col, pa.int64()), np.iinfo(np.int64).min)
    return col.view(pa.int64()).to_numpy(zero_copy_only=False) if pa.types.is_timestamp(col.type) else \
        pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)


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
        (vv, vi), (mv, mi), (sv, si) = _dict(venue), _dict(market), _dict(symbol)
        combo = (vi.astype(np.int64) * len(mv) + mi) * len(sv) + si
        lo, hi = (int(combo.min()), int(combo.max())) if len(combo) else (0, 0)
        if lo == hi:
            uniq, first, inv = np.array([lo]), np.array([0]), None
        else:
            uniq, first, inv = np.unique(combo, return_index=True, return_inverse=True)
        codes = np.empty(len(uniq), dtype=np.int32)
        for j in np.argsort(first, kind="stable").tolist():  # new instruments in order of first appearance
            c = int(uniq[j])
            k = (vv[c // (len(mv) * len(sv))], mv[(c // len(sv)) % len(mv)], sv[c % len(sv)])
            if self.want is not None and k not in self.want:
                codes[j] = -1
                continue
            if k not in self._inst_index:
                self._inst_index[k] = len(self.instruments)
                self.instruments.append(k)
            codes[j] = self._inst_index[k]
        if inv is None:
            return np.full(len(venue), codes[0], dtype=np.int32)
        return codes[inv.reshape(-1)]

    def _convert(self, table: str, rb: pa.RecordBatch, file_rank: int, row0: int) -> EventBatch:
        n = rb.num_rows
        col = rb.column
        names = rb.schema.names
        g = lambda c: col(names.index(c))  # noqa: E731
        ts = _i64(g("ts"))
        inst = self._codes(g("venue"), g("market"), g("symbol"))
        seq = (np.int64(file_rank) << np.int64(40)) + row0 + np.arange(n, dtype=np.int64)
        eid = np.asarray(g("event_id").to_numpy(zero_copy_only=False), dtype=np.int64)
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
            pt = _lut(g("price_type"), PTYPES, 7, np.int8)
            b = EventBatch(ts, np.full(n, code), seq, inst, zeros8, _f64(g("price")), nanv.copy(), nanv, pt, eid)
        elif table == "bars":
            b = self._bars(g, ts, inst, seq, eid, n, code)
        else:  # pragma: no cover - guarded by STATE_TABLES
            raise ValueError(table)
        keep = b.inst >= 0
        return b if keep.all() else b.take(np.nonzero(keep)[0])

    def _bars(self, g, ts, inst, seq, eid, n, code) -> EventBatch:
        iv = _lut(g("interval"), _INTERVAL_US, 60_000_000, np.int64)
        pt = _lut(g("price_type"), PTYPES, 7, np.int8, null=PTYPES["trade"])
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
        names = pq.read_schema(str(path)).names
        cols = [c for c in _COLS[table] if c in names]
        pf = pq.ParquetFile(str(path), read_dictionary=[c for c in _DICT_COLS if c in cols])
        ts_idx = names.index("ts")
        syms = {s for _, _, s in self.want} if self.want is not None else None
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
        # one core: the fold is one process per replay worker; decoding threads only add overhead
        for rb in pf.iter_batches(batch_size=self.batch_rows, row_groups=groups, columns=cols, use_threads=False):
            ts = _i64(rb.column(cols.index("ts")))
            mask = (ts >= self.start_us) & (ts < self.end_us)  # null ts (NaT) are < start: dropped
            if syms is not None:
                vals, idx = _dict(rb.column(cols.index("symbol")))
                mask &= np.array([v in syms for v in vals], dtype=bool)[idx]
            if not mask.all():
                rb = rb.filter(pa.array(mask))
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
            raw_ts = _i64(rb.column(rb.schema.names.index("ts")))
            if len(raw_ts) > 1 and (raw_ts[1:] < raw_ts[:-1]).any():
                raise ValueError(f"{path}: rows are not sorted by ts; the lake writer sorts every file "
                                 f"(re-ingest this source)")
            if len(b) > 1 and (b.ts[1:] < b.ts[:-1]).any():  # only expanded bar ticks can be out of order
                b = b.take(np.argsort(b.ts, kind="stable"))
            yield b, int(raw_ts[-1])

    # ---- the merge ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[EventBatch]:
        """Merged batches in (ts, table priority, sequence) order."""
        for parts in self.windows():
            # Parts are in file-rank order, files are ranked by (table priority, path) and each
            # part is sorted by (ts, seq): a stable sort on ts alone gives (ts, table, seq) order
            # (one timsort over a few presorted runs instead of a three-key lexsort).
            yield merge_parts([b for _, b in parts])

    def windows(self) -> Iterator[list[tuple[int, EventBatch]]]:
        """The merge without the merging: per time window [previous horizon, horizon), the rows of
        each file in it as (file rank, part), each part sorted by (ts, seq), parts in rank order.
        Consumers whose state is per instrument (the fold) merge only parts that share an
        instrument; the windows are exactly the batches `__iter__` yields."""
        iters = [self._file_iter(t, p, r) for r, (t, p) in enumerate(self.files)]
        # per file: a list of batches, each sorted by (ts, seq), in order (no copy per pull)
        bufs: list[list[EventBatch]] = [[] for _ in iters]
        safe: list[int] = [self.start_us] * len(iters)
        alive = [True] * len(iters)

        def pull(i: int) -> None:
            try:
                b, s = next(iters[i])
            except StopIteration:
                alive[i] = False
                safe[i] = 2**62
                return
            if len(b):
                q = bufs[i]
                if q and q[-1].ts[-1] > b.ts[0]:
                    # expanded bar ticks can reach past the next raw rows: keep the buffer sorted
                    cat = EventBatch.concat(q + [b])
                    q[:] = [cat.take(np.lexsort((cat.seq, cat.ts)))]
                else:
                    q.append(b)
            safe[i] = s

        def cut(q: list[EventBatch], horizon: int) -> EventBatch | None:
            out = []
            while q:
                b = q[0]
                if b.ts[-1] < horizon:
                    out.append(q.pop(0))
                    continue
                c = int(np.searchsorted(b.ts, horizon, side="left"))
                if c:
                    out.append(b.slice(0, c))
                    q[0] = b.slice(c, len(b))
                break
            return None if not out else out[0] if len(out) == 1 else EventBatch.concat(out)

        for i in range(len(iters)):
            pull(i)
        while True:
            for i in range(len(iters)):  # a file whose buffer is empty must show its next rows first
                while alive[i] and not bufs[i]:
                    pull(i)
            horizon = min(safe) if any(alive) else 2**62
            parts = []
            for i, q in enumerate(bufs):
                b = cut(q, horizon)
                if b is not None:
                    parts.append((i, b))
            if parts:
                yield parts
            if not any(alive) and not any(bufs):
                return
            if not parts:
                # nothing below the horizon yet: read more from the file holding it back
                i = int(np.argmin(safe))
                if alive[i]:
                    pull(i)
