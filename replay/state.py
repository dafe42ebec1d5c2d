"""The fold: the merged event stream -> a `Tape` of market state on a fixed time grid.

For each step k of the grid (state = all events with ts < start + (k+1)·step) the tape holds,
per instrument: the last price of each kind (trade, mark, index, oracle, conversion rate, book
mid), the event_id that set it (so a liquidation can name its cause), the depth ladder per side
(books.py) and the traded notional. Everything the rules and the impact model need, and nothing
that depends on the scenario, so a tape is computed once per (lake, window) and reused by every
replay of an attribution run (an in-process cache, keyed by the lake's committed sources).

The fold is vectorised per stream batch: the last price per (step, instrument, kind) is one
`np.unique`; books are updated per (instrument, step) with `dict.update`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

import numpy as np

from crashlab.ingest.lake import Lake
from crashlab.ingest.schema import TABLE_PRIORITY

from .books import GRID, P, ArrayBook, ladder_from_bands
from .stream import PTYPES, EventBatch, Instrument, Stream, _us, merge_parts

_T_TRADES = TABLE_PRIORITY["trades"]
_T_SNAP = TABLE_PRIORITY["book_snapshots"]
_T_DELTA = TABLE_PRIORITY["book_deltas"]
_T_BANDS = TABLE_PRIORITY["depth_bands"]
_T_PRICES = TABLE_PRIORITY["prices"]
_T_BARS = TABLE_PRIORITY["bars"]
NPT = 9  # price kinds (PTYPES)
#: Table groups whose fold state is independent (prices | books | bands), in `Folder.feed` order.
_GROUP = {_T_TRADES: 2, TABLE_PRIORITY["prices"]: 2, TABLE_PRIORITY["bars"]: 2, _T_SNAP: 0, _T_DELTA: 0, _T_BANDS: 1}


@dataclass
class Tape:
    start: datetime
    end: datetime
    step_us: int
    T: int
    instruments: list[Instrument]
    prices: dict[tuple[int, int], np.ndarray]  # (inst, ptype) -> price[T], forward-filled (nan before first)
    price_ids: dict[tuple[int, int], np.ndarray]  # same keys -> event_id[T] of the setting row (0 = none)
    bid: dict[int, np.ndarray] = field(default_factory=dict)  # inst -> cum notional [T, P]
    ask: dict[int, np.ndarray] = field(default_factory=dict)
    depth_source: dict[int, str] = field(default_factory=dict)  # book | depth_bands
    notional: dict[int, np.ndarray] = field(default_factory=dict)  # inst -> traded quote notional per step
    events: int = 0
    rows_read: int = 0

    def index(self, inst: Instrument) -> int | None:
        try:
            return self.instruments.index(inst)
        except ValueError:
            return None

    def step_ts(self) -> np.ndarray:
        """Timestamps (µs) at the END of each step: the state at that instant."""
        return _us(self.start) + (np.arange(self.T, dtype=np.int64) + 1) * self.step_us


def _ffill(a: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    idx = np.where(~invalid, np.arange(len(a)), 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = a[idx]
    first = np.argmax(~invalid) if (~invalid).any() else len(a)
    out[:first] = np.nan if a.dtype.kind == "f" else 0
    return out


def _ffill2(a: np.ndarray) -> np.ndarray:
    """Forward-fill rows of a [T, P] array whose missing rows are all-nan."""
    bad = np.isnan(a[:, 0])
    idx = np.where(~bad, np.arange(len(a)), 0)
    np.maximum.accumulate(idx, out=idx)
    out = a[idx]
    if bad.all():
        return out
    out[: np.argmax(~bad)] = np.nan
    return out


class Folder:
    """Stateful fold of event batches into tape arrays (used by `build_tape` and the benchmark)."""

    def __init__(self, start: datetime, end: datetime, step_us: int, ladder_every_us: int = 10_000_000):
        self.start_us = _us(start)
        # Books are applied and their ladder taken once per period (default 10 s), stored at the
        # period's LAST step so no step sees depth from its future. Prices stay at step resolution.
        self.L = max(1, int(round(ladder_every_us / step_us)))
        self.step_us = step_us
        self.T = max(1, -(-(_us(end) - self.start_us) // step_us))
        self.prices: dict[tuple[int, int], np.ndarray] = {}
        self.ids: dict[tuple[int, int], np.ndarray] = {}
        self.books: dict[int, ArrayBook] = {}
        self.bid: dict[int, np.ndarray] = {}
        self.ask: dict[int, np.ndarray] = {}
        self.source: dict[int, str] = {}
        self.notional: dict[int, np.ndarray] = {}
        self.band_bid: dict[int, np.ndarray] = {}  # depth_bands ladders, kept apart from book ladders
        self.band_ask: dict[int, np.ndarray] = {}
        self.events = 0

    def _arr(self, d: dict, key, shape, fill, dtype=float) -> np.ndarray:
        a = d.get(key)
        if a is None:
            a = d[key] = np.full(shape, fill, dtype=dtype)
        return a

    def _set_last(self, k: np.ndarray, inst: np.ndarray, pt: np.ndarray, price: np.ndarray, eid: np.ndarray) -> None:
        if not len(k):
            return
        comb = (k.astype(np.int64) * 1_000_003 + inst.astype(np.int64)) * NPT + pt.astype(np.int64)
        rev = comb[::-1]
        _, first = np.unique(rev, return_index=True)
        last = len(comb) - 1 - first
        ik = inst[last].astype(np.int64) * NPT + pt[last]
        for key in np.unique(ik).tolist():
            sel = last[ik == key]
            kk = (key // NPT, key % NPT)
            self._arr(self.prices, kk, self.T, np.nan)[k[sel]] = price[sel]
            self._arr(self.ids, kk, self.T, 0, np.int64)[k[sel]] = eid[sel]

    def feed(self, b: EventBatch) -> None:
        n = len(b)
        if not n:
            return
        self.events += n
        k = np.clip((b.ts - self.start_us) // self.step_us, 0, self.T - 1)
        t = b.table
        # prices: trades, prices table, bar ticks
        pm = (t == _T_TRADES) | (t == _T_PRICES) | (t == _T_BARS)
        if pm.any():
            idx = np.nonzero(pm)[0]
            self._set_last(k[idx], b.inst[idx], b.ptype[idx], b.price[idx], b.event_id[idx])
        # traded notional per step
        tm = (t == _T_TRADES) | ((t == _T_BARS) & (b.ptype == PTYPES["trade"]))
        if tm.any():
            idx = np.nonzero(tm)[0]
            for i in np.unique(b.inst[idx]).tolist():
                s = idx[b.inst[idx] == i]
                vv = np.where(t[s] == _T_TRADES, b.price[s] * b.amount[s], b.amount[s])
                np.add.at(self._arr(self.notional, i, self.T, 0.0), k[s], np.nan_to_num(vv))
        # books
        bm = (t == _T_SNAP) | (t == _T_DELTA)
        if bm.any():
            self._books(b, k, np.nonzero(bm)[0])
        dm = t == _T_BANDS
        if dm.any():
            self._bands(b, k, np.nonzero(dm)[0])

    def feed_parts(self, parts: list[EventBatch]) -> None:
        """Fold one window of `Stream.windows()` without merging what needs no merge.

        Equal to `feed(merge_parts(parts))`: the fold's state is per instrument and per table group
        (prices from trades/prices/bars; books from snapshots/deltas; depth bands), so only parts of
        one group that share an instrument must be merged; groups go in the order `feed` handles
        them where it matters (books before bands: a real book beats bands)."""
        groups: dict[int, list[EventBatch]] = {}
        for b in parts:
            if len(b):
                groups.setdefault(_GROUP[int(b.table[0])], []).append(b)
        for g in sorted(groups):
            ps = groups[g]
            if len(ps) == 1:
                self.feed(ps[0])
                continue
            clusters: list[tuple[set[int], list[int]]] = []  # part positions sharing instruments
            for j, b in enumerate(ps):
                insts = set(np.unique(b.inst).tolist())
                hit = [c for c in clusters if c[0] & insts]
                for c in hit:
                    clusters.remove(c)
                    insts |= c[0]
                clusters.append((insts, sorted([m for c in hit for m in c[1]] + [j])))  # rank order
            for _, members in clusters:
                self.feed(merge_parts([ps[m] for m in members]))

    def _books(self, b: EventBatch, k: np.ndarray, idx: np.ndarray) -> None:
        inst = b.inst[idx]
        uniq = np.unique(inst)
        for i in uniq.tolist():
            s = idx if len(uniq) == 1 else idx[inst == i]
            book = self.books.get(i)
            if book is None:
                book = self.books[i] = ArrayBook()
                self.source[i] = "book"
            if len(s) == len(b):  # the whole batch: views, not copies
                s = slice(None)
            ks = k[s] // self.L
            bounds = np.flatnonzero(ks[1:] != ks[:-1]) + 1
            tab, ts, aux, side, price, amount = b.table[s], b.ts[s], b.aux[s], b.side[s], b.price[s], b.amount[s]
            eid, kv = b.event_id[s], k[s]
            snaps = (tab == _T_SNAP) | ((tab == _T_DELTA) & (aux > 0))
            any_snap = bool(snaps.any())
            edges = [0, *bounds.tolist(), len(ks)]
            if not any_snap:  # deltas only: split by side once, then every segment is two views
                self._deltas(i, book, ks, edges, side, price, amount, eid, kv)
                continue
            for a, e in zip(edges[:-1], edges[1:]):
                if any_snap:
                    snap = snaps[a:e]
                    if snap.any():
                        # a snapshot replaces the book: start from the last snapshot's first row
                        sts = ts[a:e]
                        last_ts = sts[snap][-1]
                        first_row = int(np.argmax(snap & (sts == last_ts)))
                        if last_ts != book.snap_ts or first_row > 0 or not snap[0]:
                            book.clear()
                        book.snap_ts = int(last_ts)
                        a += first_row
                book.apply(side[a:e], price[a:e], amount[a:e])
                lad = book.ladder()
                if lad is None:
                    continue
                self._store_ladder(i, lad, int(kv[e - 1]), int(eid[e - 1]))

    def _deltas(self, i: int, book: ArrayBook, ks, edges, side, price, amount, eid, kv) -> None:
        """The `_books` loop for a run of plain deltas (no snapshot): same updates, same ladders."""
        bid = side > 0
        bi, ai = np.flatnonzero(bid), np.flatnonzero(~bid)
        bp, ba, ap, aa = price[bi], amount[bi], price[ai], amount[ai]
        eb = np.searchsorted(bi, edges).tolist()  # segment edges within each side's rows
        ea = np.searchsorted(ai, edges).tolist()
        for j in range(len(edges) - 1):
            book.bid.update(bp[eb[j]:eb[j + 1]], ba[eb[j]:eb[j + 1]])
            book.ask.update(ap[ea[j]:ea[j + 1]], aa[ea[j]:ea[j + 1]])
            lad = book.ladder()
            if lad is None:
                continue
            e = edges[j + 1]
            self._store_ladder(i, lad, int(kv[e - 1]), int(eid[e - 1]))

    def _store_ladder(self, i: int, lad, k: int, eid: int) -> None:
        """Record a book's ladder and mid at the end of the sampling step holding event step `k`."""
        kk = min((k // self.L + 1) * self.L - 1, self.T - 1)
        mid, lb, la = lad
        self._arr(self.bid, i, (self.T, P), np.nan)[kk] = lb
        self._arr(self.ask, i, (self.T, P), np.nan)[kk] = la
        key = (i, PTYPES["book_mid"])
        self._arr(self.prices, key, self.T, np.nan)[kk] = mid
        self._arr(self.ids, key, self.T, 0, np.int64)[kk] = eid

    def _bands(self, b: EventBatch, k: np.ndarray, idx: np.ndarray) -> None:
        inst = b.inst[idx]
        for i in np.unique(inst).tolist():
            self.source.setdefault(i, "depth_bands")
            s = idx[inst == i]
            ks = k[s]
            # one ladder per step: from the rows of the step's last snapshot timestamp
            for kk in np.unique(ks).tolist():
                seg = s[ks == kk]
                last = seg[b.ts[seg] == b.ts[seg][-1]]
                lb, la = ladder_from_bands(b.price[last], b.amount[last])
                self._arr(self.band_bid, i, (self.T, P), np.nan)[kk] = lb
                self._arr(self.band_ask, i, (self.T, P), np.nan)[kk] = la

    def _ladders(self, book: dict[int, np.ndarray], bands: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """A book is exact near the mid but usually ends within ~1 %; bands reach ±5 %: where both
        exist the ladder is their pointwise max (book near, bands far; both cumulative)."""
        out = {i: _ffill2(a) for i, a in book.items()}
        for i, a in bands.items():
            out[i] = np.fmax(out[i], _ffill2(a)) if i in out else _ffill2(a)
        return out

    def finish(self, start: datetime, end: datetime, instruments: list[Instrument], rows_read: int = 0) -> Tape:
        prices, ids = {}, {}
        for key, a in self.prices.items():
            invalid = np.isnan(a)
            prices[key] = _ffill(a, invalid)
            ids[key] = _ffill(self.ids[key], invalid)
        tape = Tape(start, end, self.step_us, self.T, list(instruments), prices, ids,
                    self._ladders(self.bid, self.band_bid), self._ladders(self.ask, self.band_ask),
                    {i: ("book+depth_bands" if src == "book" and i in self.band_bid else src)
                     for i, src in self.source.items()}, dict(self.notional), self.events, rows_read)
        return tape


_CACHE: "OrderedDict[tuple, Tape]" = OrderedDict()
_CACHE_SIZE = 4


def build_tape(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    step: timedelta = timedelta(seconds=1),
    instruments: set[Instrument] | None = None,
    bar_path: str = "ohlc",
    progress: Callable[[int], None] | None = None,
    cache: bool = True,
) -> Tape:
    """Fold the lake's window into a tape (cached per process for repeated replays)."""
    step_us = int(step.total_seconds() * 1_000_000)
    if step_us <= 0:
        raise ValueError("step must be positive")
    key = (str(lake.root), lake.fingerprint(), _us(start), _us(end), step_us,
           tuple(sorted(instruments)) if instruments else None, bar_path)
    if cache and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    stream = Stream(lake, start, end, instruments=instruments, bar_path=bar_path)
    folder = Folder(start, end, step_us)
    for parts in stream.windows():
        folder.feed_parts([b for _, b in parts])
        if progress:
            progress(sum(len(b) for _, b in parts))
    tape = folder.finish(start, end, stream.instruments, stream.rows_read)
    if cache:
        _CACHE[key] = tape
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return tape


def export_tapes() -> list[tuple[tuple, Tape]]:
    """This process's folded tapes, to seed worker processes of a parallel attribution: folding
    the window once in the parent and shipping the arrays beats every worker re-reading the lake."""
    return list(_CACHE.items())


def seed_tapes(items: list[tuple[tuple, Tape]]) -> None:
    """Install tapes from `export_tapes()` (a process-pool initializer)."""
    for key, tape in items:
        _CACHE[key] = tape
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)


def vwap(lake: Lake, inst: Instrument, start: datetime, end: datetime) -> float | None:
    """Volume-weighted average trade price of an instrument over [start, end) (trades, else bars)."""
    import duckdb

    v, m, s = inst
    con = duckdb.connect()
    for table, expr, w in (("trades", "price", "amount"), ("bars", "close", "volume")):
        files = [str(f) for f in lake.files(table)]
        if not files:
            continue
        extra = " AND price_type = 'trade'" if table == "bars" else ""
        row = con.execute(
            f"SELECT sum({expr} * {w}) / nullif(sum({w}), 0) FROM read_parquet(?) "
            f"WHERE venue = ? AND market = ? AND symbol = ? AND ts >= ? AND ts < ?{extra}",
            [files, v, m, s, start, end],
        ).fetchone()
        if row and row[0] is not None:
            return float(row[0])
    return None


# ---- price keys -> recorded series ------------------------------------------------------------
_QUOTES = ("USDT", "USDC", "USD", "FDUSD")
_ORDER = {  # price kinds tried, best first, per key kind
    "mark": ("mark", "index", "trade", "book_mid", "oracle"),
    "spot": ("trade", "book_mid", "index", "mark"),
}


@dataclass
class Resolved:
    key: tuple[str, str, str]
    series: np.ndarray  # recorded price [T] (nan where unknown)
    inst: int | None  # instrument whose book a forced order on this key walks, and whose impact it carries
    ids: np.ndarray  # event_id [T] of the row that set the price
    how: str  # which instrument and kind, said plainly (fallbacks included)


class PriceResolver:
    """Turn a rule's `PriceKey` into a recorded series from the tape, with explicit fallbacks.

    ("mark", venue, SYMBOL): the perp's mark > index > last trade > book mid on that venue; else the
    same base asset's perp on another venue; else its spot. ("spot", venue, ASSET): ASSET/USDT
    (USDC, USD, FDUSD) on the venue's spot market, else on any venue. ("oracle", venue, ASSET) and
    ("conversion_rate", venue, ASSET): prices rows of that kind, else nan (the rule decides the
    default). USDT, USDC and USD are 1 when nothing is recorded.
    """

    def __init__(self, tape: Tape, initial: dict[tuple[str, str, str], float] | None = None):
        self.tape = tape
        self.initial = initial or {}
        self._cache: dict[tuple[str, str, str], Resolved] = {}
        self.notes: list[str] = []

    def _series(self, inst: int, kinds: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, str] | None:
        for kind in kinds:
            a = self.tape.prices.get((inst, PTYPES[kind]))
            if a is not None and not np.isnan(a).all():
                return a, self.tape.price_ids[(inst, PTYPES[kind])], kind
        return None

    def _find(self, venue: str | None, market: str, base: str, kinds) -> tuple[int, np.ndarray, np.ndarray, str] | None:
        cands = [
            (i, v, m, s) for i, (v, m, s) in enumerate(self.tape.instruments)
            if m == market and s.split("/")[0].upper() == base and (venue is None or v == venue)
        ]
        def rank(c):
            quote = c[3].split("/")[1].split(":")[0] if "/" in c[3] else ""
            return (_QUOTES.index(quote) if quote in _QUOTES else 9, c[1], c[3])
        for i, v, m, s in sorted(cands, key=rank):
            got = self._series(i, kinds)
            if got:
                return i, got[0], got[1], f"{v}:{m}:{s}:{got[2]}"
        return None

    def resolve(self, key: tuple[str, str, str]) -> Resolved:
        if key in self._cache:
            return self._cache[key]
        kind, venue, name = key
        T = self.tape.T
        res: Resolved | None = None
        if kind == "mark":
            i = self.tape.index((venue, "perp", name))
            got = self._series(i, _ORDER["mark"]) if i is not None else None
            if got:
                res = Resolved(key, got[0], i, got[1], f"{venue}:perp:{name}:{got[2]}")
            else:
                base = name.split("/")[0].upper()
                f = (self._find(None, "perp", base, _ORDER["mark"]) or self._find(venue, "spot", base, _ORDER["spot"])
                     or self._find(None, "spot", base, _ORDER["spot"]))
                if f:
                    res = Resolved(key, f[1], f[0], f[2], f"fallback {f[3]}")
        elif kind == "spot":
            base = name.upper()
            f = self._find(venue, "spot", base, _ORDER["spot"]) or self._find(None, "spot", base, _ORDER["spot"])
            if f:
                res = Resolved(key, f[1], f[0], f[2], f[3] if f[3].startswith(venue + ":") else f"fallback {f[3]}")
        elif kind in ("oracle", "conversion_rate"):
            for i, (v, m, s) in enumerate(self.tape.instruments):
                if v == venue and s.split("/")[0].upper() == name.upper():
                    got = self._series(i, (kind,))
                    if got:
                        res = Resolved(key, got[0], None, got[1], f"{v}:{m}:{s}:{kind}")
                        break
        if res is None:
            if key in self.initial:
                v = float(self.initial[key])
                res = Resolved(key, np.full(T, v), None, np.zeros(T, np.int64), f"scenario initial price {v}")
            elif kind == "spot" and name.upper() in ("USDT", "USDC", "USD"):
                res = Resolved(key, np.ones(T), None, np.zeros(T, np.int64), "cash = 1")
            elif kind in ("oracle", "conversion_rate"):
                res = Resolved(key, np.full(T, np.nan), None, np.zeros(T, np.int64), "not recorded (rule default)")
            else:
                raise LookupError(
                    f"no recorded price for {key} in the lake between {self.tape.start} and {self.tape.end}, "
                    f"and the scenario gives no [initial_prices] entry for it"
                )
        s = res.series
        if np.isnan(s).any() and not np.isnan(s).all():
            first = int(np.argmax(~np.isnan(s)))
            s = s.copy()
            s[:first] = s[first]  # before the first print, the first print is the best guess
            res = Resolved(res.key, s, res.inst, res.ids, res.how + f" (back-filled {first} steps)")
        self._cache[key] = res
        if "fallback" in res.how or "initial" in res.how or "back-filled" in res.how:
            self.notes.append(f"{key}: {res.how}")
        return res
